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
//!
//! ## Bounds
//!
//! Storing a message for someone costs disk, and delivering a pile of them at login costs memory,
//! so each is bounded before it is taken:
//!
//! - a recipient keeps at most `max_pending_messages` waiting; past that a message still goes live
//!   to whoever is online, but is not kept for that recipient, and the sender is told
//!   (`RecipientFull`);
//! - messages waiting at login are read and queued a page ([`PAGE`]) at a time, the next page only
//!   once the client's queue has drained, so the relay never holds a whole pile for one client;
//! - nothing is stored when the disk is down to `--min-free`: the message still goes live (under
//!   id 0, since it has no place in the store) and the sender is told (`NotStored`);
//! - client ids above `i64::MAX` are refused (`BadMessageId`): they could not be stored, and one
//!   bad row must never fail a batch that holds other people's messages (each row also has its own
//!   savepoint in the store, for whatever else could go wrong with it).

use std::time::{Duration, Instant};

use super::{offline_stranger, ConnId, Hub};
use crate::clock::now_ms;
use crate::frame::{ErrorCode, Frame, MARK_HISTORY, MARK_LIVE, MARK_OFFLINE};
use crate::rules;
use crate::server::store::{NewMessage, StoredMessage};

/// The most messages stored in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// Offline messages read and queued at a time, per client...
pub(super) const PAGE: usize = 64;
/// ...and at most about this many bytes of text in one page, or in the history sent on joining
/// (but at least one message). Together they stay well under a client's queue limit
/// (`max_queued_bytes`), so a room flooded with the largest messages cannot get everyone who
/// joins it cut as "too slow".
pub(super) const PAGE_BYTES: usize = 1024 * 1024;

/// The largest client id: ids are stored as SQLite integers, which are signed 64-bit.
pub const MAX_CLIENT_ID: u64 = i64::MAX as u64;

/// How long a free-space check stays good for messages.
const DISK_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Bytes of disk one byte of message text is assumed to take once stored (row, indexes, WAL).
const STORE_OVERHEAD: u64 = 3;

/// The disk a message of `bytes` of text is assumed to take once stored.
fn stored_cost(bytes: usize) -> u64 {
    (bytes as u64 + 256).saturating_mul(STORE_OVERHEAD)
}

/// A message delivered live and waiting for the next commit.
pub(crate) struct Queued {
    id: u64,
    offline: Vec<String>,
    from_conn: ConnId,
    sender: String,
    room: String,
    to: Option<String>,
    client_id: u64,
    /// Whether the sender is an account: only an account's client ids are stored (they let a
    /// resend from the same owner be recognised later; a guest's would collide with the next
    /// guest of the same name).
    account: bool,
    sent_ms: u64,
    text: String,
}

impl Hub {
    /// The client has the offline messages up to `message_id`: stop keeping them for it.
    pub(super) fn seen(&mut self, id: ConnId, message_id: u64) {
        if let Some(peer) = self.peer(id).filter(|p| p.account) {
            let name = peer.name.clone();
            self.records.store.mark_seen(&name, message_id);
            self.records.pending_counts.remove(&name); // recounted when next needed
        }
    }

