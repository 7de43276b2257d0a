//! The relay: accepts connections, runs one reader and one writer thread per connection, and routes
//! messages between rooms through a single hub thread.
//!
//! ## Threads and who owns what
//!
//! ```text
//!                      ToHub (bounded)                      Bytes (bounded, per client)
//!  accept thread ──Connected──▶ ┌─────┐ ──────────────────▶ writer thread ──▶ socket
//!  (owns listener)              │ hub │
//!  reader thread ──Hello/Say──▶ └─────┘   (owns every room, name and per-client queue)
//!  (owns socket, one per conn)
//! ```
//!
//! - The **accept thread** (`server/accept.rs`) owns the `TcpListener`. It turns away connections
//!   over the relay's or the address's cap before anything is started for them; for every other
//!   connection it spawns a connection thread and keeps its `JoinHandle`.
//! - Each **connection thread** (`server/conn.rs`) reads frames from its socket. After the hello it spawns
//!   a **writer thread** that owns a clone of the socket and drains a bounded queue.
//! - Two **hash threads** (`server/login.rs`) compute every argon2 password hash, from a short
//!   bounded queue: a flood of password logins waits there or is told "busy", and never holds
//!   more than two hashes' worth of memory.
//! - The **hub thread** (`server/hub/`) owns all shared state: who is online, which room they are in, and
//!   the sending half of each writer's queue. Nobody else touches that state, so there is no
//!   `Mutex` and events are handled in one well-defined order.
//!
//! See [`Server::run`] for the shutdown sequence and `docs/ARCHITECTURE.md` for the whole picture.

mod accept;
mod arrival;
mod conn;
#[doc(hidden)]
pub mod fuzzing;
mod hub;
pub mod keys;
mod login;
mod session;
mod store;
mod throttle;
mod transfer;

pub use crate::frame::{DEFAULT_CHUNK, DEFAULT_PORT};
pub use crate::tuning::memory::tune_allocator;
/// The connection cap this machine's thread limits allow (the relay applies it at start; the
/// room benchmark asks it before starting a scenario the machine cannot hold).
pub use accept::thread_cap;
pub use store::StoreLimits;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};

pub use crate::outbox::Pacing;
use hub::{Hub, ToHub};

