//! The `switchboard` command: run a hub, and talk to one from the shell.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
