//! The relay's store: the one module that owns the data directory (files, accounts, messages).
//!
//! ```text
//! relay-data/
//!   relay.db (+ -wal, -shm)  SQLite: who sent each file, its cleaned name, size, SHA-256, and who
//!                            still waits for it (see db.rs)
//!   tmp/<upload_id>.part     uploads in progress (names chosen here, never by a client)
//!   files/<file_id>.bin      complete, verified files
//! ```
//!
//! The hub thread owns the [`Store`] and is the only one to decide to create, rename or delete
//! anything here; those are small, quick operations, except deleting a big file, which the store
//! hands to a thread of its own (`remover.rs`), and the database's checkpoints, which wait for the
//! disk and run on another (`checkpointer.rs`). The *bytes* of a transfer are moved by the connection's
//! own threads: an upload is written to its `.part` file by the connection's reader, a download is
//! read by the connection's download thread. So the hub never waits on a large write.
//!
//! An upload gets its file id when it starts: its recipients may download it while it arrives,
//! from its `.part` file (`uploads.rs`, and `server/arrival.rs` for how the download follows).
//!
//! A file is recorded in one database transaction that also moves its bytes into place, and the
//! uploader is told "done" only after that transaction commits. At startup, bytes that no row
//! claims (a crash between the move and the commit) are deleted, and rows whose bytes are missing
//! are forgotten. Data dirs of the text-file era (`files/<id>.meta`) are imported once
//! ([`legacy`]).
//!
//! Inside: `uploads.rs` decides whether an upload may start and keeps unfinished ones bounded;
//! `waiting.rs` counts and pages what waits for whom; `accounts.rs` keeps names and their
//! secrets; `db.rs` is the schema and the rest of the SQL.
//!
//! Simplified on purpose: partial uploads are remembered in memory only. After a relay restart
//! their `.part` files are deleted and those uploads start again from zero.

mod accounts;
mod checkpointer;
mod db;
mod legacy;
mod messages;
mod remover;
mod uploads;
mod waiting;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::frame::{ErrorCode, FileInfo};
use crate::server::arrival::{Arrival, Outcome};
use crate::server::hub::ConnId;
pub(crate) use db::Notice;
use db::{Db, InsertError, NewFile};
pub(crate) use messages::{NewMessage, StoredMessage};
use uploads::Partial;
pub(crate) use uploads::UploadRequest;

/// Limits on what the store accepts, all checked before the first byte of an upload is stored.
///
/// Each bounds something a peer could otherwise make the relay hold: disk (size, quota, free
/// space), memory and file descriptors (uploads in progress), and another person's Receive list
/// (files waiting per recipient).
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Largest single file. Default 4 GiB.
    pub max_file_size: u64,
    /// Most bytes one sender may have on the relay at once: stored files, bytes of unfinished
    /// uploads, and the rest of the one upload it is sending right now. Default 10 GiB.
    pub quota: u64,
    /// Bytes the disk must keep free after an upload is accounted for. Chat messages obey it too.
    /// Default 64 MiB.
    pub min_free: u64,
    /// Unfinished uploads one sender may keep (to resume later). Default 4.
    pub partials_per_user: usize,
    /// Unfinished uploads on the whole relay. Default 1024.
    pub partials_total: usize,
    /// An unfinished upload that nobody is sending and that has not grown for this long is deleted.
    /// Default 1 hour.
    pub partial_ttl: Duration,
    /// A running upload keeps space reserved for its whole size only while bytes keep arriving; after
    /// this long without any, only the bytes it has count. Default 30 s.
    pub upload_stall: Duration,
    /// Files that may wait for one recipient. Default 1000.
    pub files_per_recipient: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_file_size: 4 << 30,
            quota: 10 << 30,
            min_free: 64 << 20,
            partials_per_user: 4,
            partials_total: 1024,
            partial_ttl: Duration::from_secs(3600),
            upload_stall: Duration::from_secs(30),
            files_per_recipient: 1000,
        }
    }
}

/// A refusal: the error code for the client and a sentence for the person.
pub(crate) type Refusal = (ErrorCode, String);

/// Expired messages deleted in one go. Each may take a `pending` row per offline member with it:
/// 128 messages with 20 such rows each took about 8 ms on this project's machine, so the hub
/// never stops for long, and between two batches it serves whatever else is waiting.
pub(crate) const EXPIRE_BATCH: usize = 128;

