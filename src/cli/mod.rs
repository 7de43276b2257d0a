//! The two programs' command lines and main loops. The files in `src/bin/` only call [`server::run`]
//! and [`client::run`] and print an error if one comes back.
//!
//! Each follows the same shape: a clap `Cli` struct whose `///` comments become `--help`, turned
//! into library configuration, then `run(cli) -> anyhow::Result<ExitCode>`.

pub mod client;
pub mod server;

use std::process::ExitCode;

/// Every exit status the binaries use, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything went as asked.
    Success = 0,
    /// Something failed; `error: …` on stderr says what.
    Error = 1,
    /// The command line was wrong (clap prints the usage).
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Runs `main`'s body: prints an error chain once, as `error: …`, and picks the exit status.
pub fn finish(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Error.into()
        }
    }
}
