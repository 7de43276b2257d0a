//! Shared helpers for the integration tests: a relay on a free loopback port, and a raw frame-level
//! connection for poking at it.
//!
//! Every read has a timeout, so a bug makes a test fail with a message instead of hanging.
//!
//! # Layout
//!
//! - this file: [`TestServer`] (the relay as a library, on a thread of the test), library
//!   clients, [`Raw`] frames, temp dirs, files and small disks;
//! - [`relay`]: the one way to start the real `server` binary ([`relay::RelayOptions`]);
//! - [`proc`]: the `client` binary (and any other one-shot command) with its output on channels;
//! - [`wait`]: waiting with a time limit ([`wait_until`] and friends);
//! - [`netns`]: a private network namespace per test, where links can vanish;
//! - the attack tests' tools: [`abuse`] (the abuse tests' limits and checks), [`review`] (the
//!   review tests' joins and uploads), [`attacker`] (raw connections from any `127.x.y.z`, tallies),
//!   [`watched`] (a relay with a memory watchdog), [`latency`] (bystanders' pings) and
//!   [`tls_attack`] (TLS by hand, and the relay's health after an attack).

#![allow(dead_code)] // each test file uses a different subset

pub mod abuse;
pub mod attacker;
pub mod latency;
pub mod netns;
pub mod proc;
pub mod relay;
pub mod review;
pub mod tls_attack;
pub mod wait;
pub mod watched;

#[allow(unused_imports)] // each test file uses a different subset
pub use wait::{exits_within, expect_line, lines_until, receive_until, try_until, wait_until};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use relaychat::client::{Client, ClientConfig, Event, Security, Trust};
use relaychat::frame::{encode_to_vec, Frame};
use relaychat::server::{Server, ServerConfig, ShutdownHandle};
use relaychat::wire::{FrameReader, ReadError};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A relay running on its own thread, stopped and joined on drop, with its own data dir.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: TempDir,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(ServerConfig::default())
    }

    pub fn start_with(config: ServerConfig) -> TestServer {
        let data_dir = TempDir::new("relay");
        TestServer::start_in(config, data_dir)
    }

    /// Starts a relay on an existing data dir (to test what survives a restart).
    pub fn start_in(config: ServerConfig, data_dir: TempDir) -> TestServer {
        TestServer::launch(ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..config }, data_dir)
    }

    /// Stops this relay and starts a new one on the same address and data dir: what clients see
    /// when the relay host restarts.
    pub fn restart(self) -> TestServer {
        self.restart_after(|| {})
    }

    /// Like [`TestServer::restart`], with the relay away while `meanwhile` runs: what clients see
    /// when the relay host is down for a while.
    pub fn restart_after(self, meanwhile: impl FnOnce()) -> TestServer {
        self.restart_as(ServerConfig::default(), meanwhile)
    }

    /// Like [`TestServer::restart_after`], on the same address and data, with other settings.
    pub fn restart_as(self, config: ServerConfig, meanwhile: impl FnOnce()) -> TestServer {
        let addr = self.addr;
        let data_dir = self.stop_and_keep_data();
        meanwhile();
        TestServer::launch(ServerConfig { bind: addr, ..config }, data_dir)
    }

    /// Every test relay uses this process's shared TLS keys ([`test_keys`]) and also speaks
    /// plaintext, for the tests that talk raw frames to it.
    fn launch(config: ServerConfig, data_dir: TempDir) -> TestServer {
        let keys = test_keys();
        let config = ServerConfig {
            data_dir: data_dir.path.clone(),
            tls_files: config.tls_files.or_else(|| Some((keys.cert.clone(), keys.key.clone()))),
            allow_plaintext: true,
            ..config
        };
        let server = Server::bind(config).expect("bind a loopback port");
        let addr = server.local_addr().unwrap();
        let handle = server.shutdown_handle().unwrap();
        let thread = Some(std::thread::spawn(move || server.run()));
        TestServer { addr, data_dir, handle, thread }
    }

    /// Stops the relay and returns how long `run` took to return after the request.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread panicked").expect("server run failed");
        }
        t.elapsed()
    }

    /// Stops the relay and hands back its data dir, for a new relay to start on.
    pub fn stop_and_keep_data(mut self) -> TempDir {
        self.stop();
        std::mem::replace(&mut self.data_dir, TempDir { path: Default::default() })
    }

    /// A library client in `room`.
    pub fn client(&self, name: &str, room: &str) -> Client {
        let config = client_config(name, room);
        let client = Client::connect_tcp(&self.addr.to_string(), &config).expect("client connects");
        // Joining is followed by the list of who is online; take it so tests start clean.
        match next_event(&client) {
            Event::Online { .. } => client,
            other => panic!("{name}: expected the online list first, got {other:?}"),
        }
    }

    /// A library client logged in to account `name` (claimed with `password` on first use), with
    /// the online list taken.
    pub fn account(&self, name: &str, password: &str, room: &str) -> Client {
        let mut config = client_config(name, room);
        config.password = password.into();
        let client = Client::connect_tcp(&self.addr.to_string(), &config).expect("account logs in");
        match next_event(&client) {
            Event::Online { .. } => client,
            other => panic!("{name}: expected the online list first, got {other:?}"),
        }
    }

    /// A raw connection that has said hello and read the welcome and online list.
    pub fn raw_joined(&self, name: &str, room: &str) -> Raw {
        let mut raw = Raw::connect(self.addr);
        raw.send(&Frame::hello(name, room));
        assert_eq!(raw.recv(), Frame::Welcome { name: name.into(), room: room.into() });
        assert!(matches!(raw.recv(), Frame::Online { .. }));
        raw
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// SHA-256 of a file's contents: how the tests compare what was sent with what arrived.
pub fn sha256(path: &std::path::Path) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).expect("read a file to hash")).into()
}

