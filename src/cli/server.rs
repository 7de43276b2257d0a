//! `cargo run --release --bin server`: the relay, headless, logging one line per event.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Exit;
use crate::server::{Server, ServerConfig};

/// relaychat relay: clients dial out to it, it passes their messages between them.
///
/// Logs one line per connect, join, leave and error to stderr (set RUST_LOG=debug for more).
/// Stops cleanly on Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "server", version)]
pub struct ServerCli {
    /// Address and port to listen on. Use [::]:21567 for IPv6 as well.
    #[arg(long, env = "RELAYCHAT_BIND", default_value = "0.0.0.0:21567")]
    pub bind: SocketAddr,
    /// Microseconds the relay's threads poll for work before sleeping; 0 turns polling off.
    /// Polling trades a little CPU after each message for lower latency (see src/spin.rs).
    #[arg(long, default_value_t = 100)]
    pub spin_us: u64,
}

/// Runs the relay until SIGINT or SIGTERM.
pub fn run(cli: ServerCli) -> anyhow::Result<Exit> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config =
        ServerConfig { bind: cli.bind, spin: Duration::from_micros(cli.spin_us), ..ServerConfig::default() };
    let server = Server::bind(config).with_context(|| format!("cannot listen on {}", cli.bind))?;
    let shutdown = server.shutdown_handle()?;

    // signal-hook turns signals into an iterator on an ordinary thread: no async runtime, and no
    // work inside the signal handler itself. The thread asks the server to stop and ends.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let signals_handle = signals.handle();
    let signal_thread = thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
            log::info!("{name} received");
            shutdown.shutdown();
        }
    })?;

    let result = server.run();
    signals_handle.close(); // ends `forever()` if no signal came (run failed)
    let _ = signal_thread.join();
    result.context("the relay failed")?;
    Ok(Exit::Success)
}
