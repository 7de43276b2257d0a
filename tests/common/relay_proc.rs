//! The real relay binary under attack, for `tests/abuse.rs`: start it with flags, watch its memory,
//! talk raw frames to it from chosen loopback addresses, and time the chat of bystanders.
//!
//! Everything here has a time limit: reads time out, connects time out, and a watchdog kills a
//! relay whose memory runs away (so a test of an unfixed relay fails instead of eating the machine).
//!
//! - [`RelaySpec`] / [`Relay`]: the `server` binary on `127.0.0.1:0` with its own data dir. Flags
//!   that this build of the relay does not know are left out (and listed in [`Relay::missing_flags`]),
//!   so a test can still run against an older relay and fail on the attack rather than on clap.
//! - [`Raw`]: one TCP connection speaking frames by hand, from any `127.x.y.z` source address
//!   (bound before connecting: [`connect_from`]), with helpers for hellos, uploads and downloads.
//! - [`Tally`]: reads everything an attacker's connection receives on a thread of its own, and
//!   counts receipts, error codes and chat, so a flood is never cut short by its own full socket.
//! - [`Latency`]: two bystanders that ping each other ten times a second and record how long each
//!   message took, and whether its receipt came.

#![allow(dead_code)] // each test uses a different subset

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use relaychat::frame::{encode_to_vec, ErrorCode, Frame};
use relaychat::wire::{FrameReader, ReadError};
use sha2::{Digest, Sha256};

/// The watchdog kills the relay when its RSS passes this: far past any limit a test checks, but
/// low enough that an unfixed relay cannot take the machine (shared with other jobs) down with it.
pub const RSS_KILL_MIB: u64 = 768;

/// How often the watchdog samples `/proc/<pid>/status`.
const RSS_SAMPLE: Duration = Duration::from_millis(10);

/// Lines of the relay's log kept for failure messages.
const LOG_LINES: usize = 300;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Starting the relay
// ---------------------------------------------------------------------------------------------

/// How to start a relay: extra flags, an fd limit, a data dir.
#[derive(Clone, Default)]
pub struct RelaySpec {
    flags: Vec<(String, String)>,
    nofile: Option<u64>,
    data_dir: Option<PathBuf>,
}

impl RelaySpec {
    pub fn new() -> RelaySpec {
        RelaySpec::default()
    }

    /// `--name value`. Left out (and reported) if this relay build has no such flag.
    pub fn flag(mut self, name: &str, value: impl ToString) -> RelaySpec {
        self.flags.push((name.to_owned(), value.to_string()));
        self
    }

    /// Starts the relay with `RLIMIT_NOFILE` soft and hard limits of `n`.
    pub fn nofile(mut self, n: u64) -> RelaySpec {
        self.nofile = Some(n);
        self
    }

    /// Uses `dir` (which must exist) as the data dir instead of a fresh temp dir.
    pub fn data_dir(mut self, dir: &Path) -> RelaySpec {
        self.data_dir = Some(dir.to_owned());
        self
    }

    pub fn start(self, class: &str) -> Relay {
        Relay::start(self, class)
    }
}

/// The flags this build of the relay accepts: the first word of each option line of `--help`.
fn known_flags() -> &'static Vec<String> {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_server")).arg("--help").output().expect("run server --help");
        let help = String::from_utf8_lossy(&out.stdout);
        help.lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let line = match line.split_once(", ") {
                    Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                    _ => line,
                };
                let first = line.split_whitespace().next()?;
                first.starts_with("--").then(|| first.trim_end_matches(',').to_owned())
            })
            .collect()
    })
}

/// A directory removed on drop (unless it was given to us).
struct Scratch {
    path: PathBuf,
    owned: bool,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("relaychat-abuse-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path, owned: true }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What the watchdog thread shares with the test.
struct Watch {
    pid: u32,
    peak_kib: AtomicU64,
    killed_at_kib: AtomicU64,
    stop: AtomicBool,
}

/// A running `server` binary. Killed, and its data dir removed, on drop.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    spec: RelaySpec,
    dir: Option<Scratch>,
    log: Arc<Mutex<VecDeque<String>>>,
    watch: Arc<Watch>,
    watchdog: Option<JoinHandle<()>>,
    /// Flags the spec asked for that this relay build does not have.
    pub missing_flags: Vec<String>,
    /// Which attack this relay is for, for the `abuse: …` line.
    class: String,
    /// The highest peak of earlier incarnations (see [`Relay::restart`]).
    earlier_peak_kib: u64,
    reported: bool,
}

impl Relay {
    fn start(spec: RelaySpec, class: &str) -> Relay {
        let dir = match &spec.data_dir {
            Some(path) => Scratch { path: path.clone(), owned: false },
            None => Scratch::new(),
        };
        Relay::launch(spec, dir, class, 0)
    }

