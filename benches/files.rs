//! File transfer benchmark: upload and download of a large random file through the real relay,
//! on the TLS path and on the plaintext path, each next to a socat baseline from the same run,
//! plus memory and chat latency during a transfer.
//!
//! ```text
//! cargo bench --bench files                   # 1 GiB, 3 rounds, about 5 minutes
//! cargo bench --bench files -- --no-sendfile-too --before DIR    # what README's run F ran
//! cargo bench --bench files -- --quick        # 64 MiB, 1 round, no pauses: a smoke run
//! cargo bench --bench files -- --size-mib 2048 --rounds 1
//! cargo bench --bench files -- --before /work/wt-files-base/target/release   # old vs new
//! cargo bench --bench files -- --sweep        # also compare chunk sizes 64/128/256 KiB
//! ```
//!
//! - Upload and download use the real `server` and `client` binaries (`client send --to` and
//!   `client receive`, with `--plaintext` for the plaintext path; the relay runs with
//!   `--allow-plaintext` and serves both), timed from process start to exit, with every byte
//!   hashed at both ends.
//! - Baselines (`files/socat.rs`): socat moving the same file over loopback into a file, plaintext
//!   (`TCP-LISTEN`) and TLS (`OPENSSL-LISTEN`), in the same direction as the step it is compared
//!   with. Every step of a round is interleaved with its baseline; medians are reported, and each
//!   relaychat median is divided by its own baseline's median.
//! - `--no-sendfile-too` also runs the plaintext steps on a second relay of this build with
//!   `--no-sendfile`: downloads read into memory, as over TLS, against sendfile.
//! - `--before DIR` also runs the `server` and `client` binaries found in DIR (an older build) in
//!   every round, on a relay of their own, so old and new meet the same machine.
//! - Memory: VmHWM (peak RSS) of each relay and of each client process, sampled from /proc.
//! - Chat during a transfer: a library client downloads while another sends a timestamped line
//!   every 20 ms; we report how long those lines took to arrive.
//! - Sender to recipient, both online (this build's relay, TLS and plaintext, library clients in
//!   this process): from the sender's `send_file` until the recipient's copy is verified, with
//!   the recipient downloading the file as it arrives, against the upload alone in the same round
//!   (the issue's aim: at most 1.3x). Also the old way for comparison: the upload, then the
//!   download of the stored file.
//!
//! All files live in the system temp dir; they are removed at the end.

mod common;
#[path = "files/socat.rs"]
mod socat;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{rss_kib, start_relay_binary};
use relaychat::client::{Client, Event};
use relaychat::server::{Server, ServerConfig};
use socat::{Socat, Way, Wire};

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
    let settle = Duration::from_secs(flag_value(&args, "--settle").unwrap_or(if quick { 0 } else { 10 }));
    let before: Option<PathBuf> = flag_value(&args, "--before");
    let skip_no_sendfile = !args.iter().any(|a| a == "--no-sendfile-too");
    let plan = Plan { size: size_mib * MIB, rounds, settle, before, skip_no_sendfile };
    let result = std::panic::catch_unwind(|| run(&work, &plan, sweep));
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(config_dir());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The value after `--flag` on the command line, if present and parseable.
fn flag_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// What one run measures.
struct Plan {
    size: u64,
    rounds: usize,
    /// The pause before every timed step (see `run`).
    settle: Duration,
    /// A directory with older `server` and `client` binaries to measure beside these.
    before: Option<PathBuf>,
    /// Skip this build's relay with `--no-sendfile`.
    skip_no_sendfile: bool,
}

/// One relay binary under test, running, with the client binary that goes with it.
struct Build {
    label: &'static str,
    /// Measured on the plaintext path only (a setting that changes nothing over TLS).
    plain_only: bool,
    client: PathBuf,
    relay: common::Relay,
    addr: String,
    idle_kib: u64,
    peak_kib: Arc<AtomicU64>,
    sampler: Sampler,
}

