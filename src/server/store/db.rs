//! The relay's SQLite database: the schema and its migrations, which files are stored, and who
//! still waits for each (messages are in `messages.rs`, accounts in `accounts.rs`).
//!
//! One file, `relay.db`, in the data dir, in WAL mode (readers never wait for the writer, and a
//! crash leaves either the old or the new state of every transaction). Only the hub thread uses
//! it, through [`super::Store`].
//!
//! ## Migrations
//!
//! The schema's version is SQLite's `user_version`. [`MIGRATIONS`] lists every change since the
//! first, in order; opening a database applies the ones it has not seen yet, each in its own
//! transaction. So a newer relay opens an older data dir, and a change is never edited once
//! released: it is followed by a new one.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::frame::FileInfo;

/// Every schema change, oldest first. Index `i` takes the database to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: files waiting for their recipients (until issue 3 these were `.meta` text files).
    "CREATE TABLE files (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        sender     TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        size       INTEGER NOT NULL,
        sha256     BLOB    NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE file_recipients (
        file_id   INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        recipient TEXT    NOT NULL,
        PRIMARY KEY (file_id, recipient)
     );
     CREATE INDEX file_recipients_by_name ON file_recipients(recipient);",
    // 2: accounts. Only argon2 hashes (PHC strings), never passwords.
    "CREATE TABLE accounts (
        name          TEXT    PRIMARY KEY,
        password_hash TEXT    NOT NULL,
        created_ms    INTEGER NOT NULL
     );",
    // 3: files that expired before a recipient received them, to tell that recipient by name.
    "CREATE TABLE expired_notices (
        recipient  TEXT    NOT NULL,
        sender     TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        expired_ms INTEGER NOT NULL
     );
     CREATE INDEX files_by_age ON files(created_ms);
     CREATE INDEX expired_notices_by_name ON expired_notices(recipient);",
    // 4: chat messages (for history and offline delivery), who is a member of which room, and
    // which stored messages still wait for which offline member.
    "CREATE TABLE messages (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        room      TEXT    NOT NULL,
        sender    TEXT    NOT NULL,
        recipient TEXT,
        sent_ms   INTEGER NOT NULL,
        text      TEXT    NOT NULL,
        client_id INTEGER NOT NULL
     );
     CREATE INDEX messages_by_room ON messages(room, id);
     CREATE UNIQUE INDEX messages_once ON messages(sender, client_id) WHERE client_id != 0;
     CREATE TABLE members (
        room TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (room, name)
     );
     CREATE TABLE pending (
        recipient  TEXT    NOT NULL,
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        PRIMARY KEY (recipient, message_id)
     );",
    // 5: machine-bound accounts and look-alike names (see store/accounts.rs). SQLite cannot drop
    // NOT NULL from a column, so `accounts` is rebuilt: `password_hash` becomes nullable (an
    // account bound only to an identity token has none), `skeleton` holds the name's UTS #39
    // skeleton (filled in by `fill_missing_skeletons` right after, since SQL cannot compute it),
    // and `created_from` the address that created it (to cap new accounts per address). Tokens
    // are kept as SHA-256 only.
    "CREATE TABLE accounts_v5 (
        name          TEXT    PRIMARY KEY,
        password_hash TEXT,
        skeleton      TEXT,
        created_ms    INTEGER NOT NULL,
        created_from  TEXT
     );
     INSERT INTO accounts_v5 (name, password_hash, created_ms)
        SELECT name, password_hash, created_ms FROM accounts;
     DROP TABLE accounts;
     ALTER TABLE accounts_v5 RENAME TO accounts;
     CREATE INDEX accounts_by_skeleton ON accounts(skeleton);
     CREATE INDEX accounts_by_origin ON accounts(created_from, created_ms);
     CREATE TABLE account_tokens (
        name         TEXT    NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
        token_sha256 BLOB    NOT NULL,
        created_ms   INTEGER NOT NULL,
        PRIMARY KEY (name, token_sha256)
     );",
    // 6: a file waits for a guest only while the guest's
    // session lasts; this marks those rows.
    "ALTER TABLE file_recipients ADD COLUMN guest INTEGER NOT NULL DEFAULT 0;",
    // 7: indexes for what a stranger can make the hub do often, and each file's sender address
    // (the quota also holds per address: guests can make up names). Deleting an expired message
    // cascades to `pending` (found by message id); expiry finds messages by age; history reads a
    // room's messages without walking its direct messages.
    "CREATE INDEX pending_by_message ON pending(message_id);
     CREATE INDEX messages_by_age ON messages(sent_ms);
     CREATE INDEX messages_room_history ON messages(room, id) WHERE recipient IS NULL;
     ALTER TABLE files ADD COLUMN sender_addr TEXT;
     CREATE INDEX files_by_sender_addr ON files(sender_addr);",
];

