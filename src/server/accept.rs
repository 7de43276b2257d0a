//! The front door's first bounds, enforced by the accept thread before any thread is started:
//! how many connections the relay holds in all, and how many from one address.
//!
//! ## Why these two caps
//!
//! Every connection costs file descriptors (its socket, and a file or two during a transfer) and
//! two to four threads. A relay without a cap dies of `EMFILE` (and then cannot
//! even open its database) when someone opens connections in a loop. So:
//!
//! - at start, the soft `RLIMIT_NOFILE` is raised to the hard limit (the kernel lets any process
//!   do that), and [`derived_max_connections`] turns it into a connection cap with a reserve
//!   for the database, the log and the listener;
//! - the machine's thread limits cap it too ([`thread_cap`]): each connection runs two to four
//!   threads, and a thread that cannot be mapped aborts the process;
//! - one address (an IPv4 address, or an IPv6 /64, which is what one customer usually gets) may
//!   hold at most `max_per_address` connections, so one machine cannot take every slot.
//!
//! A connection over either cap gets one `Error{RelayFull}` frame, written with a short timeout,
//! and is closed at once by the accept thread: no thread is started for it, and one log line says
//! why.
//!
//! ## Who owns the counts
//!
//! The accept thread alone. [`Admissions`] keeps every running connection thread's `JoinHandle`
//! with the address it counts against. Each connection thread, as the very last thing it does,
//! sends its id on a channel (a drop guard, so even a panic reports it); before each admission
//! the accept thread drains that channel, joins those threads and lowers their counts. So the
//! counts are exact whenever they are checked, and nothing is scanned per accept.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::conn;
use super::hub::{ConnId, ToHub};
use super::login::HashPool;
use super::throttle::{Bucket, Rates, SharedThrottle, Throttle};
use super::ServerConfig;
use crate::frame::{ErrorCode, Frame};
use crate::wire::{write_frame, ReadBudget};

/// File descriptors kept back from the connection cap: the listener, the database and its WAL
/// (opened twice: by the hub and by the store's checkpointer), the log, files being moved by the hub, the janitor's and the signal thread's needs.
pub(crate) const FD_RESERVE: u64 = 64;
/// File descriptors one connection may use: the socket (one descriptor, shared by its reader,
/// writer and kill switches: see `wire::Socket`), a file being uploaded, a file being
/// downloaded, and one spare for the moment a finished upload's file is still closing.
pub(crate) const FDS_PER_CONNECTION: u64 = 4;
/// Memory mappings one thread costs on Linux: its stack and the stack's guard page, and the
/// signal stack Rust gives every thread (to report a stack overflow) with its own guard page.
const MAPS_PER_THREAD: u64 = 4;
/// Threads one connection may run: its reader, its writer, a download thread, and the disk
/// thread of an upload.
const THREADS_PER_CONNECTION: u64 = 4;
/// Threads kept back from the connection cap: the hub, the accept thread, the janitor, the hash
/// pool, the store's remover and checkpointer, the signal thread, and spares.
const THREAD_RESERVE: u64 = 64;

/// How long the accept thread may spend writing the `RelayFull` frame. The socket's send buffer
/// is empty, so the write does not block in practice; the timeout makes sure of it.
const TURN_AWAY_WRITE: Duration = Duration::from_millis(100);

/// Raises the soft limit on open files to the hard limit and returns the soft limit now in
/// force. On a platform without `RLIMIT_NOFILE`, or if the call fails, a conservative 1024.
pub(crate) fn raise_fd_limit() -> u64 {
    // `increase_nofile_limit` raises the soft limit up to what it is asked for, never above the
    // hard limit (nor, on macOS, above the hidden `kern.maxfilesperproc`).
    match rlimit::increase_nofile_limit(u64::MAX) {
        // u64::MAX means "no such limit here" (the crate's answer off Unix): assume the usual.
        Ok(u64::MAX) => 1024,
        Ok(soft) => soft,
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}; assuming 1024");
            1024
        }
    }
}

/// The connection cap for a soft open-file limit: what is left after the reserve, divided by
/// what one connection may use. At least 1, so a tiny limit still serves someone.
pub(crate) fn derived_max_connections(soft_limit: u64) -> usize {
    let per = soft_limit.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
    usize::try_from(per).unwrap_or(usize::MAX).max(1)
}

