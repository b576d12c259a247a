//! The `switchboard` command: run a hub, and talk to one from the shell.

mod cli;

/// A hub frees most of its buffers on another thread than the one that
/// allocated them (reader → router → writer); mimalloc's free lists handle
/// that far more cheaply than glibc's malloc (about 370 instructions per
/// allocation and free in the hub's 1→1 profile).
///
/// Built with mimalloc's `no_thp`: it does not advise the kernel to back
/// its memory with transparent huge pages (`madvise(MADV_HUGEPAGE)`).
/// With huge pages every 2 MiB of its arena that holds a live block
/// stays resident whole: an idle hub held 22 MiB of huge pages at 10,000
/// clients and took about 0.3 KiB more per client (docs/BENCHMARKS.md,
/// "Idle connections"). On a kernel whose THP mode is `always` rather
/// than `madvise`, `MIMALLOC_ALLOW_THP=0` turns huge pages off too.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
