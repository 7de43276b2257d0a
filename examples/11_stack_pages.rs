//! # Lesson 11 (appendix, the tuning corner): what an idle thread costs
//!
//! The relay runs two threads per connection, and most connections are idle most of the time:
//! 10,000 people in 100 rooms, typing a line now and then. So what does a thread that is only
//! *waiting* cost?
//!
//! Its stack is mapped at 2 MiB, but that is address space, not memory: the kernel gives the
//! thread a page (4 KiB) only when the thread first touches it. The catch is the other way round.
//! A page once touched stays with the thread until the thread ends, even after the function that
//! touched it has returned. A connection thread goes deep exactly once, for the TLS handshake
//! (key exchange, signing, a big connection object moved about), and then spends hours in a
//! shallow loop reading chat. Without care it keeps the handshake's pages for all those hours.
//!
//! `relaychat::tuning::memory::release_unused_stack` hands the pages below the caller's frame
//! back (`madvise(MADV_DONTNEED)`): if the thread goes that deep again, the kernel gives it fresh
//! zeroed pages. The relay calls it once per connection, after the hello.
//!
//! This lesson starts 1,000 threads that each go 64 KiB deep once and then wait, first keeping
//! their pages and then giving them back, and prints what each waiting thread costs (the
//! process's resident memory, `VmRSS`, before and after). Linux only: elsewhere there is no
//! `/proc` to read and nothing is given back.
//!
//! ```text
//! cargo run --release --example 11_stack_pages -- --demo
//! ```

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;

const THREADS: usize = 1_000;
/// How deep each thread goes once, like a TLS handshake (the relay's reader went 16 KiB deeper
/// than its reading loop, and gives those back; more here, so the difference stands out).
const DEEP: usize = 64 * 1024;

/// Touches `DEEP` bytes of this thread's stack, the way a deep call chain would.
#[inline(never)]
fn go_deep() -> u8 {
    let mut scratch = [0u8; DEEP];
    for (i, byte) in scratch.iter_mut().enumerate().step_by(512) {
        *byte = i as u8;
    }
    black_box(&scratch).iter().step_by(4096).fold(0, |a, b| a ^ b)
}

/// The process's resident memory in KiB, from `/proc/self/status` (0 where there is none).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Starts the threads; each goes deep once, gives its pages back if `release`, and waits. Returns
/// the resident memory they added, per thread, in KiB, measured while all of them wait.
fn cost_per_thread(release: bool) -> f64 {
    let before = rss_kib();
    let all_waiting = Arc::new(Barrier::new(THREADS + 1));
    let done = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (all_waiting, done) = (all_waiting.clone(), done.clone());
            thread::spawn(move || {
                black_box(go_deep());
                if release {
                    relaychat::tuning::memory::release_unused_stack();
                }
                all_waiting.wait(); // "idle": the shallow loop a connection spends its life in
                done.wait();
            })
        })
        .collect();
    all_waiting.wait();
    let during = rss_kib();
    done.wait();
    for thread in threads {
        thread.join().expect("a lesson thread panicked");
    }
    during.saturating_sub(before) as f64 / THREADS as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--demo") {
        println!("usage: cargo run --release --example 11_stack_pages -- --demo");
        return;
    }
    if rss_kib() == 0 {
        println!("no /proc/self/status here: this lesson measures on Linux only");
        return;
    }
    println!("{THREADS} threads, each {} KiB deep once, then waiting:", DEEP / 1024);
    let kept = cost_per_thread(false);
    println!("  keeping the pages:     {kept:.1} KiB per waiting thread");
    let given_back = cost_per_thread(true);
    println!("  giving them back:      {given_back:.1} KiB per waiting thread");
    println!(
        "  saved: {:.1} KiB per thread, {:.0} MiB for 10,000 threads that went this deep once",
        kept - given_back,
        (kept - given_back) * 10_000.0 / 1024.0
    );
}
