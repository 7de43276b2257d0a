//! Uploads in progress: the part of the store that decides whether an upload may start, and
//! keeps the unfinished ones honest.
//!
//! An unfinished upload holds a file in `tmp/` and, while it is being sent, a *reservation*: its
//! whole size counts against its sender's quota and the disk's free space, so two uploads cannot
//! both promise themselves the same space. A stranger could start uploads and never send a byte,
//! so everything here is bounded before it is taken:
//!
//! - one running upload per connection (starting another puts the first aside, resumable);
//! - at most `partials_per_user` unfinished uploads per sender, `partials_total` in all;
//! - a running upload that receives nothing for `upload_stall` keeps its file but loses its
//!   reservation: only the bytes it holds count;
//! - an upload nobody sends that has not grown for `partial_ttl` is deleted;
//! - only the connection sending an upload can end it or commit it.
//!
//! A running upload is also a file *arriving* for its recipients: it gets its file id when it
//! starts, and recipients may download it while it arrives (`server/arrival.rs`). Whoever follows
//! it learns here when it fails (aborted) or stops (put aside, or its connection ended).

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{refusal, Refusal, Store, UploadPlan};
use crate::frame::{ErrorCode, FileInfo};
use crate::server::arrival::{Arrival, Outcome};
use crate::server::hub::ConnId;

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
    /// The sender's address, for the per-address cap on unfinished uploads.
    pub addr: IpAddr,
}

/// An unfinished upload. Its bytes are in `temp_path`; only the connection in `in_use_by` writes
/// there.
pub(super) struct Partial {
    pub(super) upload_id: u64,
    /// The id the file is stored under when it completes, and downloaded by while it arrives.
    pub(super) file_id: u64,
    pub(super) sender: String,
    pub(super) key: String,
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) recipients: BTreeSet<String>,
    pub(super) guests: BTreeSet<String>,
    pub(super) temp_path: PathBuf,
    pub(super) addr: IpAddr,
    /// The connection currently sending it, if any.
    pub(super) in_use_by: Option<ConnId>,
    /// Bytes in `temp_path` when last looked at ([`Store::check_partials`]).
    pub(super) on_disk: u64,
    /// When `on_disk` last grew (or the upload started or resumed).
    pub(super) last_progress: Instant,
    /// How far this run of the upload got, for recipients who download it as it arrives. A new
    /// one each time the upload starts or resumes.
    pub(super) arrival: Arc<Arrival>,
}

impl Partial {
    /// Bytes this upload counts against quota and disk: the bytes it has, plus, while it is being
    /// sent and bytes keep arriving, a reservation of the next [`RESERVE_AHEAD`] bytes (so two
    /// uploads cannot both promise themselves the same free space). Not the whole declared size:
    /// a stranger who declares 4 GiB and sends a byte now and then would hold 4 GiB of everyone's
    /// disk. The quota itself is checked again on the real size when the upload is committed.
    pub(super) fn counted(&self, stall: Duration) -> u64 {
        if self.in_use_by.is_some() && self.last_progress.elapsed() < stall {
            self.on_disk + self.size.saturating_sub(self.on_disk).min(RESERVE_AHEAD)
        } else {
            self.on_disk
        }
    }

    /// Its sender stopped sending it (its connection ended, or it started another upload):
    /// whoever downloads it as it arrives stops too.
    fn put_aside(&mut self) {
        self.in_use_by = None;
        self.arrival.finish(Outcome::Stopped);
    }

    /// Whether `name` can download it as it arrives: its upload is running and it is for them.
    fn followable_by(&self, name: &str) -> bool {
        self.in_use_by.is_some() && self.recipients.contains(name)
    }

    /// How a recipient sees it while it arrives: no hash yet.
    pub(super) fn info(&self) -> FileInfo {
        FileInfo {
            file_id: self.file_id,
            from: self.sender.clone(),
            name: self.name.clone(),
            size: self.size,
            sha256: None,
        }
    }
}

/// How far ahead of its bytes a running upload reserves disk and quota.
pub(super) const RESERVE_AHEAD: u64 = 4 << 20;

/// Unfinished uploads from one address (all its names together): a stranger can make up guest
/// names, so the per-sender cap alone would not stop one machine from taking every slot.
pub(super) const PARTIALS_PER_ADDRESS: usize = 16;