/// The TLS certificate and key that every relay of this test process uses, and its fingerprint.
///
/// One pair for all, made once: the terminal clients of a test process share a config dir (one
/// "machine"), where they pin relays by `HOST:PORT`, and two relays the OS happened to give the
/// same port must not look like a relay whose key changed. (Tests of a changed key make their
/// own.)
pub struct TestKeys {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub fingerprint: String,
}

pub fn test_keys() -> &'static TestKeys {
    static KEYS: std::sync::OnceLock<TestKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("relaychat-test-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["relaychat".to_string()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        TestKeys { cert, key, fingerprint: relaychat::tls::fingerprint(made.cert.der()) }
    })
}

/// The relay flags that give a relay binary the shared test keys.
pub fn tls_flags() -> Vec<String> {
    let keys = test_keys();
    vec![
        "--tls-cert".into(),
        keys.cert.display().to_string(),
        "--tls-key".into(),
        keys.key.display().to_string(),
    ]
}

/// A library client's configuration for a test relay: TLS, trusting the shared test key.
pub fn client_config(name: &str, room: &str) -> ClientConfig {
    trusting(ClientConfig::new(name, room))
}

/// `config` with TLS that trusts the shared test key (and nothing else).
pub fn trusting(config: ClientConfig) -> ClientConfig {
    let trust = Trust { fingerprint: Some(test_keys().fingerprint.clone()), ..Trust::default() };
    ClientConfig { security: Security::Tls(trust), ..config }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("relaychat-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The next event, or a panic after [`WAIT`].
pub fn next_event(client: &Client) -> Event {
    client.events().recv_timeout(WAIT).expect("an event within the time limit")
}

/// The next chat event's (from, text), skipping nothing: anything else fails the test.
pub fn next_chat(client: &Client) -> (String, String) {
    match next_event(client) {
        Event::Chat { from, text, .. } => (from, text),
        other => panic!("expected chat, got {other:?}"),
    }
}

/// Asserts that no event arrives within `quiet`.
pub fn assert_no_event(client: &Client, quiet: Duration) {
    if let Ok(event) = client.events().recv_timeout(quiet) {
        panic!("expected silence, got {event:?}");
    }
}

/// A connection that speaks raw frames (or raw bytes), for hostile-input tests.
pub struct Raw {
    pub reader: FrameReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { reader: FrameReader::new(stream) }
    }

    pub fn send(&mut self, frame: &Frame) {
        self.send_bytes(&encode_to_vec(frame).unwrap());
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    pub fn recv(&mut self) -> Frame {
        match self.reader.read_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("connection closed while a frame was expected"),
            Err(e) => panic!("read failed while a frame was expected: {e}"),
        }
    }

    /// Reads frames until `pick` accepts one and returns it; fails the test after `WAIT` or 200
    /// frames, listing what came instead.
    pub fn recv_until(&mut self, what: &str, mut pick: impl FnMut(&Frame) -> bool) -> Frame {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        for _ in 0..200 {
            assert!(Instant::now() < deadline, "no {what} in time; saw {seen:?}");
            let frame = self.recv();
            if pick(&frame) {
                return frame;
            }
            seen.push(frame);
        }
        panic!("no {what} in 200 frames; saw {seen:?}");
    }

    /// Reads until the relay closes the connection; returns the frames seen on the way.
    pub fn recv_until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match self.reader.read_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return frames,
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return frames,
                Err(e) => panic!("expected the relay to close the connection, got {e} after {frames:?}"),
            }
        }
    }

    /// True once the peer has closed: a read returns EOF (or reset) rather than timing out.
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.get_mut().read(&mut byte), Ok(0))
            || matches!(self.reader.get_mut().read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Waits for the first event that `pick` accepts, skipping the others (progress, notices...).
pub fn wait_for<T>(client: &Client, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let limit = Duration::from_secs(60);
    let mut found = None;
    let (seen, _) = receive_until(client.events(), limit, |event| {
        found = pick(event);
        // A disconnect is what some callers wait for; for the others it ends the wait at once.
        if let (None, Event::Disconnected(why)) = (&found, event) {
            panic!("disconnected ({why:?}) while waiting for {what}");
        }
        found.is_some()
    });
    found.unwrap_or_else(|| {
        let skipped: Vec<&Event> = seen.iter().filter(|e| !matches!(e, Event::Progress { .. })).collect();
        panic!("no {what} within {limit:?}; skipped {skipped:?}")
    })
}

/// Waits until `client` reports the upload of `name` done; panics if it fails.
pub fn wait_uploaded(client: &Client, name: &str) -> u64 {
    wait_for(client, "an upload", |e| match e {
        Event::Uploaded { name: n, size } if n == name => Some(*size),
        Event::TransferFailed { name: n, reason, .. } if n == name => {
            panic!("upload of {n} failed: {reason}")
        }
        _ => None,
    })
}

/// Runs one receive into `dir`; returns the downloaded paths and the failures' reasons.
pub fn receive_into(client: &Client, dir: &std::path::Path) -> (Vec<std::path::PathBuf>, Vec<String>) {
    client.receive_all(dir).expect("receive starts");
    let (mut paths, mut failures) = (Vec::new(), Vec::new());
    loop {
        let done = wait_for(client, "receive events", |e| match e {
            Event::Downloaded { path, .. } => Some(Some(Ok(path.clone()))),
            Event::TransferFailed { reason, .. } => Some(Some(Err(reason.clone()))),
            Event::ReceiveFinished { .. } => Some(None),
            _ => None,
        });
        match done {
            Some(Ok(path)) => paths.push(path),
            Some(Err(reason)) => failures.push(reason),
            None => return (paths, failures),
        }
    }
}

/// Writes `size` pseudo-random bytes (seeded, so reproducible) to `dir/name`.
pub fn random_file(dir: &std::path::Path, name: &str, size: usize, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, xorshift_bytes(size, seed)).unwrap();
    path
}

