//! Chat latency as a person sees it: a line typed into one client until it shows on another
//! client's screen, next to `ncat --chat` measured in the same run.
//!
//! ```text
//! cargo bench --bench latency                 # about 1 minute
//! cargo bench --bench latency -- --quick      # a smoke run, a few seconds
//! cargo bench --bench latency -- --only cli   # only the kinds whose label contains "cli"
//! cargo bench --bench latency -- --gap-us 0   # the next line right after the last one arrived
//! cargo bench --bench latency -- --lines 500  # lines per kind and round (default 2000)
//! ```
//!
//! What is measured, for every kind below, the same way:
//!
//! - **One line in flight.** The benchmark writes one line into client A, waits until it has
//!   arrived at client B, waits `--gap-us` (1 ms by default; see below) and sends the next.
//! - **CLI kinds** are real processes: the `server` and two `client` binaries of this build, or a
//!   `ncat --chat` broker and two `ncat` clients. A line is written into A's stdin (one `write`
//!   on the pipe) and has *arrived* when B's stdout has given us a whole line (up to its `\n`)
//!   that ends with the text sent. The clock stops when the `read` that completed that line
//!   returns. Other lines on B's stdout (join notices, ncat's announcements) are skipped.
//! - **Library kinds** are two `relaychat::client::Client`s in this process: the clock starts
//!   before `send_text` and stops when B's `events().recv()` returns the `Event::Chat`.
//! - **Interleaved rounds, pooled.** Every kind does a warm-up first, then the kinds take turns,
//!   a round of lines each, [`ROUNDS`] times; each kind's samples are pooled. Where the kernel
//!   happens to place threads drifts during a run, and taking turns spreads that luck over all
//!   kinds.
//! - **Baselines.** Plaintext kinds are compared with `ncat --chat`, TLS kinds with
//!   `ncat --ssl --chat` (its certificate is made here with rcgen). Without ncat the relaychat
//!   kinds still run and a `SKIP baseline ncat: not installed` line says so.
//!
//! Why a gap between lines: people type a few lines a second at most, so between two lines every
//! thread on the way has gone to sleep, and the first message pays for waking them. With no gap
//! (`--gap-us 0`) the relay's polling threads are still awake from the previous line, and the
//! interactive client's receipt for the previous line is still being handled while the next
//! one travels. 1 ms is past the relay's polling window (100 µs) and past a receipt's commit.

mod common;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{start_relay, UNLIMITED_RATES};
use crossbeam_channel::{unbounded, Receiver};
use relaychat::client::{Client, ClientConfig, Event, Security};

/// Interleaved rounds per kind (see the module docs).
const ROUNDS: usize = 3;
/// How long one line may take before the benchmark gives up on it (a lost line, a dead client).
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to connect and join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

struct Settings {
    warmup: usize,
    per_round: usize,
    gap: Duration,
    only: Option<String>,
}

fn main() {
    let settings = settings();
    let data = std::env::temp_dir().join(format!("relaychat-bench-latency-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("make the benchmark's temp dir");
    let result = run(&settings, &data);
    let _ = std::fs::remove_dir_all(&data);
    if let Err(e) = result {
        eprintln!("latency benchmark failed: {e}");
        std::process::exit(1);
    }
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    let gap_us = value("--gap-us").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let per_round = value("--lines").and_then(|v| v.parse().ok());
    Settings {
        warmup: if quick { 50 } else { 300 },
        per_round: per_round.unwrap_or(if quick { 200 } else { 2000 }),
        gap: Duration::from_micros(gap_us),
        only: value("--only"),
    }
}

fn run(settings: &Settings, data: &Path) -> io::Result<()> {
    println!(
        "relaychat chat latency, one line in flight (loopback, {ROUNDS} rounds x {} lines per kind, {} warm-up, gap {} µs)",
        settings.per_round,
        settings.warmup,
        settings.gap.as_micros()
    );
    // One relay for every relaychat kind, with TLS (the default) and plaintext allowed. Only one
    // line is ever in flight, so the kinds do not disturb each other.
    let relay_dir = data.join("relay");
    let args =
        [&UNLIMITED_RATES[..], &["--allow-plaintext", "--data-dir", relay_dir.to_str().unwrap()]].concat();
    let (_relay, addr) = start_relay(&args);
    let keys = ncat_keys(data)?;

    let mut kinds: Vec<Box<dyn Kind>> = Vec::new();
    let mut skipped = Vec::new();
    let wanted = |label: &str| settings.only.as_deref().is_none_or(|only| label.contains(only));
    let ncat = ncat_installed();
    if !ncat {
        println!("SKIP baseline ncat: not installed");
    }
    for label in ["ncat --chat", "ncat --ssl --chat"] {
        if ncat && wanted(label) {
            kinds.push(Box::new(NcatPair::start(label, label.contains("ssl"), &keys)?));
        }
    }
    for (label, tls) in [("relaychat cli, TLS", true), ("relaychat cli, plaintext", false)] {
        if wanted(label) {
            kinds.push(Box::new(CliPair::start(label, &addr, tls, data)?));
        }
    }
    for (label, tls) in [("relaychat library, TLS", true), ("relaychat library, plaintext", false)] {
        if wanted(label) {
            match LibraryPair::start(label, &addr, tls) {
                Ok(pair) => kinds.push(Box::new(pair)),
                Err(e) => skipped.push(format!("{label}: {e}")),
            }
        }
    }
    for why in &skipped {
        println!("SKIP {why}");
    }

    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); kinds.len()];
    for kind in kinds.iter_mut() {
        measure(kind.as_mut(), settings.warmup, settings.gap)?;
    }
    for _ in 0..ROUNDS {
        for (kind, pooled) in kinds.iter_mut().zip(samples.iter_mut()) {
            pooled.extend(measure(kind.as_mut(), settings.per_round, settings.gap)?);
        }
    }
    let labels: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
    report(&labels, samples);
    Ok(())
}

