//! The workspace as `cargo metadata --format-version 1 --no-deps` describes
//! it: each member package, its dependencies and its crate roots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One workspace member.
pub(crate) struct Package {
    /// The package name (`switchboard-hub`).
    pub name: String,
    /// Its `Cargo.toml`, from the workspace root.
    pub manifest: String,
    /// The root files of its library and binaries under its `src/`.
    pub roots: Vec<PathBuf>,
    /// Its dependencies, of every kind.
    pub deps: Vec<Dep>,
}

/// One dependency of a package.
pub(crate) struct Dep {
    /// The package depended on.
    pub name: String,
    /// The key in `Cargo.toml` (the rename, if any, else the name).
    pub key: String,
    /// Normal, build or dev.
    pub kind: DepKind,
}

/// The section a dependency is listed in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[build-dependencies]`.
    Build,
    /// `[dev-dependencies]`.
    Dev,
}

/// Runs `cargo metadata` in `workspace` and reads its members.
pub(crate) fn load(workspace: &Path) -> Result<Vec<Package>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json = String::from_utf8(out.stdout).context("cargo metadata printed non-UTF-8")?;
    parse(&json, workspace)
}

/// Reads the members out of `cargo metadata` JSON.
pub(crate) fn parse(json: &str, workspace: &Path) -> Result<Vec<Package>> {
    let meta: Value = serde_json::from_str(json).context("parsing cargo metadata")?;
    let Some(packages) = meta["packages"].as_array() else {
        bail!("cargo metadata has no `packages` list");
    };
    let mut out = Vec::new();
    for p in packages {
        let text = |v: &Value, what: &str| -> Result<String> {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("cargo metadata: a package without `{what}`"))
        };
        let name = text(&p["name"], "name")?;
        let manifest = PathBuf::from(text(&p["manifest_path"], "manifest_path")?);
        let src = manifest.parent().unwrap_or(workspace).join("src");
        let mut roots = Vec::new();
        for t in p["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let path = PathBuf::from(text(&t["src_path"], "targets.src_path")?);
            let lib_or_bin = kinds.iter().any(|k| k.ends_with("lib") || *k == "bin");
            if lib_or_bin && path.starts_with(&src) {
                roots.push(path);
            }
        }
        let mut deps = Vec::new();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let name = text(&d["name"], "dependencies.name")?;
            let key = d["rename"]
                .as_str()
                .map_or_else(|| name.clone(), str::to_owned);
            let kind = match d["kind"].as_str() {
                None => DepKind::Normal,
                Some("build") => DepKind::Build,
                Some("dev") => DepKind::Dev,
                Some(other) => bail!("cargo metadata: unknown dependency kind `{other}`"),
            };
            deps.push(Dep { name, key, kind });
        }
        let manifest = rel(workspace, &manifest);
        out.push(Package {
            name,
            manifest,
            roots,
            deps,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Path of `path` from the workspace root, `/`-separated: how findings
/// name files.
pub(crate) fn rel(workspace: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(workspace).unwrap_or(path);
    rel.to_string_lossy().replace('\\', "/")
}
