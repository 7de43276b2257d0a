//! The relay's file store: the one module that owns the data directory.
//!
//! ```text
//! relay-data/
//!   relay.db (+ -wal, -shm)  SQLite: who sent each file, its cleaned name, size, SHA-256, and who
//!                            still waits for it (see db.rs)
//!   tmp/<upload_id>.part     uploads in progress (names chosen here, never by a client)
//!   files/<file_id>.bin      complete, verified files
//! ```
//!
//! The hub thread owns the [`Store`] and is the only one to create, rename or delete anything
//! here; those are small, quick operations. The *bytes* of a transfer are moved by the connection's
//! own threads: an upload is written to its `.part` file by the connection's reader, a download is
//! read by the connection's download thread. So the hub never waits on a large write.
//!
//! A file is recorded in one database transaction that also moves its bytes into place, and the
//! uploader is told "done" only after that transaction commits. At startup, bytes that no row
//! claims (a crash between the move and the commit) are deleted, and rows whose bytes are missing
//! are forgotten. Data dirs of the text-file era (`files/<id>.meta`) are imported once
//! ([`legacy`]).
//!
//! Simplified on purpose: partial uploads are remembered in memory only. After a relay restart
//! their `.part` files are deleted and those uploads start again from zero.

mod accounts;
mod db;
mod legacy;
mod waiting;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::display::now_ms;
use crate::frame::{ErrorCode, FileInfo};
use crate::server::hub::ConnId;
use db::{Db, InsertError, NewFile};
pub(crate) use db::{NewMessage, Notice, StoredMessage};

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

/// What the connection thread needs to receive an upload.
#[derive(Debug, Clone)]
pub(crate) struct UploadPlan {
    pub upload_id: u64,
    pub temp_path: PathBuf,
    pub size: u64,
}

/// What the download thread needs to send a file.
#[derive(Debug, Clone)]
pub(crate) struct DownloadPlan {
    pub file_id: u64,
    pub path: PathBuf,
    pub size: u64,
    pub offset: u64,
}

/// A request to start (or resume) an upload, as the hub passes it on.
pub(crate) struct UploadRequest<'a> {
    pub conn: ConnId,
    pub sender: &'a str,
    pub key: &'a str,
    /// Already cleaned with [`crate::filename::clean`].
    pub name: &'a str,
    pub size: u64,
    pub recipients: BTreeSet<String>,
    /// The recipients who are guests: the file waits for them only while their session lasts.
    pub guests: BTreeSet<String>,
}

/// An unfinished upload. Its bytes are in `temp_path`; only the connection in `in_use_by` writes
/// there.
struct Partial {
    upload_id: u64,
    sender: String,
    key: String,
    name: String,
    size: u64,
    recipients: BTreeSet<String>,
    guests: BTreeSet<String>,
    temp_path: PathBuf,
    /// The connection currently sending it, if any.
    in_use_by: Option<ConnId>,
    /// Bytes in `temp_path` when last looked at ([`Store::check_partials`]).
    on_disk: u64,
    /// When `on_disk` last grew (or the upload started or resumed).
    last_progress: Instant,
}

impl Partial {
    /// Bytes this upload counts against quota and disk: its whole size while it is being sent and
    /// bytes keep arriving (so two uploads cannot both promise themselves the same free space),
    /// otherwise only the bytes it really has.
    fn counted(&self, stall: Duration) -> u64 {
        if self.in_use_by.is_some() && self.last_progress.elapsed() < stall {
            self.size.max(self.on_disk)
        } else {
            self.on_disk
        }
    }
}

/// The data directory and everything known about its contents.
pub(crate) struct Store {
    files_dir: PathBuf,
    tmp_dir: PathBuf,
    limits: StoreLimits,
    db: Db,
    /// Uploads in progress, by upload id (in memory only; see the module docs).
    partials: HashMap<u64, Partial>,
    next_upload_id: u64,
    /// When [`Store::check_partials`] last looked at the unfinished uploads' files.
    partials_checked: Instant,
}

