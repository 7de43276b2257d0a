//! The hostile TLS tests' tools (`tests/tls_handshake_attacks.rs`, `tls_record_attacks.rs`,
//! `tls_hostile_relay.rs`): attacks that write bytes by hand, TLS driven by hand, and the checks
//! that a bystander is unharmed and the relay healthy afterwards.
//!
//! The attackers speak TLS by hand: [`Manual`] drives a `rustls::ClientConnection` itself, so an
//! attack can put any bytes before, between or after real records; [`TlsConn`] is a well-behaved
//! TLS session (the crate's own [`TlsStream`]) that then says hostile frames. The bystanders are
//! two library clients (TLS, from 127.0.0.1) that join and chat within [`BYSTANDER_LIMIT`]; the
//! relay's health is read from `/proc/<pid>`: its thread count, CPU time, and where its writer
//! threads sleep.
//!
//! Every wait is bounded. [`one_at_a_time`] serialises the tests of one binary: several measure
//! CPU time and thread counts, which a neighbour's attack would spoil on two cores.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use relaychat::client::{Client, Event, Trust};
use relaychat::frame::{self, encode_to_vec, ErrorCode, Frame};
use relaychat::tls::TlsStream;
use relaychat::wire::{write_frame, FrameReader, ReadError, Stream};
use rustls::pki_types::ServerName;

use super::attacker::{lo, Got};
use super::relay::threads_of;
use super::watched::WatchedRelay;
use super::{client_config, connect_from, hello_as, receive_until, test_keys, try_until, xorshift_bytes};

/// The relay's hello deadline (`ServerConfig::hello_timeout`; the binary has no flag for it): the
/// TLS handshake and the hello must both be done this long after the connection starts.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How late after a deadline the relay may act and still count as on time.
pub const SLACK: Duration = Duration::from_secs(3);

/// "At once": garbage must end a connection this fast, well before the hello deadline.
pub const PROMPT: Duration = Duration::from_secs(3);

/// Two bystanders connect (TLS handshakes and hellos) and one line goes from one to the other.
pub const BYSTANDER_LIMIT: Duration = Duration::from_secs(3);

/// How long the relay may take to end the threads of connections that are gone.
pub const THREADS_SETTLE: Duration = Duration::from_secs(6);

/// One attack run on a thread of its own: when the relay closed its connection (from the
/// connection's start), or `None` if it was still open at the deadline plus [`SLACK`].
pub type Attack<'a> = Box<dyn FnOnce() -> Option<Duration> + Send + 'a>;

/// Connects from `127.0.0.2`, sends `bytes`, then waits: when did the relay close? (From the
/// connection's start; `None` if still open at the deadline plus [`SLACK`].)
pub fn stall(addr: SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let mut tcp = connect_from(lo(2), addr, Duration::from_secs(5)).ok()?;
    let start = Instant::now();
    tcp.write_all(bytes).ok()?;
    closed_within(&mut tcp, start, HELLO_TIMEOUT + SLACK)
}

/// Sends `bytes` one every 200 ms; when did the relay close the connection?
pub fn trickle_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let mut tcp = connect_from(lo(2), addr, Duration::from_secs(5)).ok()?;
    let start = Instant::now();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut sink = [0u8; 4096];
    for byte in bytes {
        if start.elapsed() > HELLO_TIMEOUT + SLACK {
            return None;
        }
        if tcp.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(start.elapsed());
        }
        match tcp.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    panic!("the whole ClientHello went out a byte at a time: make the trickle slower")
}

/// A finished handshake, then silence.
pub fn tls_silent(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut conn = TlsConn::connect(lo(2), addr);
    conn.closed_within((HELLO_TIMEOUT + SLACK).saturating_sub(start.elapsed())).then(|| start.elapsed())
}