/// Something that can carry a line from A to B, one at a time.
trait Kind {
    fn label(&self) -> &str;
    /// Hands `text` to A; returns when it has been handed over.
    fn send(&mut self, text: &str) -> io::Result<()>;
    /// Waits until `text` has arrived at B; returns the moment it did.
    fn arrive(&mut self, text: &str) -> io::Result<Instant>;
}

/// Sends `count` lines one at a time; returns each one's latency in nanoseconds.
fn measure(kind: &mut dyn Kind, count: usize, gap: Duration) -> io::Result<Vec<u64>> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A unique line of ordinary chat length, so an old line can never be taken for this one.
        let text = format!("latency probe {n:08} the quick brown fox");
        let started = Instant::now();
        kind.send(&text)?;
        let arrived = kind.arrive(&text)?;
        samples.push(arrived.duration_since(started).as_nanos() as u64);
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
    Ok(samples)
}

fn report(labels: &[&str], samples: Vec<Vec<u64>>) {
    let stats: Vec<[f64; 3]> = samples.into_iter().map(percentiles).collect();
    let baseline = |label: &str| {
        let want = if label.contains("TLS") { "ncat --ssl --chat" } else { "ncat --chat" };
        labels.iter().position(|l| *l == want).map(|i| stats[i])
    };
    println!();
    println!("{:<32} {:>8} {:>8} {:>8}   vs baseline (p50, p99)", "one-way latency, µs", "p50", "p90", "p99");
    for (label, s) in labels.iter().zip(&stats) {
        let ratio = match baseline(label) {
            Some(b) if !label.starts_with("ncat") => {
                format!("   {:.2}x, {:.2}x", s[0] / b[0], s[2] / b[2])
            }
            _ => String::new(),
        };
        println!("{:<32} {:>8.1} {:>8.1} {:>8.1}{ratio}", label, s[0], s[1], s[2]);
    }
}

/// p50, p90 and p99 in microseconds (nearest rank).
fn percentiles(mut ns: Vec<u64>) -> [f64; 3] {
    ns.sort_unstable();
    let at = |p: f64| ns[((ns.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    [at(0.50), at(0.90), at(0.99)]
}

// ---- Processes: a line into one's stdin, lines out of another's stdout. ----

/// Child processes that are killed when the kind is dropped, so a failed run leaves none behind.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// B's stdout, read by the benchmark's own thread (no helper thread in between, which would add
/// a hand-off of its own to every measurement).
struct Lines {
    out: ChildStdout,
    buf: Vec<u8>,
}

impl Lines {
    /// Reads until a whole line ending with `text` has come, skipping other lines; returns the
    /// moment the `read` that completed it returned.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> io::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !readable_within(&self.out, left)? {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{text:?} did not arrive")));
            }
            let n = self.out.read(&mut chunk)?;
            let now = Instant::now();
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the receiving client exited"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut found = false;
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                found |= line[..end].ends_with(text.as_bytes());
            }
            if found {
                return Ok(now);
            }
        }
    }
}

