//! Room-scale benchmark: thousands of clients in one room, and many connections idling.
//!
//! ```text
//! cargo bench --bench rooms                     # 5,000 in one room, TLS and plaintext; 10,000 idle in 100 rooms
//! cargo bench --bench rooms -- --clients 1000   # one size, both paths (also: --rooms R, --lines L,
//!                                               # --path tls|plain, --relay ARGS... for the relay,
//!                                               # --hold SECS to look at the idle relay)
//! ```
//!
//! Each scenario starts the real `server` binary and connects `--clients` protocol clients to it,
//! spread over `--rooms` rooms, then measures:
//!
//! - **settle**: from the first connect until every client's view of its room (Online, Joined,
//!   Left, Crowd) shows everyone in it;
//! - **fan-out**: `--lines` lines, one at a time, each from a different client; for every other
//!   member, the time from the sender's write to the line's arrival. Nothing may be lost (5 s per
//!   line);
//! - **idle**: the relay's CPU time over 10 s with every client connected and quiet, and its RSS.
//!
//! The baseline, in the same run, is the relay announcing presence one by one to everyone (the
//! behaviour before big rooms: `--big-room` larger than the room), on the plaintext path.
//!
//! The load generator must not be what is measured, so it is not built like the relay: two
//! threads, each polling (epoll, through `mio`) a few thousand non-blocking sockets, with TLS
//! driven by hand through rustls. Needs an open-file limit of about twice `--clients` (raised to
//! the hard limit, and above it when run as root).

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{rss_kib, start_relay, Relay, UNLIMITED_RATES};
use crossbeam_channel::{unbounded, Receiver};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use relaychat::frame::{decode, encode_to_vec, Frame};

/// Generator threads. Two, on a two-core machine: the relay needs the CPU too.
const WORKERS: usize = 2;
/// Connections per worker still in their handshake or hello at once (the rest wait their turn),
/// so the relay's listen queue never overflows into SYN retries.
const OPENING: usize = 64;
/// How long a line may take to reach everyone before the missing ones count as lost.
const LINE_WAIT: Duration = Duration::from_secs(5);
const WAKER: Token = Token(usize::MAX);

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Tls,
    Plain,
}

struct Scenario {
    label: String,
    path: Path,
    clients: usize,
    rooms: usize,
    lines: usize,
    relay_args: Vec<String>,
    settle_limit: Duration,
    idle: bool,
    /// `--hold SECS`: keep everyone connected this long after the idle measurement.
    hold: Option<Duration>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    raise_fd_limit();
    let mut scenarios = Vec::new();
    if let Some(clients) = value("--clients").and_then(|v| v.parse::<usize>().ok()) {
        let rooms = value("--rooms").and_then(|v| v.parse().ok()).unwrap_or(1);
        let lines = value("--lines").and_then(|v| v.parse().ok()).unwrap_or(20);
        // Everything after `--relay` goes to the relay (e.g. `--relay --spin-us 0`).
        let relay: Vec<&str> = match args.iter().position(|a| a == "--relay") {
            // (cargo adds `--bench` to a benchmark's arguments: not the relay's.)
            Some(at) => args[at + 1..].iter().map(String::as_str).filter(|a| *a != "--bench").collect(),
            None => Vec::new(),
        };
        let paths = match value("--path").as_deref() {
            Some("tls") => vec![Path::Tls],
            Some("plain") => vec![Path::Plain],
            _ => vec![Path::Tls, Path::Plain],
        };
        let hold = value("--hold").and_then(|v| v.parse().ok()).map(Duration::from_secs);
        for path in paths {
            scenarios.push(Scenario { hold, ..scenario(path, clients, rooms, lines, &relay, true) });
        }
    } else {
        scenarios.push(Scenario {
            label: "baseline: presence one by one (--big-room 1000000), plaintext".into(),
            ..scenario(Path::Plain, 5000, 1, 0, &["--big-room", "1000000"], false)
        });
        scenarios[0].settle_limit = Duration::from_secs(30);
        for path in [Path::Tls, Path::Plain] {
            scenarios.push(scenario(path, 5000, 1, 20, &[], false));
        }
        scenarios.push(Scenario {
            label: "TLS, polling off (--spin-us 0)".into(),
            ..scenario(Path::Tls, 5000, 1, 20, &["--spin-us", "0"], false)
        });
        scenarios.push(scenario(Path::Tls, 1000, 1, 20, &[], true));
        scenarios.push(scenario(Path::Tls, 10_000, 100, 0, &[], true));
        scenarios.push(scenario(Path::Plain, 10_000, 100, 0, &[], true));
    }
    println!("relaychat room benchmark: {} generator threads, loopback", WORKERS);
    for s in &scenarios {
        run(s);
    }
}