    /// A `Say` from a joined client: checks it and queues it for the next commit.
    pub(super) fn say(&mut self, id: ConnId, client_id: u64, to: String, text: String) {
        let Some(peer) = self.peer(id) else { return };
        let (sender, room, account) = (peer.name.clone(), peer.room.clone(), peer.account);
        if client_id > MAX_CLIENT_ID {
            let message =
                format!("not sent: message ids go from 1 to {MAX_CLIENT_ID} (0 asks for no receipt)");
            self.send_to(id, &Frame::Error { code: ErrorCode::BadMessageId, message });
            return;
        }
        if client_id != 0 && self.is_resend(id, &sender, account, client_id) {
            return;
        }
        let to = if to.is_empty() { None } else { Some(to) };
        if let Some(to) = &to {
            if let Err((code, message)) = self.check_recipient(to) {
                self.send_to(id, &Frame::Error { code, message });
                return;
            }
        }
        let mut queued = Queued {
            id: 0,
            offline: Vec::new(),
            from_conn: id,
            sender,
            room,
            to,
            client_id,
            account,
            sent_ms: now_ms(),
            text,
        };
        if !self.disk_has_room(queued.text.len()) {
            // Chat between people online keeps working; only keeping it stops. The message goes
            // out under id 0 (it has no place in the store) and the sender learns it was not kept.
            self.deliver_live(&queued);
            let message =
                "reached those online, but not kept: the relay's disk is too full to store messages"
                    .to_string();
            self.send_to(id, &Frame::Error { code: ErrorCode::NotStored, message });
            return;
        }
        self.records.last_message_id += 1;
        queued.id = self.records.last_message_id;
        queued.offline = self.offline_recipients(id, &queued.sender, &queued.room, queued.to.as_deref());
        self.deliver_live(&queued);
        self.records.batch.push(queued);
    }

    /// True when `client_id` from `sender` was already received: a stored one is confirmed again,
    /// one still in the batch will be confirmed at its commit.
    ///
    /// Only an account's messages are looked up in the store: a resend after a reconnect comes
    /// from the same owner. A guest's name is nobody's, and the next guest to use it is someone
    /// else whose ids mean nothing to the last one's, so for a guest only its own session counts:
    /// the batch in memory and the session's last receipts.
    fn is_resend(&mut self, id: ConnId, sender: &str, account: bool, client_id: u64) -> bool {
        if !account {
            if let Some(&(_, message_id)) =
                self.peer(id).and_then(|p| p.receipts.iter().find(|(c, _)| *c == client_id))
            {
                self.send_to(id, &Frame::Sent { client_id, message_id });
                return true;
            }
            return self.records.batch.iter().any(|q| q.from_conn == id && q.client_id == client_id);
        }
        // Clients number their messages upwards, so only an id at or below the highest one seen
        // from this sender can be a resend; only then is the database asked.
        let store = &self.records.store;
        let highest = self
            .records
            .highest_client_id
            .entry(sender.to_owned())
            .or_insert_with(|| store.max_client_id(sender));
        let maybe_resend = client_id <= *highest;
        *highest = (*highest).max(client_id);
        if !maybe_resend {
            return false;
        }
        if let Some(message_id) = self.records.store.message_id_for(sender, client_id) {
            self.send_to(id, &Frame::Sent { client_id, message_id });
            return true;
        }
        self.records.batch.iter().any(|q| q.sender == sender && q.client_id == client_id)
    }

    /// Whether the disk can take `bytes` more of messages without going below `--min-free`.
    ///
    /// A system call per message would cost more than the message, so the free space is read
    /// once and spent as a budget: each message spends [`STORE_OVERHEAD`] times its size (the
    /// row, its index entries, and the WAL copy), and the disk is read again when the budget runs
    /// out or after [`DISK_CHECK_EVERY`] (files and other programs use the disk too). A fresh
    /// reading cannot see the messages still in `batch`, which reach the disk at the next
    /// commit, so their cost comes off it: under load a batch holds up to [`MAX_BATCH`] messages
    /// (16 MiB of them at most), and a flood once took the disk that far below `--min-free`.
    fn disk_has_room(&mut self, bytes: usize) -> bool {
        let cost = stored_cost(bytes);
        let (budget, checked) = self.records.disk_budget;
        let fresh = checked.is_some_and(|t| t.elapsed() < DISK_CHECK_EVERY);
        let budget = if fresh && budget >= cost {
            budget
        } else {
            let queued: u64 = self.records.batch.iter().map(|q| stored_cost(q.text.len())).sum();
            self.records.store.writable_bytes().saturating_sub(queued)
        };
        let ok = budget >= cost;
        self.records.disk_budget = (if ok { budget - cost } else { 0 }, Some(Instant::now()));
        ok
    }