/// The schema version this build writes.
#[cfg(test)]
const SCHEMA_VERSION: usize = MIGRATIONS.len();

pub(crate) struct Db {
    /// Visible to the store's other modules (`accounts.rs`), which add their own queries.
    pub(super) conn: Connection,
}

impl Db {
    /// Opens (or creates) the database and brings its schema up to date.
    pub(crate) fn open(path: &Path) -> rusqlite::Result<Db> {
        let conn = Connection::open(path)?;
        // WAL: commits are appends to a log, readers are not blocked. NORMAL: a commit survives a
        // crash of this process (what the durability tests kill); it is fsynced at checkpoints.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The store's checkpointer thread copies the log into the file; this connection (the
        // hub's) does it only when the log has grown this far regardless (`checkpointer.rs`).
        conn.pragma_update(None, "wal_autocheckpoint", super::checkpointer::HUB_BACKSTOP_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", super::checkpointer::LOG_KEPT_BYTES)?;
        // SQLite's page cache: 2 MiB (negative means KiB). Its default, written down because it is
        // part of the relay's memory bound: a growing database fills it, and no further.
        conn.pragma_update(None, "cache_size", -2048)?;
        let mut db = Db { conn };
        db.migrate()?;
        Ok(db)
    }

    /// Calls `ring` after every commit on this connection (the store rings its checkpointer).
    pub(crate) fn on_commit(&self, mut ring: impl FnMut() + Send + 'static) {
        self.conn.commit_hook(Some(move || {
            ring();
            false // false: let the commit go ahead
        }));
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        let version: usize = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
            log::info!("store: database schema migrated to version {}", i + 1);
        }
        self.fill_missing_skeletons()
    }

    /// Records a file in one transaction. `place(file_id)` runs inside it (it moves the bytes into
    /// place): if it fails, nothing is recorded. Returns the stored file.
    pub(crate) fn insert_file<E>(
        &mut self,
        file: &NewFile<'_>,
        place: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<FileInfo, InsertError<E>> {
        let tx = self.conn.transaction().map_err(InsertError::Db)?;
        // A NULL id lets SQLite pick the next one (AUTOINCREMENT: never one used before).
        tx.execute(
            "INSERT INTO files (id, sender, name, size, sha256, created_ms, sender_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                file.id.map(|id| id as i64),
                file.sender,
                file.name,
                file.size as i64,
                &file.sha256[..],
                file.created_ms as i64,
                file.sender_addr
            ],
        )
        .map_err(InsertError::Db)?;
        let id = tx.last_insert_rowid() as u64;
        for recipient in file.recipients {
            let guest = file.guests.contains(recipient);
            tx.execute(
                "INSERT INTO file_recipients (file_id, recipient, guest) VALUES (?1, ?2, ?3)",
                params![id as i64, recipient, guest],
            )
            .map_err(InsertError::Db)?;
        }
        place(id).map_err(InsertError::Place)?;
        tx.commit().map_err(InsertError::Db)?;
        Ok(FileInfo {
            file_id: id,
            from: file.sender.to_owned(),
            name: file.name.to_owned(),
            size: file.size,
            sha256: Some(file.sha256),
        })
    }

