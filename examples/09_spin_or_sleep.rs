//! # Lesson 9: spin or sleep? A trick from the tuning corner, measured
//!
//! Every hand-off between threads in the relay (reader → hub → writer) goes through a channel.
//! A thread waiting on an empty channel sleeps in the kernel, and waking it costs time: an
//! interrupt to the other CPU, which must leave its idle state. *Polling* the channel for a short
//! window before sleeping can skip that wake-up when the next message comes soon, at the price of
//! CPU time burnt while polling.
//!
//! This lesson bounces one message between two threads, 20 000 times, both ways: sleeping at
//! once, then polling for 100 µs first (`relaychat::tuning::spin`). ("Sleeping at once" is
//! crossbeam's own `recv`, which already spins for a moment, with exponential backoff, before it
//! parks the thread; the tail of the distribution is where the parked wake-ups show.) It prints the latency of one
//! hand-off and the CPU time the whole process used. Whether polling wins depends on the machine
//! (how deep its CPUs sleep, how busy they are), so the relay leaves it off by default and
//! `--spin-us` turns it on; see `src/tuning/mod.rs` for what happened at scale.
//!
//! ```text
//! cargo run --release --example 09_spin_or_sleep -- --demo
//! ```

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use relaychat::tuning::spin;

const ROUND_TRIPS: usize = 20_000;

/// Round trips between two threads; returns the one-way hand-off times, sorted, in µs.
fn bounce(window: Duration) -> Vec<f64> {
    let (to_echo, from_main) = bounded::<Instant>(1);
    let (to_main, from_echo) = bounded::<Instant>(1);
    let echo = thread::spawn(move || {
        while let Ok(sent) = spin::recv(&from_main, window) {
            if to_main.send(sent).is_err() {
                break;
            }
        }
    });
    let mut one_way = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        to_echo.send(Instant::now()).expect("echo thread");
        let sent = spin::recv(&from_echo, window).expect("echo thread");
        one_way.push(sent.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    drop(to_echo);
    echo.join().expect("echo thread");
    one_way.sort_by(|a, b| a.total_cmp(b));
    one_way
}

/// CPU time this process has used so far (user + system), from /proc where there is one.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // the kernel's clock ticks are 100 per second here
}

fn main() {
    if std::env::args().nth(1).as_deref() != Some("--demo") {
        eprintln!("usage: 09_spin_or_sleep --demo");
        return;
    }
    for (label, window) in
        [("sleep at once", Duration::ZERO), ("poll 100 µs first", Duration::from_micros(100))]
    {
        let cpu_before = cpu_time();
        let started = Instant::now();
        let times = bounce(window);
        let wall = started.elapsed();
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let cpu = match (cpu_before, cpu_time()) {
            (Some(before), Some(after)) => format!("{:.2} s of CPU", (after - before).as_secs_f64()),
            _ => "CPU time unknown".to_string(),
        };
        println!(
            "{label:>18}: one hand-off p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs, max {:.0} µs; {ROUND_TRIPS} round trips in {:.2} s, {cpu}",
            pct(0.5),
            pct(0.99),
            mean,
            pct(1.0),
            wall.as_secs_f64()
        );
    }
}
