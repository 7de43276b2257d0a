//! How much memory all of a relay's frame readers may hold for big frames together
//! ([`ReadBudget`]).
//!
//! A frame is read whole before it is handled, so a reader's buffer grows to the frame's size (up
//! to [`frame::MAX_FRAME_LEN`](crate::frame::MAX_FRAME_LEN), 1 MiB). That is bounded per
//! connection, and per address by the number of connections an address may have, but a peer
//! decides how long the buffer stays: it can send all of a big frame but its last bytes and then
//! trickle them, a byte just inside each idle timeout, for as long as it likes. A few hundred
//! such connections, from as many addresses, would hold hundreds of MiB, ten thousand would hold
//! ten GiB. So the part of each buffer past what chat needs is taken from one budget shared by
//! every connection, *before* the buffer grows; a reader that finds the budget spent fails with
//! [`ReadError::NoRoom`](super::ReadError::NoRoom), and the relay tells the client `RelayFull`
//! and closes the connection (a client's upload then resumes when it reconnects). Chat never
//! touches the budget: the first [`FREE_BELOW`] bytes of every buffer are free.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The part of a reader's buffer that costs nothing: a whole chat frame (at most 64 KiB of text)
/// and a read's worth of room after it.
pub(crate) const FREE_BELOW: usize = 128 * 1024;

/// The shared budget: see the module docs. One per relay, shared by its connections' readers
/// (an `Arc`); a reader gives back what it took when its buffer shrinks and when it is dropped.
#[derive(Debug)]
pub struct ReadBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ReadBudget {
    /// A budget of `limit` bytes, for every reader together.
    pub fn new(limit: usize) -> ReadBudget {
        ReadBudget { used: AtomicUsize::new(0), limit }
    }

    /// Bytes taken now, by all readers.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Takes `bytes` if they are there; false (and nothing taken) if not.
    pub(crate) fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken earlier.
    pub(crate) fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_only_what_is_there_and_gets_it_back() {
        let budget = ReadBudget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "only 40 left");
        assert_eq!(budget.used(), 60, "a refused take takes nothing");
        assert!(budget.take(40));
        budget.give(60);
        assert!(budget.take(60));
        assert_eq!(budget.used(), 100);
        assert!(!budget.take(usize::MAX), "no overflow");
    }
}