/// The connection cap this machine's thread limits allow, or `None` where they cannot be read
/// (not Linux). A thread that cannot get its memory mappings does not fail politely: Rust's
/// thread start aborts the whole process when it cannot map the thread's signal stack. So the
/// cap must hold *before* a thread is started, like every other bound here. The limits:
/// `vm.max_map_count` (mappings per process, `MAPS_PER_THREAD` = 4 per thread) and
/// `kernel.threads-max` and `kernel.pid_max` (threads in the whole system).
pub fn thread_cap() -> Option<usize> {
    let read = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let maps = read("/proc/sys/vm/max_map_count")? / MAPS_PER_THREAD;
    // RLIMIT_NPROC counts this user's threads too; past it a thread start fails politely, but
    // the relay would refuse newcomers only after paying for their TLS handshake.
    let nproc = rlimit::Resource::NPROC.get().ok().map(|(soft, _)| soft);
    let threads = [read("/proc/sys/kernel/threads-max"), read("/proc/sys/kernel/pid_max"), nproc]
        .into_iter()
        .flatten()
        .fold(maps, u64::min);
    let per = threads.saturating_sub(THREAD_RESERVE) / THREADS_PER_CONNECTION;
    Some(usize::try_from(per).unwrap_or(usize::MAX).max(1))
}

/// The key an address is counted under: an IPv4 address as it is (also when it arrives as an
/// IPv4-mapped IPv6 address), an IPv6 address cut to its /64 network, because one customer
/// usually gets a whole /64 and can pick any address in it.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The relay holds `max_connections` already.
    Relay { max: usize },
    /// This address holds `max_per_address` already.
    Address { max: usize },
    /// This address opened connections faster than `connect_rate` (after a burst).
    TooFast,
}

impl Full {
    fn message(self) -> String {
        match self {
            Full::Relay { .. } => "the relay is full; try again later".into(),
            Full::Address { max } => {
                format!("too many connections from your address (at most {max}); close one and try again")
            }
            Full::TooFast => "too many new connections from your address; wait a moment and try again".into(),
        }
    }
}

/// The running connection threads and the counts the caps are checked against. Owned by the
/// accept thread.
pub(crate) struct Admissions {
    max_connections: usize,
    max_per_address: usize,
    threads: HashMap<ConnId, (JoinHandle<()>, IpAddr)>,
    per_address: HashMap<IpAddr, usize>,
    /// Per address: its bucket for new connections, and the chat and request buckets its
    /// connections share. Kept while the address has connections or its buckets are refilling,
    /// then forgotten (see [`Admissions::sweep`]).
    addresses: HashMap<IpAddr, Address>,
    /// `addresses` is swept when it grows past this.
    sweep_at: usize,
    connect_rate: u32,
    connect_burst: u32,
    rates: Rates,
    /// Ids of connection threads that have ended (sent by their [`Departure`] guard). Unbounded,
    /// but each thread sends exactly one id, so it never holds more than `max_connections`.
    departed: Receiver<ConnId>,
    depart: Sender<ConnId>,
}

/// What the accept thread keeps for one address beyond its connection count.
struct Address {
    arrivals: Bucket,
    throttle: SharedThrottle,
}

impl Admissions {
    #[cfg(test)]
    pub(crate) fn new(max_connections: usize, max_per_address: usize) -> Admissions {
        Admissions::with_rates(
            max_connections,
            max_per_address,
            0,
            0,
            Rates::from_config(&ServerConfig::default()),
        )
    }

    pub(crate) fn with_rates(
        max_connections: usize,
        max_per_address: usize,
        connect_rate: u32,
        connect_burst: u32,
        rates: Rates,
    ) -> Admissions {
        let (depart, departed) = unbounded();
        Admissions {
            max_connections,
            max_per_address,
            threads: HashMap::new(),
            per_address: HashMap::new(),
            addresses: HashMap::new(),
            sweep_at: 64,
            connect_rate,
            connect_burst,
            rates,
            departed,
            depart,
        }
    }

