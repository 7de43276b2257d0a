//! The messages part of the relay's database: storing chat in batches, the history of a room,
//! what waits for whom, and the members of rooms (account holders, who get a room's messages
//! while away). The schema is in `db.rs`'s migrations; this file adds the queries.

use std::collections::BTreeSet;

use rusqlite::{params, OptionalExtension};

use super::db::Db;

/// A message about to be stored, under the id the hub gave it when it delivered it.
pub(crate) struct NewMessage<'a> {
    pub id: u64,
    pub room: &'a str,
    pub sender: &'a str,
    /// `Some` for a direct message.
    pub recipient: Option<&'a str>,
    pub sent_ms: u64,
    pub text: &'a str,
    /// The sender's id for it (0: none).
    pub client_id: u64,
    /// Who must get it later.
    pub offline: Vec<String>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    pub id: u64,
    pub room: String,
    pub sender: String,
    pub recipient: Option<String>,
    pub sent_ms: u64,
    pub text: String,
}

impl Db {
    /// Stores messages, and who must get each one later, in one transaction. Returns, per
    /// message, whether it was stored.
    ///
    /// One row that fails (a constraint, say) must never cost the other senders in the batch their
    /// messages. The fast path writes the whole batch at once; only if a row fails is that
    /// transaction rolled back and the batch written again with a savepoint around each row, so
    /// the bad row is rolled back alone. (A savepoint per row on every batch would cost two more
    /// statements per message, for a failure that almost never happens.)
    pub(crate) fn insert_messages(&mut self, batch: &[NewMessage<'_>]) -> rusqlite::Result<Vec<bool>> {
        let tx = self.conn.transaction()?;
        let all_at_once = batch.iter().try_for_each(|m| insert_message(&tx, m));
        if all_at_once.is_ok() {
            tx.commit()?;
            return Ok(vec![true; batch.len()]);
        }
        drop(tx); // rolls the whole attempt back
        let tx = self.conn.transaction()?;
        let mut stored = Vec::with_capacity(batch.len());
        for m in batch {
            tx.execute_batch("SAVEPOINT one_message")?;
            match insert_message(&tx, m) {
                Ok(()) => {
                    tx.execute_batch("RELEASE one_message")?;
                    stored.push(true);
                }
                Err(e) => {
                    log::error!("store: message {} from {:?} not stored: {e}", m.id, m.sender);
                    tx.execute_batch("ROLLBACK TO one_message; RELEASE one_message")?;
                    stored.push(false);
                }
            }
        }
        tx.commit()?;
        Ok(stored)
    }

    /// The highest message id ever used (0 if none): new messages continue after it.
    pub(crate) fn last_message_id(&self) -> rusqlite::Result<u64> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'messages'", [], |r| r.get(0))
            .optional()?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    /// The highest client id `sender` ever stored (0 if none).
    pub(crate) fn max_client_id(&self, sender: &str) -> rusqlite::Result<u64> {
        let max: Option<i64> = self.conn.query_row(
            "SELECT MAX(client_id) FROM messages WHERE sender = ?1 AND client_id != 0",
            [sender],
            |r| r.get(0),
        )?;
        Ok(max.unwrap_or(0).max(0) as u64)
    }

    /// The id under which `sender` already stored `client_id`, if it did.
    pub(crate) fn message_id_for(&self, sender: &str, client_id: u64) -> rusqlite::Result<Option<u64>> {
        self.conn
            .query_row(
                // `client_id != 0` lets SQLite use the partial index `messages_once`.
                "SELECT id FROM messages WHERE sender = ?1 AND client_id = ?2 AND client_id != 0",
                params![sender, client_id as i64],
                |r| r.get::<_, i64>(0).map(|id| id as u64),
            )
            .optional()
    }

    /// The last `limit` messages of `room`, oldest first, without those still pending for `name`.
    pub(crate) fn history(
        &self,
        room: &str,
        limit: usize,
        name: &str,
        since_ms: u64,
    ) -> rusqlite::Result<Vec<StoredMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, room, sender, recipient, sent_ms, text FROM (
                 SELECT * FROM messages m WHERE room = ?1 AND recipient IS NULL AND sent_ms >= ?4
                 AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.recipient = ?2 AND p.message_id = m.id)
                 ORDER BY id DESC LIMIT ?3
             ) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![room, name, limit as i64, since_ms as i64], stored_message)?;
        rows.collect()
    }

    /// Messages waiting for `name`, oldest first (the relay reads them a page at a time instead:
    /// see `waiting.rs`).
    #[cfg(test)]
    pub(crate) fn pending_for(&self, name: &str) -> rusqlite::Result<Vec<StoredMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.id, m.room, m.sender, m.recipient, m.sent_ms, m.text FROM messages m
             JOIN pending p ON p.message_id = m.id WHERE p.recipient = ?1 ORDER BY m.id",
        )?;
        let rows = stmt.query_map([name], stored_message)?;
        rows.collect()
    }

    /// `name` has every pending message up to `message_id`.
    pub(crate) fn mark_seen(&mut self, name: &str, message_id: u64) -> rusqlite::Result<()> {
        self.conn
            .execute(
                "DELETE FROM pending WHERE recipient = ?1 AND message_id <= ?2",
                params![name, message_id as i64],
            )
            .map(|_| ())
    }

    /// Members of `room`.
    pub(crate) fn members(&self, room: &str) -> rusqlite::Result<BTreeSet<String>> {
        let mut stmt = self.conn.prepare_cached("SELECT name FROM members WHERE room = ?1")?;
        let rows = stmt.query_map([room], |r| r.get(0))?;
        rows.collect()
    }

    /// Makes `name` a member of `room` (or leaves it one).
    pub(crate) fn add_member(&mut self, room: &str, name: &str) -> rusqlite::Result<()> {
        self.conn
            .execute("INSERT OR IGNORE INTO members (room, name) VALUES (?1, ?2)", [room, name])
            .map(|_| ())
    }

    /// `name` left `room` for good; messages still pending for it from that room are dropped.
    pub(crate) fn remove_member(&mut self, room: &str, name: &str) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM members WHERE room = ?1 AND name = ?2", [room, name])?;
        tx.execute(
            "DELETE FROM pending WHERE recipient = ?1 AND message_id IN
             (SELECT id FROM messages WHERE room = ?2 AND recipient IS NULL)",
            [name, room],
        )?;
        tx.commit()
    }

    /// Deletes at most `limit` of the messages stored before `cutoff_ms`, oldest first (and with
    /// them, what was pending); returns how many went.
    pub(crate) fn expire_messages(&mut self, cutoff_ms: u64, limit: usize) -> rusqlite::Result<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn.execute(
            "DELETE FROM messages WHERE id IN
             (SELECT id FROM messages WHERE sent_ms < ?1 ORDER BY sent_ms LIMIT ?2)",
            [cutoff_ms as i64, limit],
        )
    }
}

/// Writes one message and who must get it later (see [`Db::insert_messages`]).
fn insert_message(tx: &rusqlite::Transaction<'_>, m: &NewMessage<'_>) -> rusqlite::Result<()> {
    let out_of_range = |column| rusqlite::Error::IntegralValueOutOfRange(column, 0);
    let id = i64::try_from(m.id).map_err(|_| out_of_range(0))?;
    let client_id = i64::try_from(m.client_id).map_err(|_| out_of_range(6))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages (id, room, sender, recipient, sent_ms, text, client_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    insert.execute(params![id, m.room, m.sender, m.recipient, m.sent_ms as i64, m.text, client_id])?;
    let mut later =
        tx.prepare_cached("INSERT OR IGNORE INTO pending (recipient, message_id) VALUES (?1, ?2)")?;
    for name in &m.offline {
        later.execute(params![name, id])?;
    }
    Ok(())
}

pub(super) fn stored_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get::<_, i64>(0)? as u64,
        room: row.get(1)?,
        sender: row.get(2)?,
        recipient: row.get(3)?,
        sent_ms: row.get::<_, i64>(4)? as u64,
        text: row.get(5)?,
    })
}