/// A finished handshake, then a hello one byte (one TLS record) every 200 ms.
pub fn tls_trickled_hello(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut conn = TlsConn::connect(lo(2), addr);
    let hello = encode_to_vec(&hello_as(&"n".repeat(32), &"r".repeat(32), "", "")).unwrap();
    for byte in &hello {
        if conn.send_bytes(std::slice::from_ref(byte)).is_err() {
            return Some(start.elapsed());
        }
        match conn.recv(Duration::from_millis(200)) {
            Got::Timeout => {}
            Got::Frame(Frame::Error { code: ErrorCode::HelloTimeout, .. }) | Got::Closed | Got::Broken(_) => {
                return conn.closed_within(SLACK).then(|| start.elapsed());
            }
            Got::Frame(other) => panic!("a trickled hello got {other:?}"),
        }
        if start.elapsed() > HELLO_TIMEOUT + SLACK {
            return None;
        }
    }
    panic!("the whole hello went out a byte at a time: make it longer")
}

/// A TCP connection from `from` whose receive buffer is as small as the kernel allows (set
/// before connecting, so the window it offers is small from the start).
pub fn small_window(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.bind(&SocketAddr::from((from, 0)).into()).expect("bind");
    socket.connect_timeout(&to.into(), Duration::from_secs(5)).expect("connect");
    socket.into()
}

/// The next connection to `listener`, or `None` if none comes within `wait`.
pub fn accept_within(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let accepted = try_until(wait, || match listener.accept() {
        Ok((tcp, _)) => Some(Some(tcp)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(_) => Some(None),
    });
    let tcp = accepted.flatten()?;
    tcp.set_nonblocking(false).ok()?;
    Some(tcp)
}

/// Reads (and throws away) what the relay sends until it closes the connection: how long after
/// `start` that was, or `None` if it is still open `within` after `start`.
pub fn closed_within(tcp: &mut TcpStream, start: Instant, within: Duration) -> Option<Duration> {
    let mut sink = [0u8; 16 * 1024];
    loop {
        let left = (start + within).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tcp.set_read_timeout(Some(left)).ok()?;
        match tcp.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// `len` reproducible pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    xorshift_bytes(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The attackers' TLS configuration: the real client's (TLS 1.3 with ring, and its pinning
/// check), trusting exactly the shared test key.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let trust = Trust { fingerprint: Some(test_keys().fingerprint.clone()), ..Trust::default() };
    relaychat::client::trust::client_config("relaychat:0", &trust).expect("the client's TLS configuration")
}

pub fn new_session() -> rustls::ClientConnection {
    let name = ServerName::try_from("relaychat").expect("a DNS name");
    rustls::ClientConnection::new(tls_config(), name).expect("a client session")
}

/// The bytes of a fresh ClientHello (one record, starting with `0x16`).
pub fn client_hello() -> Vec<u8> {
    let mut session = new_session();
    let mut hello = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], relaychat::tls::TLS_HANDSHAKE_BYTE);
    hello
}

/// A TLS client driven by hand: the attack decides which records go out, when, and with what
/// around them.
pub struct Manual {
    pub tcp: TcpStream,
    pub tls: rustls::ClientConnection,
}

impl Manual {
    /// Connects from `from` and runs the handshake up to the client's last flight (its
    /// Finished), which is left unsent: [`Manual::take_records`] has it.
    pub fn up_to_finished(from: Ipv4Addr, to: SocketAddr) -> Manual {
        let tcp = connect_from(from, to, Duration::from_secs(5)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut manual = Manual { tcp, tls: new_session() };
        let hello = manual.take_records();
        manual.tcp.write_all(&hello).expect("send the ClientHello");
        let mut buf = vec![0u8; 16 * 1024];
        while manual.tls.is_handshaking() {
            let n = manual.tcp.read(&mut buf).expect("the relay's handshake flight");
            assert!(n > 0, "the relay closed during the handshake");
            let mut data = &buf[..n];
            while !data.is_empty() {
                manual.tls.read_tls(&mut data).unwrap();
                manual.tls.process_new_packets().expect("the relay's flight is valid TLS");
            }
        }
        manual
    }

    /// The records rustls has ready to go out, taken out but not sent.
    pub fn take_records(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        out
    }

    /// `plain` as application data records (with anything else pending first), not sent.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        self.tls.writer().write_all(plain).unwrap();
        self.take_records()
    }

