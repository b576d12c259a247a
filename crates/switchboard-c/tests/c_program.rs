//! The C test program `tests/c/interop.c`, compiled with the system C
//! compiler against `include/switchboard.h` and `libswitchboard.a`, run
//! against an in-process hub with a Rust client on the other side:
//! request/reply both ways (one nested), pub/sub both ways, a direct
//! message, kv both ways (get, set, delete, a watch seeing Rust's changes,
//! watches of a key that already has a value), `sb_close` while another
//! thread waits in `sb_request`, the per-thread last error, panics inside
//! the library (a debug-build hook, `src/testing.rs`), a handler's reply
//! over the frame limit, and a table of bad input for every function
//! (NULL pointers, invalid UTF-8, payloads over the frame limit, use after
//! close, double close). Also builds and runs `examples/c/hello.c`.
//!
//! Two builds of the programs: a plain one, run under valgrind memcheck
//! when `valgrind` is on PATH (no leak, no invalid access), and one with
//! AddressSanitizer and UBSan (skipped with a notice when the compiler
//! cannot build with them, except under `CI`, where that fails). Skipped,
//! with a notice, when no C compiler is found.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facade::hub::UnixSocket;
use facade::{Bytes, Client, Hub, HubHandle};

const TOKEN: &str = "c interop token";

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds `libswitchboard.a` and returns its path. `cargo test` does not
/// build the library's cdylib or staticlib for an integration test (the
/// crate has no rlib to link), so the test asks cargo for the static
/// library itself (same target directory and profile; fresh, it takes a
/// moment).
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

/// The compiler flags of the AddressSanitizer build: ASan and UBSan, every
/// UBSan finding fatal.
const SANITIZE: &[&str] = &[
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];

