//! The hub's side of files: who an upload is for, telling them it is arriving, storing it when it
//! is verified, the list of files waiting for someone, and telling them about expired ones. The
//! bytes themselves move on the connections' own threads (`server/transfer.rs`), and a download
//! that follows an arriving upload learns its progress from the upload itself
//! (`server/arrival.rs`), never through the hub.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{offline_stranger, paged, ConnId, Hub, FILES_PER_FRAME};
use crate::frame::{ErrorCode, FileInfo, Frame};
use crate::rules;
use crate::server::accept::address_key;
use crate::server::store::{DownloadPlan, Refusal, UploadPlan, UploadRequest};

/// While other events keep coming, a batch of expired messages is deleted at most this often
/// (see [`Hub::continue_expiry`]): a batch takes some ms, so expiry gets a small share of the hub.
const EXPIRY_SHARE: Duration = Duration::from_millis(50);

impl Hub {
    /// The connection gave up on an upload: delete it and say why. Only the connection sending
    /// an upload can end it (the session checked that too).
    pub(super) fn abort_upload(&mut self, id: ConnId, upload_id: u64, code: ErrorCode, message: String) {
        if self.records.store.abort_own_upload(id, upload_id, &message) {
            self.send_to(id, &Frame::UploadFailed { upload_id, code, message });
        }
    }

    /// The files waiting for a client: those stored, then those arriving right now.
    pub(super) fn list_files(&mut self, id: ConnId) {
        let Some(peer) = self.peer(id) else { return };
        let mut files = self.records.store.waiting_for(&peer.name);
        files.extend(self.records.store.arriving_for(&peer.name));
        self.send_file_list(id, files);
    }

    /// Tells the online recipients of upload `upload_id` (just started or resumed) that the file
    /// is arriving: they may download it while it does.
    pub(super) fn announce_arriving(&mut self, upload_id: u64, recipients: &BTreeSet<String>) {
        let Some(info) = self.records.store.arriving_info(upload_id) else { return };
        self.tell_online(recipients, &Frame::NewFile(info));
    }