/// How old the view of unfinished uploads may be when a new upload is weighed against them.
const PARTIALS_FRESH: Duration = Duration::from_secs(1);

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
        let mut db = Db::open(&root.join("relay.db")).map_err(db_error)?;
        legacy::import(&files_dir, &mut db)?;
        // Sessions do not survive a restart, so neither do files that waited for guests.
        let orphans = db.drop_all_guests().map_err(db_error)?;
        let mut store = Store {
            files_dir,
            tmp_dir,
            limits,
            db,
            partials: HashMap::new(),
            next_upload_id: 1,
            partials_checked: Instant::now(),
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

    /// Bytes `sender` has on the relay: stored files plus unfinished uploads (see
    /// [`Partial::counted`]).
    fn used_by(&self, sender: &str) -> Result<u64, Refusal> {
        let stored = self.db.bytes_stored_by(sender).map_err(refusal)?;
        let stall = self.limits.upload_stall;
        let partial: u64 =
            self.partials.values().filter(|p| p.sender == sender).map(|p| p.counted(stall)).sum();
        Ok(stored.saturating_add(partial))
    }

    /// Starts an upload, or resumes the one with the same sender and key. Every limit is checked
    /// here, before any byte is stored.
    pub(crate) fn begin_upload(&mut self, req: UploadRequest<'_>) -> Result<UploadPlan, Refusal> {
        if req.size > self.limits.max_file_size {
            return Err((
                ErrorCode::FileTooLarge,
                format!(
                    "the file is {} bytes; this relay accepts at most {}",
                    req.size, self.limits.max_file_size
                ),
            ));
        }
        // One upload at a time per connection: starting another puts the previous one aside, still
        // resumable, but no longer holding a reservation.
        for partial in self.partials.values_mut().filter(|p| p.in_use_by == Some(req.conn)) {
            partial.in_use_by = None;
        }
        if let Some(plan) = self.resume(&req)? {
            return Ok(plan);
        }
        // Reservations and counts are about to be compared: make them current first.
        if self.partials_checked.elapsed() >= PARTIALS_FRESH {
            self.check_partials();
        }
        self.check_upload_counts(req.sender)?;
        let used = self.used_by(req.sender)?;
        if used.saturating_add(req.size) > self.limits.quota {
            return Err((
                ErrorCode::QuotaExceeded,
                format!(
                    "you already have {} on the relay; with this file you would be over your quota of {}",
                    crate::filename::human_size(used),
                    crate::filename::human_size(self.limits.quota)
                ),
            ));
        }
        self.check_free_space(req.size)?;
        let upload_id = self.next_upload_id;
        self.next_upload_id += 1;
        let temp_path = self.tmp_dir.join(format!("{upload_id}.part"));
        let partial = Partial {
            upload_id,
            sender: req.sender.to_owned(),
            key: req.key.to_owned(),
            name: req.name.to_owned(),
            size: req.size,
            recipients: req.recipients,
            guests: req.guests,
            temp_path: temp_path.clone(),
            in_use_by: Some(req.conn),
            on_disk: 0,
            last_progress: Instant::now(),
        };
        self.partials.insert(upload_id, partial);
        Ok(UploadPlan { upload_id, temp_path, size: req.size })
    }

    /// Unfinished uploads are bounded per sender and in all: each holds a file (and, while it
    /// runs, a reservation), and the relay remembers each in memory.
    fn check_upload_counts(&self, sender: &str) -> Result<(), Refusal> {
        let mine = self.partials.values().filter(|p| p.sender == sender).count();
        if mine >= self.limits.partials_per_user {
            return Err((
                ErrorCode::TooManyUploads,
                format!(
                    "you have {mine} unfinished uploads on the relay (the limit is {}); finish or resume one first",
                    self.limits.partials_per_user
                ),
            ));
        }
        if self.partials.len() >= self.limits.partials_total {
            return Err((
                ErrorCode::TooManyUploads,
                "the relay has too many uploads in progress; try again later".into(),
            ));
        }
        Ok(())
    }

    /// The disk must hold this file, every running upload's remaining bytes and `min_free`. The
    /// refusal does not say how much is left: that would tell a stranger how to fill it exactly.
    fn check_free_space(&self, size: u64) -> Result<(), Refusal> {
        let stall = self.limits.upload_stall;
        let reserved: u64 = self.partials.values().map(|p| p.counted(stall).saturating_sub(p.on_disk)).sum();
        let free = free_space(&self.tmp_dir)
            .map_err(|e| (ErrorCode::Storage, format!("cannot check free space: {e}")))?;
        let needed = size.saturating_add(reserved).saturating_add(self.limits.min_free);
        if free < needed {
            return Err((
                ErrorCode::DiskFull,
                "the relay's disk is too full for this file; try again later".into(),
            ));
        }
        Ok(())
    }

    /// Looks at every unfinished upload's file (called by the hub on each janitor tick): notes
    /// which ones grew, and deletes the ones that nobody is sending and that have not grown for
    /// `partial_ttl`. A running upload that stalls keeps its file but loses its reservation
    /// (see [`Partial::counted`]).
    pub(crate) fn check_partials(&mut self) {
        self.partials_checked = Instant::now();
        let ttl = self.limits.partial_ttl;
        let mut dead = Vec::new();
        for partial in self.partials.values_mut() {
            let len = fs::metadata(&partial.temp_path).map(|m| m.len()).unwrap_or(0);
            if len != partial.on_disk {
                partial.on_disk = len;
                partial.last_progress = Instant::now();
            }
            if partial.in_use_by.is_none() && partial.last_progress.elapsed() >= ttl {
                dead.push(partial.upload_id);
            }
        }
        for upload_id in dead {
            log::info!("store: unfinished upload {upload_id} abandoned for too long; deleted");
            self.abort_upload(upload_id);
        }
    }

    /// Finds a partial upload of the same transfer. A different size or name means the file
    /// changed: the old bytes are useless and are thrown away.
    fn resume(&mut self, req: &UploadRequest<'_>) -> Result<Option<UploadPlan>, Refusal> {
        let Some(id) =
            self.partials.values().find(|p| p.sender == req.sender && p.key == req.key).map(|p| p.upload_id)
        else {
            return Ok(None);
        };
        let Some(partial) = self.partials.get_mut(&id) else { return Ok(None) };
        if partial.in_use_by.is_some_and(|c| c != req.conn) {
            return Err((ErrorCode::Busy, "this upload is already running on another connection".into()));
        }
        if partial.size != req.size || partial.name != req.name {
            self.abort_upload(id);
            return Ok(None);
        }
        partial.in_use_by = Some(req.conn);
        partial.last_progress = Instant::now();
        partial.recipients = req.recipients.clone();
        partial.guests = req.guests.clone();
        Ok(Some(UploadPlan { upload_id: id, temp_path: partial.temp_path.clone(), size: partial.size }))
    }

    /// The connection verified size and SHA-256: record the file and move it into place, in one
    /// transaction. Only after this returns may the uploader be told the file is stored.
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
        let file = NewFile {
            id: None,
            sender: &partial.sender,
            name: &partial.name,
            size: partial.size,
            sha256,
            created_ms: now_ms(),
            recipients: &partial.recipients,
            guests: &partial.guests,
        };
        let files_dir = &self.files_dir;
        let result = self
            .db
            .insert_file(&file, |id| fs::rename(&partial.temp_path, files_dir.join(format!("{id}.bin"))));
        match result {
            Ok(info) => Ok(info),
            Err(e) => {
                let _ = fs::remove_file(&partial.temp_path);
                let why = match e {
                    InsertError::Db(e) => e.to_string(),
                    InsertError::Place(e) => e.to_string(),
                };
                Err((ErrorCode::Storage, format!("cannot store the file: {why}")))
            }
        }
    }

    /// Connection `conn` gave up on its upload: forget it and delete its bytes. An upload that is
    /// not this connection's is left alone (false).
    pub(crate) fn abort_own_upload(&mut self, conn: ConnId, upload_id: u64) -> bool {
        let owned = self.partials.get(&upload_id).is_some_and(|p| p.in_use_by == Some(conn));
        if owned {
            self.abort_upload(upload_id);
        }
        owned
    }

    /// Forgets an upload and deletes its bytes.
    pub(crate) fn abort_upload(&mut self, upload_id: u64) {
        if let Some(partial) = self.partials.remove(&upload_id) {
            let _ = fs::remove_file(&partial.temp_path);
        }
    }

    /// The limits this store enforces.
    pub(crate) fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// A connection ended: its uploads stay on disk, free to be resumed by the next connection.
    pub(crate) fn release(&mut self, conn: ConnId) {
        for partial in self.partials.values_mut().filter(|p| p.in_use_by == Some(conn)) {
            partial.in_use_by = None;
        }
    }

    /// Who still waits for `file_id`.
    pub(crate) fn recipients(&self, file_id: u64) -> Vec<String> {
        logged(format!("cannot read who waits for file {file_id}"), self.db.recipients(file_id))
    }

    /// Every file waiting for `name`, oldest first.
    pub(crate) fn waiting_for(&self, name: &str) -> Vec<FileInfo> {
        logged(format!("cannot read the files waiting for {name:?}"), self.db.waiting_for(name))
    }

    /// Checks that `name` may download `file_id` from `offset`.
    pub(crate) fn plan_download(
        &self,
        name: &str,
        file_id: u64,
        offset: u64,
    ) -> Result<DownloadPlan, Refusal> {
        let info = self
            .db
            .file_for(name, file_id)
            .map_err(refusal)?
            .ok_or_else(|| (ErrorCode::NoSuchFile, format!("no file {file_id} is waiting for you")))?;
        if offset > info.size {
            return Err((ErrorCode::BadTransfer, format!("offset {offset} is past the end of the file")));
        }
        Ok(DownloadPlan { file_id, path: self.bin_path(file_id), size: info.size, offset })
    }

    /// `name` has the file, verified. When the last recipient has it, it is deleted: first its
    /// row (committed), then its bytes, so a crash in between leaves bytes that the next start
    /// removes, never a row without bytes.
    pub(crate) fn mark_received(&mut self, name: &str, file_id: u64) {
        match self.db.mark_received(name, file_id) {
            Ok(true) => {
                let _ = fs::remove_file(self.bin_path(file_id));
            }
            Ok(false) => {}
            Err(e) => log::error!("store: cannot record that {name} has file {file_id}: {e}"),
        }
    }
}

