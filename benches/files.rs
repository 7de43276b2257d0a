//! File transfer benchmark: upload and download of a large random file through the real relay,
//! next to a baseline measured in the same run, plus memory and chat latency during a transfer.
//!
//! ```text
//! cargo bench --bench files                   # 1 GiB, 3 rounds, a few minutes
//! cargo bench --bench files -- --size-mib 2048 --rounds 1
//! cargo bench --bench files -- --quick        # 64 MiB smoke run
//! cargo bench --bench files -- --sweep        # also compare chunk sizes 64/128/256 KiB
//! ```
//!
//! - Upload and download use the real `server` and `client` binaries (`client send --to` and
//!   `client receive`), timed from process start to exit, with every byte hashed at both ends.
//!   Rounds of baseline / upload / baseline / download are interleaved; medians are reported.
//! - Baseline: the same bytes from the same file through one plain TCP connection on loopback with
//!   128 KiB buffers, written to a file: a byte relay with no protocol, no hashing.
//! - Memory: VmHWM (peak RSS) of the relay and of each client process, sampled from /proc.
//! - Chat during a transfer: a library client downloads while another sends a timestamped line
//!   every 20 ms; we report how long those lines took to arrive.
//!
//! All files live in the system temp dir; they are removed at the end.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{rss_kib, start_relay};
use relaychat::client::{Client, Event};
use relaychat::server::{Server, ServerConfig};

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sweep = args.iter().any(|a| a == "--sweep");
    let size_mib: u64 = flag_value(&args, "--size-mib").unwrap_or(if quick { 64 } else { 1024 });
    let work = std::env::temp_dir().join(format!("relaychat-bench-files-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let rounds: usize = flag_value(&args, "--rounds").unwrap_or(if quick { 1 } else { 3 });
    let settle = Duration::from_secs(if quick { 0 } else { 10 });
    let result = std::panic::catch_unwind(|| run(&work, size_mib, rounds, settle, sweep));
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(
        std::env::temp_dir().join(format!("relaychat-bench-config-{}", std::process::id())),
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The value after `--flag` on the command line, if present and parseable.
fn flag_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn run(work: &Path, size_mib: u64, rounds: usize, settle: Duration, sweep: bool) {
    let size = size_mib * MIB;
    println!(
        "relaychat file benchmark: {size_mib} MiB of random data on loopback, {rounds} round(s), {} s settle",
        settle.as_secs()
    );
    let source = work.join("source.bin");
    write_random(&source, size);
    // On this VM, writing to a page of memory the host has not backed yet is several times slower
    // than writing to one it has, and memory freed for a few seconds is handed back to the host
    // (free page reporting). Whether a file lands in "cold" or "warm" pages would then depend on
    // what ran just before. So every timed step starts after `SETTLE`: all of them meet cold
    // memory, as a real transfer on an idle machine does.
    let settle = || thread::sleep(settle);

    let data_dir = work.join("relay-data");
    let (relay, addr) =
        start_relay(&["--data-dir", data_dir.to_str().unwrap(), "--max-file-size", "64G", "--quota", "64G"]);
    let relay_pid = relay.0.id();
    thread::sleep(Duration::from_millis(200));
    let relay_idle = rss_kib(relay_pid, "VmRSS");
    let relay_peak = Arc::new(AtomicU64::new(0));
    let sampler = sample_peak(relay_pid, relay_peak.clone());

    let src = source.to_str().unwrap();
    let downloads = work.join("downloads");
    let dl = downloads.to_str().unwrap();
    let (mut base, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let (mut up_peak, mut down_peak) = (0, 0);
    // Files wait only for names someone owns: benchbob claims his once (a receive of nothing).
    timed_client(&["receive", "--server", &addr, "--name", "benchbob", "--downloads", dl]);
    let mbps = |secs: f64| size as f64 / 1e6 / secs;
    // Interleaved, so that the machine's mood (page cache, writeback) is spread over all three.
    for round in 1..=rounds {
        settle();
        base.push(baseline(&source, &work.join("baseline.bin")));
        settle();
        let u = timed_client(&["send", src, "--to", "benchbob", "--server", &addr, "--name", "benchalice"]);
        settle();
        base.push(baseline(&source, &work.join("baseline.bin")));
        settle();
        let d = timed_client(&["receive", "--server", &addr, "--name", "benchbob", "--downloads", dl]);
        assert_eq!(file_hash(&source), file_hash(&downloads.join("source.bin")), "downloaded bytes differ");
        let _ = fs::remove_dir_all(&downloads);
        println!(
            "  round {round}: baseline {:.0} / {:.0} MB/s, upload {:.0} MB/s, download {:.0} MB/s",
            base[base.len() - 2],
            base[base.len() - 1],
            mbps(u.secs),
            mbps(d.secs)
        );
        up.push(mbps(u.secs));
        down.push(mbps(d.secs));
        up_peak = up_peak.max(u.peak_kib);
        down_peak = down_peak.max(d.peak_kib);
    }
    sampler.stop();
    let relay_peak = relay_peak.load(Ordering::Relaxed).max(rss_kib(relay_pid, "VmHWM"));
    drop(relay);

    let (base, up, down) = (median(base), median(up), median(down));
    println!();
    println!("{:<44} {:>10} {:>12}", "medians", "MB/s", "vs baseline");
    println!("{:<44} {:>10.0}", "baseline: plain TCP copy, 128 KiB buffers", base);
    println!("{:<44} {:>10.0} {:>11.2}x", "upload  (client send -> relay disk)", up, up / base);
    println!("{:<44} {:>10.0} {:>11.2}x", "download (relay disk -> client receive)", down, down / base);
    println!();
    println!(
        "peak RSS (KiB): relay idle {relay_idle}, relay peak {relay_peak} (+{} KiB)",
        relay_peak.saturating_sub(relay_idle)
    );
    println!("peak RSS (KiB): sending client {up_peak}, receiving client {down_peak}");

    chat_during_download(work, size.min(256 * MIB));
    if sweep {
        chunk_sweep(work, size.min(512 * MIB));
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Writes `size` bytes from a fast xorshift generator (incompressible, not cryptographic).
fn write_random(path: &Path, size: u64) {
    let mut file = File::create(path).unwrap();
    let mut state: u64 = 0x501_5015_0150_1501;
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = buf.len().min(left as usize);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

fn file_hash(path: &Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut file = File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hasher.finalize().into()
}

/// MB/s of a plain TCP copy: file -> 128 KiB writes -> loopback -> 128 KiB reads -> file.
fn baseline(source: &Path, target: &Path) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let size = fs::metadata(source).unwrap().len();
    let started = Instant::now();
    let source = source.to_owned();
    let sender = thread::spawn(move || {
        let mut file = File::open(source).unwrap();
        let mut socket = TcpStream::connect(addr).unwrap();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            socket.write_all(&buf[..n]).unwrap();
        }
    });
    let (mut socket, _) = listener.accept().unwrap();
    let mut out = File::create(target).unwrap();
    let mut buf = vec![0u8; 128 * 1024];
    let mut got = 0u64;
    loop {
        let n = socket.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).unwrap();
        got += n as u64;
    }
    drop(out);
    sender.join().unwrap();
    assert_eq!(got, size);
    let secs = started.elapsed().as_secs_f64();
    let _ = fs::remove_file(target);
    size as f64 / 1e6 / secs
}

/// Samples a process's VmHWM every 20 ms into `peak` until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sample_peak(pid: u32, peak: Arc<AtomicU64>) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            peak.fetch_max(rss_kib(pid, "VmHWM"), Ordering::Relaxed);
            thread::sleep(Duration::from_millis(20));
        }
    });
    Sampler { stop, thread: Some(thread) }
}

