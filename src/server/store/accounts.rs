//! Accounts in the relay's database: who owns which name, and how they prove it.
//!
//! ```text
//! accounts        name (key), password_hash (argon2 PHC string, or NULL for a machine-bound
//!                 account), skeleton (UTS #39, indexed: look-alike names are one look-up),
//!                 created_ms and created_from (indexed: new accounts per address per hour)
//! account_tokens  name, token_sha256: the identity tokens bound to each account (at most
//!                 MAX_TOKENS per account; only their SHA-256 is kept)
//! ```
//!
//! The rules (who may claim what) live in `server/login.rs`; this file only stores and finds.
//! Like the rest of the store, it is used by the hub thread alone.

use rusqlite::{params, OptionalExtension};

use super::db::Db;
use super::DbFailed;
use super::Store;
use crate::clock::now_ms;
use crate::server::login::{skeleton, Grant, TokenHash};

/// Identity tokens one account keeps (one per machine it is used from). Binding another drops
/// the oldest, so the list cannot grow without bound.
pub(crate) const MAX_TOKENS: usize = 16;

/// What is stored for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountRecord {
    /// `None` for a machine-bound account that never set a password.
    pub password_hash: Option<String>,
    /// SHA-256 of every identity token bound to it.
    pub tokens: Vec<TokenHash>,
}

impl Store {
    /// The account `name`, if the name is claimed. A database failure is logged and reported as
    /// an error, so a login is refused rather than let through as a guest.
    pub(crate) fn account(&self, name: &str) -> Result<Option<AccountRecord>, DbFailed> {
        self.db.account(name).map_err(|e| {
            log::error!("store: cannot read account {name:?}: {e}");
            DbFailed
        })
    }

    /// The name of an account other than `name` whose skeleton is `skeleton`, if there is one.
    pub(crate) fn look_alike(&self, name: &str, skeleton: &str) -> Result<Option<String>, DbFailed> {
        self.db.look_alike(name, skeleton).map_err(|e| {
            log::error!("store: cannot look for names like {name:?}: {e}");
            DbFailed
        })
    }

    /// How many accounts were created from `origin` since `since_ms`.
    pub(crate) fn accounts_created_since(&self, origin: &str, since_ms: u64) -> Result<usize, DbFailed> {
        self.db.accounts_created_since(origin, since_ms).map_err(|e| {
            log::error!("store: cannot count the accounts from {origin}: {e}");
            DbFailed
        })
    }

    /// Creates the account `grant` describes. False if the name is taken.
    pub(crate) fn create_account(
        &mut self,
        grant: &Grant,
        skeleton: &str,
        origin: &str,
    ) -> Result<bool, DbFailed> {
        self.db.create_account(grant, skeleton, origin, now_ms()).map_err(|e| {
            log::error!("store: cannot create account {:?}: {e}", grant.name);
            DbFailed
        })
    }

    /// Adds a first password and/or binds a token to an existing account.
    pub(crate) fn bind_credentials(&mut self, grant: &Grant) -> Result<(), DbFailed> {
        self.db.bind_credentials(grant, now_ms()).map_err(|e| {
            log::error!("store: cannot update account {:?}: {e}", grant.name);
            DbFailed
        })
    }
}

impl Db {
    pub(crate) fn account(&self, name: &str) -> rusqlite::Result<Option<AccountRecord>> {
        let password_hash: Option<Option<String>> = self
            .conn
            .query_row("SELECT password_hash FROM accounts WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        let Some(password_hash) = password_hash else { return Ok(None) };
        let mut stmt = self.conn.prepare_cached("SELECT token_sha256 FROM account_tokens WHERE name = ?1")?;
        let rows = stmt.query_map([name], |r| r.get::<_, Vec<u8>>(0))?;
        let mut tokens = Vec::new();
        for row in rows {
            // A row that is not 32 bytes cannot be one we wrote; it matches nothing.
            if let Ok(hash) = TokenHash::try_from(row?.as_slice()) {
                tokens.push(hash);
            }
        }
        Ok(Some(AccountRecord { password_hash, tokens }))
    }

    pub(crate) fn look_alike(&self, name: &str, skeleton: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT name FROM accounts WHERE skeleton = ?1 AND name != ?2 LIMIT 1",
                params![skeleton, name],
                |r| r.get(0),
            )
            .optional()
    }

