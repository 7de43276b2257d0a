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

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, TryRecvError};

/// Calls `poll` until it returns `Some`, yielding the CPU between calls, for at most `window`.
/// Returns `None` when the window passes first; the caller then blocks the ordinary way.
pub fn poll_for<T>(window: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
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

/// Receives from `rx`, polling for up to `window` before blocking.
pub fn recv<T>(rx: &Receiver<T>, window: Duration) -> Result<T, RecvError> {
    let polled = poll_for(window, || match rx.try_recv() {
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