    fn launch(spec: RelaySpec, dir: Scratch, class: &str, earlier_peak_kib: u64) -> Relay {
        let known = known_flags();
        let mut args: Vec<String> =
            vec!["--bind".into(), "127.0.0.1:0".into(), "--data-dir".into(), dir.path.display().to_string()];
        // The attacks speak raw frames, in plaintext; bystanders use TLS with the shared test key.
        args.extend(crate::common::tls_flags());
        args.push("--allow-plaintext".into());
        let mut missing_flags = Vec::new();
        for (name, value) in &spec.flags {
            if known.iter().any(|k| k == name) {
                args.push(name.clone());
                args.push(value.clone());
            } else {
                missing_flags.push(name.clone());
            }
        }
        if !missing_flags.is_empty() {
            println!("abuse: {class}: this relay has no {}; running without", missing_flags.join(", "));
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for var in ["RELAYCHAT_BIND", "RELAYCHAT_DATA_DIR", "RELAYCHAT_ACCESS_PASSWORD"] {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info");
        if let Some(n) = spec.nofile {
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start the relay binary");
        let pid = child.id();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (found, listening) = crossbeam_channel::bounded(1);
        let stderr = child.stderr.take().unwrap();
        let ring = log.clone();
        // Drains the relay's log (a relay whose stderr pipe fills would block), keeping the tail.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find("relay listening on ") {
                    let _ = found.try_send(line[at + "relay listening on ".len()..].trim().to_owned());
                }
                let mut ring = ring.lock().unwrap();
                if ring.len() == LOG_LINES {
                    ring.pop_front();
                }
                ring.push_back(line);
            }
        });
        let watch = Arc::new(Watch {
            pid,
            peak_kib: AtomicU64::new(0),
            killed_at_kib: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let watchdog = Some(start_watchdog(watch.clone()));
        let addr = match listening.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("the relay logs its address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                let tail: Vec<String> = log.lock().unwrap().iter().cloned().collect();
                panic!("the relay did not start with {args:?}; its log:\n{}", tail.join("\n"));
            }
        };
        Relay {
            child,
            addr,
            pid,
            spec,
            dir: Some(dir),
            log,
            watch,
            watchdog,
            missing_flags,
            class: class.to_owned(),
            earlier_peak_kib,
            reported: false,
        }
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.dir.as_ref().unwrap().path
    }

    /// Stops this relay (SIGTERM, then SIGKILL after 5 s) and starts a new one with the same
    /// flags and data dir, on a new port.
    pub fn restart(mut self) -> Relay {
        self.stop();
        let dir = self.dir.take().unwrap();
        let peak = self.peak_kib();
        self.reported = true;
        Relay::launch(self.spec.clone(), dir, &self.class, peak)
    }

    fn stop(&mut self) {
        self.watch.stop.store(true, Ordering::SeqCst);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        // SAFETY: the pid is our own child, not yet waited for.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The current resident set, in MiB (0 if the process is gone).
    pub fn rss_mib(&self) -> f64 {
        read_status(self.pid).map_or(0.0, |(rss, _)| rss as f64 / 1024.0)
    }

    fn peak_kib(&self) -> u64 {
        let now = read_status(self.pid).map_or(0, |(_, hwm)| hwm);
        self.watch.peak_kib.load(Ordering::SeqCst).max(now).max(self.earlier_peak_kib)
    }

    /// The highest resident set so far (the kernel's VmHWM, across restarts), in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib() as f64 / 1024.0
    }

    /// True once the peak passed `mib`: an attack loop stops there, the attack has succeeded.
    pub fn over(&self, mib: u64) -> bool {
        self.peak_kib() > mib * 1024
    }

    /// `Some(MiB)` if the watchdog had to kill the relay.
    pub fn killed_at_mib(&self) -> Option<f64> {
        match self.watch.killed_at_kib.load(Ordering::SeqCst) {
            0 => None,
            kib => Some(kib as f64 / 1024.0),
        }
    }

