//! Waiting on a channel with a short spin before sleeping.
//!
//! Waking a thread that is asleep in the kernel (parked on a futex) costs about 25 µs on this
//! project's 2-core virtual machine: the wake needs an inter-processor interrupt and the other CPU
//! has to come out of its idle state. A message through the relay passes two such hand-offs
//! (reader → hub → writer), so sleeping threads alone would cost ~50 µs per message.
//!
//! A thread that has just handled a message is likely to get another one soon (a conversation, a
//! burst). So the hub and the writers first *poll* their channel for a short window, yielding the
//! CPU between polls so other threads still run, and only then go to sleep. The price is up to one
//! window of CPU time after each burst of activity, and nothing at all while the relay is idle.
//! A window of zero turns it off (`ServerConfig::spin`, `--spin-us`; see the tuning corner's
//! docs, [`crate::tuning`], for what it saves and what it costs).
//!
//! ## Only one writer polls at a time
//!
//! There is one hub, but there is a writer per client. When a line goes to a room of 5,000, 5,000
//! writers wake, write, and, if each then polled for its window, would burn 5,000 windows of CPU
//! (half a second) exactly when the machine is busiest: with 2,000 clients that made the fan-out's
//! p99 worse (74 ms against 52 ms with polling off). So writers share one polling *slot*: the
//! writer that takes it polls, and every other writer goes straight to sleep. A conversation
//! between a few people still finds its writer polling; a big room costs one window, not
//! thousands. The hub polls on its own, outside the slot: there is only one of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, TryRecvError};

/// Writers polling right now, in the whole process.
static POLLING: AtomicUsize = AtomicUsize::new(0);
/// How many writers may poll at once (see the module docs).
const MAX_POLLING: usize = 1;

/// The polling slot, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        POLLING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_POLLING).then_some(n + 1))
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        POLLING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// For the many (writers): like `spin_for` (below), but only while this thread holds the process's one
/// polling slot. Without it, `poll` is called once and the caller then blocks.
pub fn poll_for<T>(window: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    if window.is_zero() {
        return None;
    }
    match Slot::take() {
        Some(_slot) => spin_for(window, poll),
        None => poll(),
    }
}

/// Calls `poll` until it returns `Some`, yielding the CPU between calls, for at most `window`.
/// Returns `None` when the window passes first; the caller then blocks the ordinary way.
fn spin_for<T>(window: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    if window.is_zero() {
        return None;
    }
    let started = Instant::now();
    loop {
        if let Some(value) = poll() {
            return Some(value);
        }
        if started.elapsed() >= window {
            return None;
        }
        thread::yield_now();
    }
}

/// For the one (the hub): receives from `rx`, polling for up to `window` before blocking.
pub fn recv<T>(rx: &Receiver<T>, window: Duration) -> Result<T, RecvError> {
    let polled = spin_for(window, || match rx.try_recv() {
        Ok(value) => Some(Ok(value)),
        Err(TryRecvError::Disconnected) => Some(Err(RecvError)),
        Err(TryRecvError::Empty) => None,
    });
    polled.unwrap_or_else(|| rx.recv())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn a_writer_without_the_slot_looks_once_and_does_not_poll() {
        // Hold the slot ourselves (another test's writer may have it for a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        let held = loop {
            if let Some(slot) = Slot::take() {
                break slot;
            }
            assert!(Instant::now() < deadline, "the slot was never given back");
            thread::sleep(Duration::from_millis(1));
        };
        let mut looks = 0;
        let started = Instant::now();
        let polled: Option<()> = poll_for(Duration::from_millis(200), || {
            looks += 1;
            None
        });
        assert_eq!((polled, looks), (None, 1), "one look, then block");
        assert!(started.elapsed() < Duration::from_millis(200), "it did not poll for the window");
        drop(held);
    }

    #[test]
    fn returns_values_and_disconnects_with_or_without_a_window() {
        for window in [Duration::ZERO, Duration::from_micros(200)] {
            let (tx, rx) = bounded(2);
            tx.send(1).unwrap();
            assert_eq!(recv(&rx, window), Ok(1));
            let sender = thread::spawn(move || {
                thread::sleep(Duration::from_millis(5)); // longer than the window: we must block
                tx.send(2).unwrap();
            });
            assert_eq!(recv(&rx, window), Ok(2));
            sender.join().unwrap();
            assert_eq!(recv(&rx, window), Err(RecvError));
        }
    }
}