    /// The buckets of `key`'s address: takes a new-connection token (refusing when there is
    /// none), and returns the chat and request buckets the new connection will share.
    pub(crate) fn arrive(&mut self, key: IpAddr) -> Result<SharedThrottle, Full> {
        self.sweep();
        let (rate, burst, rates) = (self.connect_rate, self.connect_burst, self.rates);
        let address = self.addresses.entry(key).or_insert_with(|| Address {
            arrivals: Bucket::new(rate, burst),
            throttle: Throttle::shared(rates),
        });
        if !address.arrivals.take(1).is_zero() {
            return Err(Full::TooFast);
        }
        Ok(address.throttle.clone())
    }

    /// Forgets the addresses that have no connection and whose buckets have refilled, once the
    /// map has doubled since the last sweep: strangers come from many addresses, and the map must
    /// not keep one entry for each forever.
    fn sweep(&mut self) {
        if self.addresses.len() < self.sweep_at {
            return;
        }
        let per_address = &self.per_address;
        self.addresses.retain(|key, a| {
            per_address.contains_key(key) || !a.arrivals.is_full() || Arc::strong_count(&a.throttle) > 1
        });
        self.sweep_at = (self.addresses.len() * 2).max(64);
    }

    /// Joins the threads that have ended and gives their slots back.
    pub(crate) fn reap(&mut self) {
        while let Ok(id) = self.departed.try_recv() {
            if let Some((handle, key)) = self.threads.remove(&id) {
                // The guard runs as the thread's last act, so this join returns at once.
                let _ = handle.join();
                self.release(key);
            }
        }
    }

    /// Whether a connection from `key` fits. Checked before anything is started for it.
    pub(crate) fn check(&self, key: IpAddr) -> Result<(), Full> {
        if self.threads.len() >= self.max_connections {
            return Err(Full::Relay { max: self.max_connections });
        }
        if self.per_address.get(&key).copied().unwrap_or(0) >= self.max_per_address {
            return Err(Full::Address { max: self.max_per_address });
        }
        Ok(())
    }

    /// A guard for a connection thread to drop when it ends.
    pub(crate) fn departure(&self, id: ConnId) -> Departure {
        Departure { id, depart: self.depart.clone() }
    }

    /// Counts a started connection thread.
    pub(crate) fn admit(&mut self, id: ConnId, key: IpAddr, handle: JoinHandle<()>) {
        *self.per_address.entry(key).or_insert(0) += 1;
        self.threads.insert(id, (handle, key));
    }

    fn release(&mut self, key: IpAddr) {
        if let Some(count) = self.per_address.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&key); // the map only holds addresses with connections
            }
        }
    }

    /// Every handle still held, for shutdown to join.
    pub(crate) fn into_handles(mut self) -> Vec<JoinHandle<()>> {
        self.reap();
        self.threads.into_values().map(|(handle, _)| handle).collect()
    }

    #[cfg(test)]
    fn count(&self, key: IpAddr) -> usize {
        self.per_address.get(&key).copied().unwrap_or(0)
    }
}

/// Sends its connection's id to the accept thread when dropped: the end of the connection thread.
pub(crate) struct Departure {
    id: ConnId,
    depart: Sender<ConnId>,
}

impl Drop for Departure {
    fn drop(&mut self) {
        let _ = self.depart.send(self.id);
    }
}

/// Accepts connections until the stop flag is set; returns the handles of all connection threads
/// that may still be running.
pub(crate) fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    to_hub: &Sender<ToHub>,
    pool: &HashPool,
    config: &ServerConfig,
    tls: &Arc<rustls::ServerConfig>,
    max_connections: usize,
) -> Vec<JoinHandle<()>> {
    let mut admissions = Admissions::with_rates(
        max_connections,
        config.max_per_address,
        config.connect_rate,
        config.connect_burst,
        Rates::from_config(config),
    );
    let mut next_id: u64 = 0;
    let reading = Arc::new(ReadBudget::new(config.max_reading_total));
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                // Typically EMFILE (out of file descriptors). Pause instead of spinning.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        next_id += 1;
        admissions.reap();
        let addr = match stream.peer_addr() {
            Ok(addr) => addr,
            Err(e) => {
                log::warn!("connection #{next_id}: no peer address ({e}); dropped");
                continue;
            }
        };
        let key = address_key(addr.ip());
        let throttle = match admissions.check(key).and_then(|()| admissions.arrive(key)) {
            Ok(throttle) => throttle,
            Err(full) => {
                turn_away(stream, addr, full);
                continue;
            }
        };
        let departure = admissions.departure(next_id);
        let info = conn::ConnInfo { id: next_id, addr, throttle, reading: reading.clone() };
        if let Some(handle) = start_connection(stream, info, to_hub, pool, config, tls, departure) {
            admissions.admit(next_id, key, handle);
        }
    }
    admissions.into_handles()
}

