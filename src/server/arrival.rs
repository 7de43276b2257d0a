//! An upload that its recipients may download while it is still arriving.
//!
//! Store-and-forward costs two transfers: the sender's upload, then the recipient's download. When
//! both are online the second can follow the first at a short distance, reading each byte from the
//! relay's disk soon after the upload wrote it. An [`Arrival`] is the board they meet at:
//!
//! ```text
//!  upload's disk thread ── written_to(n) ──▶ ┌──────────┐ ◀── wait(n) ─── download thread(s)
//!  hub (commit, abort,  ──── finish(…) ────▶ │ Arrival  │     (one per recipient connection
//!       sender gone)                         └──────────┘      following this upload)
//! ```
//!
//! - Only bytes the disk thread has *written* to the `.part` file are counted, so a download never
//!   reads past them. The uploader never waits for a downloader: it only moves a number and wakes
//!   whoever sleeps on the [`Condvar`]. A downloader that stops reading blocks its own download
//!   thread (on its writer's short bulk queue), never the upload.
//! - The hub writes the outcome: `Stored` (size and SHA-256 verified, the hash goes to the
//!   downloader for its own check), `Failed` (bad hash, wrong size, cancelled: the bytes were
//!   wrong and the downloader must throw its copy away) or `Stopped` (the sender's connection
//!   ended or it put the upload aside: it may resume, under a new `Arrival`).
//! - The lock guards two small fields and is never held across I/O, so the hub's `finish` and the
//!   disk thread's `written_to` never wait for more than a few instructions.
//!
//! A downloader also gives up when nothing moves for the store's `upload_stall` (30 s): a sender
//! that keeps its connection alive with pings but sends nothing holds a downloader's thread no
//! longer than it holds its own disk reservation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::frame::ErrorCode;

use super::store::Refusal;

/// How an upload that recipients may be following ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still arriving.
    Arriving,
    /// Verified and stored, with this SHA-256.
    Stored([u8; 32]),
    /// The bytes were wrong or the upload was cancelled: followers discard what they have.
    Failed(String),
    /// The sender stopped sending (its connection ended, or it started another upload). The
    /// upload may resume later, under a new `Arrival`.
    Stopped,
}

#[derive(Debug)]
struct State {
    /// Bytes of the file written to the relay's `.part` file, from its start.
    written: u64,
    outcome: Outcome,
    /// The smallest `written` a sleeping follower waits for (`u64::MAX`: nobody waits). The disk
    /// thread wakes followers only when it gets there, so a follower that wants a whole chunk is
    /// woken once per chunk, not once per write.
    wake_at: u64,
}

/// The progress of one upload, shared by its disk thread, the hub and the download threads that
/// follow it. See the module docs.
#[derive(Debug)]
pub(crate) struct Arrival {
    state: Mutex<State>,
    moved: Condvar,
}

/// What a follower learned from [`Arrival::wait`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// This many bytes are on disk now (more than the follower had).
    Bytes(u64),
    /// Every byte is there and verified.
    Stored([u8; 32]),
    /// The connection that follows the upload is closing.
    Cancelled,
}

/// How often a waiting follower looks at its connection's cancel flag. The session that sets
/// the flag does not know which upload its download thread follows, so it cannot wake it; a
/// quarter of a second is the longest a closing connection waits for it (simplified on purpose).
const CANCEL_CHECK: Duration = Duration::from_millis(250);

/// How long a follower with some new bytes waits for the rest of its piece before it sends what
/// is there: long enough that a fast upload fills the piece first (one wake-up per piece, not
/// one per write), short enough that a slow sender's bytes still flow on.
const GATHER: Duration = Duration::from_millis(20);