impl Build {
    fn start(label: &'static str, bins: &Path, work: &Path, extra: &[&str]) -> Build {
        let data_dir = work.join(format!("relay-data-{}", label.replace(' ', "-")));
        let mut flags = vec![
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--max-file-size",
            "64G",
            "--quota",
            "64G",
            "--allow-plaintext",
        ];
        flags.extend(extra);
        let (relay, addr) = start_relay_binary(&bins.join("server"), &flags);
        thread::sleep(Duration::from_millis(200));
        let pid = relay.0.id();
        let idle_kib = rss_kib(pid, "VmRSS");
        let peak_kib = Arc::new(AtomicU64::new(0));
        let sampler = sample_peak(pid, peak_kib.clone());
        let plain_only = !extra.is_empty();
        let build = Build {
            label,
            plain_only,
            client: bins.join("client"),
            relay,
            addr,
            idle_kib,
            peak_kib,
            sampler,
        };
        // Files wait only for names someone owns: benchbob claims his once (a receive of nothing),
        // on each path (a pinned relay key is per address, so TLS first).
        let claim = work.join("claim");
        build.client(Wire::Tls, &["receive", "--name", "benchbob", "--downloads", claim.to_str().unwrap()]);
        build
    }

    /// Runs this build's client binary to the end over `wire`; its wall time and peak RSS.
    fn client(&self, wire: Wire, args: &[&str]) -> Timed {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &self.addr]);
        if wire == Wire::Plain {
            all.push("--plaintext");
        }
        timed_client(&self.client, &all)
    }

    /// Peak RSS growth over idle, after the run.
    fn finish(self) -> (u64, u64) {
        self.sampler.stop();
        let peak = self.peak_kib.load(Ordering::Relaxed).max(rss_kib(self.relay.0.id(), "VmHWM"));
        (self.idle_kib, peak)
    }
}

/// Everything measured by step name, one entry per round: wall seconds, and CPU seconds (user +
/// system) of every process in the step. On a 2-core machine shared by both ends of the
/// transfer, CPU time is what the ends compete for, and it varies much less than wall time
/// with the memory's mood (see `run`).
#[derive(Default)]
struct Results(Vec<(String, Vec<f64>, Vec<f64>)>);

impl Results {
    fn add(&mut self, name: &str, secs: f64, cpu: f64) {
        match self.0.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, all, cpus)) => {
                all.push(secs);
                cpus.push(cpu);
            }
            None => self.0.push((name.to_owned(), vec![secs], vec![cpu])),
        }
    }
    /// Medians of (wall seconds, CPU seconds).
    fn median(&self, name: &str) -> Option<(f64, f64)> {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, all, cpus)| (median(all.clone()), median(cpus.clone())))
    }
}

