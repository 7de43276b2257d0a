//! Chat messages in the hub: stored before they are delivered, then live delivery, offline
//! delivery at the next login, and the room's history on joining.
//!
//! ## Group commit
//!
//! Every message is written to SQLite before anyone sees it and before its sender gets a `Sent`
//! receipt, so a receipt is a promise: the message survives a crash of the relay. Committing one
//! transaction per message would cap the relay at the disk's commit rate, so the hub collects the
//! messages of a burst in `batch` and commits them together when no other event is waiting (or
//! after [`MAX_BATCH`]). A lone message is committed at once; a flood is committed in large steps.
//!
//! ## Who gets what
//!
//! - A room message goes live to everyone else in the room. Account holders who are members of the
//!   room (they joined it and never `/leave`d) but are not online get it at their next login,
//!   marked offline. Guests are never members: their name is not theirs to keep.
//! - A direct message goes live to its recipient wherever they are, or waits for them if they are
//!   an account holder and offline.
//! - On joining, everyone sees the room's last `history` messages, marked history, except those
//!   that offline delivery is about to bring.

use std::collections::{BTreeSet, HashMap};

use super::{ConnId, Hub};
use crate::display::now_ms;
use crate::frame::{ErrorCode, Frame, MARK_HISTORY, MARK_LIVE, MARK_OFFLINE};
use crate::rules;
use crate::server::store::{NewMessage, StoredMessage};

/// The most messages stored in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// A message waiting for the next commit.
pub(crate) struct Queued {
    from_conn: ConnId,
    sender: String,
    room: String,
    to: Option<String>,
    client_id: u64,
    sent_ms: u64,
    text: String,
}

impl Hub {
    /// A `Say` from a joined client: checks it and queues it for the next commit.
    pub(super) fn say(&mut self, id: ConnId, client_id: u64, to: String, text: String) {
        let Some(peer) = self.peer(id) else { return };
        let (sender, room) = (peer.name.clone(), peer.room.clone());
        if client_id != 0 {
            // A resend (after a reconnect, say) of something already stored: just confirm it.
            if let Some(message_id) = self.store.message_id_for(&sender, client_id) {
                self.send_to(id, &Frame::Sent { client_id, message_id });
                return;
            }
            if self.batch.iter().any(|q| q.sender == sender && q.client_id == client_id) {
                return;
            }
        }
        let to = if to.is_empty() { None } else { Some(to) };
        if let Some(to) = &to {
            if let Err(e) = self.check_recipient(to) {
                self.send_to(id, &Frame::Error { code: ErrorCode::BadText, message: e });
                return;
            }
        }
        self.batch.push(Queued { from_conn: id, sender, room, to, client_id, sent_ms: now_ms(), text });
    }

    /// A direct message needs someone to receive it: a user online now, or an account.
    fn check_recipient(&self, to: &str) -> Result<(), String> {
        rules::check_name(to).map_err(|e| format!("not sent: {e}"))?;
        if self.names.contains_key(to) || self.store.password_hash(to).is_ok_and(|h| h.is_some()) {
            Ok(())
        } else {
            Err(format!("not sent: nobody called {to:?} is online or has an account"))
        }
    }

    /// Stores the queued messages in one transaction, then confirms and delivers them.
    pub(super) fn flush_messages(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let mut members: HashMap<String, BTreeSet<String>> = HashMap::new();
        let offline: Vec<Vec<String>> = batch
            .iter()
            .map(|q| match &q.to {
                Some(to) if self.names.contains_key(to) => Vec::new(),
                Some(to) => vec![to.clone()], // checked: an account
                None => {
                    let room_members =
                        members.entry(q.room.clone()).or_insert_with(|| self.store.members(&q.room));
                    room_members
                        .iter()
                        .filter(|m| **m != q.sender && !self.names.contains_key(*m))
                        .cloned()
                        .collect()
                }
            })
            .collect();
        let rows: Vec<NewMessage<'_>> = batch
            .iter()
            .zip(offline)
            .map(|(q, offline)| NewMessage {
                room: &q.room,
                sender: &q.sender,
                recipient: q.to.as_deref(),
                sent_ms: q.sent_ms,
                text: &q.text,
                client_id: q.client_id,
                offline,
            })
            .collect();
        let stored = self.store.store_messages(&rows);
        drop(rows);
        match stored {
            Ok(ids) => {
                for (q, id) in batch.into_iter().zip(ids) {
                    self.deliver(q, id);
                }
            }
            Err((_, why)) => {
                log::error!("cannot store {} message(s): {why}", batch.len());
                for q in batch {
                    let message =
                        "your message could not be stored, so it was not sent; try again".to_string();
                    self.send_to(q.from_conn, &Frame::Error { code: ErrorCode::BadText, message });
                }
            }
        }
    }

    /// After the commit: the receipt to the sender, the message to whoever is online.
    fn deliver(&mut self, q: Queued, id: u64) {
        if q.client_id != 0 {
            self.send_to(q.from_conn, &Frame::Sent { client_id: q.client_id, message_id: id });
        }
        let frame = Frame::Chat {
            id,
            from: q.sender,
            to: q.to.clone().unwrap_or_default(),
            sent_at_ms: q.sent_ms,
            mark: MARK_LIVE,
            text: q.text,
        };
        match &q.to {
            Some(to) => {
                if let Some(&target) = self.names.get(to) {
                    self.send_to(target, &frame);
                }
            }
            None => self.broadcast(&q.room, Some(q.from_conn), &frame),
        }
    }

    /// On joining: membership, the room's history, then what waited while the user was away.
    pub(super) fn catch_up(&mut self, id: ConnId, name: &str, room: &str, account: bool) {
        let pending = if account {
            self.store.set_member(room, name, true);
            self.store.pending_for(name)
        } else {
            Vec::new()
        };
        for message in self.store.history(room, self.config.history, name) {
            self.send_to(id, &stored_frame(message, MARK_HISTORY));
        }
        for message in pending {
            self.send_to(id, &stored_frame(message, MARK_OFFLINE));
        }
    }

    /// `/leave`: forget the membership, then leave like a goodbye.
    pub(super) fn leave_for_good(&mut self, id: ConnId) {
        if let Some(peer) = self.peer(id).filter(|p| p.account) {
            let (room, name) = (peer.room.clone(), peer.name.clone());
            self.store.set_member(&room, &name, false);
        }
        self.leave(id, "left the room for good");
    }
}

fn stored_frame(message: StoredMessage, mark: u8) -> Frame {
    Frame::Chat {
        id: message.id,
        from: message.sender,
        to: message.recipient.unwrap_or_default(),
        sent_at_ms: message.sent_ms,
        mark,
        text: message.text,
    }
}
