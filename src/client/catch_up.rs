//! What a client needs to come back after the relay went away without showing or storing
//! anything twice. The terminal client and the window both keep one [`CatchUp`] beside their
//! [`Client`], which they replace on every reconnect.
//!
//! - Messages are sent under ids this side chooses and kept until the relay's receipt
//!   ([`Event::Sent`]) arrives; after a reconnect they are sent again under the same ids, and the
//!   relay stores each only once.
//! - The highest message id shown is remembered, so the history the relay replays on rejoining
//!   is not shown a second time. Our own messages are never echoed back, so their receipts count
//!   as shown too.
//!
//! Receipts only arrive with [`super::ClientConfig::receipts`] set.

use std::collections::BTreeMap;

use super::{Client, ClientError, Event, Mark};

/// Unconfirmed messages and the last message shown.
#[derive(Debug)]
pub struct CatchUp {
    /// By client id: (recipient, text), recipient empty for the room.
    unconfirmed: BTreeMap<u64, (String, String)>,
    next_id: u64,
    last_seen: u64,
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp { unconfirmed: BTreeMap::new(), next_id: first_message_id(), last_seen: 0 }
    }
}

/// The first client id of a session. Ids must not repeat for one sender across restarts of the
/// client, so they start from the clock (in thousandths of a millisecond) and count up.
pub(crate) fn first_message_id() -> u64 {
    crate::display::now_ms().saturating_mul(1000).max(1)
}

impl CatchUp {
    /// Sends text (to the room if `to` is empty) and keeps it until its receipt comes.
    pub fn send(&mut self, client: &Client, to: &str, text: &str) -> Result<(), ClientError> {
        let id = client.send_with_id(self.next_id, to, text)?;
        self.next_id += 1;
        self.unconfirmed.insert(id, (to.to_owned(), text.to_owned()));
        Ok(())
    }

    /// After a reconnect: sends again everything that has no receipt, under the same ids.
    pub fn resend(&self, client: &Client) -> Result<(), ClientError> {
        for (id, (to, text)) in &self.unconfirmed {
            client.send_with_id(*id, to, text)?;
        }
        Ok(())
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
}
