//! Chat messages in the hub: stored before they are delivered, then live delivery, offline
//! delivery at the next login, and the room's history on joining.
//!
//! ## Group commit, and what a receipt promises
//!
//! A message is delivered to whoever is online at once, under an id the hub gives it, and queued
//! in `batch`. The batch is written to SQLite in one transaction as soon as no other event is
//! waiting (or after [`MAX_BATCH`] messages, or before any other kind of event), and only *then*
//! does each sender get its `Sent` receipt. So a receipt is a promise: the message is on disk and
//! will reach every member, offline ones included, even if the relay crashes right after.
//! Committing one transaction per message would cap a flood at the disk's commit rate; the batch
//! turns a flood into a few large commits, and a lone message is still committed at once.
//!
//! Simplified on purpose: if the relay crashes between delivering a message and committing it,
//! the sender has no receipt and sends it again, and whoever was online sees it twice.
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

use super::{ConnId, Hub};
use crate::display::now_ms;
use crate::frame::{ErrorCode, Frame, MARK_HISTORY, MARK_LIVE, MARK_OFFLINE};
use crate::rules;
use crate::server::store::{NewMessage, StoredMessage};

/// The most messages stored in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// A message delivered live and waiting for the next commit.
pub(crate) struct Queued {
    id: u64,
    offline: Vec<String>,
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
            // Clients number their messages upwards, so only an id at or below the highest one
            // seen from this sender can be a resend; only then is the database asked.
            let store = &self.store;
            let highest =
                self.highest_client_id.entry(sender.clone()).or_insert_with(|| store.max_client_id(&sender));
            let maybe_resend = client_id <= *highest;
            *highest = (*highest).max(client_id);
            if maybe_resend {
                // A resend (after a reconnect, say) of something already stored: just confirm it.
                if let Some(message_id) = self.store.message_id_for(&sender, client_id) {
                    self.send_to(id, &Frame::Sent { client_id, message_id });
                    return;
                }
                if self.batch.iter().any(|q| q.sender == sender && q.client_id == client_id) {
                    return;
                }
            }
        }
        let to = if to.is_empty() { None } else { Some(to) };
        if let Some(to) = &to {
            if let Err(e) = self.check_recipient(to) {
                self.send_to(id, &Frame::Error { code: ErrorCode::BadText, message: e });
                return;
            }
        }
        self.last_message_id += 1;
        let queued = Queued {
            id: self.last_message_id,
            offline: self.offline_recipients(&sender, &room, to.as_deref()),
            from_conn: id,
            sender,
            room,
            to,
            client_id,
            sent_ms: now_ms(),
            text,
        };
        self.deliver_live(&queued);
        self.batch.push(queued);
    }

    /// Who must get a message later: the recipient of a direct message if offline (it is an
    /// account: checked), or the room's members who are not online.
    fn offline_recipients(&mut self, sender: &str, room: &str, to: Option<&str>) -> Vec<String> {
        match to {
            Some(to) if self.names.contains_key(to) => Vec::new(),
            Some(to) => vec![to.to_owned()],
            None => {
                let names = &self.names;
                let members = self.members.entry(room.to_owned()).or_insert_with(|| self.store.members(room));
                members.iter().filter(|m| *m != sender && !names.contains_key(*m)).cloned().collect()
            }
        }
    }

    /// A direct message needs someone to receive it: a user online now, or an account.
    fn check_recipient(&self, to: &str) -> Result<(), String> {
        rules::check_name(to).map_err(|e| format!("not sent: {e}"))?;
        if self.names.contains_key(to) || self.store.is_account(to) {
            Ok(())
        } else {
            Err(format!("not sent: nobody called {to:?} is online or has an account"))
        }
    }

    /// Stores the queued messages in one transaction, then sends their receipts.
    pub(super) fn flush_messages(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let rows: Vec<NewMessage<'_>> = batch
            .iter()
            .map(|q| NewMessage {
                id: q.id,
                room: &q.room,
                sender: &q.sender,
                recipient: q.to.as_deref(),
                sent_ms: q.sent_ms,
                text: &q.text,
                client_id: q.client_id,
                offline: q.offline.clone(),
            })
            .collect();
        let stored = self.store.store_messages(&rows);
        drop(rows);
        match stored {
            Ok(_) => {
                for q in batch.iter().filter(|q| q.client_id != 0) {
                    self.send_to(q.from_conn, &Frame::Sent { client_id: q.client_id, message_id: q.id });
                }
            }
            Err((_, why)) => {
                log::error!("cannot store {} message(s): {why}", batch.len());
                for q in batch {
                    let message = "your message could not be stored; it may not reach everyone".to_string();
                    self.send_to(q.from_conn, &Frame::Error { code: ErrorCode::BadText, message });
                }
            }
        }
    }

    /// The message to whoever is online: the room (but the sender), or the one recipient.
    fn deliver_live(&mut self, q: &Queued) {
        let frame = Frame::Chat {
            id: q.id,
            from: q.sender.clone(),
            to: q.to.clone().unwrap_or_default(),
            sent_at_ms: q.sent_ms,
            mark: MARK_LIVE,
            text: q.text.clone(),
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
            self.members
                .entry(room.to_owned())
                .or_insert_with(|| self.store.members(room))
                .insert(name.to_owned());
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
            if let Some(members) = self.members.get_mut(&room) {
                members.remove(&name);
            }
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