fn run(work: &Path, plan: &Plan, sweep: bool) {
    let size = plan.size;
    println!(
        "relaychat file benchmark: {} MiB of random data on loopback, {} round(s), {} s settle",
        size / MIB,
        plan.rounds,
        plan.settle.as_secs()
    );
    let source = work.join("source.bin");
    write_random(&source, size);
    // On this VM, writing to a page of memory the host has not backed yet is several times slower
    // than writing to one it has, and memory freed for a few seconds is handed back to the host
    // (free page reporting). Whether a file lands in "cold" or "warm" pages would then depend on
    // what ran just before. So every timed step starts after `settle`: all of them meet cold
    // memory, as a real transfer on an idle machine does.
    //
    // Before that pause, `sync`: each upload leaves 1 GiB of dirty page cache, which the kernel
    // writes back about 30 s later, in the middle of whichever step runs then. Without it, the
    // step two places after an upload paid for its writeback (a download ran at half speed
    // because of its position in the round, not because of its code).
    let settle = || {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        thread::sleep(plan.settle)
    };
    let socat = Socat::find(work);
    let this = env!("CARGO_BIN_EXE_server");
    let bins = Path::new(this).parent().unwrap();
    let mut builds = vec![Build::start("now", bins, work, &[])];
    if !plan.skip_no_sendfile {
        // The same build with plaintext downloads read into memory: what sendfile changes.
        builds.push(Build::start("no-sendfile", bins, work, &["--no-sendfile"]));
    }
    if let Some(dir) = &plan.before {
        builds.push(Build::start("before", dir, work, &[]));
    }
    let downloads = work.join("downloads");
    let dl = downloads.to_str().unwrap();
    let src = source.to_str().unwrap();
    let mut results = Results::default();
    let (mut up_peak, mut down_peak) = (0, 0);
    let mbps = |secs: f64| size as f64 / 1e6 / secs;
    // Interleaved, so that the machine's mood (page cache, writeback) is spread over all steps.
    for round in 1..=plan.rounds {
        let mut line = format!("  round {round}:");
        // Each round starts with the next build, so no build always runs in the same position.
        builds.rotate_left(usize::from(round > 1));
        for wire in [Wire::Tls, Wire::Plain] {
            let w = wire_name(wire);
            if let Some(socat) = &socat {
                settle();
                let (secs, cpu) = socat.time(wire, Way::Up, &source, &work.join("baseline.bin"));
                results.add(&format!("socat {w} up"), secs, cpu);
                line += &format!(" socat {w} up {:.0},", mbps(secs));
            }
            for build in builds.iter().filter(|b| wire == Wire::Plain || !b.plain_only) {
                settle();
                let relay_cpu = cpu_secs(build.relay.0.id());
                let u = build.client(wire, &["send", src, "--to", "benchbob", "--name", "benchalice"]);
                let cpu = u.cpu + cpu_secs(build.relay.0.id()) - relay_cpu;
                results.add(&format!("{} {w} up", build.label), u.secs, cpu);
                line += &format!(" {} up {:.0},", build.label, mbps(u.secs));
                up_peak = up_peak.max(u.peak_kib);
            }
            if let Some(socat) = &socat {
                settle();
                let (secs, cpu) = socat.time(wire, Way::Down, &source, &work.join("baseline.bin"));
                results.add(&format!("socat {w} down"), secs, cpu);
                line += &format!(" socat {w} down {:.0},", mbps(secs));
            }
            for build in builds.iter().filter(|b| wire == Wire::Plain || !b.plain_only) {
                settle();
                let relay_cpu = cpu_secs(build.relay.0.id());
                let d = build.client(wire, &["receive", "--name", "benchbob", "--downloads", dl]);
                let cpu = d.cpu + cpu_secs(build.relay.0.id()) - relay_cpu;
                assert_eq!(
                    file_hash(&source),
                    file_hash(&downloads.join("source.bin")),
                    "downloaded bytes differ"
                );
                let _ = fs::remove_dir_all(&downloads);
                results.add(&format!("{} {w} down", build.label), d.secs, cpu);
                line += &format!(" {} down {:.0},", build.label, mbps(d.secs));
                down_peak = down_peak.max(d.peak_kib);
            }
        }
        println!("{} MB/s", line.trim_end_matches(','));
        if let Some(now) = builds.iter().find(|b| b.label == "now") {
            for wire in [Wire::Tls, Wire::Plain] {
                both_online(now, wire, &source, work, &settle, &mut results);
            }
        }
    }
    // Back in the order they were started (now, no-sendfile, before), for the tables.
    builds.sort_by_key(|b| ["now", "no-sendfile", "before"].iter().position(|l| *l == b.label));
    let labels: Vec<&str> = builds.iter().map(|b| b.label).collect();
    let memory: Vec<(u64, u64)> = builds.into_iter().map(Build::finish).collect();

    println!();
    println!(
        "{:<32} {:>7} {:>6} {:>9} {:>7} {:>11}",
        "medians", "s", "MB/s", "base MB/s", "ratio", "CPU s (all)"
    );
    for wire in [Wire::Tls, Wire::Plain] {
        let w = wire_name(wire);
        for (way, what) in [("up", "upload"), ("down", "download")] {
            let base = results.median(&format!("socat {w} {way}"));
            if let Some((base, cpu)) = base {
                let name = format!("socat {w} {what} (baseline)");
                println!("{name:<32} {base:>7.3} {:>6.0} {:>9} {:>7} {cpu:>11.2}", mbps(base), "", "");
            }
            for label in &labels {
                let Some((secs, cpu)) = results.median(&format!("{label} {w} {way}")) else { continue };
                let (base_text, ratio) = match base {
                    Some((base, _)) => (format!("{:.0}", mbps(base)), format!("{:.2}x", base / secs)),
                    None => ("n/a".into(), "n/a".into()),
                };
                let name = format!("{label}: {w} {what}");
                println!("{name:<32} {secs:>7.3} {:>6.0} {base_text:>9} {ratio:>7} {cpu:>11.2}", mbps(secs));
            }
        }
    }
    println!("upload: client send -> relay's disk; download: relay's disk -> client receive.");
    println!("now: this build; no-sendfile: this build, relay with --no-sendfile; before: --before DIR.");
    println!(
        "CPU s: user + system seconds of the client process and the relay in the step (or both socats)."
    );
    println!();
    for (label, (idle, peak)) in labels.iter().zip(&memory) {
        println!(
            "peak RSS (KiB), relay {label}: idle {idle}, peak {peak} (+{} KiB)",
            peak.saturating_sub(*idle)
        );
    }
    println!("peak RSS (KiB): sending client {up_peak}, receiving client {down_peak}");
    report_both_online(&results, size);

    chat_during_download(work, size.min(256 * MIB));
    if sweep {
        chunk_sweep(work, size.min(512 * MIB));
    }
}

