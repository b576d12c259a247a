//! The `switchboard` command: run a hub, and talk to one from the shell.

mod cli;

/// A hub frees most of its buffers on another thread than the one that
/// allocated them (reader → router → writer); mimalloc's free lists handle
/// that far more cheaply than glibc's malloc (about 370 instructions per
/// allocation and free in the hub's 1→1 profile).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
