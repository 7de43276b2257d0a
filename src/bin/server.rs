//! The relay binary. All the work is in `relaychat::cli::server`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    relaychat::tuning::memory::restart_without_thread_caches();
    relaychat::tuning::memory::tune_allocator();
    let cli = relaychat::cli::server::ServerCli::parse();
    relaychat::cli::finish(relaychat::cli::server::run(cli))
}
