//! Counting the bytes queued for each client, so that memory held for slow readers is bounded.
//!
//! A frame for a client sits in one of two places before its writer thread writes it: the hub's
//! backlog for that client, or the client's channel. Both are memory the relay holds because of
//! the client, so both are counted, in one number per client and one for the whole relay.
//!
//! The count is kept by the frame itself: an [`Outgoing`] adds its size when the hub creates it
//! and takes it away when it is dropped, which happens wherever it ends: written by the writer,
//! dropped with a closed channel, or dropped with a forgotten backlog. No code path has to
//! remember to "give the bytes back", so the count cannot drift.
//!
//! A broadcast is encoded once and shared (`Arc`) by every recipient. Each recipient's own count
//! includes the whole frame (that is what it keeps alive), but the relay-wide count is charged
//! only a share of it per recipient, so that a big room does not look like a big leak.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Bytes;

/// The queued bytes of one client, and a handle on the relay-wide total.
#[derive(Debug)]
pub(crate) struct Meter {
    client: AtomicUsize,
    total: Arc<AtomicUsize>,
}

impl Meter {
    pub(crate) fn new(total: Arc<AtomicUsize>) -> Arc<Meter> {
        Arc::new(Meter { client: AtomicUsize::new(0), total })
    }

    /// Bytes queued or held back for this client right now.
    pub(crate) fn client_bytes(&self) -> usize {
        self.client.load(Ordering::Relaxed)
    }

    /// Bytes queued or held back for all clients together.
    pub(crate) fn total_bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One frame on its way to one client. Counts itself in its client's [`Meter`] while it exists.
#[derive(Debug)]
pub(crate) struct Outgoing {
    bytes: Bytes,
    meter: Arc<Meter>,
    /// This copy's share of the relay-wide total (see the module docs).
    share: usize,
}

impl Outgoing {
    /// Charges `bytes` to `meter`; `fanout` is how many clients share the same bytes.
    pub(crate) fn new(bytes: Bytes, meter: &Arc<Meter>, fanout: usize) -> Outgoing {
        let len = bytes.len();
        let share = len.div_ceil(fanout.max(1));
        meter.client.fetch_add(len, Ordering::Relaxed);
        meter.total.fetch_add(share, Ordering::Relaxed);
        Outgoing { bytes, meter: meter.clone(), share }
    }
}

/// The hub's queue is always frames: it says "finish" by being closed.
impl crate::outbox::UrgentItem for Outgoing {
    fn frame(&self) -> Option<&[u8]> {
        Some(&self.bytes)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.meter.client.fetch_sub(self.bytes.len(), Ordering::Relaxed);
        self.meter.total.fetch_sub(self.share, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_counted_while_frames_exist_and_shared_frames_count_once_in_total() {
        let total = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Meter::new(total.clone()), Meter::new(total.clone()));
        let frame: Bytes = vec![0u8; 100].into();
        let one = Outgoing::new(frame.clone(), &a, 2);
        let two = Outgoing::new(frame, &b, 2);
        assert_eq!((a.client_bytes(), b.client_bytes(), a.total_bytes()), (100, 100, 100));
        drop(one);
        assert_eq!((a.client_bytes(), b.total_bytes()), (0, 50));
        let (to_writer, from_hub) = crossbeam_channel::bounded(4);
        to_writer.send(two).unwrap();
        drop((to_writer, from_hub)); // a channel closed on both ends drops what it held
        assert_eq!((b.client_bytes(), total.load(Ordering::Relaxed)), (0, 0));
    }
}