    /// Waits up to `within` for the RSS to drop under `mib`; returns the last reading.
    pub fn settle_mib(&self, mib: u64, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let rss = self.rss_mib();
            if rss < mib as f64 || Instant::now() >= deadline {
                return rss;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open file descriptors of the relay process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    /// Threads of the relay process.
    pub fn thread_count(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }

    /// The last `n` lines of the relay's log.
    pub fn log_tail(&self, n: usize) -> String {
        let ring = self.log.lock().unwrap();
        let skip = ring.len().saturating_sub(n);
        ring.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
    }

    /// Context for a failure message: flags this relay lacks, and its last log lines.
    pub fn context(&self) -> String {
        let missing = if self.missing_flags.is_empty() {
            String::new()
        } else {
            format!(
                "\n(this relay build has no {}: the test ran without them)",
                self.missing_flags.join(", ")
            )
        };
        format!("{missing}\nlast relay log lines:\n{}", self.log_tail(12))
    }

    /// Prints `abuse: <class>: peak RSS X MiB, after Y MiB` once, after the attacker has left:
    /// returns (peak, after) for the test to check.
    pub fn memory_report(&mut self, after_limit_mib: u64, within: Duration) -> (f64, f64) {
        let after = self.settle_mib(after_limit_mib, within);
        let peak = self.peak_mib();
        let killed = self
            .killed_at_mib()
            .map_or(String::new(), |at| format!(" (killed by the watchdog at {at:.0} MiB)"));
        println!("abuse: {}: peak RSS {peak:.0} MiB, after {after:.0} MiB{killed}", self.class);
        self.reported = true;
        (peak, after)
    }
}

/// What [`Relay`]'s drop waits for when a test failed before measuring: the after-attack
/// target, and how long to give the relay to get there.
const DROP_SETTLE_MIB: u64 = 64;
const DROP_SETTLE: Duration = Duration::from_secs(10);

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.reported {
            // The test failed before its memory check. Locals declared after the relay (the
            // attacker's connections) are dropped by now, so this is still "after the attacker
            // left": worth measuring for the report.
            let peak = self.peak_mib();
            let after = match self.killed_at_mib() {
                Some(at) => format!("n/a (killed by the watchdog at {at:.0} MiB)"),
                None if self.alive() => {
                    format!(
                        "{:.0} MiB (measured after the test failed)",
                        self.settle_mib(DROP_SETTLE_MIB, DROP_SETTLE)
                    )
                }
                None => "n/a (the relay exited)".to_string(),
            };
            println!("abuse: {}: peak RSS {peak:.0} MiB, after {after}", self.class);
        }
        self.watch.stop.store(true, Ordering::SeqCst);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn read_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn start_watchdog(watch: Arc<Watch>) -> JoinHandle<()> {
    thread::spawn(move || {
        while !watch.stop.load(Ordering::SeqCst) {
            let Some((rss, hwm)) = read_status(watch.pid) else { return };
            watch.peak_kib.fetch_max(hwm.max(rss), Ordering::SeqCst);
            if rss > RSS_KILL_MIB * 1024 {
                watch.killed_at_kib.store(rss, Ordering::SeqCst);
                // SAFETY: our own child; the test holds the `Child`, so the pid is not reused yet.
                unsafe { libc::kill(watch.pid as libc::pid_t, libc::SIGKILL) };
                return;
            }
            thread::sleep(RSS_SAMPLE);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------------------------

/// `127.0.0.<n>`: a loopback source address of its own, so the relay sees a different client IP.
pub fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Connects to `to` from the source address `from` (see `common::connect_from`).
pub fn connect_from(from: Ipv4Addr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    crate::common::connect_from(from, to, timeout)
}

/// A hello frame with every field given.
pub fn hello(name: &str, room: &str, password: &str, token: &str) -> Frame {
    crate::common::hello_as(name, room, password, token)
}

/// What came back on a raw connection.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    /// Nothing within the time limit.
    Timeout,
    /// The relay closed the connection (EOF or reset).
    Closed,
    /// Bytes that are not valid protocol, or another I/O error.
    Broken(String),
}

/// How a hello ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Welcome,
    Refused(ErrorCode, String),
    Closed,
    Timeout,
}

/// One connection that speaks frames by hand.
pub struct Raw {
    pub reader: FrameReader<TcpStream>,
}

impl Raw {
    /// Connects from `from`; fails after 5 s.
    pub fn connect(from: Ipv4Addr, to: SocketAddr) -> io::Result<Raw> {
        let stream = connect_from(from, to, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        // A relay that stops reading must fail our writes, not hang the test.
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Raw { reader: FrameReader::new(stream) })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.send_bytes(&encode_to_vec(frame).expect("the test's frames fit"))
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// The next frame, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Got {
        let timeout = timeout.max(Duration::from_millis(1));
        if self.reader.get_ref().set_read_timeout(Some(timeout)).is_err() {
            return Got::Closed;
        }
        match self.reader.read_frame() {
            Ok(Some(frame)) => Got::Frame(frame),
            Ok(None) => Got::Closed,
            Err(e) if e.is_timeout() => Got::Timeout,
            Err(ReadError::Io(e))
                if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) =>
            {
                Got::Closed
            }
            Err(ReadError::TruncatedAtEof { .. }) => Got::Closed,
            Err(e) => Got::Broken(e.to_string()),
        }
    }

    /// Reads until `pick` accepts a frame, skipping the others; `None` on timeout or close.
    pub fn recv_until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.recv(left) {
                Got::Frame(frame) => {
                    if let Some(found) = pick(&frame) {
                        return Some(found);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Reads frames until none arrives for `quiet` (or the relay closes); at most `max` time.
    pub fn drain(&mut self, quiet: Duration, max: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + max;
        let mut frames = Vec::new();
        while Instant::now() < deadline {
            match self.recv(quiet.min(deadline.saturating_duration_since(Instant::now()))) {
                Got::Frame(frame) => frames.push(frame),
                _ => break,
            }
        }
        frames
    }

    /// Sends `hello` and waits up to `timeout` for the answer: the welcome, or the refusal.
    pub fn say_hello(&mut self, hello: &Frame, timeout: Duration) -> Answer {
        if self.send(hello).is_err() {
            return Answer::Closed;
        }
        match self.recv(timeout) {
            Got::Frame(Frame::Welcome { .. }) => Answer::Welcome,
            Got::Frame(Frame::Error { code, message }) => Answer::Refused(code, message),
            Got::Frame(other) => Answer::Refused(ErrorCode::Other(0), format!("unexpected {other:?}")),
            Got::Timeout => Answer::Timeout,
            Got::Closed | Got::Broken(_) => Answer::Closed,
        }
    }

    /// Connects from `from` and says `hello`; the connection if welcomed, else the answer.
    pub fn join_with(
        from: Ipv4Addr,
        to: SocketAddr,
        hello: &Frame,
        timeout: Duration,
    ) -> Result<Raw, Answer> {
        let mut raw = Raw::connect(from, to).map_err(|_| Answer::Closed)?;
        match raw.say_hello(hello, timeout) {
            Answer::Welcome => Ok(raw),
            other => Err(other),
        }
    }

    /// A guest joins `room` as `name` from `from`; panics if refused.
    pub fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> Raw {
        match Raw::join_with(from, to, &hello(name, room, "", ""), Duration::from_secs(10)) {
            Ok(raw) => raw,
            Err(answer) => panic!("{name} from {from} could not join: {answer:?}"),
        }
    }

    /// Uploads `data` as one file (64 KiB chunks): `Ok(file_id)`, or the refusal's code and text.
    pub fn upload(
        &mut self,
        key: &str,
        name: &str,
        data: &[u8],
        to: &str,
    ) -> Result<u64, (ErrorCode, String)> {
        let wait = Duration::from_secs(10);
        let start =
            Frame::UploadStart { key: key.into(), name: name.into(), size: data.len() as u64, to: to.into() };
        self.send(&start).map_err(io_refusal)?;
        let (upload_id, offset) = self.upload_answer(wait)?;
        let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        for chunk in data[offset..].chunks(64 * 1024) {
            self.send(&Frame::UploadChunk { upload_id, data: chunk.to_vec() }).map_err(io_refusal)?;
        }
        let sha256: [u8; 32] = Sha256::digest(data).into();
        self.send(&Frame::UploadEnd { upload_id, sha256 }).map_err(io_refusal)?;
        self.upload_done(upload_id, wait)
    }

    /// Waits for the answer to an `UploadStart`: `(upload_id, offset)` or the refusal.
    pub fn upload_answer(&mut self, wait: Duration) -> Result<(u64, u64), (ErrorCode, String)> {
        let answer = self.recv_until(wait, |f| match f {
            Frame::UploadReady { upload_id, offset } => Some(Ok((*upload_id, *offset))),
            Frame::UploadFailed { code, message, .. } | Frame::Error { code, message } => {
                Some(Err((*code, message.clone())))
            }
            _ => None,
        });
        answer.unwrap_or_else(|| {
            Err((ErrorCode::Other(0), "no answer to UploadStart (timeout or closed)".into()))
        })
    }

    /// Waits for the end of upload `upload_id`: its file id, or the refusal.
    pub fn upload_done(&mut self, upload_id: u64, wait: Duration) -> Result<u64, (ErrorCode, String)> {
        let answer = self.recv_until(wait, |f| match f {
            Frame::UploadDone { upload_id: u, file_id } if *u == upload_id => Some(Ok(*file_id)),
            Frame::UploadFailed { upload_id: u, code, message } if *u == upload_id || *u == 0 => {
                Some(Err((*code, message.clone())))
            }
            Frame::Error { code, message } => Some(Err((*code, message.clone()))),
            _ => None,
        });
        answer.unwrap_or_else(|| {
            Err((ErrorCode::Other(0), "no answer to UploadEnd (timeout or closed)".into()))
        })
    }

    /// Downloads file `file_id` whole: its bytes, or the refusal.
    pub fn download(&mut self, file_id: u64) -> Result<Vec<u8>, (ErrorCode, String)> {
        self.send(&Frame::Download { file_id, offset: 0 }).map_err(io_refusal)?;
        let mut data = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(Frame::DownloadChunk { file_id: f, data: d }) if f == file_id => data.extend(d),
                Got::Frame(Frame::DownloadEnd { file_id: f, .. }) if f == file_id => return Ok(data),
                Got::Frame(Frame::DownloadFailed { code, message, .. })
                | Got::Frame(Frame::Error { code, message }) => return Err((code, message)),
                Got::Frame(_) => {}
                other => return Err((ErrorCode::Other(0), format!("download ended: {other:?}"))),
            }
        }
    }

    /// Every file waiting for us, across all `FileList` pages.
    pub fn list_files(&mut self) -> Option<Vec<relaychat::frame::FileInfo>> {
        self.send(&Frame::ListFiles).ok()?;
        let mut all = Vec::new();
        loop {
            let (files, more) = self.recv_until(Duration::from_secs(10), |f| match f {
                Frame::FileList { files, more } => Some((files.clone(), *more)),
                _ => None,
            })?;
            all.extend(files);
            if !more {
                return Some(all);
            }
        }
    }

    /// True if the relay has closed this connection (a read sees EOF or a reset, not a timeout).
    /// Frames that arrive first are skipped.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(_) => continue,
                Got::Timeout => return false,
                Got::Closed | Got::Broken(_) => return true,
            }
        }
    }
}

fn io_refusal(e: io::Error) -> (ErrorCode, String) {
    (ErrorCode::Other(0), format!("connection failed: {e}"))
}

/// Reads everything a connection receives on a thread of its own and keeps count, so a flooding
/// attacker's socket never fills (which would get it cut as too slow and end the attack early).
pub struct Tally {
    state: Arc<Mutex<TallyState>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default, Debug, Clone)]
pub struct TallyState {
    /// `Sent` receipts.
    pub receipts: usize,
    /// Error codes seen (`Error` and `UploadFailed` frames), in order.
    pub errors: Vec<ErrorCode>,
    /// The text of the first few errors.
    pub messages: Vec<String>,
    /// `Chat` frames, and their text bytes.
    pub chats: usize,
    pub chat_bytes: usize,
    /// True once the relay closed the connection.
    pub closed: bool,
}

impl TallyState {
    pub fn count(&self, code: ErrorCode) -> usize {
        self.errors.iter().filter(|c| **c == code).count()
    }
}

impl Tally {
    /// Starts counting on a clone of `raw`'s socket; `raw` keeps the writing side.
    pub fn start(raw: &Raw) -> Tally {
        let stream = raw.stream().try_clone().expect("clone a socket");
        let state = Arc::new(Mutex::new(TallyState::default()));
        let shared = state.clone();
        let thread = thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut reader = FrameReader::new(stream);
            // Ends when the `Tally` is dropped (checked between frames, and at least every 200 ms
            // while nothing arrives) or when the relay closes the connection.
            while Arc::strong_count(&shared) > 1 {
                match reader.read_frame() {
                    Ok(Some(frame)) => {
                        let mut s = shared.lock().unwrap();
                        match frame {
                            Frame::Sent { .. } => s.receipts += 1,
                            Frame::Error { code, message } | Frame::UploadFailed { code, message, .. } => {
                                s.errors.push(code);
                                if s.messages.len() < 5 {
                                    s.messages.push(message);
                                }
                            }
                            Frame::Chat { text, .. } => {
                                s.chats += 1;
                                s.chat_bytes += text.len();
                            }
                            _ => {}
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    _ => {
                        shared.lock().unwrap().closed = true;
                        return;
                    }
                }
            }
        });
        Tally { state, thread: Some(thread) }
    }

