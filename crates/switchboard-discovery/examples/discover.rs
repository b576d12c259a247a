//! Finds the hubs of a service and prints them.
//!
//! `cargo run -p switchboard-discovery --example discover -- SERVICE [--all] [--token TOKEN] [--no-table] [--no-scan] [--v6]`
//!
//! Without `--token` the per-user secret file is used.

use std::time::Instant;

use switchboard_discovery::{discover, DiscoverOptions, Secret};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut service = None;
    let mut opts = DiscoverOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--all" => opts.all = true,
            "--no-hint" => opts.use_hints = false,
            "--no-table" => opts.use_table = false,
            "--no-scan" => opts.use_scan = false,
            "--v6" => opts = opts.both_loopbacks(),
            "--token" => {
                let t = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--token needs a value"))?;
                opts.secret = Some(Secret::from_token(&t));
            }
            s if !s.starts_with('-') && service.is_none() => service = Some(s.to_owned()),
            other => anyhow::bail!("unknown argument {other:?}; usage: discover SERVICE [--all] [--token TOKEN] [--no-hint] [--no-table] [--no-scan] [--v6]"),
        }
    }
    let service = service.ok_or_else(|| anyhow::anyhow!("usage: discover SERVICE [options]"))?;
    let t = Instant::now();
    match discover(&service, &opts).await {
        Ok(hubs) => {
            for h in hubs {
                println!(
                    "{} via {}: instance {} pid {} ({:.1} ms)",
                    h.addr,
                    h.via,
                    h.identity.instance_id,
                    h.identity.pid,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
