//! The C test program `tests/c/interop.c`, compiled with the system C
//! compiler against `include/switchboard.h` and `libswitchboard.a`, run
//! against an in-process hub with a Rust client on the other side:
//! request/reply both ways (one nested), pub/sub both ways, a direct
//! message, kv both ways (get, set, a watch seeing Rust's changes), a
//! payload over the frame limit,
//! error codes (bad input, unknown target, timeout, error reply, use after
//! close, double close). Also builds and runs `examples/c/hello.c`.
//! The interop program runs under valgrind memcheck when `valgrind` is on
//! PATH (no leak, no invalid access). Skipped, with a notice, when no C
//! compiler is found.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facade::hub::UnixSocket;
use facade::{Bytes, Client, Hub};

const TOKEN: &str = "c interop token";

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds `libswitchboard.a` and returns its path. `cargo test` builds
/// only the library's rlib for its tests, so the test asks cargo for the
/// static library itself (same target directory and profile; fresh, it
/// takes a moment).
fn static_library() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cargo = Command::new(env!("CARGO"));
    // What cargo sets for a test run, not for a build: left in, build
    // scripts that watch it would rebuild for every other invocation.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&key.as_str())
        {
            cargo.env_remove(key);
        }
    }
    let output = cargo
        .args([
            "build",
            "--lib",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "cargo build of switchboard-c failed"
    );
    let stdout = String::from_utf8(output.stdout).expect("cargo's JSON is UTF-8");
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != "switchboard" {
            continue;
        }
        let files = msg["filenames"].as_array().into_iter().flatten();
        if let Some(lib) = files.filter_map(|f| f.as_str()).find(|f| f.ends_with(".a")) {
            return PathBuf::from(lib);
        }
    }
    panic!("cargo built no libswitchboard.a");
}

/// Compiles the C file `source` into `out`.
fn compile(cc: &str, source: &Path, out: &Path) {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = static_library();
    let status = Command::new(cc)
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-o",
        ])
        .arg(out)
        .arg(source)
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .expect("running the C compiler");
    assert!(status.success(), "compiling {} failed", source.display());
}

/// The Rust side: serves requests, answers publishes, checks kv.
async fn rust_peer(addr: &str, checked: Arc<AtomicBool>) -> Client {
    let peer = Client::builder("rust-peer")
        .addr(addr)
        .token(TOKEN)
        .connect()
        .await
        .expect("rust peer connects");
    peer.kv()
        .set("rust/key", "from-rust")
        .await
        .expect("kv set");
    let caller = peer.clone();
    let serving = peer
        .serve(move |req| {
            let caller = caller.clone();
            async move {
                match &req.payload()[..] {
                    b"call-me-back" => caller
                        .request_with("c-prog", "", "ping", Duration::from_secs(5))
                        .await
                        .map_err(|e| format!("calling C back: {e}")),
                    b"slow" => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok(Bytes::from_static(b"late"))
                    }
                    b"fail" => Err("refused by Rust".to_string()),
                    other => {
                        let mut reply = b"rust:".to_vec();
                        reply.extend_from_slice(other);
                        Ok(Bytes::from(reply))
                    }
                }
            }
        })
        .await
        .expect("serve");
    let mut inbox = peer.messages().await.expect("messages");
    let answerer = peer.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbox.recv().await {
            assert_eq!(&*msg.from, "c-prog");
            let mut answer = b"got:".to_vec();
            answer.extend_from_slice(&msg.payload);
            answerer
                .publish("to-c.direct", answer)
                .await
                .expect("publish");
        }
    });
    let mut sub = peer.subscribe("from-c.>").await.expect("subscribe");
    let publisher = peer.clone();
    tokio::spawn(async move {
        let _serving = serving;
        while let Some(msg) = sub.recv().await {
            match &*msg.topic {
                "from-c.hello" => {
                    let mut echo = b"echo:".to_vec();
                    echo.extend_from_slice(&msg.payload);
                    publisher
                        .publish("to-c.reply", echo)
                        .await
                        .expect("publish");
                }
                "from-c.change" => {
                    let kv = publisher.kv();
                    assert_eq!(kv.set("watched/a", "by-rust").await.expect("kv set"), 2);
                    assert!(kv.delete("watched/a").await.expect("kv delete"));
                }
                "from-c.done" => {
                    let entry = publisher.kv().get("c/key").await.expect("kv get");
                    let entry = entry.expect("C set c/key");
                    assert_eq!(&entry.value[..], b"from-c-2");
                    assert_eq!(entry.version, 2);
                    checked.store(true, Ordering::SeqCst);
                    publisher
                        .publish("to-c.checked", "checked")
                        .await
                        .expect("publish");
                }
                other => panic!("unexpected topic {other}"),
            }
        }
    });
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_program_interoperates_with_a_rust_client() {
    let Some(cc) = ["cc", "gcc", "clang"].into_iter().find(|cc| on_path(cc)) else {
        eprintln!("SKIPPED: no C compiler (cc, gcc, clang) on PATH");
        return;
    };
    let hub = Hub::builder()
        .service("c-interop-test")
        .listen("127.0.0.1:0")
        .token(TOKEN)
        .write_hint(false)
        .unix(UnixSocket::disabled())
        .start()
        .await
        .expect("hub starts");
    let addr = hub.local_addr().to_string();
    let checked = Arc::new(AtomicBool::new(false));
    let peer = rust_peer(&addr, checked.clone()).await;

    let dir = tempfile_dir();
    let exe = dir.join("interop");
    let cc = cc.to_string();
    let exe_for_build = exe.clone();
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = crate_dir.join("tests/c/interop.c");
    let hello_source = crate_dir.join("../../examples/c/hello.c");
    let hello = dir.join("hello");
    let hello_for_build = hello.clone();
    tokio::task::spawn_blocking(move || {
        compile(&cc, &interop, &exe_for_build);
        compile(&cc, &hello_source, &hello_for_build);
    })
    .await
    .expect("compile");

    // The example runs as the README says.
    let mut command = Command::new(&hello);
    command.arg(&addr).arg(TOKEN);
    let output = tokio::task::spawn_blocking(move || run_bounded(command, Duration::from_secs(60)))
        .await
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(0),
        "examples/c/hello.c failed: {output:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "greeting = hello from C\n"
    );

    let mut command = if on_path("valgrind") {
        let mut c = Command::new("valgrind");
        c.args([
            "--quiet",
            "--error-exitcode=97",
            "--leak-check=full",
            // The runtime's threads live until exit: their stacks are
            // "possibly lost" by design; definite and indirect leaks fail.
            "--errors-for-leak-kinds=definite,indirect",
            "--show-possibly-lost=no",
        ])
        .arg(&exe);
        c
    } else {
        eprintln!("NOTICE: valgrind not on PATH; running the C program without memcheck");
        Command::new(&exe)
    };
    command.arg(&addr).arg(TOKEN);
    let output =
        tokio::task::spawn_blocking(move || run_bounded(command, Duration::from_secs(180)))
            .await
            .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- interop stdout ---\n{stdout}--- interop stderr ---\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "the C program failed");
    assert!(stdout.contains("interop: ok"));
    assert!(
        checked.load(Ordering::SeqCst),
        "the Rust side never saw C's kv write"
    );

    // C closed: its id is gone from the hub.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let clients = peer.clients().await.expect("clients");
        if clients.iter().all(|c| c.client_id != "c-prog") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c-prog still registered after sb_close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for the compiled program.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-c-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `command`, killing it after `limit`.
fn run_bounded(mut command: Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the C program");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("waiting").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the C program ran over {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
