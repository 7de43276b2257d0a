//! # Lesson 10: waking thousands of threads
//!
//! In lesson 4 each client has a writer thread that sleeps on its queue until the hub gives it
//! something. With a few clients, how the writer sleeps does not matter. With 2,000 people in one
//! room it does: one line wakes 2,000 writers, each to write a few dozen bytes.
//!
//! A crossbeam channel's blocking `recv` does not go to sleep at once. It first spins, then
//! *yields* the CPU four times (`Backoff::snooze`), betting that the next message is about to
//! arrive. For a handful of busy threads that bet pays. For 2,000 writers that each got their one
//! line, it is lost 2,000 times, and with thousands of threads ready to run each yield is a switch
//! to one of them.
//!
//! The relay's writers therefore sleep the plainest way there is, `std::thread::park`, and
//! whoever gives them something wakes them with `unpark` (`relaychat::outbox::ToWriter`, a
//! crossbeam `Sender` that remembers its writer's thread). An `unpark` that comes before the
//! `park` is kept as a token, so no wake-up is lost.
//!
//! This lesson starts 2,000 threads, sends each one message 20 times over, and prints how long
//! the last one took to get it and how much CPU the process spent, for both ways of sleeping.
//!
//! ```text
//! cargo run --release --example 10_wake_thousands -- --demo
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, TryRecvError};
use relaychat::outbox::ToWriter;

const THREADS: usize = 2_000;
const ROUNDS: usize = 20;

#[derive(Clone, Copy)]
enum Sleep {
    /// crossbeam's blocking `recv`: spin, yield four times, then park.
    Recv,
    /// Look with `try_recv`; if empty, `thread::park` until a `ToWriter` unparks us.
    Park,
}

/// Runs the rounds; returns, per round, the time until every thread had its message.
fn run(sleep: Sleep) -> Vec<Duration> {
    let got = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::with_capacity(THREADS);
    let mut threads = Vec::with_capacity(THREADS);
    for _ in 0..THREADS {
        let (tx, rx) = bounded::<()>(4);
        let got = got.clone();
        let thread = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || match sleep {
                Sleep::Recv => {
                    while rx.recv().is_ok() {
                        got.fetch_add(1, Ordering::Release);
                    }
                }
                Sleep::Park => loop {
                    match rx.try_recv() {
                        Ok(()) => {
                            got.fetch_add(1, Ordering::Release);
                        }
                        Err(TryRecvError::Empty) => thread::park(),
                        Err(TryRecvError::Disconnected) => break,
                    }
                },
            })
            .expect("spawn");
        // The sender that wakes this thread (only the park loop needs the wake-up, but it does
        // no harm to the other).
        senders.push(ToWriter::new(tx, thread.thread().clone()));
        threads.push(thread);
    }
    thread::sleep(Duration::from_millis(200)); // let them all fall asleep
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let started = Instant::now();
        for tx in &senders {
            tx.send(()).expect("the thread is alive");
        }
        while got.load(Ordering::Acquire) < round * THREADS {
            thread::yield_now();
        }
        rounds.push(started.elapsed());
        thread::sleep(Duration::from_millis(20)); // asleep again before the next line
    }
    drop(senders); // each thread sees its queue closed (the drop wakes it) and ends
    for thread in threads {
        thread.join().expect("thread");
    }
    rounds
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
        eprintln!("usage: 10_wake_thousands --demo");
        return;
    }
    for (label, sleep) in [("crossbeam recv", Sleep::Recv), ("park + unpark", Sleep::Park)] {
        let cpu_before = cpu_time();
        let mut rounds = run(sleep);
        rounds.sort();
        let cpu = match (cpu_before, cpu_time()) {
            (Some(before), Some(after)) => format!("{:.2} s of CPU", (after - before).as_secs_f64()),
            _ => "CPU time unknown".to_string(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{label:>15}: {THREADS} threads woken for one message each: all had it after {:.1} ms \
             (median of {ROUNDS}), {:.1} ms at worst; {cpu} in all",
            ms(rounds[ROUNDS / 2]),
            ms(rounds[ROUNDS - 1])
        );
    }
}