impl Arrival {
    pub(crate) fn new() -> Arc<Arrival> {
        Arc::new(Arrival {
            state: Mutex::new(State { written: 0, outcome: Outcome::Arriving, wake_at: u64::MAX }),
            moved: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves two plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The upload's disk thread has written the file up to byte `total`.
    pub(crate) fn written_to(&self, total: u64) {
        let mut state = self.lock();
        state.written = total;
        let wake = total >= state.wake_at;
        if wake {
            state.wake_at = u64::MAX; // woken followers that want more say so again
        }
        drop(state);
        if wake {
            self.moved.notify_all();
        }
    }

    /// The hub decided how the upload ended. The first outcome stays: a stored file cannot fail
    /// later, and a failed upload does not come back (a resumed one gets a new `Arrival`).
    pub(crate) fn finish(&self, outcome: Outcome) {
        let mut state = self.lock();
        if state.outcome == Outcome::Arriving {
            state.outcome = outcome;
        }
        drop(state);
        self.moved.notify_all();
    }

    /// Why a follower must stop, if the upload failed or stopped.
    pub(crate) fn ended(&self) -> Option<Refusal> {
        self.lock().outcome.refusal()
    }

    /// Sleeps until the upload has at least `until` bytes on disk (or more than `at` that have
    /// waited [`GATHER`] for the rest: a slow sender's bytes still flow), or has ended, and says
    /// which (`until` = `u64::MAX` waits for the verdict only). An upload that failed, stopped,
    /// or did not grow for `patience` is a refusal for the recipient. Wakes every
    /// [`CANCEL_CHECK`] to see whether `cancel` was set, and whether the upload grew.
    pub(crate) fn wait(
        &self,
        at: u64,
        until: u64,
        patience: Duration,
        cancel: &AtomicBool,
    ) -> Result<Seen, Refusal> {
        let mut since = Instant::now();
        let mut state = self.lock();
        let mut seen = state.written;
        let mut gathered = false;
        loop {
            if let Some(refusal) = state.outcome.refusal() {
                return Err(refusal);
            }
            if state.written >= until || (gathered && state.written > at) {
                return Ok(Seen::Bytes(state.written));
            }
            if let Outcome::Stored(sha256) = state.outcome {
                return Ok(Seen::Stored(sha256));
            }
            if cancel.load(Ordering::SeqCst) {
                return Ok(Seen::Cancelled);
            }
            if state.written != seen {
                (seen, since) = (state.written, Instant::now()); // slow, but not stalled
            }
            let waited = since.elapsed();
            if waited >= patience {
                let why = format!("the sender's upload stalled (nothing for {} s)", patience.as_secs());
                return Err(stopped(&why));
            }
            state.wake_at = state.wake_at.min(until);
            gathered = state.written > at;
            let nap = if gathered { GATHER } else { CANCEL_CHECK }.min(patience - waited);
            state = self.moved.wait_timeout(state, nap).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Outcome {
    /// What a follower is told when the upload failed or stopped; `None` while it arrives or
    /// once it is stored.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Outcome::Failed(why) => Some(failed(why)),
            Outcome::Stopped => Some(stopped("the sender's upload stopped")),
            Outcome::Arriving | Outcome::Stored(_) => None,
        }
    }
}

fn failed(why: &str) -> Refusal {
    (ErrorCode::SenderFailed, format!("the sender's upload failed ({why}); the download was discarded"))
}

fn stopped(why: &str) -> Refusal {
    (ErrorCode::SenderStopped, format!("{why}; the file will be offered again when it is complete"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_follower_sees_bytes_then_the_verdict() {
        let arrival = Arrival::new();
        let cancel = AtomicBool::new(false);
        let patience = Duration::from_secs(5);
        let writer = {
            let arrival = arrival.clone();
            thread::spawn(move || {
                for n in 1..=4 {
                    thread::sleep(Duration::from_millis(5));
                    arrival.written_to(n * 10);
                }
                arrival.finish(Outcome::Stored([9; 32]));
                arrival.finish(Outcome::Failed("too late".into())); // the first outcome stays
            })
        };
        let mut at = 0;
        let verdict = loop {
            match arrival.wait(at, at + 1, patience, &cancel).unwrap() {
                Seen::Bytes(n) => {
                    assert!(n > at && n <= 40);
                    at = n;
                }
                other => break other,
            }
        };
        writer.join().unwrap();
        assert_eq!((at, verdict), (40, Seen::Stored([9; 32])));
    }

    #[test]
    fn failure_stop_stall_and_cancel_end_the_wait() {
        let patience = Duration::from_millis(300);
        let cancel = AtomicBool::new(false);
        let arrival = Arrival::new();
        arrival.written_to(10);
        arrival.finish(Outcome::Failed("bad hash".into()));
        assert_eq!(arrival.wait(0, 1, patience, &cancel).unwrap_err().0, ErrorCode::SenderFailed);

        let arrival = Arrival::new();
        arrival.written_to(10);
        arrival.finish(Outcome::Stopped);
        assert_eq!(arrival.wait(0, 1, patience, &cancel).unwrap_err().0, ErrorCode::SenderStopped);

        let started = Instant::now();
        let stalled = Arrival::new().wait(0, 1, patience, &cancel).unwrap_err();
        assert_eq!(stalled.0, ErrorCode::SenderStopped, "{stalled:?}");
        assert!(started.elapsed() >= patience);

        cancel.store(true, Ordering::SeqCst);
        assert_eq!(Arrival::new().wait(0, 1, Duration::from_secs(60), &cancel).unwrap(), Seen::Cancelled);
    }
}