/// Waits until `out` has something to read (or its end), for at most `timeout`: every wait in
/// the benchmark is bounded, and a blocking pipe `read` has no timeout of its own.
fn readable_within(out: &ChildStdout, timeout: Duration) -> io::Result<bool> {
    let mut fd = libc::pollfd { fd: out.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fd` is one valid pollfd for the duration of the call, and `out` keeps the
    // descriptor open.
    let ready = unsafe { libc::poll(&mut fd, 1, ms) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ready > 0)
}

/// Writes a line into a child's stdin: one `write` system call, as a terminal would.
fn type_line(stdin: &mut ChildStdin, text: &str) -> io::Result<()> {
    let mut line = Vec::with_capacity(text.len() + 1);
    line.extend_from_slice(text.as_bytes());
    line.push(b'\n');
    stdin.write_all(&line)
}

/// A child's output lines on a channel, read by a thread of their own. Used for what the
/// benchmark only needs to look at while setting up (and to keep the pipe from filling).
fn drain(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        let mut reader = io::BufReader::new(stream);
        let mut line = String::new();
        while matches!(io::BufRead::read_line(&mut reader, &mut line), Ok(n) if n > 0) {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    rx
}

/// Waits for a line containing `needle` on `lines`, for at most [`JOIN_TIMEOUT`].
fn expect(lines: &Receiver<String>, needle: &str, who: &str) -> io::Result<()> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while let Ok(line) = lines.recv_deadline(deadline) {
        if line.contains(needle) {
            return Ok(());
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("{who}: no line containing {needle:?}")))
}

// ---- relaychat's terminal client ----

/// Two `client` processes in a room of their own, on the benchmark's relay.
struct CliPair {
    label: String,
    a: ChildStdin,
    b: Lines,
    _children: Children,
}

impl CliPair {
    fn start(label: &str, addr: &str, tls: bool, data: &Path) -> io::Result<CliPair> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let room = format!("cli{n}");
        let (a_name, b_name) = (format!("a{n}"), format!("b{n}"));
        // A config dir of this run's own: the identity secret and the pinned relay key live
        // there, never in the real home. Stdin is a pipe, so a first contact is trusted with a
        // notice on stderr.
        let config = data.join("config");
        let start = |name: &str| -> io::Result<(Child, Receiver<String>)> {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_client"));
            cmd.args(["--cli", "--server", addr, "--name", name, "--room", &room])
                .arg("--downloads")
                .arg(data.join("downloads"))
                .env("RELAYCHAT_CONFIG_DIR", &config)
                .env("XDG_CONFIG_HOME", &config)
                .env_remove("DISPLAY")
                .env_remove("WAYLAND_DISPLAY")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if !tls {
                cmd.arg("--plaintext");
            }
            let mut child = cmd.spawn()?;
            let _stderr = drain(child.stderr.take().expect("piped stderr"));
            Ok((child, _stderr))
        };
        let (mut a, _) = start(&a_name)?;
        let a_out = drain(a.stdout.take().expect("piped stdout"));
        expect(&a_out, "connected to", &a_name)?;
        let a_in = a.stdin.take().expect("piped stdin");
        // B's stdin stays open inside its `Child` (EOF would make B leave) until the pair ends.
        let (mut b, _) = start(&b_name)?;
        let b_out = b.stdout.take().expect("piped stdout");
        let children = Children(vec![a, b]);
        // A hears B join: from then on the relay delivers A's lines to B.
        expect(&a_out, &format!("* {b_name} joined"), &a_name)?;
        Ok(CliPair {
            label: label.to_owned(),
            a: a_in,
            b: Lines { out: b_out, buf: Vec::new() },
            _children: children,
        })
    }
}

impl Kind for CliPair {
    fn label(&self) -> &str {
        &self.label
    }
    fn send(&mut self, text: &str) -> io::Result<()> {
        type_line(&mut self.a, text)
    }
    fn arrive(&mut self, text: &str) -> io::Result<Instant> {
        self.b.wait_for(text, LINE_TIMEOUT)
    }
}

// ---- ncat ----

fn ncat_installed() -> bool {
    Command::new("ncat").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// The certificate and key for `ncat --ssl`, made with rcgen (ncat would otherwise make a fresh
/// RSA key at every start).
struct NcatKeys {
    cert: PathBuf,
    key: PathBuf,
}

fn ncat_keys(data: &Path) -> io::Result<NcatKeys> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).map_err(io::Error::other)?;
    let keys = NcatKeys { cert: data.join("ncat-cert.pem"), key: data.join("ncat-key.pem") };
    std::fs::write(&keys.cert, made.cert.pem())?;
    std::fs::write(&keys.key, made.signing_key.serialize_pem())?;
    Ok(keys)
}

/// A `ncat --chat` broker and two `ncat` clients.
struct NcatPair {
    label: String,
    a: ChildStdin,
    b: Lines,
    _children: Children,
}

impl NcatPair {
    fn start(label: &str, tls: bool, keys: &NcatKeys) -> io::Result<NcatPair> {
        let port = free_port()?;
        let mut children = Children(Vec::new());
        let mut broker = Command::new("ncat");
        if tls {
            broker.arg("--ssl").arg("--ssl-cert").arg(&keys.cert).arg("--ssl-key").arg(&keys.key);
        }
        broker.args(["-l", "--chat", "127.0.0.1", &port.to_string()]);
        children.0.push(broker.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        wait_listening(port)?;
        let client = || -> io::Result<Child> {
            let mut cmd = Command::new("ncat");
            if tls {
                cmd.arg("--ssl");
            }
            cmd.args(["127.0.0.1", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        };
        // ncat greets each newcomer with "already connected: …" once the broker has it; wait for
        // A's before B starts, and B's before measuring, so no line goes to an empty room.
        children.0.push(client()?);
        let a_out = drain(children.0[1].stdout.take().expect("piped stdout"));
        expect(&a_out, "already connected", "ncat A")?;
        children.0.push(client()?);
        let b_out = drain_until(children.0[2].stdout.take().expect("piped stdout"), "already connected")?;
        let a_in = children.0[1].stdin.take().expect("piped stdin");
        Ok(NcatPair { label: label.to_owned(), a: a_in, b: b_out, _children: children })
    }
}

impl Kind for NcatPair {
    fn label(&self) -> &str {
        &self.label
    }
    fn send(&mut self, text: &str) -> io::Result<()> {
        type_line(&mut self.a, text)
    }
    fn arrive(&mut self, text: &str) -> io::Result<Instant> {
        // ncat shows it as "<userN> TEXT".
        self.b.wait_for(text, LINE_TIMEOUT)
    }
}

/// Reads B's stdout on this thread until a line contains `needle`; keeps the stream for timing.
fn drain_until(out: ChildStdout, needle: &str) -> io::Result<Lines> {
    let mut lines = Lines { out, buf: Vec::new() };
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        if !readable_within(&lines.out, deadline.saturating_duration_since(Instant::now()))? {
            break;
        }
        let n = lines.out.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        lines.buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = find(&lines.buf, needle.as_bytes()) {
            // Keep only what follows that line.
            let end =
                lines.buf[at..].iter().position(|&b| b == b'\n').map_or(lines.buf.len(), |i| at + i + 1);
            lines.buf.drain(..end);
            return Ok(lines);
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("ncat B: no line containing {needle:?}")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something listens on `port` (ncat has no "ready" line), for at most
/// [`JOIN_TIMEOUT`]. The probe connection joins the chat for a moment, before anyone else.
fn wait_listening(port: u16) -> io::Result<()> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ---- relaychat's library ----

/// Two [`Client`]s in this process, in a room of their own.
struct LibraryPair {
    label: String,
    a: Client,
    b: Client,
}

impl LibraryPair {
    fn start(label: &str, addr: &str, tls: bool) -> io::Result<LibraryPair> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let room = format!("lib{n}");
        let join = |name: &str| -> io::Result<Client> {
            let mut config = common::bench_config(name, &room);
            if !tls {
                config = ClientConfig { security: Security::Plaintext, ..config };
            }
            let client = Client::connect_tcp(addr, &config).map_err(io::Error::other)?;
            next_event(&client, |e| matches!(e, Event::Online { .. }))?;
            Ok(client)
        };
        let a = join(&format!("liba{n}"))?;
        let b = join(&format!("libb{n}"))?;
        next_event(&a, |e| matches!(e, Event::Joined { .. }))?;
        Ok(LibraryPair { label: label.to_owned(), a, b })
    }
}

fn next_event(client: &Client, wanted: impl Fn(&Event) -> bool) -> io::Result<Event> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while let Ok(event) = client.events().recv_deadline(deadline) {
        if wanted(&event) {
            return Ok(event);
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "the expected event did not come"))
}

impl Kind for LibraryPair {
    fn label(&self) -> &str {
        &self.label
    }
    fn send(&mut self, text: &str) -> io::Result<()> {
        self.a.send_text(text).map_err(io::Error::other)
    }
    fn arrive(&mut self, text: &str) -> io::Result<Instant> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        while let Ok(event) = self.b.events().recv_deadline(deadline) {
            if matches!(&event, Event::Chat { text: got, .. } if got == text) {
                return Ok(Instant::now());
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("{text:?} did not arrive")))
    }
}