    /// The highest file id ever given out (AUTOINCREMENT remembers it after the file is gone), or
    /// 0. Uploads take their file id from above it when they start (see `Store::begin_upload`).
    pub(crate) fn last_file_id(&self) -> rusqlite::Result<u64> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'files'", [], |row| row.get(0))
            .optional()?;
        let max: Option<i64> = self.conn.query_row("SELECT MAX(id) FROM files", [], |row| row.get(0))?;
        Ok(seq.unwrap_or(0).max(max.unwrap_or(0)).max(0) as u64)
    }

    /// Every file waiting for `name` that was stored at or after `since_ms`, oldest first.
    pub(crate) fn waiting_for(&self, name: &str, since_ms: u64) -> rusqlite::Result<Vec<FileInfo>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT f.id, f.sender, f.name, f.size, f.sha256 FROM files f
             JOIN file_recipients r ON r.file_id = f.id WHERE r.recipient = ?1 AND f.created_ms >= ?2
             ORDER BY f.id",
        )?;
        let rows = stmt.query_map(params![name, since_ms as i64], file_info)?;
        rows.collect()
    }

    /// File `file_id`, if `name` still waits for it and it was stored at or after `since_ms`.
    pub(crate) fn file_for(
        &self,
        name: &str,
        file_id: u64,
        since_ms: u64,
    ) -> rusqlite::Result<Option<FileInfo>> {
        self.conn
            .query_row(
                "SELECT f.id, f.sender, f.name, f.size, f.sha256 FROM files f
                 JOIN file_recipients r ON r.file_id = f.id
                 WHERE f.id = ?1 AND r.recipient = ?2 AND f.created_ms >= ?3",
                params![file_id as i64, name, since_ms as i64],
                file_info,
            )
            .optional()
    }

    /// Who still waits for `file_id`.
    pub(crate) fn recipients(&self, file_id: u64) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT recipient FROM file_recipients WHERE file_id = ?1 ORDER BY recipient")?;
        let rows = stmt.query_map([file_id as i64], |r| r.get(0))?;
        rows.collect()
    }

    /// Bytes of the files `sender` has stored.
    pub(crate) fn bytes_stored_by(&self, sender: &str) -> rusqlite::Result<u64> {
        self.number("SELECT COALESCE(SUM(size), 0) FROM files WHERE sender = ?1", sender)
    }

    /// Bytes of the files sent from `addr` (by any name).
    pub(crate) fn bytes_stored_from(&self, addr: &str) -> rusqlite::Result<u64> {
        self.number("SELECT COALESCE(SUM(size), 0) FROM files WHERE sender_addr = ?1", addr)
    }

    /// A query that answers one non-negative integer (a count or a sum) for one key.
    pub(super) fn number(&self, sql: &str, key: &str) -> rusqlite::Result<u64> {
        let n: i64 = self.conn.prepare_cached(sql)?.query_row([key], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// `name` has file `file_id`. Returns true when nobody waits for it any more and its row was
    /// deleted (the caller then deletes the bytes).
    pub(crate) fn mark_received(&mut self, name: &str, file_id: u64) -> rusqlite::Result<bool> {
        let tx = self.conn.transaction()?;
        let removed = tx.execute(
            "DELETE FROM file_recipients WHERE file_id = ?1 AND recipient = ?2",
            params![file_id as i64, name],
        )?;
        let left: i64 =
            tx.query_row("SELECT COUNT(*) FROM file_recipients WHERE file_id = ?1", [file_id as i64], |r| {
                r.get(0)
            })?;
        let gone = removed > 0 && left == 0;
        if gone {
            tx.execute("DELETE FROM files WHERE id = ?1", [file_id as i64])?;
        }
        tx.commit()?;
        Ok(gone)
    }

    /// Deletes every file recorded before `cutoff_ms`, leaving a notice for each recipient who
    /// never got it, all in one transaction. Returns the deleted ids and the notices.
    pub(crate) fn expire_files(
        &mut self,
        cutoff_ms: u64,
        now_ms: u64,
    ) -> rusqlite::Result<(Vec<u64>, Vec<Notice>)> {
        let tx = self.conn.transaction()?;
        let notices: Vec<Notice> = {
            let mut stmt = tx.prepare(
                "SELECT r.recipient, f.sender, f.name FROM files f JOIN file_recipients r ON r.file_id = f.id
                 WHERE f.created_ms < ?1 ORDER BY f.id",
            )?;
            let rows = stmt.query_map([cutoff_ms as i64], |r| {
                Ok(Notice { recipient: r.get(0)?, sender: r.get(1)?, name: r.get(2)? })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let ids: Vec<u64> = {
            let mut stmt = tx.prepare("SELECT id FROM files WHERE created_ms < ?1")?;
            let rows = stmt.query_map([cutoff_ms as i64], |r| r.get::<_, i64>(0).map(|id| id as u64))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for notice in &notices {
            tx.execute(
                "INSERT INTO expired_notices (recipient, sender, name, expired_ms) VALUES (?1, ?2, ?3, ?4)",
                params![notice.recipient, notice.sender, notice.name, now_ms as i64],
            )?;
        }
        tx.execute("DELETE FROM files WHERE created_ms < ?1", [cutoff_ms as i64])?;
        tx.commit()?;
        Ok((ids, notices))
    }

    /// Takes (reads and deletes) the expiry notices waiting for `name`.
    pub(crate) fn take_notices(&mut self, name: &str) -> rusqlite::Result<Vec<Notice>> {
        let tx = self.conn.transaction()?;
        let notices = {
            let mut stmt = tx.prepare(
                "SELECT recipient, sender, name FROM expired_notices WHERE recipient = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([name], |r| {
                Ok(Notice { recipient: r.get(0)?, sender: r.get(1)?, name: r.get(2)? })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.execute("DELETE FROM expired_notices WHERE recipient = ?1", [name])?;
        tx.commit()?;
        Ok(notices)
    }

    /// Ids of every stored file (to find bytes on disk that no row claims).
    pub(crate) fn file_ids(&self) -> rusqlite::Result<BTreeSet<u64>> {
        let mut stmt = self.conn.prepare("SELECT id FROM files")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0).map(|id| id as u64))?;
        rows.collect()
    }

    /// Deletes a file's rows (used for rows whose bytes are missing).
    pub(crate) fn forget_file(&mut self, file_id: u64) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM files WHERE id = ?1", [file_id as i64]).map(|_| ())
    }

    /// The schema version of the open database.
    #[cfg(test)]
    fn version(&self) -> rusqlite::Result<usize> {
        self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))
    }
}

/// A file about to be recorded.
pub(crate) struct NewFile<'a> {
    /// `Some` for an id given out before (an upload's, when it started; or an older data dir's,
    /// when importing it); `None` for a fresh one.
    pub id: Option<u64>,
    pub sender: &'a str,
    pub name: &'a str,
    pub size: u64,
    pub sha256: [u8; 32],
    pub created_ms: u64,
    pub recipients: &'a BTreeSet<String>,
    /// The recipients who are guests (a subset of `recipients`): their rows go with their session.
    pub guests: &'a BTreeSet<String>,
    /// Where the sender connected from (IPv4, or IPv6 /64), for the per-address quota; `None`
    /// for files imported from an older data dir.
    pub sender_addr: Option<&'a str>,
}

/// "The file `name` from `sender` expired before `recipient` received it."
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub recipient: String,
    pub sender: String,
    pub name: String,
}