    /// Reads and decrypts frames for up to `wait`, until `enough` accepts one or the relay
    /// closes: (the frames, whether it closed).
    pub fn recv_frames(
        &mut self,
        wait: Duration,
        mut enough: impl FnMut(&Frame) -> bool,
    ) -> (Vec<Frame>, bool) {
        let deadline = Instant::now() + wait;
        let (mut frames, mut plain) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (frames, false);
            }
            self.tcp.set_read_timeout(Some(left)).unwrap();
            let n = match self.tcp.read(&mut buf) {
                Ok(0) => return (frames, true),
                Ok(n) => n,
                Err(e) if is_timeout(&e) => return (frames, false),
                Err(_) => return (frames, true),
            };
            let mut data = &buf[..n];
            while !data.is_empty() {
                if self.tls.read_tls(&mut data).is_err() || self.tls.process_new_packets().is_err() {
                    return (frames, true);
                }
                let _ = self.tls.reader().read_to_end(&mut plain);
            }
            while let Ok(Some((frame, used))) = frame::decode(&plain) {
                plain.drain(..used);
                let done = enough(&frame);
                frames.push(frame);
                if done {
                    return (frames, false);
                }
            }
        }
    }
}

/// A TLS session made by the crate's own [`TlsStream`], saying frames (or any bytes) by hand.
pub struct TlsConn {
    pub reader: FrameReader<TlsStream>,
    /// The same socket, for bytes under TLS and for socket options.
    pub tcp: TcpStream,
}

impl TlsConn {
    pub fn connect(from: Ipv4Addr, to: SocketAddr) -> TlsConn {
        TlsConn::handshake(connect_from(from, to, Duration::from_secs(5)).expect("connect"))
    }

    pub fn handshake(tcp: TcpStream) -> TlsConn {
        tcp.set_nodelay(true).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let raw = tcp.try_clone().expect("clone");
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream =
            TlsStream::handshake(tcp, new_session(), deadline).expect("a TLS handshake with the relay");
        TlsConn { reader: FrameReader::new(stream), tcp: raw }
    }

    /// Handshake and hello: joined as a guest, with the welcome and the room's presence read
    /// (the online list, or a big room's count: PROTOCOL.md, "Big rooms").
    pub fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> TlsConn {
        let mut conn = TlsConn::connect(from, to);
        conn.send(&hello_as(name, room, "", "")).expect("say hello");
        match conn.recv(Duration::from_secs(5)) {
            Got::Frame(Frame::Welcome { .. }) => {}
            other => panic!("{name}: expected a welcome, got {other:?}"),
        }
        match conn.recv(Duration::from_secs(5)) {
            Got::Frame(Frame::Online { .. } | Frame::Crowd { .. }) => {}
            other => panic!("{name}: expected the room's presence, got {other:?}"),
        }
        conn
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        write_frame(self.reader.get_mut(), frame)?;
        self.reader.get_mut().flush()
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)?;
        self.reader.get_mut().flush()
    }

    pub fn recv(&mut self, timeout: Duration) -> Got {
        if self.reader.get_ref().set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).is_err() {
            return Got::Closed;
        }
        match self.reader.read_frame() {
            Ok(Some(frame)) => Got::Frame(frame),
            Ok(None) => Got::Closed,
            Err(e) if e.is_timeout() => Got::Timeout,
            Err(ReadError::TruncatedAtEof { .. }) => Got::Closed,
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Got::Closed
            }
            Err(e) => Got::Broken(e.to_string()),
        }
    }

    /// True if the relay closes the connection within `wait` (frames on the way are skipped).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(_) => {}
                Got::Timeout => return false,
                Got::Closed | Got::Broken(_) => return true,
            }
        }
    }

    /// Ends the connection with a TCP reset (SO_LINGER 0), as a crashed host or a middlebox would.
    pub fn reset(self) {
        socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    }
}

/// Serialises the tests of this file (see the module docs).
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A library client (TLS, trusting the test key) in the lobby, with the online list taken.
pub fn connect(addr: SocketAddr, name: &str) -> Client {
    let client = Client::connect_tcp(&addr.to_string(), &client_config(name, "lobby"))
        .unwrap_or_else(|e| panic!("{name} cannot connect: {e}"));
    wait_event(&client, "the online list", Duration::from_secs(5), |e| matches!(e, Event::Online { .. }));
    client
}

