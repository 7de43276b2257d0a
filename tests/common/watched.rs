//! A relay under attack, with its memory watched: [`WatchedRelay`] is a [`Relay`] (started the one
//! way, `tests/common/relay.rs`) plus a watchdog thread that samples its resident set and kills it
//! when it runs away, so a test of an unfixed relay fails instead of eating the machine.
//!
//! Every attack test prints `abuse: <class>: peak RSS X MiB, after Y MiB` once, either when it
//! measures ([`WatchedRelay::memory_report`]) or, if it failed first, when the relay is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::relay::{Relay, RelayOptions};
use super::try_until;

/// The watchdog kills the relay when its RSS passes this: far past any limit a test checks, but
/// low enough that an unfixed relay cannot take the machine (shared with other jobs) down with it.
pub const RSS_KILL_MIB: u64 = 768;

/// How often the watchdog samples `/proc/<pid>/status`.
const RSS_SAMPLE: Duration = Duration::from_millis(10);

impl RelayOptions {
    /// Starts the relay with these options for the attack `class`, watched: see
    /// [`WatchedRelay::start`]. (Written here, beside the watchdog, so that the starter in
    /// `relay.rs` knows nothing of attacks.)
    pub fn watched(self, class: &str) -> WatchedRelay {
        WatchedRelay::start(class, self)
    }
}

/// What the watchdog thread shares with the test.
struct Watch {
    pid: u32,
    peak_kib: AtomicU64,
    killed_at_kib: AtomicU64,
    stop: AtomicBool,
}

/// A running relay with a memory watchdog. Killed on drop, after its `abuse:` line.
pub struct WatchedRelay {
    relay: Relay,
    pub addr: SocketAddr,
    pub pid: u32,
    watch: Arc<Watch>,
    watchdog: Option<JoinHandle<()>>,
    /// Flags the options asked for that this relay build does not have.
    pub missing_flags: Vec<String>,
    /// Which attack this relay is for, for the `abuse: …` line.
    class: String,
    /// The highest peak of earlier incarnations (see [`WatchedRelay::restart`]).
    earlier_peak_kib: u64,
    reported: bool,
}

impl WatchedRelay {
    /// Starts a relay with `options` (usually [`RelayOptions::for_attacks`]) for the attack
    /// `class`, and its watchdog.
    pub fn start(class: &str, options: RelayOptions) -> WatchedRelay {
        let relay = options.start();
        if !relay.missing_flags.is_empty() {
            println!("abuse: {class}: this relay has no {}; running without", relay.missing_flags.join(", "));
        }
        let (watch, watchdog) = start_watchdog(relay.pid());
        WatchedRelay {
            addr: relay.addr,
            pid: relay.pid(),
            missing_flags: relay.missing_flags.clone(),
            relay,
            watch,
            watchdog: Some(watchdog),
            class: class.to_owned(),
            earlier_peak_kib: 0,
            reported: false,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.relay.data_dir()
    }

    /// Stops this relay (SIGTERM, then SIGKILL after 5 s) and starts a new one with the same
    /// options and data dir, on a new port, watched by a new watchdog; the peak carries over.
    pub fn restart(mut self) -> WatchedRelay {
        self.stop_watchdog();
        self.earlier_peak_kib = self.peak_kib();
        self.relay.restart();
        (self.addr, self.pid) = (self.relay.addr, self.relay.pid());
        let (watch, watchdog) = start_watchdog(self.pid);
        (self.watch, self.watchdog) = (watch, Some(watchdog));
        self
    }

    fn stop_watchdog(&mut self) {
        self.watch.stop.store(true, Ordering::SeqCst);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.relay.alive()
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
        try_until(within, || Some(self.rss_mib()).filter(|&rss| rss < mib as f64))
            .unwrap_or_else(|| self.rss_mib())
    }

    /// Open file descriptors of the relay process.
    pub fn fd_count(&self) -> usize {
        self.relay.fd_count()
    }

    /// Threads of the relay process.
    pub fn thread_count(&self) -> usize {
        self.relay.thread_count()
    }

    /// The last `n` lines of the relay's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.relay.log_tail(n)
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

/// What [`WatchedRelay`]'s drop waits for when a test failed before measuring: the issue's
/// after-attack target, and how long to give the relay to get there.
const DROP_SETTLE_MIB: u64 = 64;
const DROP_SETTLE: Duration = Duration::from_secs(10);

impl Drop for WatchedRelay {
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
        self.stop_watchdog();
        // The relay itself is killed by its own drop.
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

/// Starts sampling process `pid`'s memory on a thread of its own; stopped through
/// [`Watch::stop`] (the thread also ends once the process is gone, or after killing it).
fn start_watchdog(pid: u32) -> (Arc<Watch>, JoinHandle<()>) {
    let watch = Arc::new(Watch {
        pid,
        peak_kib: AtomicU64::new(0),
        killed_at_kib: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let shared = watch.clone();
    let watchdog = thread::spawn(move || {
        let watch = shared;
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
    });
    (watch, watchdog)
}