/// Tunables of the relay. [`ServerConfig::default`] gives the documented values.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen. Default `0.0.0.0:21567`.
    pub bind: SocketAddr,
    /// A joined connection that sends nothing for this long is closed and its name freed: a link
    /// that vanished without a FIN (Wi-Fi gone, a NAT that forgot the mapping). Clients ping
    /// every 20 s when idle. Default 60 s.
    pub idle_timeout: Duration,
    /// A connection must send its hello within this time or it is closed. Default 10 s.
    pub hello_timeout: Duration,
    /// Frames each client's writer queue holds before the hub starts to hold frames back for it.
    /// Default 64. The queue's slots are allocated when the connection joins, whether they are
    /// ever used or not (about 40 bytes each), so this is memory every idle connection pays:
    /// 1024 slots cost 10,000 connections 400 MiB, 128 cost 50 MiB, 64 cost 25 MiB. 64 holds what
    /// a joining client is sent at once (its welcome and the room's history, 50 lines by
    /// default), so that a join does not go through the backlog. Bursts beyond it wait in the
    /// hub's backlog, which grows only while it is used (see `hub/delivery.rs`).
    pub client_queue: usize,
    /// How long a client's queue may stay full (no progress at all) before the client is
    /// disconnected as too slow. Default 5 s.
    pub stall_limit: Duration,
    /// Bytes of frames queued and held back for one client before it is disconnected as too slow,
    /// however much progress it makes. Bounds the memory one slow reader can cost. Default 4 MiB.
    pub max_queued_bytes: usize,
    /// Bytes queued for all clients together past which any client with frames held back is
    /// disconnected. Bounds what many slow readers cost together. Default 96 MiB.
    pub max_queued_total: usize,
    /// Bytes that the readers of all connections together may hold for big frames (upload
    /// chunks), past the first 128 KiB of each reader's buffer, which chat needs: a frame that
    /// finds no room gets `RelayFull` and its connection is closed. Bounds what peers that send
    /// most of a 1 MiB frame and trickle the rest can hold together (`wire::ReadBudget`). Default
    /// 256 MiB.
    pub max_reading_total: usize,
    /// Messages that may wait for one offline recipient. Default 10 000.
    pub max_pending_messages: u64,
    /// Chat messages per second one address (all its connections together) may send, on average
    /// (0: no limit). Default 20.
    pub msg_rate: u32,
    /// Chat messages one address may send in a burst. Default 100.
    pub msg_burst: u32,
    /// Bytes of chat text per second one address may send, on average (0: no limit).
    /// Default 256 KiB.
    pub text_rate: u32,
    /// Bytes of chat text one address may send in a burst. Default 2 MiB.
    pub text_burst: u32,
    /// Other requests (who, list files, receipts…) per second one address may send (0: no
    /// limit). Default 500.
    pub request_rate: u32,
    /// Password checks (argon2, on the shared hash pool) one address may start per second, after
    /// a burst of five times as many; past that a hello with a password is refused with
    /// `LoginBusy`. Successes count too: logging in to your own account in a loop must not keep
    /// the pool busy for everyone else (0: no limit). Default 1.
    pub password_rate: u32,
    /// New connections per second one address may open, on average (0: no limit). Default 4.
    pub connect_rate: u32,
    /// New connections one address may open in a burst. Default 40.
    pub connect_burst: u32,
    /// How long a closing connection waits for the peer to close its side after the last frame,
    /// before the socket is cut. Default 1 s.
    pub linger: Duration,
    /// How long shutdown waits for connections to end by themselves before cutting them. Default 2 s.
    pub shutdown_grace: Duration,
    /// How long the hub and the writers poll their queue before sleeping (see
    /// [`crate::tuning::spin`]). Default 100 µs; zero turns polling off (see [`crate::tuning`]
    /// for what it costs and saves).
    /// Default 100 µs; zero turns polling off.
    pub spin: Duration,
    /// How writers keep chat from waiting behind file data: the socket's unsent-bytes limit and
    /// the size of the pieces chunks are written in (see [`crate::outbox::Pacing`]).
    pub pacing: Pacing,
    /// Where files wait for their recipients (see `server/store/`). Default `./relay-data`.
    pub data_dir: PathBuf,
    /// The relay's TLS certificate chain and key as PEM files (`--tls-cert`, `--tls-key`).
    /// `None`: the key pair the relay made for itself in `data_dir/tls` (see `server/keys.rs`).
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Also serve clients that speak plaintext (`--allow-plaintext`). Off by default: then a
    /// plaintext hello gets a `TlsRequired` error.
    pub allow_plaintext: bool,
    /// Send stored files to plaintext clients with `sendfile` (no copy through this process;
    /// see `server/transfer.rs`). On by default; off reads them into chunks, as over TLS.
    pub sendfile: bool,
    /// File size, quota and free-space limits.
    pub limits: StoreLimits,
    /// Data bytes per download chunk frame. Default [`DEFAULT_CHUNK`].
    pub chunk_size: usize,
    /// Test hook: corrupt this chunk (0-based) of every download, to prove clients check hashes.
    #[doc(hidden)]
    pub corrupt_download_chunk: Option<u64>,
    /// If set, every hello must carry this access password. Default none.
    pub access_password: Option<String>,
    /// The first wait the login brake imposes on an address or an account that keeps failing to
    /// log in; it doubles with each further failure, up to 30 s for an address and 2 s for an
    /// account (see `server/hub/brake.rs`). Default 1 s.
    pub login_backoff: Duration,
    /// How long a file waits for its recipients before it is deleted. Default 7 days.
    pub retention: Duration,
    /// The longest time between two looks of the janitor thread for expired files and messages;
    /// it looks every tenth of `retention` (at least every second) when that is sooner. Default
    /// 1 min.
    pub expiry_check: Duration,
    /// How many of a room's last messages a user sees on joining. Default 50.
    pub history: usize,
    /// A room with more people online than this is *big*: its joins and leaves are counted and
    /// announced once a second as a `Crowd` frame instead of one `Joined`/`Left` per person to
    /// every member, which would grow with the square of the room (see `hub/crowd.rs` and
    /// docs/PROTOCOL.md, "Big rooms"). Default 100.
    pub big_room: usize,
    /// Connections the relay holds at once (joined or still in their hello). `None` (the
    /// default) derives it from the open-file limit: (soft limit, raised to the hard limit, −
    /// 64 reserved) / 4 descriptors per connection. Either way it is lowered to what the
    /// machine's thread limits allow (`vm.max_map_count`, `kernel.pid_max`: see
    /// `server/accept.rs`, `thread_cap`).
    pub max_connections: Option<usize>,
    /// Connections one address holds at once (an IPv6 address counts per /64). Default 16.
    pub max_per_address: usize,
    /// Threads that compute password hashes (argon2, about 19 MiB each while it runs). Default 2.
    pub hash_threads: usize,
    /// Password checks that may wait for a hash thread; more at once are refused with
    /// `LoginBusy`. Default 16.
    pub hash_queue: usize,
    /// New accounts (names kept for someone) one address may create per hour. Default 20.
    pub accounts_per_address_per_hour: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            client_queue: 64,
            stall_limit: Duration::from_secs(5),
            max_queued_bytes: 4 * 1024 * 1024,
            max_queued_total: 96 * 1024 * 1024,
            max_reading_total: 256 * 1024 * 1024,
            max_pending_messages: 10_000,
            msg_rate: 20,
            msg_burst: 100,
            text_rate: 256 * 1024,
            text_burst: 2 * 1024 * 1024,
            request_rate: 500,
            password_rate: 1,
            connect_rate: 4,
            connect_burst: 40,
            linger: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(2),
            spin: Duration::from_micros(100),
            pacing: Pacing::DEFAULT,
            data_dir: PathBuf::from("relay-data"),
            tls_files: None,
            allow_plaintext: false,
            sendfile: true,
            limits: StoreLimits::default(),
            chunk_size: DEFAULT_CHUNK,
            corrupt_download_chunk: None,
            access_password: None,
            login_backoff: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            expiry_check: Duration::from_secs(60),
            history: 50,
            big_room: 100,
            max_connections: None,
            max_per_address: 16,
            hash_threads: 2,
            hash_queue: 16,
            accounts_per_address_per_hour: 20,
        }
    }
}