/// How old the view of unfinished uploads may be when a new upload is weighed against them.
pub(super) const PARTIALS_FRESH: Duration = Duration::from_secs(1);
impl Store {
    /// Bytes `sender` has on the relay: stored files plus unfinished uploads (see
    /// [`Partial::counted`]).
    ///
    /// The quota holds per sender *and* per address (all its names together): a stranger can make
    /// up guest names, and each would otherwise come with a quota of its own. So this is the
    /// larger of the two.
    fn used_by(&self, sender: &str, addr: IpAddr) -> Result<u64, Refusal> {
        let stall = self.limits.upload_stall;
        let by_name = self.db.bytes_stored_by(sender).map_err(refusal)?.saturating_add(
            self.partials.values().filter(|p| p.sender == sender).map(|p| p.counted(stall)).sum(),
        );
        let by_address = self.db.bytes_stored_from(&addr.to_string()).map_err(refusal)?.saturating_add(
            self.partials.values().filter(|p| p.addr == addr).map(|p| p.counted(stall)).sum(),
        );
        Ok(by_name.max(by_address))
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
            partial.put_aside();
        }
        if let Some(plan) = self.resume(&req)? {
            return Ok(plan);
        }
        // Reservations and counts are about to be compared: make them current first.
        if self.partials_checked.elapsed() >= PARTIALS_FRESH {
            self.check_partials();
        }
        self.check_upload_counts(req.sender, req.addr)?;
        let used = self.used_by(req.sender, req.addr)?;
        if used.saturating_add(req.size) > self.limits.quota {
            return Err((
                ErrorCode::QuotaExceeded,
                format!(
                    "you already have {} on the relay; with this file you would be over your quota of {}",
                    crate::display::human_size(used),
                    crate::display::human_size(self.limits.quota)
                ),
            ));
        }
        self.check_free_space(req.size)?;
        let (upload_id, file_id) = (self.next_upload_id, self.next_file_id);
        self.next_upload_id += 1;
        self.next_file_id += 1;
        let arrival = Arrival::new();
        let temp_path = self.tmp_dir.join(format!("{upload_id}.part"));
        let partial = Partial {
            upload_id,
            file_id,
            sender: req.sender.to_owned(),
            key: req.key.to_owned(),
            name: req.name.to_owned(),
            size: req.size,
            recipients: req.recipients,
            guests: req.guests,
            temp_path: temp_path.clone(),
            addr: req.addr,
            in_use_by: Some(req.conn),
            on_disk: 0,
            last_progress: Instant::now(),
            arrival: arrival.clone(),
        };
        self.partials.insert(upload_id, partial);
        Ok(UploadPlan { upload_id, temp_path, size: req.size, arrival })
    }

    /// Unfinished uploads are bounded per sender and in all: each holds a file (and, while it
    /// runs, a reservation), and the relay remembers each in memory.
    fn check_upload_counts(&self, sender: &str, addr: IpAddr) -> Result<(), Refusal> {
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
        let from_here = self.partials.values().filter(|p| p.addr == addr).count();
        if from_here >= PARTIALS_PER_ADDRESS {
            return Err((
                ErrorCode::TooManyUploads,
                format!("your address has {from_here} unfinished uploads on the relay; finish or resume one first"),
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
        let free = self
            .free_space(&self.tmp_dir)
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
            self.abort_upload(upload_id, "abandoned by its sender");
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
            self.abort_upload(id, "its sender started it over with another file");
            return Ok(None);
        }
        partial.in_use_by = Some(req.conn);
        partial.last_progress = Instant::now();
        partial.recipients = req.recipients.clone();
        partial.guests = req.guests.clone();
        partial.arrival = Arrival::new();
        let (temp_path, size, arrival) = (partial.temp_path.clone(), partial.size, partial.arrival.clone());
        Ok(Some(UploadPlan { upload_id: id, temp_path, size, arrival }))
    }

    /// Connection `conn` gave up on its upload (`why`): forget it and delete its bytes. An upload
    /// that is not this connection's is left alone (false).
    pub(crate) fn abort_own_upload(&mut self, conn: ConnId, upload_id: u64, why: &str) -> bool {
        let owned = self.partials.get(&upload_id).is_some_and(|p| p.in_use_by == Some(conn));
        if owned {
            self.abort_upload(upload_id, why);
        }
        owned
    }

    /// Forgets an upload and deletes its bytes; whoever downloads it as it arrives hears `why`.
    pub(crate) fn abort_upload(&mut self, upload_id: u64, why: &str) {
        if let Some(partial) = self.partials.remove(&upload_id) {
            partial.arrival.finish(Outcome::Failed(why.to_owned()));
            self.remover.remove(partial.temp_path);
        }
    }

    /// A connection ended: its uploads stay on disk, free to be resumed by the next connection.
    pub(crate) fn release(&mut self, conn: ConnId) {
        for partial in self.partials.values_mut().filter(|p| p.in_use_by == Some(conn)) {
            partial.put_aside();
        }
    }

    /// The running upload that is file `file_id`, if it is for `name`.
    pub(super) fn arriving(&self, name: &str, file_id: u64) -> Option<&Partial> {
        self.partials.values().find(|p| p.file_id == file_id && p.followable_by(name))
    }

    /// The files arriving for `name` right now (their uploads running), oldest first.
    pub(crate) fn arriving_for(&self, name: &str) -> Vec<FileInfo> {
        let mut files: Vec<FileInfo> =
            self.partials.values().filter(|p| p.followable_by(name)).map(Partial::info).collect();
        files.sort_by_key(|f| f.file_id);
        files
    }

    /// Upload `upload_id` as its recipients see it while it arrives.
    pub(crate) fn arriving_info(&self, upload_id: u64) -> Option<FileInfo> {
        self.partials.get(&upload_id).map(Partial::info)
    }
}

impl Store {
    /// Guest `name`'s session ended: the name is nobody's now, so its unfinished uploads go (they
    /// could never be resumed by their sender), and so does its place among the recipients of
    /// others' unfinished uploads (see [`Store::drop_guest`]).
    pub(super) fn drop_guest_uploads(&mut self, name: &str) {
        let own: Vec<u64> =
            self.partials.values().filter(|p| p.sender == name).map(|p| p.upload_id).collect();
        for upload_id in own {
            self.abort_upload(upload_id, "its sender left");
        }
        for partial in self.partials.values_mut() {
            if partial.guests.remove(name) {
                partial.recipients.remove(name);
            }
        }
    }
}