    /// Sends `frame` to each of `names` who is online.
    fn tell_online<'a>(&mut self, names: impl IntoIterator<Item = &'a String>, frame: &Frame) {
        for name in names {
            if let Some(&target) = self.routing.names.get(name) {
                self.send_to(target, frame);
            }
        }
    }

    /// Where a download of `file_id` comes from, or why not. `None` for a connection that has
    /// not joined (its session stops waiting when the reply channel closes).
    pub(super) fn plan_download(
        &mut self,
        id: ConnId,
        file_id: u64,
        offset: u64,
    ) -> Option<Result<DownloadPlan, Refusal>> {
        let peer = self.peer(id)?;
        Some(self.records.store.plan_download(&peer.name, file_id, offset))
    }

    /// The client has a file, verified.
    pub(super) fn received(&mut self, id: ConnId, file_id: u64) {
        let Some(peer) = self.peer(id) else { return };
        let name = peer.name.clone();
        self.records.store.mark_received(&name, file_id);
    }

    /// The janitor's turn: unfinished uploads past their time, and everything older than the
    /// retention; whoever is online hears which of their files expired.
    /// Messages expire a batch at a time (see [`Hub::continue_expiry`]); this starts the first.
    pub(super) fn expire(&mut self) {
        self.records.store.check_partials();
        self.records.expiring = true;
        self.continue_expiry();
        let notices = self.records.store.expire_files(self.config.retention);
        let online: BTreeSet<String> =
            notices.into_iter().map(|n| n.recipient).filter(|r| self.routing.names.contains_key(r)).collect();
        for name in online {
            if let Some(&id) = self.routing.names.get(&name) {
                self.tell_expired(id, &name);
            }
        }
    }

    /// Deletes the next batch of expired messages, if some are left: when nothing else waits for
    /// the hub, or when the last batch is [`EXPIRY_SHARE`] ago (so a steady stream of events
    /// cannot put expiry off for ever, and expiry takes at most a small share of the hub while
    /// they come).
    pub(super) fn continue_expiry(&mut self) {
        if !self.records.expiring
            || (!self.events.is_empty() && self.records.expired_at.elapsed() < EXPIRY_SHARE)
        {
            return;
        }
        // Counts change behind the cache's back when messages expire: recount on use.
        self.records.pending_counts.clear();
        self.records.expiring = self.records.store.expire_messages(self.config.retention);
        self.records.expired_at = Instant::now();
    }

    /// Sends `name` every "your file expired" notice waiting for it.
    pub(super) fn tell_expired(&mut self, id: ConnId, name: &str) {
        for notice in self.records.store.notices_for(name) {
            self.send_to(id, &Frame::FileExpired { from: notice.sender, name: notice.name });
        }
    }

    /// Works out the recipients and asks the store for room. `to` names one user: someone online,
    /// or an account (a file waits on the relay only for a name someone owns). Empty means
    /// everyone else in the sender's room right now. Guests among the recipients get the file only
    /// while their session lasts.
    pub(super) fn begin_upload(
        &mut self,
        id: ConnId,
        key: &str,
        name: &str,
        size: u64,
        to: &str,
    ) -> Result<UploadPlan, Refusal> {
        let peer = self.peer(id).ok_or((ErrorCode::Protocol, "say hello first".to_string()))?;
        let (sender, room) = (peer.name.clone(), peer.room.clone());
        let addr =
            self.routing.conns.get(&id).map_or(IpAddr::from([0, 0, 0, 0]), |c| address_key(c.addr.ip()));
        let candidates: Vec<String> = if to.is_empty() {
            let members = self.routing.rooms.get(&room);
            let others: Vec<String> =
                members.map(|m| m.keys().filter(|m| **m != sender).cloned().collect()).unwrap_or_default();
            if others.is_empty() {
                return Err((
                    ErrorCode::NoRecipients,
                    format!("nobody else is in {room}; name a recipient with --to NAME"),
                ));
            }
            others
        } else {
            rules::check_name(to)
                .map_err(|e| (ErrorCode::UnknownRecipient, format!("bad recipient: {e}")))?;
            if !self.routing.names.contains_key(to) && !self.records.store.has_account(to) {
                return Err((ErrorCode::UnknownRecipient, offline_stranger(to, "a file")));
            }
            vec![to.to_owned()]
        };
        let limit = self.records.store.limits().files_per_recipient as u64;
        let (mut recipients, mut guests, mut full) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
        for who in candidates {
            if self.records.store.files_waiting(&who) >= limit {
                full.push(who);
                continue;
            }
            if self.routing.names.get(&who).and_then(|&c| self.peer(c)).is_some_and(|p| !p.account) {
                guests.insert(who.clone());
            }
            recipients.insert(who);
        }
        if recipients.is_empty() {
            return Err((
                ErrorCode::RecipientFull,
                format!(
                    "{} already {} {limit} files waiting; nothing more can wait until they receive some",
                    full.join(", "),
                    if full.len() == 1 { "has" } else { "have" }
                ),
            ));
        }
        let announce = recipients.clone();
        let plan = self.records.store.begin_upload(UploadRequest {
            conn: id,
            sender: &sender,
            key,
            name,
            size,
            recipients,
            guests,
            addr,
        })?;
        self.announce_arriving(plan.upload_id, &announce);
        Ok(plan)
    }

    /// Stores a verified upload and tells its online recipients, with its hash (those told it was
    /// arriving hear it again: it is stored now).
    pub(super) fn commit_upload(&mut self, id: ConnId, upload_id: u64, sha256: [u8; 32]) {
        match self.records.store.commit_upload(id, upload_id, sha256) {
            Ok(info) => {
                let recipients: Vec<String> = self.records.store.recipients(info.file_id);
                log::info!(
                    "{} stored {:?} ({} bytes) as file {} for {}",
                    info.from,
                    info.name,
                    info.size,
                    info.file_id,
                    recipients.join(", ")
                );
                self.send_to(id, &Frame::UploadDone { upload_id, file_id: info.file_id });
                self.tell_online(&recipients, &Frame::NewFile(info));
            }
            Err((code, message)) => self.send_to(id, &Frame::UploadFailed { upload_id, code, message }),
        }
    }

    /// The files waiting for a client, in as many `FileList` frames as it takes.
    pub(super) fn send_file_list(&mut self, id: ConnId, files: Vec<FileInfo>) {
        for (files, more) in paged(files, FILES_PER_FRAME) {
            self.send_to(id, &Frame::FileList { files, more });
        }
    }
}