/// Waits up to `wait` for an event that `pick` accepts, skipping others.
pub fn wait_event(client: &Client, what: &str, wait: Duration, mut pick: impl FnMut(&Event) -> bool) {
    let (seen, found) = receive_until(client.events(), wait, |event| pick(event));
    if !found {
        let skipped: Vec<String> = seen
            .iter()
            .map(|event| match event {
                Event::Chat { from, text, .. } => format!("chat from {from} ({} bytes)", text.len()),
                event => format!("{event:?}"),
            })
            .collect();
        panic!("no {what} within {wait:?}; skipped {skipped:?}");
    }
}

/// Two fresh bystanders join the relay over TLS and one line goes from one to the other: how
/// long that took. Fails the test if it does not happen within 10 s.
pub fn bystanders_chat(addr: SocketAddr, n: u32) -> Duration {
    let start = Instant::now();
    let (alice, bob) = (format!("alice{n}"), format!("bob{n}"));
    let room = format!("quiet{n}");
    let connect = |name: &str| {
        let client = Client::connect_tcp(&addr.to_string(), &client_config(name, &room))
            .unwrap_or_else(|e| panic!("bystander {name} cannot connect: {e}"));
        wait_event(&client, "the online list", Duration::from_secs(10), |e| {
            matches!(e, Event::Online { .. })
        });
        client
    };
    let (alice, bob) = (connect(&alice), connect(&bob));
    alice.send_text("the relay is fine").expect("alice sends");
    wait_event(
        &bob,
        "alice's line",
        Duration::from_secs(10),
        |e| matches!(e, Event::Chat { text, .. } if text == "the relay is fine"),
    );
    let took = start.elapsed();
    alice.close();
    bob.close();
    took
}

/// The relay's thread count once it has settled after starting.
pub fn idle_threads(relay: &WatchedRelay) -> usize {
    thread::sleep(Duration::from_millis(300));
    relay.thread_count()
}

/// Waits up to `within` for the thread count of the relay `pid` to fall to `baseline`; the last
/// count.
pub fn settle_threads(pid: u32, baseline: usize, within: Duration) -> usize {
    try_until(within, || Some(threads_of(pid)).filter(|&now| now <= baseline))
        .unwrap_or_else(|| threads_of(pid))
}

pub fn assert_threads_back(relay: &WatchedRelay, baseline: usize) {
    let threads = settle_threads(relay.pid, baseline, THREADS_SETTLE);
    assert!(
        threads <= baseline,
        "the relay has {threads} threads {THREADS_SETTLE:?} after the attack (before it: {baseline}){}",
        relay.context()
    );
}

pub fn assert_no_panic(relay: &WatchedRelay) {
    let log = relay.log_tail(300);
    assert!(!log.contains("panicked"), "the relay panicked:\n{log}");
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_of(&format!("/proc/{pid}/stat"))
}

/// The busiest thread of process `pid`: its name and CPU seconds so far (for failure messages).
pub fn busiest_thread(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return "(gone)".into() };
    let mut busiest = (String::new(), 0.0);
    for task in tasks.flatten() {
        let cpu = cpu_of(&task.path().join("stat").display().to_string());
        if cpu > busiest.1 {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            busiest = (name.trim().to_owned(), cpu);
        }
    }
    format!("thread {:?} with {:.1} s of CPU", busiest.0, busiest.1)
}

/// How many of the relay's writer threads (`conn-N-writer`) wait in the kernel for room in a
/// socket's send buffer; `None` where the kernel does not say (`wchan` reads `0` for all).
///
/// A writer that waits for work waits on a channel (a futex); the only socket call it makes is a
/// write, so a writer sleeping in the socket layer (`sk_stream_wait_memory`, or `wait_woken`
/// which it calls) is blocked on a full send buffer.
pub fn writers_blocked_in_send(pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut known, mut blocked) = (false, 0);
    for task in tasks.flatten() {
        let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        known |= !wchan.is_empty() && wchan != "0";
        if name.trim().ends_with("-writer")
            && matches!(wchan.as_str(), "sk_stream_wait_memory" | "wait_woken")
        {
            blocked += 1;
        }
    }
    known.then_some(blocked)
}

/// User + system CPU seconds from a `/proc/.../stat` file.
pub fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces): field 3 is
    // the first; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields.iter().sum::<u64>() as f64 / hz
}