/// What the connection thread needs to receive an upload.
#[derive(Debug, Clone)]
pub(crate) struct UploadPlan {
    pub upload_id: u64,
    pub temp_path: PathBuf,
    pub size: u64,
    /// Where the upload's disk thread tells followers how far it got (see `server/arrival.rs`).
    pub arrival: Arc<Arrival>,
}

/// What the download thread needs to send a file.
#[derive(Debug, Clone)]
pub(crate) struct DownloadPlan {
    pub file_id: u64,
    pub path: PathBuf,
    pub size: u64,
    pub offset: u64,
    pub source: Source,
}

/// Where a download's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A stored file (`path` is `files/<id>.bin`), verified with this SHA-256.
    Stored([u8; 32]),
    /// An upload still arriving (`path` is its `tmp/<upload_id>.part`): follow its progress.
    /// `stored_path` is where the file moves when the upload completes, should it complete
    /// before the download thread opens it.
    Arriving { arrival: Arc<Arrival>, stored_path: PathBuf, patience: Duration },
}

/// The data directory and everything known about its contents.
pub(crate) struct Store {
    files_dir: PathBuf,
    tmp_dir: PathBuf,
    /// The database's write-ahead log (`relay.db-wal`), whose size counts as spent disk space
    /// (see [`Store::free_space`]).
    log_path: PathBuf,
    limits: StoreLimits,
    /// Copies the database's log into the file on its own thread (see `checkpointer.rs`); held
    /// only to be dropped. Declared before `db` because fields drop in order: its thread ends
    /// first, and the hub's connection, the last one open, folds the log in and deletes it.
    _checkpointer: checkpointer::Checkpointer,
    db: Db,
    /// Uploads in progress, by upload id (in memory only; see the module docs).
    partials: HashMap<u64, Partial>,
    next_upload_id: u64,
    /// The file id the next upload gets when it starts: recipients can download a file while it
    /// arrives, so it needs its number before it is stored. Above every id the database ever gave.
    next_file_id: u64,
    /// When [`Store::check_partials`] last looked at the unfinished uploads' files.
    partials_checked: Instant,
    /// See [`Store::keep_for`].
    retention: Duration,
    /// Deletes files on its own thread (see `remover.rs`): the hub owns the store and must not
    /// wait while a big file is unlinked.
    remover: remover::Remover,
}

