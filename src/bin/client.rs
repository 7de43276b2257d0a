//! The client binary. All the work is in `relaychat::cli::client`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    relaychat::tuning::memory::keep_freed_memory();
    let cli = relaychat::cli::client::ClientCli::parse();
    relaychat::cli::finish(relaychat::cli::client::run(cli))
}