/// Compiles the C file `source` into `out` (with `extra` flags, e.g.
/// [`SANITIZE`]).
fn compile(cc: &str, source: &Path, out: &Path, extra: &[&str]) {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = static_library();
    let status = Command::new(cc)
        .args(extra)
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

/// A hub with the Rust peer on it, for one run of the C program.
struct Setup {
    hub: HubHandle,
    addr: String,
    peer: Client,
    checked: Arc<AtomicBool>,
}

async fn setup() -> Setup {
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
    Setup {
        hub,
        addr,
        peer,
        checked,
    }
}

/// Runs the compiled interop program (`command`, its arguments still to be
/// added) against `setup` and checks what it and the Rust side saw.
/// Returns its stderr.
async fn run_interop(setup: Setup, mut command: Command) -> String {
    command.arg(&setup.addr).arg(TOKEN);
    let output =
        tokio::task::spawn_blocking(move || run_bounded(command, Duration::from_secs(180)))
            .await
            .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("--- interop stdout ---\n{stdout}--- interop stderr ---\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "the C program failed");
    assert!(stdout.contains("interop: ok"));
    assert!(
        stdout.contains("bad input: "),
        "the bad-input table did not run"
    );
    assert!(
        setup.checked.load(Ordering::SeqCst),
        "the Rust side never saw C's kv write"
    );

    // C closed: its ids are gone from the hub (bounded generously: the
    // program may have run under valgrind on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clients = setup.peer.clients().await.expect("clients");
        if clients.iter().all(|c| !c.client_id.starts_with("c-")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a C client is still registered after sb_close: {clients:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.peer.close().await;
    drop(setup.hub);
    stderr
}

/// The first C compiler on PATH.
fn c_compiler() -> Option<String> {
    ["cc", "gcc", "clang"]
        .into_iter()
        .find(|cc| on_path(cc))
        .map(str::to_string)
}

/// Compiles `tests/c/interop.c` (and, without `extra` flags,
/// `examples/c/hello.c`) into a fresh directory named after `tag`.
async fn build_programs(cc: String, tag: &str, extra: &'static [&'static str]) -> PathBuf {
    let dir = tempfile_dir(tag);
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = crate_dir.join("tests/c/interop.c");
    let hello_source = crate_dir.join("../../examples/c/hello.c");
    let out = dir.clone();
    tokio::task::spawn_blocking(move || {
        compile(&cc, &interop, &out.join("interop"), extra);
        compile(&cc, &hello_source, &out.join("hello"), extra);
    })
    .await
    .expect("compile");
    dir
}

/// The plain build, run under valgrind memcheck when valgrind is on PATH;
/// also runs the example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_program_interoperates_with_a_rust_client() {
    let Some(cc) = c_compiler() else {
        eprintln!("SKIPPED: no C compiler (cc, gcc, clang) on PATH");
        return;
    };
    let dir = build_programs(cc, "plain", &[]).await;
    let setup = setup().await;

    // The example runs as the README says.
    let mut command = Command::new(dir.join("hello"));
    command.arg(&setup.addr).arg(TOKEN);
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

    let command = if on_path("valgrind") {
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
        .arg(dir.join("interop"));
        c
    } else {
        eprintln!("NOTICE: valgrind not on PATH; running the C program without memcheck");
        Command::new(dir.join("interop"))
    };
    run_interop(setup, command).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `cc` can build and run a program with [`SANITIZE`] (the reason
/// when not), and whether LeakSanitizer works here: the probe leaks on
/// purpose and must be caught (LSan cannot run under ptrace, e.g. in some
/// containers or debuggers).
fn sanitizers_work(cc: &str) -> Result<bool, String> {
    let dir = tempfile_dir("asan-probe");
    let source = dir.join("probe.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\nint main(void) { void *p = malloc(33); p = 0; return p != 0; }\n",
    )
    .expect("write probe");
    let exe = dir.join("probe");
    let out = Command::new(cc)
        .args(SANITIZE)
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .output()
        .map_err(|e| format!("running {cc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cc} cannot build with {SANITIZE:?} (libasan/libubsan missing?): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let run = |options: &str| {
        Command::new(&exe)
            .env("ASAN_OPTIONS", options)
            .output()
            .map_err(|e| format!("running the probe: {e}"))
    };
    let plain = run("detect_leaks=0")?;
    if !plain.status.success() {
        return Err(format!(
            "an ASan program does not run here: {}",
            String::from_utf8_lossy(&plain.stderr)
        ));
    }
    let leaky = run("detect_leaks=1:exitcode=98")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(leaky.status.code() == Some(98)
        && String::from_utf8_lossy(&leaky.stderr).contains("LeakSanitizer: detected memory leaks"))
}

/// The same program built with AddressSanitizer and UBSan (the C side
/// instrumented; the library's Rust code is not, but every allocation,
/// including the library's, goes through ASan's malloc, and LeakSanitizer
/// checks at exit). ASan cannot run under valgrind, so this is a second
/// run. No LeakSanitizer suppression is needed: what the library keeps
/// for the whole process (the runtime, its threads, the registries) stays
/// reachable from statics, which LSan does not count as leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_program_is_clean_under_address_sanitizer() {
    let Some(cc) = c_compiler() else {
        eprintln!("SKIPPED: no C compiler (cc, gcc, clang) on PATH");
        return;
    };
    let leaks = match sanitizers_work(&cc) {
        Ok(leaks) => leaks,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "AddressSanitizer is not usable in CI: {why}"
            );
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    if !leaks {
        eprintln!("NOTICE: LeakSanitizer does not work here (ptrace?); ASan runs without it");
    }
    let dir = build_programs(cc, "asan", SANITIZE).await;
    let setup = setup().await;
    let sanitized = |exe: PathBuf| {
        let mut c = Command::new(exe);
        c.env(
            "ASAN_OPTIONS",
            format!("detect_leaks={}:exitcode=98", u8::from(leaks)),
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
        c
    };

    let mut hello = sanitized(dir.join("hello"));
    hello.arg(&setup.addr).arg(TOKEN);
    let output = tokio::task::spawn_blocking(move || run_bounded(hello, Duration::from_secs(60)))
        .await
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(0),
        "examples/c/hello.c under ASan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let stderr = run_interop(setup, sanitized(dir.join("interop"))).await;
    for finding in ["AddressSanitizer", "LeakSanitizer", "runtime error:"] {
        assert!(!stderr.contains(finding), "a sanitizer reported: {finding}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for compiled programs, named after `tag`.
fn tempfile_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-c-test-{}-{tag}", std::process::id()));
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
