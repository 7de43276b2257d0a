//! Bystanders' latency during an attack: two guests in a room of their own ping each other ten
//! times a second on a thread of their own, and [`Latency::finish`] says how long each message
//! took and whether its receipt came. The attack tests check the p99 against their limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use relaychat::frame::Frame;

use super::attacker::{lo, Raw};
use super::watched::WatchedRelay;

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
    pub fn start(relay: &WatchedRelay, tag: &str) -> Latency {
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
