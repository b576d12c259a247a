//! `cargo xtask tidy`: checks the architecture rules mechanically and fails
//! with one line per breach, `file:line: [rule] what is wrong`.
//!
//! The rules, each in its own module with its table as constants:
//!
//! - `sans-io` ([`sans_io`]): the cores listed in `sans_io::CORES` — the
//!   session core (`switchboard-session/src/` but `driver/`), the router
//!   core (`switchboard-hub/src/router/`, `outbox/`), the wire's
//!   reliable-delivery core and delivery encoder, and the client handshake
//!   (`switchboard-discovery/src/handshake*`) — name no `tokio*`,
//!   `std::net`, `Instant::now`, `SystemTime::now`, `spawn`, `async` or
//!   `.await` in code.
//! - `crate-layers` ([`layers`]): each workspace package depends only on the
//!   workspace crates its row of the layer table allows (dev-dependencies:
//!   its level or below); a package without a row is a finding.
//! - `module-circles` ([`modules`]): inside each crate (every library and
//!   binary root under `src/`), no files name each other's items in a
//!   circle; each circle is listed with the names on its edges.
//!
//! Sources are read as syntax trees ([`source`]): comments, string
//! literals and test code (`tests.rs`, `#[cfg(test)]` items and the files
//! they declare) never count. The workspace's packages come from `cargo
//! metadata` ([`workspace`]).

mod finding;
mod layers;
mod modules;
mod sans_io;
mod source;
mod workspace;

#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::{bail, Result};

/// Runs every rule on the workspace at `root`.
pub(crate) fn run(root: &Path) -> Result<()> {
    let packages = workspace::load(root)?;
    let mut trees = Vec::new();
    for package in &packages {
        for file in &package.roots {
            trees.push(source::load_tree(root, file)?);
        }
    }
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    let mut findings = sans_io::check(&trees, sans_io::CORES);
    findings.extend(layers::check(&packages, layers::LAYERS, &read));
    findings.extend(modules::check(&trees));
    for finding in &findings {
        println!("{finding}");
    }
    let files: usize = trees.iter().map(|t| t.files.len()).sum();
    if !findings.is_empty() {
        bail!(
            "tidy: {} finding(s) in {files} files of {} packages; the rules are described in xtask/src/tidy/",
            findings.len(),
            packages.len()
        );
    }
    println!(
        "tidy: {files} files of {} packages keep the rules (sans-io, crate-layers, module-circles)",
        packages.len()
    );
    Ok(())
}