    pub(crate) fn accounts_created_since(&self, origin: &str, since_ms: u64) -> rusqlite::Result<usize> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM accounts WHERE created_from = ?1 AND created_ms >= ?2",
            params![origin, since_ms as i64],
            |r| r.get(0),
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub(crate) fn create_account(
        &mut self,
        grant: &Grant,
        skeleton: &str,
        origin: &str,
        now_ms: u64,
    ) -> rusqlite::Result<bool> {
        let tx = self.conn.transaction()?;
        let added = tx.execute(
            "INSERT OR IGNORE INTO accounts (name, password_hash, skeleton, created_ms, created_from)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![grant.name, grant.password_hash, skeleton, now_ms as i64, origin],
        )?;
        if added == 1 {
            if let Some(token) = &grant.token {
                insert_token(&tx, &grant.name, token, now_ms)?;
            }
        }
        tx.commit()?;
        Ok(added == 1)
    }

    pub(crate) fn bind_credentials(&mut self, grant: &Grant, now_ms: u64) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        if let Some(hash) = &grant.password_hash {
            // Only a first password: changing one needs a way to prove the old one, which the
            // protocol does not have yet.
            tx.execute(
                "UPDATE accounts SET password_hash = ?2 WHERE name = ?1 AND password_hash IS NULL",
                params![grant.name, hash],
            )?;
        }
        if let Some(token) = &grant.token {
            insert_token(&tx, &grant.name, token, now_ms)?;
        }
        tx.commit()
    }

    /// Computes the skeleton of every account that has none (accounts from before schema
    /// version 5). Runs at every open; after the first it finds nothing to do.
    pub(super) fn fill_missing_skeletons(&mut self) -> rusqlite::Result<()> {
        let names: Vec<String> = {
            let mut stmt = self.conn.prepare("SELECT name FROM accounts WHERE skeleton IS NULL")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if names.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for name in &names {
            tx.execute("UPDATE accounts SET skeleton = ?2 WHERE name = ?1", params![name, skeleton(name)])?;
        }
        tx.commit()?;
        log::info!("store: computed the look-alike skeletons of {} account(s)", names.len());
        Ok(())
    }
}