    /// Who must get a message later: the recipient of a direct message if offline (it is an
    /// account: checked), or the room's members who are not online. Recipients who already have
    /// `max_pending_messages` waiting are left out, and the sender is told.
    fn offline_recipients(&mut self, id: ConnId, sender: &str, room: &str, to: Option<&str>) -> Vec<String> {
        let wanted: Vec<String> = match to {
            Some(to) if self.routing.names.contains_key(to) => Vec::new(),
            Some(to) => vec![to.to_owned()],
            None => {
                let names = &self.routing.names;
                let members = self
                    .records
                    .members
                    .entry(room.to_owned())
                    .or_insert_with(|| self.records.store.members(room));
                members.iter().filter(|m| *m != sender && !names.contains_key(*m)).cloned().collect()
            }
        };
        let limit = self.config.max_pending_messages;
        let (mut keep, mut full) = (Vec::with_capacity(wanted.len()), Vec::new());
        for name in wanted {
            let store = &self.records.store;
            let count =
                self.records.pending_counts.entry(name.clone()).or_insert_with(|| store.pending_count(&name));
            if *count >= limit {
                full.push(name);
            } else {
                *count += 1;
                keep.push(name);
            }
        }
        if !full.is_empty() {
            let shown: Vec<&str> = full.iter().take(5).map(String::as_str).collect();
            let more = if full.len() > 5 { format!(" and {} more", full.len() - 5) } else { String::new() };
            let message = format!(
                "not kept for {}{more}: {limit} messages already wait for them; they get it only if they are online",
                shown.join(", ")
            );
            self.send_to(id, &Frame::Error { code: ErrorCode::RecipientFull, message });
        }
        keep
    }

    /// A direct message needs someone to receive it: a user online now, or an account.
    fn check_recipient(&self, to: &str) -> Result<(), (ErrorCode, String)> {
        rules::check_name(to)
            .map_err(|e| (ErrorCode::UnknownRecipient, format!("not sent: bad recipient: {e}")))?;
        if self.routing.names.contains_key(to) || self.records.store.has_account(to) {
            Ok(())
        } else {
            Err((ErrorCode::UnknownRecipient, offline_stranger(to, "a message")))
        }
    }