fn scenario(path: Path, clients: usize, rooms: usize, lines: usize, extra: &[&str], idle: bool) -> Scenario {
    let name = if path == Path::Tls { "TLS" } else { "plaintext" };
    Scenario {
        label: format!("{name}, {clients} clients in {rooms} room(s)"),
        path,
        clients,
        rooms,
        lines,
        relay_args: extra.iter().map(|s| s.to_string()).collect(),
        settle_limit: Duration::from_secs(60),
        idle,
        hold: None,
    }
}

/// What the worker threads share with `main`.
struct Shared {
    /// Connections welcomed by the relay.
    welcomed: AtomicUsize,
    /// Connections whose view of their room shows everyone in it.
    settled: AtomicUsize,
    /// Connections that failed (refused, closed, TLS error).
    failed: AtomicUsize,
    /// Per line: when its sender wrote it.
    sent_at: Mutex<HashMap<u32, Instant>>,
}

enum Command {
    /// Say line `n` from this worker's connection `index`.
    Say {
        index: usize,
        n: u32,
    },
    Stop,
}

/// One worker's results: for each line, the arrival times at its connections.
type Arrivals = Vec<(u32, Instant)>;

fn run(s: &Scenario) {
    println!("\n== {}", s.label);
    if let Some(cap) = relaychat::server::thread_cap().filter(|&cap| cap < s.clients + 100) {
        println!(
            "SKIP: this machine's thread limits allow the relay {cap} connections (it budgets 4 threads \
             each, 4 memory mappings a thread); raise them with `sysctl vm.max_map_count=262144 \
             kernel.pid_max=131072`"
        );
        return;
    }
    let data = std::env::temp_dir().join(format!("relaychat-bench-rooms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let max = (s.clients + 100).to_string();
    let mut args: Vec<&str> = vec!["--data-dir", data.to_str().unwrap(), "--max-connections", &max];
    args.extend(["--max-per-address", &max, "--idle-timeout", "600s"]);
    args.extend(UNLIMITED_RATES);
    if s.path == Path::Plain {
        args.push("--allow-plaintext");
    }
    args.extend(s.relay_args.iter().map(String::as_str));
    let (relay, addr) = start_relay(&args);
    let pid = relay.0.id();
    let idle_before = rss_kib(pid, "VmRSS");
    let addr: SocketAddr = addr.parse().expect("relay address");
    let tls = (s.path == Path::Tls).then(|| tls_config(&addr));

    let shared = Arc::new(Shared {
        welcomed: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        sent_at: Mutex::new(HashMap::new()),
    });
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        // Client i is in room i % rooms and belongs to worker i % WORKERS.
        let mine: Vec<(usize, usize)> = (w..s.clients).step_by(WORKERS).map(|i| (i, i % s.rooms)).collect();
        let room_size = |room: usize| (room..s.clients).step_by(s.rooms).count() as u32;
        let expected: Vec<u32> = mine.iter().map(|&(_, room)| room_size(room)).collect();
        let (commands, inbox) = unbounded();
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
        let (shared, tls) = (shared.clone(), tls.clone());
        let handle = thread::spawn(move || worker(poll, addr, tls, mine, expected, inbox, shared));
        workers.push((commands, waker, handle));
    }

    // Settle.
    let welcomed_at = wait_until(s.settle_limit, || {
        shared.welcomed.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) >= s.clients
    })
    .map(|_| started.elapsed())
    .filter(|_| shared.welcomed.load(Ordering::Relaxed) == s.clients);
    let settled = wait_until(s.settle_limit.saturating_sub(started.elapsed()), || {
        shared.settled.load(Ordering::Relaxed) >= s.clients
    })
    .map(|_| started.elapsed());
    let failed = shared.failed.load(Ordering::Relaxed);
    match welcomed_at {
        Some(t) => println!("all {} welcomed after {:.2} s", s.clients, t.as_secs_f64()),
        None => println!(
            "NOT all welcomed within {:?}: {} of {} ({failed} failed)",
            s.settle_limit,
            shared.welcomed.load(Ordering::Relaxed),
            s.clients
        ),
    }
    match settled {
        Some(t) => println!("presence settled after {:.2} s", t.as_secs_f64()),
        None => println!(
            "presence NOT settled within {:?}: {} of {} views complete",
            s.settle_limit,
            shared.settled.load(Ordering::Relaxed),
            s.clients
        ),
    }
    let peak_settle = rss_kib(pid, "VmHWM");

    // Fan-out: one line at a time, each from another client of room 0.
    let mut expected_arrivals = 0;
    let cpu_before_lines = cpu_ticks(pid);
    let own_before_lines = cpu_ticks(std::process::id());
    if settled.is_some() {
        let room0 = (0..s.clients).step_by(s.rooms).count();
        for n in 0..s.lines as u32 {
            let sender = (n as usize * 7919 % room0) * s.rooms; // client ids in room 0
            let (w, index) = (sender % WORKERS, sender / WORKERS);
            workers[w].0.send(Command::Say { index, n }).unwrap();
            workers[w].1.wake().unwrap();
            expected_arrivals += room0 - 1;
            thread::sleep(LINE_WAIT.min(Duration::from_millis(300)));
        }
        thread::sleep(if s.lines > 0 { LINE_WAIT } else { Duration::ZERO });
    }
    // The relay's CPU time for the fan-out, per line delivered to one client (the lines' pauses
    // are idle time and cost nothing).
    let fanout_cpu_us = (cpu_ticks(pid).saturating_sub(cpu_before_lines) as f64 / ticks_per_second()) * 1e6
        / expected_arrivals.max(1) as f64;
    let own_cpu_us =
        (cpu_ticks(std::process::id()).saturating_sub(own_before_lines) as f64 / ticks_per_second()) * 1e6
            / expected_arrivals.max(1) as f64;

    // Idle: every client connected and quiet.
    if s.idle && settled.is_some() {
        thread::sleep(Duration::from_secs(2));
        let cpu_before = cpu_ticks(pid);
        let window = Duration::from_secs(10);
        thread::sleep(window);
        let used = cpu_ticks(pid).saturating_sub(cpu_before) as f64 / ticks_per_second();
        println!(
            "idle: relay used {:.3} s of CPU in {} s ({:.2}%); RSS {:.1} MiB (idle before anyone came: {:.1} MiB)",
            used,
            window.as_secs(),
            100.0 * used / window.as_secs_f64(),
            rss_kib(pid, "VmRSS") as f64 / 1024.0,
            idle_before as f64 / 1024.0
        );
        if let Some(hold) = s.hold {
            // Time for a look at the idle relay: /proc/PID/smaps, gdb, malloc_stats.
            println!("relay pid {pid}: holding {} s", hold.as_secs());
            thread::sleep(hold);
        }
    }
    let peak = rss_kib(pid, "VmHWM");

    let mut arrivals = Vec::new();
    for (commands, waker, handle) in workers {
        let _ = commands.send(Command::Stop);
        let _ = waker.wake();
        arrivals.extend(handle.join().expect("worker"));
    }
    if s.lines > 0 && settled.is_some() {
        let sent_at = shared.sent_at.lock().unwrap();
        let mut micros: Vec<u64> = arrivals
            .iter()
            .filter_map(|(n, at)| {
                sent_at.get(n).map(|t0| at.saturating_duration_since(*t0).as_micros() as u64)
            })
            .collect();
        micros.sort_unstable();
        let lost = expected_arrivals.saturating_sub(micros.len());
        let pct = |p: f64| micros.get(((micros.len() as f64 * p) as usize).min(micros.len().max(1) - 1));
        let ms = |v: Option<&u64>| v.map_or(f64::NAN, |v| *v as f64 / 1000.0);
        println!(
            "fan-out: {} lines to {} others: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} of {} arrivals, {lost} lost",
            sent_at.len(),
            (0..s.clients).step_by(s.rooms).count() - 1,
            ms(pct(0.50)),
            ms(pct(0.90)),
            ms(pct(0.99)),
            ms(micros.last()),
            micros.len(),
            expected_arrivals
        );
        println!(
            "fan-out cost: {fanout_cpu_us:.1} µs of relay CPU per line delivered to one client \
             (the load generator: {own_cpu_us:.1} µs to receive it)"
        );
    }
    println!(
        "relay RSS: peak {:.1} MiB (at settle {:.1} MiB; idle before anyone came {:.1} MiB)",
        peak as f64 / 1024.0,
        peak_settle as f64 / 1024.0,
        idle_before as f64 / 1024.0
    );
    drop::<Relay>(relay);
    let _ = std::fs::remove_dir_all(&data);
}