impl Store {
    /// Deletes files stored longer than `retention` (rows first, then bytes) and returns a notice
    /// for every recipient who never got one. The notices are also kept for [`Store::notices_for`].
    pub(crate) fn expire(&mut self, retention: std::time::Duration) -> Vec<Notice> {
        let now = now_ms();
        let cutoff = now.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        match self.db.expire_messages(cutoff) {
            Ok(0) => {}
            Ok(n) => log::info!("store: {n} message(s) expired"),
            Err(e) => log::error!("store: cannot expire old messages: {e}"),
        }
        match self.db.expire_files(cutoff, now) {
            Ok((ids, notices)) => {
                for id in &ids {
                    let _ = fs::remove_file(self.bin_path(*id));
                }
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
        match free_space(&self.files_dir) {
            Ok(free) => free.saturating_sub(self.limits.min_free),
            Err(e) => {
                log::error!("store: cannot check free space: {e}");
                0
            }
        }
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
        logged(format!("cannot read messages for {name:?}"), self.db.pending_page(name, after, limit))
    }

    /// Guest `name`'s session is over: files waiting for it go (deleted if nobody else waits).
    pub(crate) fn drop_guest(&mut self, name: &str) {
        match self.db.drop_guest(name) {
            Ok(ids) => self.delete_bytes(&ids),
            Err(e) => log::error!("store: cannot drop what waited for guest {name:?}: {e}"),
        }
    }

    fn delete_bytes(&self, ids: &[u64]) {
        for id in ids {
            let _ = fs::remove_file(self.bin_path(*id));
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
        logged(format!("cannot read the history of {room}"), self.db.history(room, limit, name))
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

/// Bytes available to an unprivileged user on the file system holding `path`.
fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is a plain struct the call fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("relaychat-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn request<'a>(sender: &'a str, key: &'a str, size: u64) -> UploadRequest<'a> {
        UploadRequest {
            conn: 1,
            sender,
            key,
            name: "a.txt",
            size,
            recipients: ["bob".to_string()].into_iter().collect(),
            guests: BTreeSet::new(),
        }
    }

    #[test]
    fn a_committed_file_survives_a_reopen_and_goes_when_received() {
        let dir = temp_dir("reopen");
        let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
        let plan = store.begin_upload(request("alice", "k", 3)).unwrap();
        fs::write(&plan.temp_path, b"abc").unwrap();
        let info = store.commit_upload(1, plan.upload_id, [7; 32]).unwrap();
        drop(store);

        let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
        assert_eq!(store.waiting_for("bob"), vec![info.clone()]);
        assert!(store.waiting_for("carol").is_empty());
        assert!(store.plan_download("carol", info.file_id, 0).is_err(), "only recipients may download");
        let plan = store.plan_download("bob", info.file_id, 0).unwrap();
        assert_eq!(fs::read(&plan.path).unwrap(), b"abc");
        store.mark_received("bob", info.file_id);
        assert!(!plan.path.exists(), "deleted once the last recipient has it");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn limits_are_checked_before_anything_is_stored() {
        let dir = temp_dir("limits");
        let limits = StoreLimits { max_file_size: 100, quota: 150, min_free: 0, ..StoreLimits::default() };
        let mut store = Store::open(&dir, limits).unwrap();
        assert_eq!(store.begin_upload(request("alice", "big", 101)).unwrap_err().0, ErrorCode::FileTooLarge);
        store.begin_upload(request("alice", "one", 100)).unwrap();
        let second = UploadRequest { conn: 2, ..request("alice", "two", 51) };
        assert_eq!(store.begin_upload(second).unwrap_err().0, ErrorCode::QuotaExceeded);
        store.begin_upload(request("bob", "two", 51)).unwrap(); // quotas are per sender
        let full = StoreLimits { min_free: u64::MAX / 2, ..StoreLimits::default() };
        let mut store = Store::open(&temp_dir("full"), full).unwrap();
        assert_eq!(store.begin_upload(request("alice", "x", 1)).unwrap_err().0, ErrorCode::DiskFull);
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0, "refusals create no files");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(temp_dir("full"));
    }

    #[test]
    fn the_same_key_resumes_and_a_changed_file_restarts() {
        let dir = temp_dir("resume");
        let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
        let first = store.begin_upload(request("alice", "k", 10)).unwrap();
        let other_conn = UploadRequest { conn: 2, ..request("alice", "k", 10) };
        assert_eq!(store.begin_upload(other_conn).unwrap_err().0, ErrorCode::Busy);
        store.release(1);
        let again = store.begin_upload(UploadRequest { conn: 2, ..request("alice", "k", 10) }).unwrap();
        assert_eq!(again.upload_id, first.upload_id);
        let changed = store.begin_upload(UploadRequest { conn: 2, ..request("alice", "k", 11) }).unwrap();
        assert_ne!(changed.upload_id, first.upload_id);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_sending_connection_can_end_an_upload() {
        let dir = temp_dir("owner");
        let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
        let plan = store.begin_upload(request("alice", "k", 3)).unwrap();
        fs::write(&plan.temp_path, b"abc").unwrap();
        assert!(!store.abort_own_upload(2, plan.upload_id), "another connection cannot abort it");
        assert_eq!(store.commit_upload(2, plan.upload_id, [1; 32]).unwrap_err().0, ErrorCode::BadTransfer);
        assert!(plan.temp_path.exists(), "and nothing changed");
        assert!(store.commit_upload(1, plan.upload_id, [1; 32]).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unfinished_uploads_are_bounded_and_count_only_what_they_hold_once_idle() {
        let dir = temp_dir("partials");
        let limits = StoreLimits {
            quota: 1000,
            partials_per_user: 2,
            partial_ttl: Duration::from_millis(200),
            ..StoreLimits::default()
        };
        let mut store = Store::open(&dir, limits).unwrap();
        let first = store.begin_upload(request("alice", "a", 900)).unwrap();
        // While the first runs, its whole size is reserved against the quota.
        let busy = UploadRequest { conn: 2, ..request("alice", "b", 200) };
        assert_eq!(store.begin_upload(busy).unwrap_err().0, ErrorCode::QuotaExceeded);
        fs::write(&first.temp_path, [0u8; 10]).unwrap();
        store.release(1); // the connection went: only its 10 bytes count now
        store.check_partials();
        store.begin_upload(UploadRequest { conn: 2, ..request("alice", "b", 200) }).unwrap();
        let third = UploadRequest { conn: 3, ..request("alice", "c", 1) };
        assert_eq!(store.begin_upload(third).unwrap_err().0, ErrorCode::TooManyUploads);
        store.release(2);
        // Abandoned (nobody sending, no growth for the TTL): deleted.
        std::thread::sleep(Duration::from_millis(250));
        store.check_partials();
        assert!(!first.temp_path.exists());
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        store.begin_upload(UploadRequest { conn: 3, ..request("alice", "c", 1) }).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_for_a_guest_go_with_the_session_and_with_a_restart() {
        let dir = temp_dir("guests");
        let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
        let both: BTreeSet<String> = ["bob".to_string(), "gus".to_string()].into();
        let gus: BTreeSet<String> = ["gus".to_string()].into();
        let req = UploadRequest { recipients: both, guests: gus.clone(), ..request("alice", "k", 1) };
        let plan = store.begin_upload(req).unwrap();
        fs::write(&plan.temp_path, b"x").unwrap();
        let shared = store.commit_upload(1, plan.upload_id, [1; 32]).unwrap();
        let req = UploadRequest { recipients: gus.clone(), guests: gus, ..request("alice", "j", 1) };
        let plan = store.begin_upload(req).unwrap();
        fs::write(&plan.temp_path, b"y").unwrap();
        let only_gus = store.commit_upload(1, plan.upload_id, [2; 32]).unwrap();
        assert_eq!(store.files_waiting("gus"), 2);
        store.drop_guest("gus");
        assert_eq!(store.files_waiting("gus"), 0);
        assert_eq!(store.waiting_for("bob"), vec![shared.clone()], "bob still has his");
        assert!(!store.bin_path(only_gus.file_id).exists(), "nobody else waited: bytes deleted");
        assert!(store.bin_path(shared.file_id).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn leftovers_are_cleaned_on_open() {
        let dir = temp_dir("leftovers");
        fs::create_dir_all(dir.join("tmp")).unwrap();
        fs::create_dir_all(dir.join("files")).unwrap();
        fs::write(dir.join("tmp/5.part"), b"half").unwrap();
        fs::write(dir.join("files/9.bin"), b"no record").unwrap();
        fs::write(dir.join("files/8.meta"), b"relaychat-file 1\nfrom=a\n").unwrap();
        let store = Store::open(&dir, StoreLimits::default()).unwrap();
        assert!(store.db.file_ids().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.join("files")).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_data_dir_is_imported_with_its_ids() {
        let dir = temp_dir("legacy");
        fs::create_dir_all(dir.join("files")).unwrap();
        fs::write(dir.join("files/7.bin"), b"abc").unwrap();
        let meta = format!(
            "relaychat-file 1\nfrom=alice\nname=a.txt\nsize=3\nsha256={}\nto=bob\nto=carol\n",
            crate::sha::hex(&[5; 32])
        );
        fs::write(dir.join("files/7.meta"), meta).unwrap();
        let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
        let waiting = store.waiting_for("bob");
        assert_eq!(waiting.len(), 1);
        assert_eq!((waiting[0].file_id, waiting[0].name.as_str(), waiting[0].sha256), (7, "a.txt", [5; 32]));
        assert_eq!(store.recipients(7), vec!["bob".to_string(), "carol".to_string()]);
        assert!(!dir.join("files/7.meta").exists(), "imported once, then removed");
        // New files never reuse an imported id.
        let plan = store.begin_upload(request("alice", "k", 1)).unwrap();
        fs::write(&plan.temp_path, b"x").unwrap();
        assert!(store.commit_upload(1, plan.upload_id, [0; 32]).unwrap().file_id > 7);
        let _ = fs::remove_dir_all(&dir);
    }
}