    pub fn get(&self) -> TallyState {
        self.state.lock().unwrap().clone()
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let thread = self.thread.take();
        let state = std::mem::replace(&mut self.state, Arc::new(Mutex::new(TallyState::default())));
        drop(state);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bystanders' latency
// ---------------------------------------------------------------------------------------------

/// How long one ping may take before it counts as lost.
const PING_LOST: Duration = Duration::from_secs(2);

/// Two guests in a room of their own (from 127.0.0.1): `a` sends a numbered message with a receipt
/// asked for every 100 ms (well under any per-sender rate limit), `b` times its arrival.
pub struct Latency {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LatencyReport>>,
}

/// What the bystanders saw.
#[derive(Debug, Default)]
pub struct LatencyReport {
    /// Time from `a` writing each message to `b` reading it.
    pub samples: Vec<Duration>,
    /// Messages that did not arrive within 2 s (also counted in `samples` as 2 s).
    pub lost: usize,
    /// Messages whose `Sent` receipt did not come within 3 s.
    pub missing_receipts: usize,
    /// Why sampling stopped early, if it did.
    pub broke: Option<String>,
}

impl LatencyReport {
    /// The 99th percentile (the largest sample when there are fewer than 100).
    pub fn p99(&self) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1);
        sorted[index.min(sorted.len() - 1)]
    }
}

impl Latency {
    pub fn start(relay: &Relay, tag: &str) -> Latency {
        let room = format!("quiet{tag}");
        let mut a = Raw::join(lo(1), relay.addr, &format!("pinger{tag}"), &room);
        let mut b = Raw::join(lo(1), relay.addr, &format!("ponger{tag}"), &room);
        // The online list, `a`'s "b joined" and any history.
        a.drain(Duration::from_millis(100), Duration::from_secs(2));
        b.drain(Duration::from_millis(100), Duration::from_secs(2));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || ping_loop(a, b, &flag));
        Latency { stop, thread: Some(thread) }
    }