/// Tells a connection over a cap why, and closes it. Runs on the accept thread.
fn turn_away(mut stream: TcpStream, addr: SocketAddr, full: Full) {
    match full {
        Full::Relay { max } => log::warn!("{addr}: turned away: the relay holds {max} connections"),
        Full::Address { max } => log::warn!("{addr}: turned away: {max} connections from this address"),
        Full::TooFast => log::warn!("{addr}: turned away: too many new connections from this address"),
    }
    let _ = stream.set_write_timeout(Some(TURN_AWAY_WRITE));
    let _ = write_frame(&mut stream, &Frame::Error { code: ErrorCode::RelayFull, message: full.message() });
    let _ = stream.flush();
    // FIN after the frame, so the client reads the frame and then a clean end.
    let _ = stream.shutdown(Shutdown::Write);
}

fn start_connection(
    stream: TcpStream,
    info: conn::ConnInfo,
    to_hub: &Sender<ToHub>,
    pool: &HashPool,
    config: &ServerConfig,
    tls: &Arc<rustls::ServerConfig>,
    departure: Departure,
) -> Option<JoinHandle<()>> {
    let (id, addr) = (info.id, info.addr);
    log::info!("{addr}: connected (#{id})");
    // Chat frames are small; Nagle's algorithm would hold each one back waiting for more.
    if let Err(e) = stream.set_nodelay(true) {
        log::warn!("{addr}: cannot set TCP_NODELAY: {e}");
    }
    // File data must not pile up in the kernel in front of chat (see `crate::outbox`).
    if let Err(e) = crate::wire::limit_unsent(&stream, config.pacing.unsent) {
        log::warn!("{addr}: cannot set TCP_NOTSENT_LOWAT: {e}");
    }
    let to_hub = to_hub.clone();
    let pool = pool.clone();
    // Boxed: everything the closure captures is moved onto the new thread's stack when it starts,
    // and a stack page once touched stays resident for the connection's life (see
    // `tuning::memory::release_unused_stack`). The configuration is over 500 bytes.
    let config = Box::new(config.clone());
    let tls = tls.clone();
    let spawned = thread::Builder::new().name(format!("conn-{id}")).spawn(move || {
        let _departure = departure; // dropped last: tells the accept thread this slot is free
        conn::serve_tcp(stream, info, to_hub, pool, config, tls)
    });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::error!("{addr}: cannot start a thread for this connection: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_eq!(address_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(address_key(a), address_key(other));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(address_key(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(address_key(IpAddr::V6(Ipv6Addr::LOCALHOST)), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn the_cap_comes_from_the_fd_limit_with_a_reserve() {
        assert_eq!(derived_max_connections(1024), (1024 - 64) / 4);
        assert_eq!(derived_max_connections(10), 1, "never zero");
        assert_eq!(derived_max_connections(1 << 20), ((1 << 20) - 64) / 4);
    }

    #[test]
    fn counts_follow_threads_in_and_out() {
        let mut admissions = Admissions::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        let start = |admissions: &mut Admissions, id: ConnId, key: IpAddr| {
            let departure = admissions.departure(id);
            let wait = wait.clone();
            let handle = thread::spawn(move || {
                let _departure = departure;
                let _ = wait.recv();
            });
            admissions.admit(id, key, handle);
        };
        start(&mut admissions, 1, a);
        start(&mut admissions, 2, a);
        assert_eq!(admissions.check(a), Err(Full::Address { max: 2 }));
        assert_eq!(admissions.check(b), Ok(()));
        start(&mut admissions, 3, b);
        assert_eq!(admissions.check(b), Err(Full::Relay { max: 3 }));
        drop(release); // every thread ends
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while admissions.count(a) + admissions.count(b) > 0 {
            assert!(std::time::Instant::now() < deadline, "the counts never went down");
            thread::sleep(Duration::from_millis(5));
            admissions.reap();
        }
        assert_eq!(admissions.check(a), Ok(()));
        assert!(admissions.per_address.is_empty(), "no entry kept for an address with nothing open");
        assert!(admissions.into_handles().is_empty());
    }
}