/// Why [`Db::insert_file`] failed.
#[derive(Debug)]
pub(crate) enum InsertError<E> {
    Db(rusqlite::Error),
    Place(E),
}

fn file_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileInfo> {
    let sha: Vec<u8> = row.get(4)?;
    let mut sha256 = [0u8; 32];
    if sha.len() == 32 {
        sha256.copy_from_slice(&sha);
    }
    Ok(FileInfo {
        file_id: row.get::<_, i64>(0)? as u64,
        from: row.get(1)?,
        name: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        sha256: Some(sha256),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::messages::NewMessage;

    #[test]
    fn a_new_database_gets_every_migration_and_reopening_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("relaychat-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.db");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), SCHEMA_VERSION);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), SCHEMA_VERSION);
        let mode: String = db.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_placement_records_nothing() {
        let mut db = Db { conn: Connection::open_in_memory().unwrap() };
        db.migrate().unwrap();
        let recipients: BTreeSet<String> = ["bob".to_string()].into();
        let file = NewFile {
            id: None,
            sender: "a",
            name: "n",
            size: 1,
            sha256: [1; 32],
            created_ms: 0,
            recipients: &recipients,
            guests: &BTreeSet::new(),
            sender_addr: None,
        };
        let failed = db.insert_file(&file, |_| Err("disk says no"));
        assert!(matches!(failed, Err(InsertError::Place("disk says no"))));
        assert!(db.waiting_for("bob", 0).unwrap().is_empty());
        let stored = db.insert_file(&file, |_| Ok::<(), ()>(())).unwrap();
        assert_eq!(db.waiting_for("bob", 0).unwrap(), vec![stored.clone()]);
        assert_eq!(db.bytes_stored_by("a").unwrap(), 1);
        assert!(db.mark_received("bob", stored.file_id).unwrap(), "last recipient: the row goes");
        assert!(db.file_ids().unwrap().is_empty());
    }

    #[test]
    fn messages_history_and_pending() {
        let mut db = Db { conn: Connection::open_in_memory().unwrap() };
        db.migrate().unwrap();
        let mut next = 0;
        let mut msg = |text, client_id, offline: &[&str]| NewMessage {
            id: {
                next += 1;
                next
            },
            room: "lobby",
            sender: "alice",
            recipient: None,
            sent_ms: 1,
            text,
            client_id,
            offline: offline.iter().map(|s| s.to_string()).collect(),
        };
        let batch = [msg("one", 1, &[]), msg("two", 2, &["bob"]), msg("three", 0, &["bob"])];
        let ids: Vec<u64> = batch.iter().map(|m| m.id).collect();
        assert_eq!(db.insert_messages(&batch).unwrap(), vec![true, true, true]);
        assert_eq!(db.message_id_for("alice", 2).unwrap(), Some(ids[1]));
        let plan: String = db
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE sender = 'a' AND client_id = 2 AND client_id != 0",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("messages_once"), "the dedupe lookup uses its index: {plan}");
        let plan: String = db
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT * FROM messages m WHERE room = 'lobby' AND recipient IS NULL
                 ORDER BY id DESC LIMIT 50",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("messages_room_history"), "history skips direct messages by index: {plan}");
        // One id per (sender, client id): the duplicate fails alone, its neighbours are stored.
        let mixed = [msg("four", 4, &[]), msg("two again", 2, &[]), msg("five", 5, &[])];
        assert_eq!(db.insert_messages(&mixed).unwrap(), vec![true, false, true]);
        let huge = [msg("bad id", u64::MAX, &[]), msg("six", 6, &[])];
        assert_eq!(db.insert_messages(&huge).unwrap(), vec![false, true], "an id past i64 fails alone");
        assert_eq!(db.message_id_for("alice", 5).unwrap(), Some(mixed[2].id));
        let history: Vec<String> =
            db.history("lobby", 50, "bob", 0).unwrap().into_iter().map(|m| m.text).collect();
        assert_eq!(history, vec!["one", "four", "five", "six"], "pending messages are not history too");
        let pending: Vec<String> = db.pending_for("bob").unwrap().into_iter().map(|m| m.text).collect();
        assert_eq!(pending, vec!["two", "three"]);
        db.mark_seen("bob", ids[1]).unwrap();
        assert_eq!(db.pending_for("bob").unwrap().len(), 1);
        assert_eq!(db.history("lobby", 2, "carol", 0).unwrap().len(), 2, "the limit holds");
        db.add_member("lobby", "bob").unwrap();
        assert!(db.members("lobby").unwrap().contains("bob"));
        db.remove_member("lobby", "bob").unwrap();
        assert!(db.members("lobby").unwrap().is_empty());
        assert!(db.pending_for("bob").unwrap().is_empty(), "leaving drops what was pending");
    }

    /// Expiry deletes a bounded batch, oldest first, with what was pending for each; the hub
    /// calls it until it comes back short.
    #[test]
    fn expired_messages_go_a_batch_at_a_time_oldest_first() {
        let mut db = Db { conn: Connection::open_in_memory().unwrap() };
        db.migrate().unwrap();
        let batch: Vec<NewMessage<'_>> = (1..=10)
            .map(|id| NewMessage {
                id,
                room: "lobby",
                sender: "alice",
                recipient: None,
                sent_ms: 100 + id,
                text: "old",
                client_id: 0,
                offline: vec!["bob".into()],
            })
            .collect();
        db.insert_messages(&batch).unwrap();
        let pending = |db: &Db| db.pending_for("bob").unwrap().into_iter().map(|m| m.id).collect::<Vec<_>>();
        // Messages 1..=8 are older than the cutoff (sent_ms < 109), 9 and 10 are not.
        assert_eq!(db.expire_messages(109, 3).unwrap(), 3);
        assert_eq!(pending(&db), [4, 5, 6, 7, 8, 9, 10], "the oldest went, with their pending rows");
        assert_eq!(db.expire_messages(109, 3).unwrap(), 3);
        assert_eq!(db.expire_messages(109, 3).unwrap(), 2, "short: nothing older is left");
        assert_eq!(db.expire_messages(109, 3).unwrap(), 0);
        assert_eq!(pending(&db), [9, 10], "what is not old enough stays");
    }
}