    /// Stops sampling and returns what was seen.
    pub fn finish(mut self) -> LatencyReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("the latency thread panicked")
    }
}

impl Drop for Latency {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ping_loop(mut a: Raw, mut b: Raw, stop: &AtomicBool) -> LatencyReport {
    let mut report = LatencyReport::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let text = format!("ping {n}");
        let started = Instant::now();
        if let Err(e) = a.send(&Frame::Say { client_id: n, to: String::new(), text: text.clone() }) {
            report.broke = Some(format!("the pinger could not send: {e}"));
            break;
        }
        let arrived =
            b.recv_until(PING_LOST, |f| matches!(f, Frame::Chat { text: t, .. } if *t == text).then_some(()));
        let took = started.elapsed();
        if arrived.is_none() {
            report.lost += 1;
            report.samples.push(PING_LOST);
        } else {
            report.samples.push(took);
        }
        let receipt = a.recv_until(Duration::from_secs(3), |f| match f {
            Frame::Sent { client_id, .. } if *client_id == n => Some(()),
            _ => None,
        });
        if receipt.is_none() {
            report.missing_receipts += 1;
        }
        if arrived.is_none() && receipt.is_none() && a.closed_within(Duration::from_millis(1)) {
            report.broke = Some("the relay closed the bystanders' connection".into());
            break;
        }
        let rest = Duration::from_millis(100).saturating_sub(started.elapsed());
        thread::sleep(rest);
    }
    report
}

/// Free bytes on the file system holding `path` (what an unprivileged user may use).
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a plain struct for statvfs to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64)
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}