struct Timed {
    secs: f64,
    peak_kib: u64,
}

/// Runs the client binary to the end; its wall time and peak RSS.
fn timed_client(args: &[&str]) -> Timed {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        // The clients' identity file goes to a scratch dir of this run, never into the real home.
        // It is what keeps benchbob's name (no password: an argon2 hash would add ~19 MiB to the
        // relay's peak). The relay's key is pinned there too, on first contact; a dir of this run
        // only, so a later run's new relay on a reused port is not taken for a changed key.
        .env(
            "RELAYCHAT_CONFIG_DIR",
            std::env::temp_dir().join(format!("relaychat-bench-config-{}", std::process::id())),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the client binary");
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = sample_peak(child.id(), peak.clone());
    let status = child.wait().unwrap();
    let secs = started.elapsed().as_secs_f64();
    sampler.stop();
    assert!(status.success(), "client {args:?} failed");
    Timed { secs, peak_kib: peak.load(Ordering::Relaxed) }
}

/// A relay on its own thread, for the library-based measurements.
fn library_relay(
    data_dir: &Path,
    chunk: usize,
) -> (std::net::SocketAddr, relaychat::server::ShutdownHandle, thread::JoinHandle<()>) {
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        chunk_size: chunk,
        limits: relaychat::server::StoreLimits {
            max_file_size: 1 << 40,
            quota: 1 << 40,
            min_free: 0,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle().unwrap();
    let thread = thread::spawn(move || server.run().unwrap());
    (addr, handle, thread)
}

fn join(addr: &str, name: &str, chunk: usize) -> Client {
    let mut config = common::bench_config(name, "bench");
    config.chunk_size = chunk;
    Client::connect_tcp(addr, &config).unwrap()
}

fn wait_event(client: &Client, mut pick: impl FnMut(&Event) -> bool) {
    loop {
        let event = client.events().recv_timeout(Duration::from_secs(600)).expect("event");
        if let Event::TransferFailed { reason, .. } = &event {
            panic!("transfer failed: {reason}");
        }
        if pick(&event) {
            return;
        }
    }
}

/// Latency of chat lines sent every 20 ms to a client that is busy downloading.
fn chat_during_download(work: &Path, size: u64) {
    let dir = work.join("chat-relay");
    let (addr, handle, thread) = library_relay(&dir, relaychat::server::DEFAULT_CHUNK);
    let addr = addr.to_string();
    let source = work.join("chat-source.bin");
    write_random(&source, size);
    let sender = join(&addr, "sender", relaychat::server::DEFAULT_CHUNK);
    let receiver = join(&addr, "receiver", relaychat::server::DEFAULT_CHUNK);
    sender.send_file(&source, Some("receiver")).unwrap();
    wait_event(&sender, |e| matches!(e, Event::Uploaded { .. }));
    let downloads = work.join("chat-downloads");
    let started = Instant::now();
    receiver.receive_all(&downloads).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let pinger = {
        let done = done.clone();
        thread::spawn(move || {
            let mut sent = 0;
            while !done.load(Ordering::Relaxed) && sent < 10_000 {
                sender.send_text(&format!("{}", started.elapsed().as_micros())).unwrap();
                sent += 1;
                thread::sleep(Duration::from_millis(20));
            }
            sender
        })
    };
    let mut delays = Vec::new();
    loop {
        match receiver.events().recv_timeout(Duration::from_secs(600)).expect("event") {
            Event::Chat { text, .. } => {
                let sent_us: u128 = text.parse().unwrap_or(0);
                delays.push((started.elapsed().as_micros() - sent_us) as f64 / 1000.0);
            }
            Event::ReceiveFinished { .. } => break,
            Event::TransferFailed { reason, .. } => panic!("{reason}"),
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let sender = pinger.join().unwrap();
    delays.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| delays.get(((delays.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN);
    println!();
    println!(
        "chat during a {} MiB download ({:.0} MB/s): {} lines, delay p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        size / MIB,
        size as f64 / 1e6 / secs,
        delays.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    sender.close();
    receiver.close();
    handle.shutdown();
    thread.join().unwrap();
    let _ = fs::remove_file(&source);
    let _ = fs::remove_dir_all(&downloads);
}

/// Upload and download speed through the library for several chunk sizes.
fn chunk_sweep(work: &Path, size: u64) {
    let source = work.join("sweep.bin");
    write_random(&source, size);
    println!();
    println!("chunk size sweep, {} MiB through the library (in-process relay)", size / MIB);
    for chunk_kib in [64usize, 128, 256] {
        let chunk = chunk_kib * 1024;
        let dir: PathBuf = work.join(format!("sweep-{chunk_kib}"));
        let (addr, handle, thread) = library_relay(&dir, chunk);
        let addr = addr.to_string();
        let alice = join(&addr, "alice", chunk);
        let bob = join(&addr, "bob", chunk);
        let t = Instant::now();
        alice.send_file(&source, Some("bob")).unwrap();
        wait_event(&alice, |e| matches!(e, Event::Uploaded { .. }));
        let up = size as f64 / 1e6 / t.elapsed().as_secs_f64();
        let downloads = work.join(format!("sweep-dl-{chunk_kib}"));
        let t = Instant::now();
        bob.receive_all(&downloads).unwrap();
        wait_event(&bob, |e| matches!(e, Event::ReceiveFinished { .. }));
        let down = size as f64 / 1e6 / t.elapsed().as_secs_f64();
        println!("  {chunk_kib:>3} KiB chunks: upload {up:>6.0} MB/s, download {down:>6.0} MB/s");
        alice.close();
        bob.close();
        handle.shutdown();
        thread.join().unwrap();
        let _ = fs::remove_dir_all(&downloads);
        let _ = fs::remove_dir_all(&dir);
    }
}
