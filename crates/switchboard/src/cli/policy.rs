//! `switchboard policy …` and the hub's `--policy FILE`: permission policy
//! files (format: `docs/POLICY.md`, `switchboard_hub::policy`).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use switchboard::hub::Policy;

/// The hub's policy option.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Permission policy file (TOML, see docs/POLICY.md): who may connect
    /// as whom and publish, subscribe, read, write and send what. Without
    /// it the hub runs in single-user mode: whoever proves the secret may
    /// do everything.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// `switchboard policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the SHA-256 digest of a token, for a principal's token_sha256.
    ///
    /// Reads the token from the first line of standard input when TOKEN is
    /// not given (an argument is visible to other users in the process
    /// list). The token itself is never printed.
    HashToken {
        /// The token (default: the first line of standard input).
        token: Option<String>,
    },
    /// Check a policy file and print its principals (exit 2 if invalid).
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

/// A policy file was refused (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

/// Loads the policy at `path` for a hub.
pub fn load(path: &Path) -> anyhow::Result<Arc<Policy>> {
    Ok(Arc::new(Policy::load(path)?))
}

/// Runs a `switchboard policy` subcommand.
pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::HashToken { token } => {
            let token = match token {
                Some(t) => t,
                None => read_token().context("cannot read the token from standard input")?,
            };
            if token.is_empty() {
                anyhow::bail!("the token is empty; give a non-empty token");
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", Policy::hash_token(&token))?;
            out.flush()?;
            Ok(())
        }
        PolicyCommand::Check { file } => {
            let policy = Policy::load(&file).map_err(|e| Invalid(e.to_string()))?;
            let mut out = std::io::stdout().lock();
            write!(out, "{}", policy.describe())?;
            out.flush()?;
            Ok(())
        }
    }
}

/// The first line of standard input, without its line ending.
fn read_token() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}