fn wire_name(wire: Wire) -> &'static str {
    match wire {
        Wire::Tls => "tls",
        Wire::Plain => "plain",
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

/// Where the client binaries keep their identity and pinned relay keys: a scratch dir of this
/// run, never the real home.
fn config_dir() -> PathBuf {
    std::env::temp_dir().join(format!("relaychat-bench-config-{}", std::process::id()))
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
    /// User + system CPU seconds of the process.
    cpu: f64,
    peak_kib: u64,
}

/// Runs a client binary to the end; its wall time and peak RSS. Its stderr goes to a file that
/// is shown only if it fails (the plaintext warning would otherwise fill the screen).
fn timed_client(binary: &Path, args: &[&str]) -> Timed {
    let log_path = config_dir().with_extension("stderr");
    let log = File::create(&log_path).expect("a log file for the client");
    let started = Instant::now();
    let child = Command::new(binary)
        .args(args)
        // The identity file keeps benchbob's name (no password: an argon2 hash would add ~19 MiB
        // to the relay's peak). The relay's key is pinned there too, on first contact; a dir of
        // this run only, so a later run's new relay on a reused port is not taken for a changed key.
        .env("RELAYCHAT_CONFIG_DIR", config_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the client binary");
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = sample_peak(child.id(), peak.clone());
    let (success, cpu) = wait_with_cpu(child);
    let secs = started.elapsed().as_secs_f64();
    sampler.stop();
    if !success {
        eprintln!("{}", fs::read_to_string(&log_path).unwrap_or_default());
        panic!("client {args:?} failed");
    }
    Timed { secs, cpu, peak_kib: peak.load(Ordering::Relaxed) }
}

/// Waits for a child process to end; whether it succeeded, and the CPU seconds (user + system)
/// it used, which std's `wait` does not report (`wait4` does).
fn wait_with_cpu(child: std::process::Child) -> (bool, f64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain C structs and a pid of our own child, reaped here and nowhere else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    drop(child); // already reaped: dropping a Child neither waits nor kills
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let success = reaped == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (success, secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// CPU seconds (user + system) a running process has used so far, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) as f64 / ticks
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

/// One round of "sender to recipient, both online" on `wire`: the upload alone, the download of
/// the stored file after it (the old way's second half), and then the same file again with the
/// recipient downloading it as it arrives. Library clients in this process, against `build`'s
/// relay; CPU is this process's and the relay's.
fn both_online(
    build: &Build,
    wire: Wire,
    source: &Path,
    work: &Path,
    settle: &dyn Fn(),
    results: &mut Results,
) {
    let w = wire_name(wire);
    let connect = |name: &str| {
        let mut config = common::bench_config(name, "stream");
        if wire == Wire::Plain {
            config.security = relaychat::client::Security::Plaintext;
        }
        Client::connect_tcp(&build.addr, &config).unwrap()
    };
    let (alice, bob) = (connect("streamalice"), connect("streambob"));
    let downloads = work.join("stream-downloads");
    let cpu = || cpu_secs(std::process::id()) + cpu_secs(build.relay.0.id());

    settle();
    let (started, cpu_before) = (Instant::now(), cpu());
    alice.send_file(source, Some("streambob")).unwrap();
    wait_event(&alice, |e| matches!(e, Event::Uploaded { .. }));
    results.add(&format!("stream {w} upload alone"), started.elapsed().as_secs_f64(), cpu() - cpu_before);
    let (started, cpu_before) = (Instant::now(), cpu());
    bob.receive_all(&downloads).unwrap();
    wait_event(&bob, |e| matches!(e, Event::ReceiveFinished { .. }));
    results.add(&format!("stream {w} then download"), started.elapsed().as_secs_f64(), cpu() - cpu_before);
    let _ = fs::remove_dir_all(&downloads);

    settle();
    let (started, cpu_before) = (Instant::now(), cpu());
    alice.send_file(source, Some("streambob")).unwrap();
    wait_event(&bob, |e| matches!(e, Event::NewFile(info) if info.sha256.is_none()));
    bob.receive_all(&downloads).unwrap();
    wait_event(&bob, |e| matches!(e, Event::Downloaded { .. }));
    results.add(&format!("stream {w} both online"), started.elapsed().as_secs_f64(), cpu() - cpu_before);
    wait_event(&alice, |e| matches!(e, Event::Uploaded { .. }));
    wait_event(&bob, |e| matches!(e, Event::ReceiveFinished { .. }));
    assert_eq!(file_hash(source), file_hash(&downloads.join("source.bin")), "streamed bytes differ");
    let _ = fs::remove_dir_all(&downloads);
    alice.close();
    bob.close();
}

/// The "both online" table: each figure against the upload alone from the same run.
fn report_both_online(results: &Results, size: u64) {
    println!();
    println!("sender -> recipient, both online (library clients, this build's relay, medians):");
    println!("{:<36} {:>7} {:>6} {:>13} {:>11}", "", "s", "MB/s", "ratio to up", "CPU s (all)");
    for w in ["tls", "plain"] {
        let Some((alone, _)) = results.median(&format!("stream {w} upload alone")) else { continue };
        let steps = [
            ("upload alone", "upload alone"),
            ("then download", "then the stored file's download"),
            ("both online", "sender -> recipient, streaming"),
        ];
        for (step, label) in steps {
            let Some((secs, cpu)) = results.median(&format!("stream {w} {step}")) else { continue };
            let name = format!("{w}: {label}");
            let mbps = size as f64 / 1e6 / secs;
            println!("{name:<36} {secs:>7.3} {mbps:>6.0} {:>12.2}x {cpu:>11.2}", secs / alone);
        }
        if let (Some((up, _)), Some((down, _))) = (
            results.median(&format!("stream {w} upload alone")),
            results.median(&format!("stream {w} then download")),
        ) {
            println!(
                "{:<36} {:>7.3} {:>6} {:>12.2}x",
                format!("{w}: store, then download (before)"),
                up + down,
                "",
                (up + down) / alone
            );
        }
    }
    println!(
        "ratio to up: time over the upload alone of the same run (the aim: at most 1.3x when streaming)."
    );
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