/// Binds a token to an account, keeping only the newest [`MAX_TOKENS`].
fn insert_token(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    token: &TokenHash,
    now_ms: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO account_tokens (name, token_sha256, created_ms) VALUES (?1, ?2, ?3)",
        params![name, &token[..], now_ms as i64],
    )?;
    tx.execute(
        "DELETE FROM account_tokens WHERE name = ?1 AND rowid NOT IN
         (SELECT rowid FROM account_tokens WHERE name = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT ?2)",
        params![name, MAX_TOKENS as i64],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// A fresh, fully migrated database in memory (SQLite's special name `:memory:`).
    fn db() -> Db {
        Db::open(std::path::Path::new(":memory:")).unwrap()
    }

    fn grant(name: &str, password_hash: Option<&str>, token: Option<TokenHash>) -> Grant {
        Grant {
            name: name.into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            password_hash: password_hash.map(str::to_owned),
            token,
            new: true,
        }
    }

    #[test]
    fn an_account_is_claimed_once_with_a_password_or_a_token() {
        let mut db = db();
        assert_eq!(db.account("alice").unwrap(), None);
        assert!(db.create_account(&grant("alice", Some("$argon2id$first"), None), "alice", "o", 1).unwrap());
        assert!(!db
            .create_account(&grant("alice", Some("$argon2id$second"), None), "alice", "o", 2)
            .unwrap());
        let alice = db.account("alice").unwrap().unwrap();
        assert_eq!(alice.password_hash.as_deref(), Some("$argon2id$first"));
        assert!(alice.tokens.is_empty());

        assert!(db.create_account(&grant("bob", None, Some([7; 32])), "bob", "o", 3).unwrap());
        assert_eq!(
            db.account("bob").unwrap(),
            Some(AccountRecord { password_hash: None, tokens: vec![[7; 32]] })
        );
        // A first password can be added; a second does not replace it.
        db.bind_credentials(&grant("bob", Some("$argon2id$bob"), None), 4).unwrap();
        db.bind_credentials(&grant("bob", Some("$argon2id$other"), None), 5).unwrap();
        assert_eq!(db.account("bob").unwrap().unwrap().password_hash.as_deref(), Some("$argon2id$bob"));
    }

    #[test]
    fn tokens_per_account_are_capped_keeping_the_newest() {
        let mut db = db();
        assert!(db.create_account(&grant("carol", None, Some([0; 32])), "carol", "o", 0).unwrap());
        for i in 1..=(MAX_TOKENS as u8 + 4) {
            db.bind_credentials(&grant("carol", None, Some([i; 32])), u64::from(i)).unwrap();
        }
        let tokens = db.account("carol").unwrap().unwrap().tokens;
        assert_eq!(tokens.len(), MAX_TOKENS);
        assert!(tokens.contains(&[MAX_TOKENS as u8 + 4; 32]), "the newest stays");
        assert!(!tokens.contains(&[0; 32]), "the oldest went");
    }

    #[test]
    fn look_alikes_and_new_accounts_per_origin_are_found_by_index() {
        let mut db = db();
        db.create_account(&grant("alice", None, None), &skeleton("alice"), "192.0.2.1", 1000).unwrap();
        assert_eq!(
            db.look_alike("\u{0430}lice", &skeleton("\u{0430}lice")).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(
            db.look_alike("alice", &skeleton("alice")).unwrap(),
            None,
            "a name is not its own look-alike"
        );
        assert_eq!(db.accounts_created_since("192.0.2.1", 0).unwrap(), 1);
        assert_eq!(db.accounts_created_since("192.0.2.1", 1001).unwrap(), 0);
        assert_eq!(db.accounts_created_since("192.0.2.2", 0).unwrap(), 0);
        for (query, index) in [
            ("SELECT name FROM accounts WHERE skeleton = 'x' AND name != 'y'", "accounts_by_skeleton"),
            (
                "SELECT COUNT(*) FROM accounts WHERE created_from = 'x' AND created_ms >= 0",
                "accounts_by_origin",
            ),
        ] {
            let plan: String =
                db.conn.query_row(&format!("EXPLAIN QUERY PLAN {query}"), [], |r| r.get(3)).unwrap();
            assert!(plan.contains(index), "{query}: {plan}");
        }
    }

    #[test]
    fn accounts_of_schema_4_keep_their_passwords_and_get_skeletons() {
        let dir = std::env::temp_dir().join(format!("relaychat-accounts-v4-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.db");
        {
            // A version-4 database, as an older relay left it.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE file_recipients (file_id INTEGER NOT NULL, recipient TEXT NOT NULL);
                 CREATE TABLE messages (id INTEGER PRIMARY KEY, room TEXT, sender TEXT, recipient TEXT,
                                        sent_ms INTEGER, text TEXT, client_id INTEGER);
                 CREATE TABLE pending (recipient TEXT, message_id INTEGER);
                 CREATE TABLE files (id INTEGER PRIMARY KEY, sender TEXT, name TEXT, size INTEGER,
                                     sha256 BLOB, created_ms INTEGER);
                 CREATE TABLE accounts (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_ms INTEGER NOT NULL);
                 INSERT INTO accounts VALUES ('Alice', '$argon2id$old', 5);
                 PRAGMA user_version = 4;",
            )
            .unwrap();
        }
        // Migrations 1 to 4 are skipped (user_version says they ran); 5 and later apply.
        let db = Db::open(&path).unwrap();
        let alice = db.account("Alice").unwrap().unwrap();
        assert_eq!(alice.password_hash.as_deref(), Some("$argon2id$old"));
        assert_eq!(db.look_alike("alice", &skeleton("alice")).unwrap().as_deref(), Some("Alice"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