/// A bound, not yet running relay. Create it with [`Server::bind`], stop it with a
/// [`ShutdownHandle`], run it with [`Server::run`].
pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
    /// The TLS side of every connection (`server/keys.rs`).
    tls: Arc<rustls::ServerConfig>,
    /// `SHA256:…` of the relay's certificate.
    fingerprint: String,
    /// `config.max_connections`, or the cap derived from the open-file limit.
    max_connections: usize,
    store: store::Store,
    stop: Arc<AtomicBool>,
}

/// The relay's keys: the PEM files the operator gave, or the pair kept in the data dir (made on
/// first start).
pub fn relay_keys(config: &ServerConfig) -> Result<keys::RelayKeys, keys::KeyError> {
    match &config.tls_files {
        Some((cert, key)) => keys::from_pem_files(cert, key),
        None => keys::load_or_create(&config.data_dir),
    }
}

/// Asks a running [`Server`] to shut down. Cheap to clone; usable from any thread (the signal
/// handler thread in `bin/server.rs`, or a test).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    wake_addr: SocketAddr,
}

impl ShutdownHandle {
    /// Starts the shutdown sequence. Returns at once; [`Server::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // The accept thread is blocked in `accept()`, and std offers no way to interrupt that.
        // So we connect to ourselves: `accept()` returns, the thread sees the flag and stops.
        // The address is the listener's own, on loopback.
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(1));
    }
}