/// Polls `done` every 20 ms for up to `limit`; `Some` when it became true.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return Some(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    done().then_some(())
}

// ---- One generator thread: many connections, one poll loop. ----

struct Conn {
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    /// Decrypted bytes not yet decoded into frames.
    inbox: Vec<u8>,
    /// Plaintext bytes the socket would not take yet (plaintext path only).
    outbox: Vec<u8>,
    welcomed: bool,
    /// The room's head count as this client sees it; `expected` is the room's real size.
    online: u32,
    expected: u32,
    settled: bool,
    /// Names gathered from Online pages so far.
    listing: u32,
    dead: bool,
}

fn worker(
    mut poll: Poll,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    mine: Vec<(usize, usize)>,
    expected: Vec<u32>,
    inbox: Receiver<Command>,
    shared: Arc<Shared>,
) -> Arrivals {
    let mut conns: Vec<Conn> = Vec::with_capacity(mine.len());
    let mut events = Events::with_capacity(1024);
    let mut arrivals = Vec::new();
    let mut next = 0; // the next of `mine` to open
    let mut done_opening = 0; // welcomed or dead
    loop {
        // Open more while few are still in their handshake or hello.
        for _ in (next - done_opening)..OPENING {
            let Some(&(id, room)) = mine.get(next) else { break };
            let sock = TcpStream::connect(addr).expect("connect");
            let _ = sock.set_nodelay(true);
            let tls = tls.as_ref().map(|config| {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                rustls::ClientConnection::new(config.clone(), name).expect("TLS client")
            });
            let mut conn = Conn {
                sock,
                tls,
                inbox: Vec::new(),
                outbox: Vec::new(),
                welcomed: false,
                online: 0,
                expected: expected[next],
                settled: false,
                listing: 0,
                dead: false,
            };
            poll.registry()
                .register(&mut conn.sock, Token(next), Interest::READABLE | Interest::WRITABLE)
                .unwrap();
            send(&mut conn, &Frame::hello(&format!("u{id}"), &format!("room{room}")));
            conns.push(conn);
            next += 1;
        }
        if poll.poll(&mut events, Some(Duration::from_millis(50))).is_err() {
            continue;
        }
        for event in events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let conn = &mut conns[event.token().0];
            if conn.dead {
                continue;
            }
            let was_welcomed = conn.welcomed;
            let pumped = pump(conn, &shared, &mut arrivals);
            if conn.welcomed && !was_welcomed {
                done_opening += 1;
            }
            if let Err(e) = pumped {
                if shared.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first failed connection: {e}");
                }
                if !conn.welcomed {
                    done_opening += 1;
                }
                if conn.settled {
                    shared.settled.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        while let Ok(command) = inbox.try_recv() {
            match command {
                Command::Stop => return arrivals,
                Command::Say { index, n } => {
                    let conn = &mut conns[index];
                    shared.sent_at.lock().unwrap().insert(n, Instant::now());
                    send(conn, &Frame::say(&format!("line {n}")));
                    let _ = pump(conn, &shared, &mut arrivals);
                }
            }
        }
    }
}

/// Queues a frame on a connection (encrypted at once on the TLS path) and tries to write it.
fn send(conn: &mut Conn, frame: &Frame) {
    let bytes = encode_to_vec(frame).expect("encode");
    match &mut conn.tls {
        Some(tls) => {
            let _ = tls.writer().write_all(&bytes);
        }
        None => conn.outbox.extend_from_slice(&bytes),
    }
    let _ = flush(conn);
}

fn flush(conn: &mut Conn) -> io::Result<()> {
    match &mut conn.tls {
        Some(tls) => {
            while tls.wants_write() {
                match tls.write_tls(&mut conn.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        None => {
            while !conn.outbox.is_empty() {
                match conn.sock.write(&conn.outbox) {
                    Ok(n) => drop(conn.outbox.drain(..n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Reads everything the socket has (edge-triggered: until it would block), decodes the frames,
/// and writes what is pending.
fn pump(conn: &mut Conn, shared: &Shared, arrivals: &mut Arrivals) -> io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let read = match &mut conn.tls {
            Some(tls) => match tls.read_tls(&mut conn.sock) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    tls.process_new_packets().map_err(io::Error::other)?;
                    loop {
                        match tls.reader().read(&mut buf) {
                            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                            Ok(n) => conn.inbox.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) => return Err(e),
            },
            None => match conn.sock.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    conn.inbox.extend_from_slice(&buf[..n]);
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) => return Err(e),
            },
        };
        if !read {
            break;
        }
    }
    let now = Instant::now();
    let mut used = 0;
    while let Some((frame, n)) = decode(&conn.inbox[used..]).map_err(io::Error::other)? {
        used += n;
        seen(conn, frame, now, shared, arrivals)?;
    }
    conn.inbox.drain(..used);
    flush(conn)
}

/// What one frame changes in a connection's view.
fn seen(
    conn: &mut Conn,
    frame: Frame,
    now: Instant,
    shared: &Shared,
    arrivals: &mut Arrivals,
) -> io::Result<()> {
    match frame {
        Frame::Welcome { .. } => {
            conn.welcomed = true;
            shared.welcomed.fetch_add(1, Ordering::Relaxed);
        }
        Frame::Online { names, more, .. } => {
            conn.listing += names.len() as u32;
            if !more {
                conn.online = std::mem::take(&mut conn.listing);
            }
        }
        Frame::Joined { .. } => conn.online += 1,
        Frame::Left { .. } => conn.online = conn.online.saturating_sub(1),
        Frame::Crowd { online, .. } => conn.online = online,
        Frame::Chat { text, mark: 0, .. } => {
            if let Some(n) = text.strip_prefix("line ").and_then(|n| n.parse().ok()) {
                arrivals.push((n, now));
            }
        }
        Frame::Error { code, message } => {
            return Err(io::Error::other(format!("relay error {code:?}: {message}")));
        }
        _ => {}
    }
    let settled = conn.welcomed && conn.online == conn.expected;
    if settled != conn.settled {
        conn.settled = settled;
        if settled {
            shared.settled.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.settled.fetch_sub(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

// ---- Setup. ----

/// The client's own TLS configuration, trusting the loopback relay's key on first contact and
/// keeping nothing; without session resumption, so every connection pays a full handshake as
/// separate client machines would.
fn tls_config(addr: &SocketAddr) -> Arc<rustls::ClientConfig> {
    use relaychat::client::{FirstContact, Trust};
    let trust = Trust { first_contact: FirstContact::Accept, ..Trust::default() };
    let config = relaychat::client::trust::client_config(&addr.to_string(), &trust).expect("TLS config");
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The generator holds one descriptor per client, and so does the relay (its child, which
/// inherits the limit). Root may raise the hard limit too.
fn raise_fd_limit() {
    use rlimit::Resource;
    let want = 65_536;
    if let Ok((soft, hard)) = Resource::NOFILE.get() {
        let hard = if hard < want && Resource::NOFILE.set(want, want).is_ok() { want } else { hard };
        let _ = Resource::NOFILE.set(soft.max(hard.min(want)), hard);
    }
    if let Ok((soft, _)) = Resource::NOFILE.get() {
        println!("open-file limit: {soft}");
    }
}

/// The relay's CPU time so far (user + system), in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it follow the last ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12) // utime and stime: fields 14 and 15 overall, 12 and 13 after the name
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
