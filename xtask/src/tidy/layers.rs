//! Rule `crate-layers`: which workspace crate may depend on which. The
//! table below is the one home of the layering; every workspace package
//! must have a row, so a new crate starts by saying where it sits.
//!
//! - Normal and build dependencies on workspace crates must be in the row's
//!   `may_use` list.
//! - Dev-dependencies may point to any crate of the same level or below
//!   (tests may use a sibling, never a layer above: a test that needs a
//!   higher layer lives in that layer's package or in `switchboard-tests`).
//!   Rows that may use anything (`switchboard-tests`, `xtask`) are free in
//!   dev-dependencies too.

use super::finding::Finding;
use super::workspace::{DepKind, Package};

/// One row of the layer table.
pub(crate) struct Layer {
    /// The package name.
    pub name: &'static str,
    /// Its height: dev-dependencies may point to this level or below.
    pub level: u8,
    /// The workspace crates its normal and build dependencies may name.
    pub may_use: Uses,
}

/// What a row may depend on.
pub(crate) enum Uses {
    /// Only these workspace crates.
    Only(&'static [&'static str]),
    /// Any workspace crate (test and tool packages).
    Anything,
}

const WIRE: &str = "switchboard-wire";
const DISCOVERY: &str = "switchboard-discovery";
const SESSION: &str = "switchboard-session";
const HUB: &str = "switchboard-hub";
const FACADE: &str = "switchboard";
const FEDERATION: &str = "switchboard-federation";

/// Bindings: the facade and below.
const FACADE_AND_BELOW: Uses = Uses::Only(&[WIRE, DISCOVERY, SESSION, HUB, FACADE]);

/// The layer table, bottom up.
pub(crate) const LAYERS: &[Layer] = &[
    Layer {
        name: WIRE,
        level: 0,
        may_use: Uses::Only(&[]),
    },
    Layer {
        name: DISCOVERY,
        level: 1,
        may_use: Uses::Only(&[WIRE]),
    },
    Layer {
        name: SESSION,
        level: 1,
        may_use: Uses::Only(&[WIRE]),
    },
    Layer {
        name: HUB,
        level: 2,
        may_use: Uses::Only(&[WIRE, DISCOVERY, SESSION]),
    },
    // Federation of hubs over NATS: the hub's remote seam, beside the
    // facade, which offers it behind its `federation` feature (tests may
    // use the facade: same level).
    Layer {
        name: FEDERATION,
        level: 3,
        may_use: Uses::Only(&[WIRE, DISCOVERY, SESSION, HUB]),
    },
    Layer {
        name: FACADE,
        level: 3,
        may_use: Uses::Only(&[WIRE, DISCOVERY, SESSION, HUB, FEDERATION]),
    },
    // The benchmark harness: the facade and below.
    Layer {
        name: "switchboard-bench",
        level: 4,
        may_use: FACADE_AND_BELOW,
    },
    // Bindings: the facade and below; nothing below the facade may
    // depend on them.
    Layer {
        name: "switchboard-py",
        level: 4,
        may_use: FACADE_AND_BELOW,
    },
    Layer {
        name: "switchboard-c",
        level: 4,
        may_use: FACADE_AND_BELOW,
    },
    Layer {
        name: "switchboard-tests",
        level: 5,
        may_use: Uses::Anything,
    },
    Layer {
        name: "xtask",
        level: 5,
        may_use: Uses::Anything,
    },
];

/// Checks the dependencies of every package against `table`. `manifest`
/// reads a `Cargo.toml` (from the workspace root) to find a dependency's
/// line; it may return `None`.
pub(crate) fn check(
    packages: &[Package],
    table: &[Layer],
    manifest: &dyn Fn(&str) -> Option<String>,
) -> Vec<Finding> {
    let row = |name: &str| table.iter().find(|l| l.name == name);
    let mut findings = Vec::new();
    for p in packages {
        let Some(layer) = row(&p.name) else {
            findings.push(Finding::at(
                &p.manifest,
                0,
                "crate-layers",
                format!(
                    "package `{}` has no row in the layer table: add one to LAYERS in xtask/src/tidy/layers.rs saying which workspace crates it may depend on",
                    p.name
                ),
            ));
            continue;
        };
        let text = manifest(&p.manifest);
        for dep in &p.deps {
            if packages.iter().all(|q| q.name != dep.name) {
                continue; // not a workspace crate
            }
            let Some(target) = row(&dep.name) else {
                continue; // reported as a package without a row
            };
            let allowed = match (&layer.may_use, dep.kind) {
                (Uses::Anything, _) => true,
                (Uses::Only(_), DepKind::Dev) => target.level <= layer.level,
                (Uses::Only(list), DepKind::Normal | DepKind::Build) => {
                    list.contains(&dep.name.as_str())
                }
            };
            if allowed {
                continue;
            }
            let rule = match (&layer.may_use, dep.kind) {
                (_, DepKind::Dev) => format!(
                    "dev-dependencies of `{}` (level {}) may only point to level {} or below",
                    p.name, layer.level, layer.level
                ),
                (Uses::Only([]), _) => {
                    format!("`{}` depends on no workspace crate", p.name)
                }
                (Uses::Only(list), _) => format!("`{}` may depend on {}", p.name, list.join(", ")),
                (Uses::Anything, _) => unreachable!("allowed above"),
            };
            let line = text
                .as_deref()
                .map_or(0, |t| dep_line(t, &dep.key, dep.kind));
            findings.push(Finding::at(
                &p.manifest,
                line,
                "crate-layers",
                format!(
                    "`{}` must not depend on `{}` (level {}): {rule}",
                    p.name, dep.name, target.level
                ),
            ));
        }
    }
    findings
}

/// The line (1-based) of dependency `key` in the section of `kind`, 0 when
/// not found.
fn dep_line(manifest: &str, key: &str, kind: DepKind) -> usize {
    let section = match kind {
        DepKind::Normal => "dependencies",
        DepKind::Build => "build-dependencies",
        DepKind::Dev => "dev-dependencies",
    };
    let mut in_section = false;
    for (i, raw) in manifest.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            let header = l.trim_matches(|c| c == '[' || c == ']');
            // `[dependencies]`, `[target.'cfg(unix)'.dependencies]`,
            // `[dependencies.switchboard-wire]`
            let (table, dep) = match header.rsplit_once('.') {
                Some((t, d)) if d == key => (t, true),
                _ => (header, false),
            };
            let section_match = table == section || table.ends_with(&format!(".{section}"));
            if dep && section_match {
                return i + 1;
            }
            in_section = header == section || header.ends_with(&format!(".{section}"));
            continue;
        }
        if in_section {
            let rest = l.strip_prefix(key).unwrap_or("");
            if l.starts_with(key) && rest.trim_start().starts_with(['=', '.']) {
                return i + 1;
            }
        }
    }
    0
}