impl Server {
    /// Binds the listening socket and opens the data directory. Port 0 picks a free port (see
    /// [`Server::local_addr`]). Raises the process's soft open-file limit to its hard limit first
    /// (unless `max_connections` is given), so the connection cap can be derived from it.
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        let mut max_connections = match config.max_connections {
            Some(max) => max.max(1),
            None => accept::derived_max_connections(accept::raise_fd_limit()),
        };
        if let Some(cap) = accept::thread_cap().filter(|&cap| cap < max_connections) {
            if config.max_connections.is_some() {
                log::warn!(
                    "this machine's thread limits allow {cap} connections, not {max_connections}: \
                     raise vm.max_map_count (4 mappings a thread) or kernel.pid_max to hold more"
                );
            }
            max_connections = cap;
        }
        let mut store = store::Store::open(&config.data_dir, config.limits.clone()).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot use the data dir {}: {e}", config.data_dir.display()))
        })?;
        store.keep_for(config.retention);
        let keys = relay_keys(&config).map_err(|e| io::Error::other(e.to_string()))?;
        let tls = keys::server_config(&keys).map_err(|e| io::Error::other(e.to_string()))?;
        let listener = TcpListener::bind(config.bind)?;
        Ok(Server {
            listener,
            config,
            tls,
            fingerprint: keys.fingerprint,
            max_connections,
            store,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// `SHA256:…` of the relay's TLS certificate: what clients pin, and what an operator gives
    /// people to compare on first contact.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops this server.
    pub fn shutdown_handle(&self) -> io::Result<ShutdownHandle> {
        let mut wake_addr = self.listener.local_addr()?;
        if wake_addr.ip().is_unspecified() {
            wake_addr.set_ip(match wake_addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        Ok(ShutdownHandle { stop: self.stop.clone(), wake_addr })
    }

    /// Serves until a [`ShutdownHandle`] asks it to stop, then shuts down cleanly.
    ///
    /// ## Shutdown sequence
    ///
    /// 1. [`ShutdownHandle::shutdown`] sets the stop flag and wakes the accept thread, which
    ///    stops accepting, drops the listener and hands back the `JoinHandle` of every connection.
    ///    The janitor thread (which asks the hub to delete expired files) is stopped and joined.
    /// 2. The hub is told `ToHub::Shutdown`. It queues a `Goodbye` frame for every client,
    ///    drops every client queue's sender, cuts connections that never said hello, and exits,
    ///    handing back a [`crate::wire::Closer`] for every connection still open.
    /// 3. Each writer thread, seeing its queue closed, writes what is left (ending with the
    ///    goodbye), half-closes the socket and waits up to `linger` for the client to close its
    ///    side. That wakes the connection's reader, which ends the connection.
    /// 4. We wait up to `shutdown_grace` for the connections to end by themselves. Any that did not
    ///    (a client that stopped reading) are cut with their `Closer`.
    /// 5. Every connection thread and the hub thread are joined. The hub drops the store, which
    ///    stops and joins its checkpointer thread, closes the database, and joins its remover
    ///    thread once the files queued for deletion are gone.
    /// 6. The last sender of the hash pool's queue is dropped, so its threads end; they are
    ///    joined. Nothing is left running.
    pub fn run(self) -> io::Result<()> {
        let addr = self.local_addr()?;
        log::info!(
            "accepting up to {} connections ({} per address); {} hash threads, {} waiting at most",
            self.max_connections,
            self.config.max_per_address,
            self.config.hash_threads,
            self.config.hash_queue
        );
        log::info!("relay fingerprint: {}", self.fingerprint);
        log::info!("relay listening on {addr}");
        let (pool, hash_threads) = login::HashPool::start(self.config.hash_threads, self.config.hash_queue)?;
        let (to_hub, from_conns) = bounded(HUB_QUEUE);
        let hub = Hub::new(self.config.clone(), from_conns, self.store);
        let hub_thread = thread::Builder::new().name("hub".into()).spawn(move || hub.run())?;
        let (stop_janitor, janitor) = start_janitor(&to_hub, janitor_interval(&self.config))?;

        let conn_threads = accept::accept_loop(
            &self.listener,
            &self.stop,
            &to_hub,
            &pool,
            &self.config,
            &self.tls,
            self.max_connections,
        );
        drop(self.listener); // step 1 done: nobody can connect any more
        drop(stop_janitor);
        let _ = janitor.join();

        log::info!("shutting down: {} connection(s) still open", conn_threads.len());
        let _ = to_hub.send(ToHub::Shutdown); // step 2
        drop(to_hub);
        let closers = hub_thread.join().unwrap_or_else(|_| {
            log::error!("the hub thread panicked");
            Vec::new()
        });

        let deadline = Instant::now() + self.config.shutdown_grace; // steps 3 and 4
        while Instant::now() < deadline && !conn_threads.iter().all(JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(10));
        }
        for closer in &closers {
            closer.close();
        }
        for handle in conn_threads {
            // A panic in one connection is logged by the panic hook; it must not stop shutdown.
            let _ = handle.join(); // step 5
        }
        drop(pool); // step 6
        for handle in hash_threads {
            let _ = handle.join();
        }
        log::info!("relay stopped");
        Ok(())
    }
}

/// Starts the janitor: a thread that asks the hub to delete expired files every `every`, and
/// gives freed memory back to the system every [`TRIM_EVERY`] (see `tuning/memory.rs`). It ends
/// when the returned sender is dropped (or the hub is gone).
fn start_janitor(to_hub: &Sender<ToHub>, every: Duration) -> io::Result<(Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = bounded::<()>(0);
    let to_hub = to_hub.clone();
    let thread = thread::Builder::new().name("janitor".into()).spawn(move || {
        let mut last_expire = Instant::now();
        loop {
            match stopped.recv_timeout(every.min(TRIM_EVERY)) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            crate::tuning::memory::give_back_free_memory();
            if last_expire.elapsed() >= every {
                last_expire = Instant::now();
                if to_hub.send(ToHub::Expire).is_err() {
                    return;
                }
            }
        }
    })?;
    Ok((stop, thread))
}

/// How often the janitor looks for expired files and messages: a tenth of the retention, between
/// 1 s and 60 s (so a short retention is enforced on the disk promptly, and a week-long one costs
/// a query a minute), and never less often than `expiry_check`. What has expired is never offered
/// in between anyway: the store checks the age of everything it hands out.
fn janitor_interval(config: &ServerConfig) -> Duration {
    let scaled = (config.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    scaled.min(config.expiry_check)
}

/// How often the janitor gives freed memory back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Capacity of the channel into the hub. Bounded so that a flood of frames from many readers
/// slows the readers (and, through TCP, their senders) instead of growing memory without limit.
/// An event can carry a whole message (64 KiB), so this also bounds the bytes waiting for the hub:
/// 512 × 64 KiB = 32 MiB at worst. The hub takes an event in microseconds, so 512 is plenty for
/// bursts.
const HUB_QUEUE: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_janitor_looks_every_tenth_of_the_retention_between_one_second_and_a_minute() {
        let every = |retention_s: u64| {
            let config =
                ServerConfig { retention: Duration::from_secs(retention_s), ..ServerConfig::default() };
            janitor_interval(&config)
        };
        assert_eq!(every(3), Duration::from_secs(1));
        assert_eq!(every(100), Duration::from_secs(10));
        assert_eq!(every(7 * 24 * 3600), Duration::from_secs(60));
        let eager = ServerConfig { expiry_check: Duration::from_millis(50), ..ServerConfig::default() };
        assert_eq!(janitor_interval(&eager), Duration::from_millis(50));
    }
}
