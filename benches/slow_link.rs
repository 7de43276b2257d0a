//! Chat during a file transfer on a slow link: how long a chat line waits behind file data, and
//! how much of the link the file gets, with the writers' pacing off (the old behaviour, the
//! baseline) and on (`outbox::Pacing::DEFAULT`), measured in the same run.
//!
//! ```text
//! cargo bench --bench slow_link                  # 16 Mbit/s, 16 MiB files, two rounds
//! cargo bench --bench slow_link -- --size-mib 40 --rounds 1
//! ```
//!
//! The link is made, not simulated: the bench re-runs itself inside a private network namespace
//! (`unshare -n`, which needs root), brings its loopback up with an MTU of 1500, and limits it
//! with an `htb` class of `rate 16mbit ceil 16mbit` (`netem` is not available here, and not
//! needed). Everything crossing the link, both ways, shares that one class, as on a home uplink.
//! Without root it prints a SKIP line and exits 0.
//!
//! Each round, for each pacing:
//! - **download**: bob's file waits on the relay (uploaded before the link is slowed); alice
//!   downloads it while bob sends her a timestamped line every 100 ms;
//! - **upload**: alice uploads a file to bob while she sends him a line every 100 ms.
//!
//! A line's delay is from the `send_text` call to its `Chat` event at the receiver (one process,
//! one clock). Throughput is the file's bytes over the transfer's time, against the link rate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use relaychat::client::{Client, Event};
use relaychat::outbox::Pacing;
use relaychat::server::{Server, ServerConfig, ShutdownHandle, StoreLimits};

