//! Waiting with a time limit, so a bug makes a test fail with a message instead of hanging.
//!
//! Two kinds of wait, one helper each:
//!
//! - **Something to look at** (a file's size, a process's exit, a thread count): [`wait_until`]
//!   looks every few milliseconds until the look finds what it wants, and fails the test with
//!   `what` and how long it waited; [`try_until`] is the same loop for a caller that handles
//!   "not in time" itself.
//! - **Lines that arrive** on a channel (a process's output): [`receive_until`] blocks on the channel
//!   until a line is the one wanted or the time is up, with no polling and no sleeping.
//!
//! Frames that arrive on a socket are read the same way by the raw connections
//! (`common::Raw::recv_until`, `common::attacker::Raw::recv_until`), with the socket's own read
//! timeout as the clock.

use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

/// How long [`try_until`] sleeps between two looks: short next to any limit a test sets, long
/// enough not to keep a core busy.
const POLL: Duration = Duration::from_millis(5);

/// Calls `look` until it returns `Some`, sleeping [`POLL`] between calls; `None` once `timeout`
/// has passed (after one last look).
pub fn try_until<T>(timeout: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(found) = look() {
            return Some(found);
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        thread::sleep(POLL.min(left));
    }
}

/// [`try_until`], failing the test with `what` and how long it waited if `look` never finds it.
/// For a yes/no condition, `look` returns `condition.then_some(())`.
pub fn wait_until<T>(what: &str, timeout: Duration, look: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    try_until(timeout, look)
        .unwrap_or_else(|| panic!("waited {:?} (limit {timeout:?}) for {what}, in vain", start.elapsed()))
}

/// The exit status, if the process exits within `within`.
pub fn exits_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    try_until(within, || child.try_wait().expect("poll a child process"))
}

/// Receives from `channel` (a process's output lines, a client's events) until `stop` accepts
/// what came or `within` has passed; everything received (the accepted one last), and whether one
/// was accepted. Also ends, unaccepted, when the sender is gone (the process closed its output).
pub fn receive_until<T>(
    channel: &Receiver<T>,
    within: Duration,
    mut stop: impl FnMut(&T) -> bool,
) -> (Vec<T>, bool) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(item) = channel.recv_deadline(deadline) {
        let found = stop(&item);
        seen.push(item);
        if found {
            return (seen, true);
        }
    }
    (seen, false)
}

/// Every line on `lines` up to and including the first one containing `needle`, or (after
/// `within`) the lines seen instead.
pub fn lines_until(
    lines: &Receiver<String>,
    needle: &str,
    within: Duration,
) -> Result<Vec<String>, Vec<String>> {
    match receive_until(lines, within, |line| line.contains(needle)) {
        (seen, true) => Ok(seen),
        (seen, false) => Err(seen),
    }
}

/// The first line on `lines` (from `who`) containing `needle`; fails the test after `within`,
/// listing the lines seen instead.
pub fn expect_line(lines: &Receiver<String>, who: &str, needle: &str, within: Duration) -> String {
    match lines_until(lines, needle, within) {
        Ok(mut seen) => seen.pop().expect("the line found is the last one read"),
        Err(seen) => panic!("{who}: no line containing {needle:?} within {within:?}; saw {seen:#?}"),
    }
}
