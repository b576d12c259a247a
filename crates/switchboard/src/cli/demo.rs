//! `switchboard demo`: every pattern in one process.

pub async fn run(_json: bool) -> anyhow::Result<()> {
    anyhow::bail!("the demo needs the in-process hub, which this build does not include yet")
}