    /// Stores the queued messages in one transaction, then sends their receipts.
    pub(super) fn flush_messages(&mut self) {
        if self.records.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.records.batch);
        let rows: Vec<NewMessage<'_>> = batch
            .iter()
            .map(|q| NewMessage {
                id: q.id,
                room: &q.room,
                sender: &q.sender,
                recipient: q.to.as_deref(),
                sent_ms: q.sent_ms,
                text: &q.text,
                client_id: if q.account { q.client_id } else { 0 },
                offline: q.offline.clone(),
            })
            .collect();
        let stored = self.records.store.store_messages(&rows);
        drop(rows);
        match stored {
            Ok(stored) => {
                for (q, ok) in batch.iter().zip(stored) {
                    if ok {
                        if q.client_id != 0 {
                            self.remember_guest_receipt(q);
                            self.send_to(
                                q.from_conn,
                                &Frame::Sent { client_id: q.client_id, message_id: q.id },
                            );
                        }
                    } else {
                        self.not_stored(q);
                    }
                }
            }
            Err((_, why)) => {
                log::error!("cannot store {} message(s): {why}", batch.len());
                for q in &batch {
                    self.not_stored(q);
                }
            }
        }
    }

    /// A guest's session remembers its last receipts (its ids are not stored; see `is_resend`).
    fn remember_guest_receipt(&mut self, q: &Queued) {
        if q.account {
            return;
        }
        if let Some(peer) = self.peer_mut(q.from_conn) {
            if peer.receipts.len() >= super::GUEST_RECEIPTS {
                peer.receipts.pop_front();
            }
            peer.receipts.push_back((q.client_id, q.id));
        }
    }

    /// Tells a sender that its message reached those online but was not stored, and takes it
    /// back out of the waiting counts.
    fn not_stored(&mut self, q: &Queued) {
        for name in &q.offline {
            if let Some(count) = self.records.pending_counts.get_mut(name) {
                *count = count.saturating_sub(1);
            }
        }
        let message =
            "your message reached those online but could not be stored; it will not reach anyone later"
                .to_string();
        self.send_to(q.from_conn, &Frame::Error { code: ErrorCode::NotStored, message });
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
                if let Some(&target) = self.routing.names.get(to) {
                    self.send_to(target, &frame);
                }
            }
            None => self.broadcast(&q.room, Some(q.from_conn), &frame),
        }
    }

    /// On joining: membership, the room's history, then what waited while the user was away (the
    /// first page of it; see [`Hub::continue_catch_ups`]).
    pub(super) fn catch_up(&mut self, id: ConnId, name: &str, room: &str, account: bool) {
        if account {
            self.records.store.set_member(room, name, true);
            self.records
                .members
                .entry(room.to_owned())
                .or_insert_with(|| self.records.store.members(room))
                .insert(name.to_owned());
        }
        let mut history = self.records.store.history(room, self.config.history, name);
        // The most recent messages that fit the byte budget (history is oldest first).
        let mut bytes = 0;
        let keep = history.iter().rev().take_while(|m| {
            bytes += m.text.len();
            bytes <= PAGE_BYTES
        });
        let skip = history.len() - keep.count();
        for message in history.drain(skip..) {
            self.send_to(id, &stored_frame(message, MARK_HISTORY));
        }
        if account {
            if let Some(peer) = self.peer_mut(id) {
                peer.catching_up = Some(0);
            }
            self.send_pending_page(id);
        }
    }

    /// Sends the next page of messages waiting for client `id`, and notes whether more remain.
    fn send_pending_page(&mut self, id: ConnId) {
        let Some(peer) = self.peer(id) else { return };
        let (Some(after), name) = (peer.catching_up, peer.name.clone()) else { return };
        let mut page = self.records.store.pending_page(&name, after, PAGE);
        let done = page.len() < PAGE;
        let mut bytes = 0;
        let fits = page
            .iter()
            .take_while(|m| {
                bytes += m.text.len();
                bytes <= PAGE_BYTES
            })
            .count()
            .max(1)
            .min(page.len());
        let done = done && fits == page.len();
        page.truncate(fits);
        let last = page.last().map_or(after, |m| m.id);
        for message in page {
            self.send_to(id, &stored_frame(message, MARK_OFFLINE));
        }
        if let Some(peer) = self.peer_mut(id) {
            peer.catching_up = if done { None } else { Some(last) };
        }
        if done {
            self.records.catching_up.remove(&id);
        } else {
            self.records.catching_up.insert(id);
        }
    }

    /// Offline delivery, continued: a client gets its next page once everything queued for it
    /// has been taken by its writer, so a pile of waiting messages never sits in memory at once.
    pub(super) fn continue_catch_ups(&mut self) {
        let ready: Vec<ConnId> = self
            .records
            .catching_up
            .iter()
            .copied()
            .filter(|&id| self.peer(id).is_some_and(|p| p.backlog.is_empty() && p.to_client.is_empty()))
            .collect();
        for id in ready {
            self.send_pending_page(id);
        }
    }

    /// `/leave`: forget the membership, then leave like a goodbye.
    pub(super) fn leave_for_good(&mut self, id: ConnId) {
        if let Some(peer) = self.peer(id).filter(|p| p.account) {
            let (room, name) = (peer.room.clone(), peer.name.clone());
            self.records.store.set_member(&room, &name, false);
            if let Some(members) = self.records.members.get_mut(&room) {
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