const MIB: u64 = 1 << 20;
const LINK_MBIT: f64 = 16.0;
/// Marks the copy of this bench that runs inside the namespace.
const INSIDE: &str = "RELAYCHAT_SLOW_LINK_INSIDE";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os(INSIDE).is_none() {
        std::process::exit(enter_namespace(&args));
    }
    let size_mib: u64 = flag_value(&args, "--size-mib").unwrap_or(16);
    let rounds: usize = flag_value(&args, "--rounds").unwrap_or(2);
    sh("ip link set lo up");
    sh("ip link set lo mtu 1500");
    let work = std::env::temp_dir().join(format!("relaychat-slow-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let file = work.join("payload.bin");
    write_random(&file, size_mib * MIB);
    println!("link: {LINK_MBIT} Mbit/s (htb), MTU 1500, file {size_mib} MiB, a chat line every 100 ms");
    println!(
        "{:<10} {:<9} {:>6} {:>9} {:>9} {:>9} {:>11} {:>7}",
        "pacing", "transfer", "lines", "p50 ms", "p90 ms", "max ms", "Mbit/s", "of link"
    );
    let mut results: Vec<(&str, &str, Outcome)> = Vec::new();
    for round in 0..rounds {
        for (label, pacing) in [("off", Pacing::OFF), ("on", Pacing::DEFAULT)] {
            let dir = work.join(format!("r{round}-{label}"));
            for (what, outcome) in
                [("download", download(&dir, &file, pacing)), ("upload", upload(&dir, &file, pacing))]
            {
                outcome.print(label, what);
                results.push((label, what, outcome));
            }
        }
    }
    println!();
    println!("medians over {rounds} round(s):");
    for label in ["off", "on"] {
        for what in ["download", "upload"] {
            let mut delays: Vec<f64> = Vec::new();
            let mut rates: Vec<f64> = Vec::new();
            for (_, _, o) in results.iter().filter(|(l, w, _)| *l == label && *w == what) {
                delays.extend(&o.delays_ms);
                rates.push(o.mbit);
            }
            Outcome::from_parts(delays, median(&mut rates)).print(label, what);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Re-runs this bench inside `unshare -n`; returns the exit code to use.
fn enter_namespace(args: &[String]) -> i32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !root || !have("unshare") || !have("tc") || !have("ip") {
        println!("SKIP slow_link: needs root and unshare, ip and tc (to build a slow link in a private network namespace)");
        return 0;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args(&args[1..])
        .env(INSIDE, "1")
        .status()
        .expect("run unshare");
    status.code().unwrap_or(1)
}

fn sh(command: &str) {
    let status = Command::new("sh").args(["-c", command]).status().expect("run sh");
    assert!(status.success(), "failed: {command}");
}

/// The slow link: everything on `lo` through one 16 Mbit/s htb class.
fn slow_down() {
    sh("tc qdisc add dev lo root handle 1: htb default 10");
    sh(&format!("tc class add dev lo parent 1: classid 1:10 htb rate {LINK_MBIT}mbit ceil {LINK_MBIT}mbit"));
}

fn speed_up() {
    sh("tc qdisc del dev lo root");
}

struct Outcome {
    delays_ms: Vec<f64>,
    mbit: f64,
}

impl Outcome {
    fn from_parts(mut delays_ms: Vec<f64>, mbit: f64) -> Outcome {
        delays_ms.sort_by(|a, b| a.total_cmp(b));
        Outcome { delays_ms, mbit }
    }

    fn pct(&self, p: f64) -> f64 {
        let d = &self.delays_ms;
        d.get(((d.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
    }

    fn print(&self, label: &str, what: &str) {
        println!(
            "{label:<10} {what:<9} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>11.2} {:>6.0}%",
            self.delays_ms.len(),
            self.pct(0.5),
            self.pct(0.9),
            self.pct(1.0),
            self.mbit,
            100.0 * self.mbit / LINK_MBIT
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A relay with `pacing`, in this process, on a fresh data dir.
fn relay(dir: &Path, pacing: Pacing) -> (String, ShutdownHandle, thread::JoinHandle<()>) {
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("relay"),
        pacing,
        limits: StoreLimits { max_file_size: 1 << 40, quota: 1 << 40, min_free: 0, ..Default::default() },
        ..ServerConfig::default()
    };
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let handle = server.shutdown_handle().unwrap();
    let thread = thread::spawn(move || server.run().unwrap());
    (addr, handle, thread)
}

fn join(addr: &str, name: &str, pacing: Pacing) -> Client {
    let mut config = common::bench_config(name, "bench");
    config.pacing = pacing;
    let client = Client::connect_tcp(addr, &config).unwrap();
    next(&client, |e| matches!(e, Event::Online { .. }));
    client
}

/// Waits for the first event `pick` accepts; a failed transfer ends the bench.
fn next(client: &Client, mut pick: impl FnMut(&Event) -> bool) {
    loop {
        let event = client.events().recv_timeout(Duration::from_secs(300)).expect("an event in time");
        if let Event::TransferFailed { reason, .. } = &event {
            panic!("transfer failed: {reason}");
        }
        if pick(&event) {
            return;
        }
    }
}

/// Sends a line stamped with the time since `epoch` every 100 ms until `done` (at most 10 000).
fn chatter(
    sender: Client,
    to: &'static str,
    epoch: Instant,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<Client> {
    thread::spawn(move || {
        for _ in 0..10_000 {
            if done.load(Ordering::Relaxed) {
                break;
            }
            let stamp = epoch.elapsed().as_micros().to_string();
            let sent = if to.is_empty() { sender.send_text(&stamp) } else { sender.send_direct(to, &stamp) };
            sent.unwrap();
            thread::sleep(Duration::from_millis(100));
        }
        sender
    })
}

/// The delay of a stamped line that just arrived.
fn delay_ms(text: &str, epoch: Instant) -> Option<f64> {
    let sent: u128 = text.parse().ok()?;
    Some((epoch.elapsed().as_micros().saturating_sub(sent)) as f64 / 1000.0)
}

fn download(dir: &Path, file: &Path, pacing: Pacing) -> Outcome {
    let (addr, handle, relay_thread) = relay(dir, pacing);
    let alice = join(&addr, "alice", pacing);
    let bob = join(&addr, "bob", pacing);
    bob.send_file(file, Some("alice")).unwrap();
    next(&bob, |e| matches!(e, Event::Uploaded { .. }));
    next(&alice, |e| matches!(e, Event::NewFile(_)));
    slow_down();
    let epoch = Instant::now();
    let size = std::fs::metadata(file).unwrap().len();
    let downloads: PathBuf = dir.join("downloads");
    alice.receive_all(&downloads).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let bob = chatter(bob, "alice", epoch, done.clone());
    let mut delays = Vec::new();
    let mut took = None;
    loop {
        match alice.events().recv_timeout(Duration::from_secs(300)).expect("an event in time") {
            Event::Chat { text, .. } => delays.extend(delay_ms(&text, epoch)),
            Event::Downloaded { .. } => took = Some(epoch.elapsed()),
            Event::ReceiveFinished { .. } => break,
            Event::TransferFailed { reason, .. } => panic!("download failed: {reason}"),
            _ => {}
        }
    }
    done.store(true, Ordering::Relaxed);
    let bob = bob.join().unwrap();
    speed_up();
    let secs = took.expect("the file arrived").as_secs_f64();
    bob.close();
    alice.close();
    handle.shutdown();
    relay_thread.join().unwrap();
    Outcome::from_parts(delays, size as f64 * 8.0 / 1e6 / secs)
}

fn upload(dir: &Path, file: &Path, pacing: Pacing) -> Outcome {
    let (addr, handle, relay_thread) = relay(&dir.join("up"), pacing);
    let alice = join(&addr, "alice", pacing);
    let bob = join(&addr, "bob", pacing);
    slow_down();
    let epoch = Instant::now();
    let size = std::fs::metadata(file).unwrap().len();
    alice.send_file(file, Some("bob")).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    // Alice chats with the room (bob) from the connection that carries her upload.
    let alice = chatter(alice, "", epoch, done.clone());
    let mut delays = Vec::new();
    loop {
        match bob.events().recv_timeout(Duration::from_secs(300)).expect("an event in time") {
            Event::Chat { text, .. } => delays.extend(delay_ms(&text, epoch)),
            Event::NewFile(info) if info.sha256.is_some() => break, // stored and verified on the relay
            _ => {}
        }
    }
    let secs = epoch.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let alice = alice.join().unwrap();
    speed_up();
    alice.close();
    bob.close();
    handle.shutdown();
    relay_thread.join().unwrap();
    Outcome::from_parts(delays, size as f64 * 8.0 / 1e6 / secs)
}

fn write_random(path: &Path, size: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state: u64 = 0x501_5015_0150_1501;
    let mut left = size;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = left.min(8) as usize;
        out.write_all(&state.to_le_bytes()[..n]).unwrap();
        left -= n as u64;
    }
}

/// The value after `--flag` on the command line, if present and parseable.
fn flag_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}
