//! What waits for whom: the queries behind the per-recipient caps, paged offline delivery and
//! files tied to a guest's session.
//!
//! Kept apart from `db.rs` because each of them exists to bound something a stranger could
//! otherwise make the relay hold for someone else: a recipient's waiting messages and files are
//! counted before more are accepted, and offline messages are read a page at a time.

use rusqlite::{params, OptionalExtension};

use super::db::Db;
use super::messages::{stored_message, StoredMessage};

impl Db {
    /// Whether `name` is an account (claimed with a password or bound to a machine).
    pub(crate) fn has_account(&self, name: &str) -> rusqlite::Result<bool> {
        let found: Option<i64> =
            self.conn.query_row("SELECT 1 FROM accounts WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        Ok(found.is_some())
    }

    /// How many files wait for `name`.
    pub(crate) fn files_waiting(&self, name: &str) -> rusqlite::Result<u64> {
        self.number("SELECT COUNT(*) FROM file_recipients WHERE recipient = ?1", name)
    }

    /// How many messages wait for `name`.
    pub(crate) fn pending_count(&self, name: &str) -> rusqlite::Result<u64> {
        self.number("SELECT COUNT(*) FROM pending WHERE recipient = ?1", name)
    }

    /// Up to `limit` messages waiting for `name` with ids above `after` and sent at or after
    /// `since_ms`, oldest first.
    pub(crate) fn pending_page(
        &self,
        name: &str,
        after: u64,
        limit: usize,
        since_ms: u64,
    ) -> rusqlite::Result<Vec<StoredMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT m.id, m.room, m.sender, m.recipient, m.sent_ms, m.text FROM pending p
             JOIN messages m ON m.id = p.message_id
             WHERE p.recipient = ?1 AND p.message_id > ?2 AND m.sent_ms >= ?4
             ORDER BY p.message_id LIMIT ?3",
        )?;
        let rows =
            stmt.query_map(params![name, after as i64, limit as i64, since_ms as i64], stored_message)?;
        rows.collect()
    }

    /// Guest `name`'s session ended: nothing waits for that name any more. Deletes the rows, and
    /// the files nobody else waits for; returns those files' ids (the caller deletes the bytes).
    /// Only the guest's own files are looked at, and a guest nothing waited for costs one indexed
    /// read: guests come and go all the time, and this runs on the hub thread.
    pub(crate) fn drop_guest(&mut self, name: &str) -> rusqlite::Result<Vec<u64>> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT file_id FROM file_recipients WHERE recipient = ?1 AND guest = 1")?;
            let rows = stmt.query_map([name], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM file_recipients WHERE recipient = ?1 AND guest = 1", [name])?;
        let mut orphans = Vec::new();
        for id in ids {
            let left: i64 =
                tx.query_row("SELECT COUNT(*) FROM file_recipients WHERE file_id = ?1", [id], |r| r.get(0))?;
            if left == 0 {
                tx.execute("DELETE FROM files WHERE id = ?1", [id])?;
                orphans.push(id as u64);
            }
        }
        tx.commit()?;
        Ok(orphans)
    }

    /// At startup every session is over: drops every guest's rows (see [`Db::drop_guest`]).
    pub(crate) fn drop_all_guests(&mut self) -> rusqlite::Result<Vec<u64>> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM file_recipients WHERE guest = 1", [])?;
        let orphans = orphan_files(&tx)?;
        tx.commit()?;
        Ok(orphans)
    }
}

/// Deletes the files that nobody waits for any more, returning their ids.
fn orphan_files(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<u64>> {
    let ids: Vec<u64> = {
        let mut stmt = tx.prepare(
            "SELECT id FROM files f WHERE NOT EXISTS (SELECT 1 FROM file_recipients r WHERE r.file_id = f.id)",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0).map(|id| id as u64))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for id in &ids {
        tx.execute("DELETE FROM files WHERE id = ?1", [*id as i64])?;
    }
    Ok(ids)
}
