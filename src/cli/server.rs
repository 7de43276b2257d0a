//! `cargo run --release --bin server`: the relay, headless, logging one line per event.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{parse_duration, parse_size, Exit};
use crate::server::{Server, ServerConfig, StoreLimits};

/// relaychat relay: clients dial out to it, it passes their messages between them.
///
/// Logs one line per connect, join, leave and error to stderr (set RUST_LOG=debug for more).
/// Stops cleanly on Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "server", version)]
#[allow(rustdoc::broken_intra_doc_links)] // `[::]` in --help is an address, not a doc link
pub struct ServerCli {
    /// Address and port to listen on. Use [::]:21567 for IPv6 as well.
    #[arg(long, env = "RELAYCHAT_BIND", default_value = "0.0.0.0:21567")]
    pub bind: SocketAddr,
    /// Microseconds the relay's threads poll for work before sleeping; 0 turns polling off.
    /// Polling trades CPU after each message for lower latency; with thousands of clients in one
    /// room it makes fan-out slower (see src/tuning/mod.rs, and lesson 9).
    #[arg(long, default_value_t = 100)]
    pub spin_us: u64,
    /// Where files wait for their recipients.
    #[arg(long, env = "RELAYCHAT_DATA_DIR", default_value = "relay-data")]
    pub data_dir: PathBuf,
    /// Largest file the relay accepts (K, M, G, T suffixes).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub max_file_size: u64,
    /// Most bytes one user may have stored on the relay at once.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub quota: u64,
    /// Free disk space the relay always keeps; uploads that would eat into it are refused.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub min_free: u64,
    /// How long a file waits for its recipients before it is deleted: a number with s, m, h or d.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How many of a room's last messages someone joining it sees.
    #[arg(long, default_value_t = 50)]
    pub history: usize,
    /// A room with more people online than this is big: joins and leaves in it are announced as
    /// a count once a second, not one by one to everyone (see docs/PROTOCOL.md, "Big rooms").
    #[arg(long, default_value_t = 100)]
    pub big_room: usize,
    /// Connections the relay holds at once [default: derived from the open-file limit, which is
    /// raised to its hard limit at start: (limit - 64) / 4]. Newcomers over it are told the relay
    /// is full.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections one address may hold at once (an IPv6 address counts per /64).
    #[arg(long, default_value_t = 16)]
    pub max_per_address: usize,
    /// A client that sends nothing for this long is disconnected and its name freed (clients
    /// ping every 20 s when idle, so only a dead link stays silent that long).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Unfinished uploads one user may keep on the relay to resume later.
    #[arg(long, default_value_t = 4)]
    pub partials_per_user: usize,
    /// An unfinished upload that nobody sends and that does not grow for this long is deleted.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub partial_ttl: Duration,
    /// Files that may wait on the relay for one recipient.
    #[arg(long, default_value_t = 1000)]
    pub files_per_recipient: usize,
    /// Messages that may wait on the relay for one offline recipient.
    #[arg(long, default_value_t = 10_000)]
    pub max_pending_messages: u64,
    /// Chat messages per second one address may send on average, all its connections together
    /// (bursts of --msg-burst pass at once); faster senders are slowed down, not refused. 0: no
    /// limit.
    #[arg(long, default_value_t = 20)]
    pub msg_rate: u32,
    /// Chat messages one address may send in one burst.
    #[arg(long, default_value_t = 100)]
    pub msg_burst: u32,
    /// Bytes of chat text per second one address may send on average. 0: no limit.
    #[arg(long, default_value = "256K", value_parser = parse_u32_size)]
    pub text_rate: u32,
    /// Requests other than chat and file data (who, file lists, receipts) per second per
    /// address. 0: no limit.
    #[arg(long, default_value_t = 500)]
    pub request_rate: u32,
    /// Password checks one address may start per second (bursts of five times as many); past
    /// that, hellos with a password are told to try again shortly. 0: no limit.
    #[arg(long, default_value_t = 1)]
    pub password_rate: u32,
    /// New accounts (names kept with a password or for a machine) one address may create per
    /// hour; past it, a password claim is refused and a machine-bound one gets in as a guest.
    #[arg(long, default_value_t = 20)]
    pub accounts_per_hour: usize,
    /// New connections per second one address may open on average (bursts of --connect-burst
    /// pass at once); faster ones are told the relay is busy. 0: no limit.
    #[arg(long, default_value_t = 4)]
    pub connect_rate: u32,
    /// New connections one address may open in one burst.
    #[arg(long, default_value_t = 40)]
    pub connect_burst: u32,
    /// Bytes queued for one client before it is disconnected as too slow to read them.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub max_queued_bytes: u64,
    /// Bytes queued for all clients together past which slow clients are disconnected.
    #[arg(long, default_value = "96M", value_parser = parse_size)]
    pub max_queued_total: u64,
    /// Bytes all connections together may hold for frames being read past what chat needs (the
    /// rest of a file chunk); a frame with no room is refused with RelayFull.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub max_reading_total: u64,
    /// Require this password from everyone who connects.
    #[arg(long, env = "RELAYCHAT_ACCESS_PASSWORD", hide_env_values = true)]
    pub access_password: Option<String>,
    /// Print the relay's TLS fingerprint (SHA256:…) and exit: give it to your users, so they can
    /// check it on first contact. Makes the key first if the data dir has none.
    #[arg(long)]
    pub fingerprint: bool,
    /// The relay's TLS certificate chain (PEM), e.g. from Let's Encrypt, instead of the key pair
    /// it makes for itself in its data dir. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve clients that speak plaintext (--plaintext). Everything they send, passwords
    /// included, can be read by anyone on the way: for lessons and local tests only.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Send files to plaintext clients by reading them into memory, as over TLS, instead of with
    /// sendfile (which hands them to the socket without a copy). For comparing the two.
    #[arg(long)]
    pub no_sendfile: bool,
}

