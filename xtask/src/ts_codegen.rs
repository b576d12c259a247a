//! The TypeScript part of `cargo xtask codegen`: `clients/typescript/src/gen/`
//! from `proto/`, by protoc-gen-es through the buf CLI, both installed by
//! `npm ci` in `clients/typescript` (its `buf.gen.yaml` holds the options).
//!
//! Without Node or without `clients/typescript/node_modules` the step says
//! what to install and is skipped, so the Rust part still runs on a machine
//! without Node; `.ci/run` runs `npm ci` before `cargo xtask codegen --check`,
//! so in CI the check always covers the TypeScript code.
//!
//! It then rebuilds the hub's dashboard script from
//! `clients/typescript/dashboard/dashboard.ts` (`scripts/dashboard.mjs`,
//! esbuild, deterministic output) and compares it with the checked-in
//! `crates/switchboard-hub/assets/dashboard.js`, or writes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const DIR: &str = "clients/typescript";
const GEN: &str = "src/gen";
const DASHBOARD: &str = "crates/switchboard-hub/assets/dashboard.js";

/// Generates (or with `check`, compares) the TypeScript code; returns the
/// drifted paths (empty when up to date, generated, or skipped).
pub fn run(root: &Path, check: bool) -> Result<Vec<String>> {
    let dir = root.join(DIR);
    let buf = dir.join("node_modules/.bin/buf");
    let node = Command::new("node").arg("--version").output();
    if !matches!(node, Ok(ref o) if o.status.success()) || !buf.exists() {
        println!(
            "codegen: skipping the TypeScript code in {DIR}/{GEN}: it needs Node >= 20 with npm \
             (https://nodejs.org, or `apt-get install nodejs npm`) and `npm ci` in {DIR}"
        );
        return Ok(Vec::new());
    }
    let tmp = tempfile::tempdir()?;
    // `--output` is the base of the template's `out: src/gen`.
    let status = Command::new(&buf)
        .current_dir(&dir)
        .args([
            "generate",
            "../../proto",
            "--template",
            "buf.gen.yaml",
            "--output",
        ])
        .arg(tmp.path())
        .env("PATH", prepend_path(&dir.join("node_modules/.bin"))?)
        .status()
        .context("running buf (protoc-gen-es) in clients/typescript")?;
    if !status.success() {
        bail!("`buf generate` in {DIR} failed ({status})");
    }
    let fresh = files(&tmp.path().join(GEN))?;
    let current = files(&dir.join(GEN))?;
    let mut drift = Vec::new();
    for (rel, contents) in &fresh {
        let path = dir.join(GEN).join(rel);
        if current.iter().any(|(r, c)| r == rel && c == contents) {
            continue;
        }
        if check {
            drift.push(path.display().to_string());
        } else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("updated {}", path.display());
        }
    }
    for (rel, _) in &current {
        if fresh.iter().any(|(r, _)| r == rel) {
            continue;
        }
        let path = dir.join(GEN).join(rel);
        if check {
            drift.push(format!("{} (no longer generated)", path.display()));
        } else {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("removed {}", path.display());
        }
    }
    drift.extend(dashboard(root, &dir, check, tmp.path())?);
    Ok(drift)
}

/// Bundles the dashboard into `tmp` and compares it with (or copies it to)
/// the checked-in asset; returns the drifted path, if any.
fn dashboard(root: &Path, dir: &Path, check: bool, tmp: &Path) -> Result<Vec<String>> {
    let out = tmp.join("dashboard.js");
    let status = Command::new("node")
        .current_dir(dir)
        .arg("scripts/dashboard.mjs")
        .arg("--out")
        .arg(&out)
        .status()
        .context("running node scripts/dashboard.mjs in clients/typescript")?;
    if !status.success() {
        bail!("bundling the dashboard (node scripts/dashboard.mjs in {DIR}) failed ({status})");
    }
    let fresh = std::fs::read(&out)?;
    let path = root.join(DASHBOARD);
    if std::fs::read(&path).ok().as_deref() == Some(&fresh[..]) {
        return Ok(Vec::new());
    }
    if check {
        return Ok(vec![format!(
            "{} (rebuild with `npm run dashboard` in {DIR})",
            path.display()
        )]);
    }
    std::fs::write(&path, fresh).with_context(|| format!("writing {}", path.display()))?;
    println!("updated {}", path.display());
    Ok(Vec::new())
}

fn prepend_path(dir: &Path) -> Result<std::ffi::OsString> {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    Ok(std::env::join_paths(paths)?)
}

/// Every file under `dir` as (path relative to `dir`, contents), sorted.
fn files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let contents = std::fs::read(&path)?;
                out.push((path.strip_prefix(dir)?.to_path_buf(), contents));
            }
        }
    }
    out.sort();
    Ok(out)
}