/// `len` pseudo-random bytes from a xorshift generator started at `seed` (made odd): cheap,
/// reproducible, and not compressible, which is all a test's data needs.
pub fn xorshift_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    data
}

/// Files (not directories) anywhere under `dir`.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Waits until an upload's `.part` file under `dir` (the relay's tmp dir or a downloads dir)
/// holds at least `min` bytes; its size then. Fails after [`WAIT`].
pub fn wait_for_part(dir: &std::path::Path, min: u64) -> u64 {
    let what = format!("a .part of {min} bytes under {}", dir.display());
    wait_until(&what, WAIT, || {
        let size = files_under(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "part"))
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .max();
        size.filter(|&n| n >= min)
    })
}

/// A TCP connection to `to` from the loopback source address `from` (127.0.0.x), so the relay
/// sees a client address of its own. The connect gives up after `timeout`.
pub fn connect_from(
    from: std::net::Ipv4Addr,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// A hello of this protocol version with every credential given (empty: none).
pub fn hello_as(name: &str, room: &str, password: &str, token: &str) -> Frame {
    Frame::Hello {
        version: relaychat::frame::PROTOCOL_VERSION,
        name: name.into(),
        room: room.into(),
        password: password.into(),
        access: String::new(),
        token: token.into(),
    }
}

/// A tmpfs of `size` mounted on a fresh directory, for tests that need a small disk of their
/// own; unmounted on drop. `None` where mounting is not allowed (it needs root; CI runs as root):
/// the test then says it is skipped.
pub struct SmallDisk {
    pub dir: TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = TempDir::new("small-disk");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir.path).status();
    }
}

/// Free bytes on the file system holding `path` (what an unprivileged user may use).
pub fn free_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a plain struct for statvfs to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64)
}
