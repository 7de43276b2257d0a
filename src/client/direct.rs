//! Sending a frame without waking the writer thread: see [`Direct`], the module docs of
//! [`super`], and [`crate::outbox`] ("Taking turns with the senders").

use std::io::Write;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use crate::outbox::{ToWriter, Urgent};
use crate::wire::Closer;

/// The caller's own way to the socket: a frame written at once, on the caller's thread, when the
/// writer thread has nothing to do, which saves waking it (see the module docs).
///
/// The rule that keeps frames whole and in order: a frame may go this way only while its caller
/// holds the writer's *turn* and the send queue is empty. The writer holds the turn from before
/// it takes anything from its queues until it has flushed it, so then nothing is waiting and
/// nothing is half-written. A file on its way (a chunk queued, or the writer holding the turn
/// between pieces) sends the frame through the queue instead, where it overtakes the file as
/// before. Simplified: right after a chunk the kernel may still hold up to
/// [`crate::outbox::Pacing::unsent`] bytes, and a direct write then waits until the link has
/// taken some; the queue would have made the writer wait the same time instead of the caller.
pub(super) struct Direct {
    pub(super) turn: Arc<Mutex<()>>,
    /// A clone of the socket (over TLS: of the same session), used only with the turn held.
    pub(super) out: Mutex<Box<dyn Write + Send>>,
    /// The bulk queue, only to see whether a file is on its way.
    pub(super) bulk: Receiver<Vec<u8>>,
    /// Cuts the connection when a direct write fails, so the reader reports it at once.
    pub(super) closer: Closer,
}

impl Direct {
    /// Writes `frame` now if the line is free; false when it must be queued instead (busy, or
    /// the write failed: the writer will meet the broken socket too, and the reader reports it).
    pub(super) fn try_write(&self, frame: &[u8], queue: &ToWriter<Urgent>) -> bool {
        // `try_lock`, never `lock`: a caller that finds the writer busy must not wait for it
        // (that is what the queue is for). A poisoned turn means a writer panicked: queue.
        let Ok(_turn) = self.turn.try_lock() else { return false };
        if !queue.is_empty() || !self.bulk.is_empty() {
            return false;
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        match out.write_all(frame).and_then(|()| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("client direct write failed: {e}");
                self.closer.close();
                false
            }
        }
    }
}
