//! Each rule on small fixture trees written into a temporary folder.

use std::path::Path;

use super::finding::Finding;
use super::layers::{self, Layer, Uses};
use super::modules;
use super::sans_io::{self, Core};
use super::source::{self, CrateTree};
use super::workspace::{self, Dep, DepKind, Package};

/// Writes `files` (path, text) under a new temporary folder.
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn tree(dir: &Path) -> CrateTree {
    source::load_tree(dir, &dir.join("src/lib.rs")).unwrap()
}

const CORE: &[Core] = &[Core {
    name: "test core",
    paths: &["src/"],
    except: &["src/driver/"],
}];

fn sans_io(files: &[(&str, &str)]) -> Vec<String> {
    let dir = fixture(files);
    let found = sans_io::check(&[tree(dir.path())], CORE);
    found.iter().map(Finding::to_string).collect()
}

#[test]
fn forbidden_word_in_comment_or_string_is_fine() {
    let found = sans_io(&[(
        "src/lib.rs",
        "//! Never tokio::spawn here, nor `Instant::now()`.\n\
         // async fn f() { x.await }\n\
         /* std::net */\n\
         /// Drivers spawn tasks on tokio.\n\
         pub fn f() -> &'static str { \"tokio::spawn(async { x.await })\" }\n",
    )]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn forbidden_word_in_code_fails() {
    let found = sans_io(&[(
        "src/lib.rs",
        "use std::{io, net::TcpStream};\n\
         use tokio_util::sync::CancellationToken;\n\
         pub async fn f(t: tokio::sync::Notify) { t.notified().await }\n\
         pub fn g() { let _ = std::time::Instant::now(); spawn(async move {}); }\n\
         pub fn h() -> String { format!(\"{:?}\", SystemTime::now()) }\n",
    )]);
    let expected = [
        "src/lib.rs:1: [sans-io] `std::net` in the test core (sockets belong to the driver)",
        "src/lib.rs:2: [sans-io] `tokio` in the test core (the runtime belongs to the driver)",
        "src/lib.rs:3: [sans-io] `tokio` in the test core (the runtime belongs to the driver)",
        "src/lib.rs:3: [sans-io] `async` in the test core (async code belongs to the driver)",
        "src/lib.rs:3: [sans-io] `.await` in the test core (async code belongs to the driver)",
        "src/lib.rs:4: [sans-io] `Instant::now` in the test core (the caller passes the time in)",
        "src/lib.rs:4: [sans-io] `spawn` in the test core (tasks belong to the driver)",
        "src/lib.rs:4: [sans-io] `async` in the test core (async code belongs to the driver)",
        "src/lib.rs:5: [sans-io] `SystemTime::now` in the test core (the caller passes the time in)",
    ];
    assert_eq!(found, expected);
}

#[test]
fn test_code_and_drivers_are_skipped() {
    let found = sans_io(&[
        (
            "src/lib.rs",
            "mod driver;\n\
             #[cfg(test)]\nmod unit;\n\
             mod tests;\n\
             pub struct Core;\n\
             impl Core {\n    #[cfg(test)]\n    fn clock() { std::time::Instant::now(); }\n}\n\
             #[cfg(test)]\nmod inline {\n    #[tokio::test]\n    async fn t() { tokio::spawn(async {}).await.unwrap(); }\n}\n\
             #[cfg(all(test, unix))]\nfn helper() { tokio::task::yield_now(); }\n",
        ),
        ("src/driver/mod.rs", "pub async fn run() { tokio::spawn(async {}); }\n"),
        ("src/unit.rs", "use tokio::net::TcpStream;\n"),
        ("src/tests.rs", "use tokio::net::TcpStream;\n"),
    ]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_core_without_files_is_a_finding() {
    let dir = fixture(&[("src/lib.rs", "")]);
    let cores = [Core {
        name: "gone core",
        paths: &["src/gone.rs"],
        except: &[],
    }];
    let found = sans_io::check(&[tree(dir.path())], &cores);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].message.contains("no file of the gone core"),
        "{}",
        found[0]
    );
}

fn circles(files: &[(&str, &str)]) -> Vec<String> {
    let dir = fixture(files);
    let found = modules::check(&[tree(dir.path())]);
    found.iter().map(|f| f.message.clone()).collect()
}

#[test]
fn parent_to_child_only_passes() {
    let found = circles(&[
        (
            "src/lib.rs",
            "mod a;\nmod b;\npub use a::A;\npub fn f() { b::g(); }\n",
        ),
        ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
        ("src/b.rs", "pub struct B;\npub fn g() {}\n"),
    ]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn circle_of_two_files_is_found() {
    let found = circles(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "src/b.rs",
            "pub struct B;\n// crate::a::A in a comment\nfn f() { let _ = crate::a::A; }\n",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("\n    src/a.rs:1 -> src/b.rs: B"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("\n    src/b.rs:3 -> src/a.rs: A"),
        "{}",
        found[0]
    );
}

#[test]
fn child_naming_its_ancestors_items_is_no_edge() {
    let found = circles(&[
        (
            "src/lib.rs",
            "pub mod router;
pub struct ConnId;
",
        ),
        (
            "src/router/mod.rs",
            "mod registry;
pub use registry::Registry;
pub struct Router;
",
        ),
        (
            "src/router/registry.rs",
            "use super::Router;
use crate::ConnId;
pub struct Registry(Router, ConnId);
",
        ),
    ]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn siblings_in_a_circle_through_their_parent_are_found() {
    // a → parent's re-export of b → b, and b → a: a circle of siblings.
    let found = circles(&[
        (
            "src/lib.rs",
            "mod a;
mod b;
pub use b::B;
",
        ),
        (
            "src/a.rs",
            "pub struct A;
pub fn f() -> crate::B { crate::B }
",
        ),
        (
            "src/b.rs",
            "pub struct B;
pub fn g() -> crate::a::A { crate::a::A }
",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("src/a.rs:2 -> src/b.rs: B"), "{found:#?}");
    assert!(found[0].contains("src/b.rs:2 -> src/a.rs: A"), "{found:#?}");
}

#[test]
fn re_exports_lead_to_the_defining_file() {
    // `crate::B` is `b.rs`'s item re-exported by the root: no circle with
    // the root, which names only its children.
    let found = circles(&[
        (
            "src/lib.rs",
            "mod a;\nmod b;\npub use a::A;\npub use b::B;\n",
        ),
        ("src/a.rs", "use crate::B;\npub struct A(B);\n"),
        ("src/b.rs", "pub struct B;\n"),
    ]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn paths_in_macros_and_nested_modules_count() {
    let found = circles(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        (
            "src/a.rs",
            "pub fn f() -> String { format!(\"{}\", super::b::G) }\n",
        ),
        (
            "src/b.rs",
            "pub const G: u8 = 1;\nmod inner {\n    pub fn h() { crate::a::f(); }\n}\n",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("src/a.rs:1 -> src/b.rs: G"),
        "{}",
        found[0]
    );
    assert!(
        found[0].contains("src/b.rs:3 -> src/a.rs: f"),
        "{}",
        found[0]
    );
}

#[test]
fn test_code_ties_nothing() {
    let found = circles(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        (
            "src/a.rs",
            "use crate::b::B;\npub struct A;\n#[cfg(test)]\nmod t;\n",
        ),
        ("src/a/t.rs", "use crate::b::B;\n"),
        (
            "src/b.rs",
            "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:#?}");
}

fn package(name: &str, deps: &[(&str, DepKind)]) -> Package {
    Package {
        name: name.to_owned(),
        manifest: format!("crates/{name}/Cargo.toml"),
        roots: Vec::new(),
        deps: deps
            .iter()
            .map(|(d, kind)| Dep {
                name: (*d).to_owned(),
                key: (*d).to_owned(),
                kind: *kind,
            })
            .collect(),
    }
}

fn layers(packages: &[Package], manifest: Option<&str>) -> Vec<String> {
    let read = |_: &str| manifest.map(str::to_owned);
    let found = layers::check(packages, layers::LAYERS, &read);
    found.iter().map(Finding::to_string).collect()
}

#[test]
fn allowed_arrows_pass() {
    use DepKind::*;
    let packages = [
        package("switchboard-wire", &[("bytes", Normal)]),
        package("switchboard-discovery", &[("switchboard-wire", Normal)]),
        package(
            "switchboard-session",
            &[("switchboard-wire", Normal), ("switchboard-discovery", Dev)],
        ),
        package("switchboard", &[("switchboard-hub", Normal)]),
        package("switchboard-hub", &[("switchboard-session", Build)]),
        package(
            "switchboard-tests",
            &[("xtask", Dev), ("switchboard", Normal)],
        ),
        package("xtask", &[]),
    ];
    let found = layers(&packages, None);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn forbidden_arrow_fails() {
    let manifest = "[package]\nname = \"switchboard-hub\"\n\n[dependencies]\nswitchboard-wire.workspace = true\nswitchboard.workspace = true\n\n[dev-dependencies]\nswitchboard = { workspace = true }\n";
    let packages = [
        package("switchboard-wire", &[]),
        package("switchboard", &[]),
        package(
            "switchboard-hub",
            &[
                ("switchboard-wire", DepKind::Normal),
                ("switchboard", DepKind::Normal),
                ("switchboard", DepKind::Dev),
            ],
        ),
    ];
    let found = layers(&packages, Some(manifest));
    assert_eq!(found, [
        "crates/switchboard-hub/Cargo.toml:6: [crate-layers] `switchboard-hub` must not depend on `switchboard` (level 3): `switchboard-hub` may depend on switchboard-wire, switchboard-discovery, switchboard-session",
        "crates/switchboard-hub/Cargo.toml:9: [crate-layers] `switchboard-hub` must not depend on `switchboard` (level 3): dev-dependencies of `switchboard-hub` (level 2) may only point to level 2 or below",
    ]);
}

#[test]
fn a_crate_without_a_row_fails() {
    let packages = [package("switchboard-new", &[])];
    let found = layers(&packages, None);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("add one to LAYERS"), "{}", found[0]);
}

#[test]
fn a_custom_table_is_obeyed() {
    let table = [
        Layer {
            name: "low",
            level: 0,
            may_use: Uses::Only(&[]),
        },
        Layer {
            name: "high",
            level: 1,
            may_use: Uses::Only(&["low"]),
        },
    ];
    let packages = [
        package("low", &[("high", DepKind::Normal)]),
        package("high", &[("low", DepKind::Normal)]),
    ];
    let found = layers::check(&packages, &table, &|_| None);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].place, "crates/low/Cargo.toml");
    assert!(found[0]
        .message
        .contains("`low` depends on no workspace crate"));
}

#[test]
fn metadata_is_read() {
    let json = r#"{"packages": [{
        "name": "switchboard-hub",
        "manifest_path": "/ws/crates/switchboard-hub/Cargo.toml",
        "targets": [
            {"kind": ["lib"], "src_path": "/ws/crates/switchboard-hub/src/lib.rs"},
            {"kind": ["bench"], "src_path": "/ws/crates/switchboard-hub/benches/load.rs"}
        ],
        "dependencies": [
            {"name": "switchboard-wire", "kind": null, "rename": null},
            {"name": "switchboard-wire", "kind": "dev", "rename": "wire"},
            {"name": "cc", "kind": "build", "rename": null}
        ]
    }]}"#;
    let packages = workspace::parse(json, Path::new("/ws")).unwrap();
    assert_eq!(packages.len(), 1);
    let p = &packages[0];
    assert_eq!(p.manifest, "crates/switchboard-hub/Cargo.toml");
    assert_eq!(
        p.roots,
        [Path::new("/ws/crates/switchboard-hub/src/lib.rs")]
    );
    let deps: Vec<_> = p
        .deps
        .iter()
        .map(|d| (d.name.as_str(), d.key.as_str(), d.kind))
        .collect();
    assert_eq!(
        deps,
        [
            ("switchboard-wire", "switchboard-wire", DepKind::Normal),
            ("switchboard-wire", "wire", DepKind::Dev),
            ("cc", "cc", DepKind::Build),
        ]
    );
}
