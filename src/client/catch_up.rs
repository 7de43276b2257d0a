//! What a client needs to come back after the relay went away without showing or storing
//! anything twice. A [`super::Session`] keeps one beside its [`Client`], which it replaces on
//! every reconnect; the terminal client and the window both use that session.
//!
//! - Messages are sent under ids this side chooses and kept until the relay's receipt
//!   ([`Event::Sent`]) arrives; after a reconnect they are sent again under the same ids, and the
//!   relay stores each only once.
//! - The highest message id shown is remembered, so the history the relay replays on rejoining
//!   is not shown a second time. Our own messages are never echoed back, so their receipts count
//!   as shown too.
//! - Files being sent are kept until their verdict ([`Event::Uploaded`] or a failure) arrives;
//!   after a reconnect they are queued again, and the relay resumes each where it stopped. (The
//!   upload thread sends files one after another, so verdicts come in the order files were
//!   queued.)
//!
//! Receipts only arrive with [`super::ClientConfig::receipts`] set.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Client, ClientError, Direction, Event, Mark};

/// Unconfirmed messages and the last message shown.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// By client id: (recipient, text), recipient empty for the room.
    unconfirmed: BTreeMap<u64, (String, String)>,
    last_seen: u64,
    /// Files queued for upload without a verdict yet, oldest first: (path, recipient).
    uploading: VecDeque<(PathBuf, Option<String>)>,
}

/// The next message id of this process. Ids must not repeat for one sender, or the relay drops
/// the second message as a resend of the first, so there is exactly one source: every
/// [`Client`] and every [`CatchUp`] of the process draws from it. It starts from the clock (in
/// thousandths of a millisecond), so ids keep growing across restarts of the client too.
pub(crate) fn next_message_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if NEXT.load(Ordering::SeqCst) == 0 {
        // The first call of the process reads the clock; racing first calls agree on one start.
        let start = crate::clock::now_ms().saturating_mul(1000).max(1);
        let _ = NEXT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    NEXT.fetch_add(1, Ordering::SeqCst)
}

impl CatchUp {
    /// Sends text (to the room if `to` is empty) and keeps it until its receipt comes.
    ///
    /// If the connection is already gone ([`ClientError::Disconnected`]), the text is kept all the
    /// same and this returns Ok: [`CatchUp::resend`] sends it on the next connection. A line typed
    /// in the moment between a link dying and the reconnect is not lost.
    pub fn send(&mut self, client: &Client, to: &str, text: &str) -> Result<(), ClientError> {
        let id = next_message_id();
        match client.send_with_id(id, to, text) {
            Ok(_) | Err(ClientError::Disconnected) => {}
            Err(e) => return Err(e),
        }
        self.unconfirmed.insert(id, (to.to_owned(), text.to_owned()));
        Ok(())
    }

    /// Queues a file for upload and keeps it until its verdict comes; like [`CatchUp::send`], a
    /// file queued after the connection died is queued again on the next one.
    pub fn send_file(&mut self, client: &Client, path: &Path, to: Option<&str>) -> Result<(), ClientError> {
        match client.send_file(path, to) {
            Ok(()) | Err(ClientError::Disconnected) => {}
            Err(e) => return Err(e),
        }
        self.uploading.push_back((path.to_owned(), to.map(str::to_owned)));
        Ok(())
    }

    /// Files queued and not yet stored or refused.
    pub fn uploads_pending(&self) -> usize {
        self.uploading.len()
    }

    /// After a reconnect: sends again every message that has no receipt, under the same ids,
    /// and queues again every file that had no verdict (the relay resumes it). Returns how many
    /// of each: (messages, files).
    pub fn resend(&self, client: &Client) -> Result<(usize, usize), ClientError> {
        for (id, (to, text)) in &self.unconfirmed {
            client.send_with_id(*id, to, text)?;
        }
        for (path, to) in &self.uploading {
            client.send_file(path, to.as_deref())?;
        }
        Ok((self.unconfirmed.len(), self.uploading.len()))
    }

    /// Takes note of an event; false when it should not be shown (a receipt, or history that
    /// was shown before the reconnect).
    pub fn fresh(&mut self, event: &Event) -> bool {
        match event {
            Event::Chat { id, mark: Mark::History, .. } if *id <= self.last_seen => false,
            Event::Chat { id, .. } => {
                self.last_seen = self.last_seen.max(*id);
                true
            }
            Event::Sent { client_id, message_id } => {
                self.unconfirmed.remove(client_id);
                self.last_seen = self.last_seen.max(*message_id);
                false
            }
            Event::Uploaded { .. } | Event::TransferFailed { direction: Direction::Up, .. } => {
                self.uploading.pop_front();
                true
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(id: u64, mark: Mark) -> Event {
        Event::Chat { id, from: "bob".into(), to: String::new(), sent_at_ms: 0, mark, text: "t".into() }
    }

    #[test]
    fn history_already_shown_is_skipped_and_receipts_count_as_shown() {
        let mut c = CatchUp::default();
        assert!(c.fresh(&chat(5, Mark::Live)));
        assert!(!c.fresh(&chat(5, Mark::History)));
        assert!(!c.fresh(&Event::Sent { client_id: 1, message_id: 9 }));
        assert!(!c.fresh(&chat(8, Mark::History)), "older than our own receipted message");
        assert!(c.fresh(&chat(10, Mark::History)));
        assert!(c.fresh(&chat(3, Mark::Offline)), "offline messages are never skipped");
    }

    #[test]
    fn upload_verdicts_are_counted_off_in_order() {
        let mut c = CatchUp::default();
        c.uploading.push_back(("a".into(), None));
        c.uploading.push_back(("b".into(), Some("bob".into())));
        assert_eq!(c.uploads_pending(), 2);
        let failed = Event::TransferFailed { direction: Direction::Up, name: "a".into(), reason: "x".into() };
        assert!(c.fresh(&failed), "a failure is shown");
        assert_eq!(c.uploading.front().map(|(p, _)| p.clone()), Some(PathBuf::from("b")));
        let down = Event::TransferFailed { direction: Direction::Down, name: "z".into(), reason: "x".into() };
        c.fresh(&down);
        assert_eq!(c.uploads_pending(), 1, "a download's failure is not an upload's verdict");
        assert!(c.fresh(&Event::Uploaded { name: "b".into(), size: 1 }));
        assert_eq!(c.uploads_pending(), 0);
    }

    #[test]
    fn message_ids_come_from_one_source() {
        // `Client::send_text` and `CatchUp::send` both draw from it: they can never hand out the
        // same id, which the relay would take for a resend and drop.
        let ids: Vec<u64> = (0..1000).map(|_| next_message_id()).collect();
        assert!(ids.windows(2).all(|w| w[1] > w[0]), "strictly increasing");
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| next_message_id()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000, "no id handed out twice, even across threads");
    }
}