/// A size that fits a `u32` (a rate per second).
fn parse_u32_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n).map_err(|_| format!("{s} is too large here (at most 4G)"))
}

/// Runs the relay until SIGINT or SIGTERM.
pub fn run(cli: ServerCli) -> anyhow::Result<Exit> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = ServerConfig {
        bind: cli.bind,
        spin: Duration::from_micros(cli.spin_us),
        data_dir: cli.data_dir,
        limits: StoreLimits {
            max_file_size: cli.max_file_size,
            quota: cli.quota,
            min_free: cli.min_free,
            partials_per_user: cli.partials_per_user,
            partial_ttl: cli.partial_ttl,
            files_per_recipient: cli.files_per_recipient,
            ..StoreLimits::default()
        },
        idle_timeout: cli.idle_timeout,
        max_pending_messages: cli.max_pending_messages,
        msg_rate: cli.msg_rate,
        msg_burst: cli.msg_burst,
        text_rate: cli.text_rate,
        request_rate: cli.request_rate,
        password_rate: cli.password_rate,
        connect_rate: cli.connect_rate,
        connect_burst: cli.connect_burst,
        accounts_per_address_per_hour: cli.accounts_per_hour,
        max_queued_bytes: usize::try_from(cli.max_queued_bytes).unwrap_or(usize::MAX),
        max_queued_total: usize::try_from(cli.max_queued_total).unwrap_or(usize::MAX),
        max_reading_total: usize::try_from(cli.max_reading_total).unwrap_or(usize::MAX),
        access_password: cli.access_password.filter(|p| !p.is_empty()),
        retention: cli.retention,
        history: cli.history,
        big_room: cli.big_room,
        max_connections: cli.max_connections,
        max_per_address: cli.max_per_address.max(1),
        tls_files: cli.tls_cert.zip(cli.tls_key),
        allow_plaintext: cli.allow_plaintext,
        sendfile: !cli.no_sendfile,
        ..ServerConfig::default()
    };
    if cli.fingerprint {
        let keys = crate::server::relay_keys(&config).context("cannot load the relay's TLS key")?;
        println!("{}", keys.fingerprint);
        return Ok(Exit::Success);
    }
    if config.allow_plaintext {
        log::warn!(
            "--allow-plaintext: clients may connect without TLS; what they send can be read on the way"
        );
    }
    let server = Server::bind(config).with_context(|| format!("cannot start the relay on {}", cli.bind))?;
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