impl Store {
    /// Opens (creating if needed) the data directory and its database, imports an older data
    /// dir's metadata, and removes leftovers: `.part` files of an earlier run, bytes that no row
    /// claims, rows whose bytes are gone.
    pub(crate) fn open(root: &Path, limits: StoreLimits) -> io::Result<Store> {
        let files_dir = root.join("files");
        let tmp_dir = root.join("tmp");
        fs::create_dir_all(&files_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        for entry in fs::read_dir(&tmp_dir)? {
            let _ = fs::remove_file(entry?.path());
        }
        let db_path = root.join("relay.db");
        let mut db = Db::open(&db_path).map_err(db_error)?;
        let checkpointer = checkpointer::Checkpointer::start(&db_path)?;
        db.on_commit(checkpointer.ringer());
        legacy::import(&files_dir, &mut db)?;
        // Sessions do not survive a restart, so neither do files that waited for guests.
        let orphans = db.drop_all_guests().map_err(db_error)?;
        let next_file_id = db.last_file_id().map_err(db_error)? + 1;
        let mut store = Store {
            files_dir,
            tmp_dir,
            log_path: root.join("relay.db-wal"),
            limits,
            _checkpointer: checkpointer,
            db,
            partials: HashMap::new(),
            next_upload_id: 1,
            next_file_id,
            partials_checked: Instant::now(),
            retention: Duration::MAX,
            remover: remover::Remover::start()?,
        };
        store.delete_bytes(&orphans);
        store.reconcile()?;
        Ok(store)
    }

    /// Makes disk and database agree after whatever happened before this start.
    fn reconcile(&mut self) -> io::Result<()> {
        let known = self.db.file_ids().map_err(db_error)?;
        let mut on_disk = BTreeSet::new();
        for entry in fs::read_dir(&self.files_dir)? {
            let path = entry?.path();
            let id = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
            match id {
                Some(id) if known.contains(&id) && path.extension().is_some_and(|e| e == "bin") => {
                    on_disk.insert(id);
                }
                _ => {
                    log::info!("store: removing {} (no record claims it)", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for id in known.difference(&on_disk) {
            log::warn!("store: file {id} is recorded but its bytes are missing; forgetting it");
            self.db.forget_file(*id).map_err(db_error)?;
        }
        log::info!("store: {} file(s) waiting for recipients", on_disk.len());
        Ok(())
    }

    fn bin_path(&self, id: u64) -> PathBuf {
        self.files_dir.join(format!("{id}.bin"))
    }

    /// The connection verified size and SHA-256: record the file and move it into place, in one
    /// transaction. Only after this returns may the uploader be told the file is stored. Whoever
    /// follows the upload as it arrives learns the outcome (see `server/arrival.rs`).
    pub(crate) fn commit_upload(
        &mut self,
        conn: ConnId,
        upload_id: u64,
        sha256: [u8; 32],
    ) -> Result<FileInfo, Refusal> {
        if self.partials.get(&upload_id).is_none_or(|p| p.in_use_by != Some(conn)) {
            return Err((
                ErrorCode::BadTransfer,
                format!("upload {upload_id} is not in progress on this connection"),
            ));
        }
        let partial = self
            .partials
            .remove(&upload_id)
            .ok_or_else(|| (ErrorCode::BadTransfer, format!("no upload {upload_id} in progress")))?;
        let result = self.record(&partial, sha256);
        match &result {
            Ok(_) => partial.arrival.finish(Outcome::Stored(sha256)),
            Err((_, why)) => {
                partial.arrival.finish(Outcome::Failed(why.clone()));
                self.remover.remove(partial.temp_path);
            }
        }
        result
    }

    /// Records a verified upload under its file id and moves its bytes into place.
    fn record(&mut self, partial: &Partial, sha256: [u8; 32]) -> Result<FileInfo, Refusal> {
        self.check_commit(partial)?;
        let file = NewFile {
            id: Some(partial.file_id),
            sender: &partial.sender,
            name: &partial.name,
            size: partial.size,
            sha256,
            created_ms: now_ms(),
            recipients: &partial.recipients,
            guests: &partial.guests,
            sender_addr: Some(&partial.addr.to_string()),
        };
        let files_dir = &self.files_dir;
        self.db
            .insert_file(&file, |id| fs::rename(&partial.temp_path, files_dir.join(format!("{id}.bin"))))
            .map_err(|e| {
                let why = match e {
                    InsertError::Db(e) => e.to_string(),
                    InsertError::Place(e) => e.to_string(),
                };
                (ErrorCode::Storage, format!("cannot store the file: {why}"))
            })
    }

    /// What can change while an upload runs is checked again before it is recorded: someone must
    /// still be waiting for it (guest recipients who left are gone), and the sender's stored bytes
    /// with this file must fit the quota (running uploads reserve only a little ahead; see
    /// `uploads.rs`).
    fn check_commit(&self, partial: &Partial) -> Result<(), Refusal> {
        if partial.recipients.is_empty() {
            return Err((
                ErrorCode::NoRecipients,
                "everyone this file was for has left; nothing was kept".into(),
            ));
        }
        let stored = self.db.bytes_stored_by(&partial.sender).map_err(refusal)?;
        let from_here = self.db.bytes_stored_from(&partial.addr.to_string()).map_err(refusal)?;
        if stored.max(from_here).saturating_add(partial.size) > self.limits.quota {
            return Err((
                ErrorCode::QuotaExceeded,
                format!(
                    "with this file you would have more than your quota of {} on the relay",
                    crate::display::human_size(self.limits.quota)
                ),
            ));
        }
        Ok(())
    }

    /// How long files and messages are kept (`--retention`). Whatever is older is never offered
    /// or delivered, even before the janitor has deleted it.
    pub(crate) fn keep_for(&mut self, retention: Duration) {
        self.retention = retention;
    }

    /// The oldest time (ms since the epoch) of anything still offered.
    fn kept_since(&self) -> u64 {
        now_ms().saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX))
    }

    /// The limits this store enforces.
    pub(crate) fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Who still waits for `file_id`.
    pub(crate) fn recipients(&self, file_id: u64) -> Vec<String> {
        logged(format!("cannot read who waits for file {file_id}"), self.db.recipients(file_id))
    }

    /// Every file waiting for `name`, oldest first.
    pub(crate) fn waiting_for(&self, name: &str) -> Vec<FileInfo> {
        logged(
            format!("cannot read the files waiting for {name:?}"),
            self.db.waiting_for(name, self.kept_since()),
        )
    }

    /// Checks that `name` may download `file_id` from `offset`: a stored file waiting for them,
    /// or one still arriving for them (its upload running right now).
    pub(crate) fn plan_download(
        &self,
        name: &str,
        file_id: u64,
        offset: u64,
    ) -> Result<DownloadPlan, Refusal> {
        let stored = self.db.file_for(name, file_id, self.kept_since()).map_err(refusal)?;
        let (path, size, source) = match (stored, self.arriving(name, file_id)) {
            (Some(FileInfo { size, sha256: Some(sha256), .. }), _) => {
                (self.bin_path(file_id), size, Source::Stored(sha256))
            }
            (_, Some(partial)) => {
                let arrival = partial.arrival.clone();
                let (stored_path, patience) = (self.bin_path(file_id), self.limits.upload_stall);
                (partial.temp_path.clone(), partial.size, Source::Arriving { arrival, stored_path, patience })
            }
            _ => return Err((ErrorCode::NoSuchFile, format!("no file {file_id} is waiting for you"))),
        };
        if offset > size {
            return Err((ErrorCode::BadTransfer, format!("offset {offset} is past the end of the file")));
        }
        Ok(DownloadPlan { file_id, path, size, offset, source })
    }

    /// `name` has the file, verified. When the last recipient has it, it is deleted: first its
    /// row (committed), then its bytes, so a crash in between leaves bytes that the next start
    /// removes, never a row without bytes.
    pub(crate) fn mark_received(&mut self, name: &str, file_id: u64) {
        match self.db.mark_received(name, file_id) {
            Ok(true) => self.remover.remove(self.bin_path(file_id)),
            Ok(false) => {}
            Err(e) => log::error!("store: cannot record that {name} has file {file_id}: {e}"),
        }
    }
}

impl Store {
    /// Deletes up to [`EXPIRE_BATCH`] of the messages stored longer than `retention`; true when
    /// there may be more. The hub calls it again between other events until it says no: one
    /// `DELETE` of everything that expired at once (a flood a week ago: thousands of messages,
    /// each with a `pending` row per offline member) kept the hub, and so every chat, waiting for
    /// a second or more (`tests/review_hub_load.rs`, f2).
    pub(crate) fn expire_messages(&mut self, retention: std::time::Duration) -> bool {
        let cutoff = now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        match self.db.expire_messages(cutoff, EXPIRE_BATCH) {
            Ok(0) => false,
            Ok(n) => {
                log::info!("store: {n} message(s) expired");
                n == EXPIRE_BATCH
            }
            Err(e) => {
                log::error!("store: cannot expire old messages: {e}");
                false
            }
        }
    }

    /// Deletes files stored longer than `retention` (rows first, then bytes) and returns a notice
    /// for every recipient who never got one. The notices are also kept for [`Store::notices_for`].
    pub(crate) fn expire_files(&mut self, retention: std::time::Duration) -> Vec<Notice> {
        let now = now_ms();
        let cutoff = now.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        match self.db.expire_files(cutoff, now) {
            Ok((ids, notices)) => {
                self.delete_bytes(&ids);
                if !ids.is_empty() {
                    log::info!("store: {} file(s) expired", ids.len());
                }
                notices
            }
            Err(e) => {
                log::error!("store: cannot expire old files: {e}");
                Vec::new()
            }
        }
    }

    /// Stores a batch of messages in one transaction; per message, whether it was stored (one bad
    /// row fails alone). An error means the whole transaction failed.
    pub(crate) fn store_messages(&mut self, batch: &[NewMessage<'_>]) -> Result<Vec<bool>, Refusal> {
        self.db.insert_messages(batch).map_err(refusal)
    }

    /// Bytes that may still be written before the disk is down to `min_free` (0 if it is, or if
    /// the free space cannot be read).
    pub(crate) fn writable_bytes(&self) -> u64 {
        match self.free_space(&self.files_dir) {
            Ok(free) => free.saturating_sub(self.limits.min_free),
            Err(e) => {
                log::error!("store: cannot check free space: {e}");
                0
            }
        }
    }

    /// The free space on the disk that holds `dir`, less what the database's log may still take.
    ///
    /// Every page in `relay.db-wal` may yet be copied into `relay.db` by a checkpoint, and the
    /// log file does not shrink when it is copied (SQLite writes over it from the start), so the
    /// whole log counts as spent: otherwise a burst of messages, already in the log, would take
    /// the disk below `--min-free` a second time on their way into the file. After a burst the
    /// log goes back to [`checkpointer::LOG_KEPT_BYTES`], and with it the space it held.
    fn free_space(&self, dir: &Path) -> io::Result<u64> {
        // Bytes available to an unprivileged user on the file system holding `dir` (statvfs on
        // Unix, GetDiskFreeSpaceEx on Windows, through fs4).
        let free = fs4::available_space(dir)?;
        let log = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        Ok(free.saturating_sub(log))
    }

    /// Whether `name` is an account. A database failure counts as "no": nothing is kept for it.
    pub(crate) fn has_account(&self, name: &str) -> bool {
        logged(format!("cannot look up account {name:?}"), self.db.has_account(name))
    }

    /// How many files wait for `name`.
    pub(crate) fn files_waiting(&self, name: &str) -> u64 {
        logged(format!("cannot count the files for {name:?}"), self.db.files_waiting(name))
    }

    /// How many messages wait for `name`.
    pub(crate) fn pending_count(&self, name: &str) -> u64 {
        logged(format!("cannot count the messages for {name:?}"), self.db.pending_count(name))
    }

    /// The next page of messages waiting for `name`, after message id `after`.
    pub(crate) fn pending_page(&self, name: &str, after: u64, limit: usize) -> Vec<StoredMessage> {
        logged(
            format!("cannot read messages for {name:?}"),
            self.db.pending_page(name, after, limit, self.kept_since()),
        )
    }

    /// Guest `name`'s session is over: files waiting for it go (deleted if nobody else waits).
    ///
    /// Only guests' own sessions call this, and a guest's unfinished uploads are its session's
    /// too: they go as well, and the guest stops being a recipient of anyone's upload in progress,
    /// so a file finished after the guest left can never wait for the next holder of the name.
    pub(crate) fn drop_guest(&mut self, name: &str) {
        self.drop_guest_uploads(name);
        match self.db.drop_guest(name) {
            Ok(ids) => self.delete_bytes(&ids),
            Err(e) => log::error!("store: cannot drop what waited for guest {name:?}: {e}"),
        }
    }

    fn delete_bytes(&self, ids: &[u64]) {
        for id in ids {
            self.remover.remove(self.bin_path(*id));
        }
    }

    /// The highest message id ever stored.
    pub(crate) fn last_message_id(&self) -> u64 {
        logged("cannot read the last message id", self.db.last_message_id())
    }

    /// The highest client id `sender` ever stored.
    pub(crate) fn max_client_id(&self, sender: &str) -> u64 {
        logged(format!("cannot read {sender:?}'s last message"), self.db.max_client_id(sender))
    }

    /// The id `sender` already stored `client_id` under, if any.
    pub(crate) fn message_id_for(&self, sender: &str, client_id: u64) -> Option<u64> {
        logged("cannot look up a resent message", self.db.message_id_for(sender, client_id))
    }

    /// The last `limit` messages of `room` that are not pending for `name`.
    pub(crate) fn history(&self, room: &str, limit: usize, name: &str) -> Vec<StoredMessage> {
        logged(
            format!("cannot read the history of {room}"),
            self.db.history(room, limit, name, self.kept_since()),
        )
    }

    /// `name` has the pending messages up to `message_id`.
    pub(crate) fn mark_seen(&mut self, name: &str, message_id: u64) {
        if let Err(e) = self.db.mark_seen(name, message_id) {
            log::error!("store: {e}");
        }
    }

    /// Members of `room` (account holders who joined it and have not left it).
    pub(crate) fn members(&self, room: &str) -> std::collections::BTreeSet<String> {
        logged(format!("cannot read the members of {room}"), self.db.members(room))
    }

    /// Records that `name` is (or stops being) a member of `room`.
    pub(crate) fn set_member(&mut self, room: &str, name: &str, member: bool) {
        let result = if member { self.db.add_member(room, name) } else { self.db.remove_member(room, name) };
        if let Err(e) = result {
            log::error!("store: cannot update {name:?}'s membership of {room}: {e}");
        }
    }

    /// Takes the expiry notices waiting for `name`.
    pub(crate) fn notices_for(&mut self, name: &str) -> Vec<Notice> {
        logged(format!("cannot read notices for {name:?}"), self.db.take_notices(name))
    }
}

/// A database read whose failure should not stop the relay: the error is logged and the caller
/// carries on with an empty answer (no files, no messages, no members).
/// The database failed. The error was logged where it happened; callers only need to know that
/// it failed (and must not treat it as "nothing found": a login is refused, not let in as a
/// guest). A named type rather than `()`, so the signature says what the error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbFailed;

fn logged<T: Default>(what: impl std::fmt::Display, result: rusqlite::Result<T>) -> T {
    result.unwrap_or_else(|e| {
        log::error!("store: {what}: {e}");
        T::default()
    })
}

fn db_error(e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("database: {e}"))
}

fn refusal(e: rusqlite::Error) -> Refusal {
    (ErrorCode::Storage, format!("the relay's database failed: {e}"))
}

#[cfg(test)]
mod tests;
