//! Moving file bytes on the relay: receiving an upload into its `.part` file, and the download
//! thread that streams stored files back out.
//!
//! A download may follow an upload that is still arriving (on another connection): it then reads
//! only the bytes that upload has written, sleeps until there are more (`server/arrival.rs`), and
//! ends with the SHA-256 only once the upload is verified and stored.
//!
//! Both run on a connection's own threads, never on the hub, so a slow disk or a big file only
//! ever slows down the one connection that asked for it. Memory stays flat: an upload holds one
//! decoded chunk at a time, and a download holds at most the writer's short bulk queue of chunks.
//!
//! On a plaintext connection (where the stream can `sendfile`) a download reads nothing at all:
//! it queues slices of the open file ([`FileSlice`]) and the writer has the kernel send them.
//! Over TLS the bytes must be encrypted here, so the download thread reads them into chunks, and
//! reading (this thread) overlaps with encrypting and sending (the writer).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use sha2::{Digest, Sha256};

use super::arrival::Seen;
use super::store::{DownloadPlan, Refusal, Source, UploadPlan};
use crate::frame::{self, chunk_frame, encode_to_vec, ErrorCode, Frame, CHUNK_HEADER, DOWNLOAD_CHUNK};
use crate::outbox::{Bulk, FileSlice, ToWriter};
use crate::sha;
use crate::sink::Sink;

/// An upload being received on this connection. The bytes go to disk through a [`Sink`] (a
/// thread of its own); the hash is computed here as they arrive.
struct Inbound {
    plan: UploadPlan,
    sink: Sink,
    hasher: Sha256,
    written: u64,
}

/// The reader's side of uploads: at most one at a time per connection (clients send files one
/// after another).
#[derive(Default)]
pub(crate) struct UploadReceiver {
    active: Option<Inbound>,
    /// An upload that failed: its remaining chunks (already on the wire) are dropped quietly.
    failed: Option<u64>,
}

impl UploadReceiver {
    /// Opens the `.part` file of `plan` and returns the offset to resume from: the bytes already
    /// written by an earlier connection, re-hashed so the SHA-256 covers the whole file.
    pub(crate) fn start(&mut self, plan: UploadPlan) -> io::Result<u64> {
        self.active = None;
        let mut file =
            OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&plan.temp_path)?;
        let mut have = file.metadata()?.len();
        if have > plan.size {
            file.set_len(0)?;
            have = 0;
        }
        let mut hasher = Sha256::new();
        file.seek(SeekFrom::Start(0))?;
        sha::hash_prefix(&mut file, have, &mut hasher)?;
        // Recipients may be downloading it as it arrives: they follow what the disk thread wrote.
        plan.arrival.written_to(have);
        let arrival = plan.arrival.clone();
        let sink = Sink::start_reporting(file, have, move |written| arrival.written_to(written))?;
        self.active = Some(Inbound { plan, sink, hasher, written: have });
        Ok(have)
    }

    /// Hashes one chunk and hands it to the disk thread. On an error the upload is over and the
    /// caller must abort it.
    pub(crate) fn chunk(&mut self, upload_id: u64, data: Vec<u8>) -> Result<(), Refusal> {
        let inbound = self.current(upload_id)?;
        if inbound.written + data.len() as u64 > inbound.plan.size {
            return Err((
                ErrorCode::BadTransfer,
                format!("more bytes than the {} announced", inbound.plan.size),
            ));
        }
        inbound.hasher.update(&data);
        inbound.written += data.len() as u64;
        if inbound.sink.write(data).is_err() {
            // The disk thread stopped; its error says why.
            let error = self.active.take().map(|a| a.sink.finish());
            return Err(match error {
                Some(Err(e)) => storage_refusal(&e),
                _ => (ErrorCode::Storage, "the relay cannot write the file".into()),
            });
        }
        Ok(())
    }

    /// Checks size and SHA-256 after the last chunk. On success the file is closed and ready for
    /// the store to move into place.
    pub(crate) fn finish(&mut self, upload_id: u64, sha256: [u8; 32]) -> Result<(), Refusal> {
        let inbound = self.current(upload_id)?;
        if inbound.written != inbound.plan.size {
            return Err((
                ErrorCode::HashMismatch,
                format!("received {} bytes, expected {}", inbound.written, inbound.plan.size),
            ));
        }
        let Some(inbound) = self.active.take() else { return Err(not_active(upload_id)) };
        inbound.sink.finish().map_err(|e| storage_refusal(&e))?;
        let actual: [u8; 32] = inbound.hasher.finalize().into();
        if actual != sha256 {
            return Err((ErrorCode::HashMismatch, "the SHA-256 of the bytes received does not match".into()));
        }
        Ok(())
    }

    /// True when `upload_id` is the upload running on this connection.
    pub(crate) fn is_active(&self, upload_id: u64) -> bool {
        self.active.as_ref().is_some_and(|a| a.plan.upload_id == upload_id)
    }

    /// True when `upload_id` already failed, so its stray chunks can be ignored.
    pub(crate) fn is_failed(&self, upload_id: u64) -> bool {
        self.failed == Some(upload_id)
    }

    /// Forgets the active upload after an error (closing its file) and remembers it as failed.
    pub(crate) fn fail(&mut self, upload_id: u64) {
        if self.active.as_ref().is_some_and(|a| a.plan.upload_id == upload_id) {
            self.active = None;
        }
        self.failed = Some(upload_id);
    }

    fn current(&mut self, upload_id: u64) -> Result<&mut Inbound, Refusal> {
        match self.active.as_mut() {
            Some(inbound) if inbound.plan.upload_id == upload_id => Ok(inbound),
            _ => Err(not_active(upload_id)),
        }
    }
}

fn not_active(upload_id: u64) -> Refusal {
    (ErrorCode::BadTransfer, format!("upload {upload_id} is not in progress on this connection"))
}

/// Turns a disk error into what the client is told. A full disk gets its own code.
pub(crate) fn storage_refusal(e: &io::Error) -> Refusal {
    if e.kind() == io::ErrorKind::StorageFull {
        (ErrorCode::DiskFull, "the relay's disk is full".into())
    } else {
        (ErrorCode::Storage, format!("the relay cannot write the file: {e}"))
    }
}

/// Settings of a connection's download thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DownloadSettings {
    pub chunk: usize,
    /// Test hook: flip one byte of this chunk number (0-based) of every download.
    pub corrupt_chunk: Option<u64>,
    /// Queue file slices for the writer to `sendfile` instead of chunks read into memory (true
    /// on plaintext connections where the stream can; see the module docs).
    pub zero_copy: bool,
}

/// The download thread: streams each planned file into the writer's bulk queue, ending with
/// `DownloadEnd`. Ends when the session drops `jobs`, sets `cancel`, or the writer is gone.
pub(crate) fn download_loop(
    jobs: Receiver<DownloadPlan>,
    to_writer: ToWriter<Bulk>,
    settings: DownloadSettings,
    cancel: &AtomicBool,
) {
    for plan in jobs {
        let file_id = plan.file_id;
        let (code, message) = match send_file(&plan, &to_writer, settings, cancel) {
            Ok(true) => continue,
            Ok(false) => return, // the writer is gone, or the connection is closing
            Err(refusal) => refusal,
        };
        log::info!("download of file {file_id} failed: {message}");
        let frame = Frame::DownloadFailed { file_id, code, message };
        if to_writer.send(Bulk::Frame(encode_to_vec(&frame).unwrap_or_default())).is_err() {
            return;
        }
    }
}

/// Sends one file, stored or arriving, and then its verified SHA-256. `Ok(false)` when the
/// writer went away or the session cancelled.
fn send_file(
    plan: &DownloadPlan,
    to_writer: &ToWriter<Bulk>,
    settings: DownloadSettings,
    cancel: &AtomicBool,
) -> Result<bool, Refusal> {
    let Some(file) = open(plan, cancel)? else { return Ok(false) };
    let file = Arc::new(file);
    let mut out = Out { file, to_writer, settings, cancel, plan, chunks_sent: 0 };
    if !out.zero_copy() {
        (&*out.file).seek(SeekFrom::Start(plan.offset)).map_err(|e| unreadable(&e))?;
    }
    let mut at = plan.offset;
    while at < plan.size {
        let Some(have) = bytes_on_disk(plan, at, out.piece(), cancel)? else { return Ok(false) };
        if !out.send(at, have)? {
            return Ok(false);
        }
        at = have;
    }
    let Some(sha256) = verdict(plan, cancel)? else { return Ok(false) };
    let end = encode_to_vec(&Frame::DownloadEnd { file_id: plan.file_id, sha256 })
        .map_err(|e| (ErrorCode::Storage, e.to_string()))?;
    Ok(to_writer.send(Bulk::Frame(end)).is_ok())
}

/// Opens the file a plan names. An arriving file may have been stored (moved) in the meantime,
/// or deleted because its upload failed: then its `Arrival` says why. `None` when the connection
/// is closing.
///
/// The hub announces an arriving file as soon as it accepts the upload, and the uploader's reader
/// creates the `.part` file a moment later (the hub does no file I/O). A recipient quick enough
/// to ask in between finds no file yet: it waits until the upload has written its first byte (or
/// ended) and tries once more.
fn open(plan: &DownloadPlan, cancel: &AtomicBool) -> Result<Option<File>, Refusal> {
    match &plan.source {
        Source::Stored(_) => {
            let file = File::open(&plan.path).map_err(|e| unreadable(&e))?;
            let len = file.metadata().map_err(|e| unreadable(&e))?.len();
            if len != plan.size {
                let why = format!("stored file is {len} bytes, expected {}", plan.size);
                return Err(unreadable(&io::Error::new(io::ErrorKind::InvalidData, why)));
            }
            Ok(Some(file))
        }
        Source::Arriving { arrival, stored_path, patience } => {
            let try_open = || File::open(&plan.path).or_else(|_| File::open(stored_path));
            if let Ok(file) = try_open() {
                return Ok(Some(file));
            }
            if arrival.wait(0, 1, *patience, cancel)? == Seen::Cancelled {
                return Ok(None);
            }
            try_open().map(Some).map_err(|e| arrival.ended().unwrap_or_else(|| unreadable(&e)))
        }
    }
}

/// How far the download may read from `at`: the whole file when it is stored; for an arriving
/// file, what its upload has written so far, waiting until that covers a whole `piece` (or the
/// rest of the file), so the download sends full chunks or slices and wakes once per piece.
/// `None` when the connection is closing.
fn bytes_on_disk(
    plan: &DownloadPlan,
    at: u64,
    piece: u64,
    cancel: &AtomicBool,
) -> Result<Option<u64>, Refusal> {
    let Source::Arriving { arrival, patience, .. } = &plan.source else { return Ok(Some(plan.size)) };
    match arrival.wait(at, plan.size.min(at + piece), *patience, cancel)? {
        Seen::Bytes(have) => Ok(Some(have.min(plan.size))),
        Seen::Cancelled => Ok(None),
        Seen::Stored(_) => Err(unreadable(&io::Error::other("the stored file is shorter than announced"))),
    }
}

/// The SHA-256 the relay verified, once every byte has been sent: at once for a stored file;
/// for an arriving one, when its upload is verified and stored. `None` when the connection is
/// closing.
fn verdict(plan: &DownloadPlan, cancel: &AtomicBool) -> Result<Option<[u8; 32]>, Refusal> {
    match &plan.source {
        Source::Stored(sha256) => Ok(Some(*sha256)),
        Source::Arriving { arrival, patience, .. } => {
            match arrival.wait(plan.size, u64::MAX, *patience, cancel)? {
                Seen::Stored(sha256) => Ok(Some(sha256)),
                Seen::Cancelled => Ok(None),
                Seen::Bytes(_) => {
                    Err((ErrorCode::SenderFailed, "the sender sent more bytes than announced".into()))
                }
            }
        }
    }
}

fn unreadable(e: &io::Error) -> Refusal {
    (ErrorCode::Storage, format!("the relay cannot read the file: {e}"))
}

/// Chunks of the file one slice covers. A slice costs no memory however long it is, so it is
/// long: the writer cuts it into frames itself, and this thread wakes once per 4 MiB instead of
/// once per chunk (a sender waiting on a full crossbeam channel spins and yields a little before
/// it sleeps, CPU the writer and the receiving client could use).
const CHUNKS_PER_SLICE: u64 = 16;

/// What one download sends its bytes with.
struct Out<'a> {
    file: Arc<File>,
    to_writer: &'a ToWriter<Bulk>,
    settings: DownloadSettings,
    cancel: &'a AtomicBool,
    plan: &'a DownloadPlan,
    /// For the test hook that corrupts one chunk.
    chunks_sent: u64,
}

impl Out<'_> {
    /// Slices for `sendfile`, or chunks read into memory. The test hook needs the bytes in
    /// memory, to flip one: it takes the reading path.
    fn zero_copy(&self) -> bool {
        self.settings.zero_copy && self.settings.corrupt_chunk.is_none()
    }

    fn chunk(&self) -> usize {
        self.settings.chunk.clamp(1, frame::MAX_CHUNK_DATA)
    }

    /// The bytes one queued item covers: a slice, or a chunk read into memory.
    fn piece(&self) -> u64 {
        let chunk = self.chunk() as u64;
        if self.zero_copy() {
            chunk * CHUNKS_PER_SLICE
        } else {
            chunk
        }
    }

    /// Queues bytes `at..end` of the file for the writer. False when the writer went away or the
    /// session cancelled.
    fn send(&mut self, mut at: u64, end: u64) -> Result<bool, Refusal> {
        let (chunk, span) = (self.chunk(), self.piece());
        while at < end {
            let len = span.min(end - at);
            let bulk = if self.zero_copy() {
                Bulk::File(FileSlice {
                    kind: DOWNLOAD_CHUNK,
                    id: self.plan.file_id,
                    file: self.file.clone(),
                    offset: at,
                    len,
                    frame_data: chunk,
                })
            } else {
                Bulk::Frame(self.read(len)?)
            };
            if self.cancel.load(Ordering::SeqCst) || self.to_writer.send(bulk).is_err() {
                return Ok(false);
            }
            at += len;
        }
        Ok(true)
    }

    /// Reads the next `len` bytes into a chunk frame.
    fn read(&mut self, len: u64) -> Result<Vec<u8>, Refusal> {
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        let mut buf = crate::wire::read_chunk(&mut &*self.file, n).map_err(|e| unreadable(&e))?;
        if self.settings.corrupt_chunk == Some(self.chunks_sent) {
            buf[CHUNK_HEADER] ^= 0xff;
        }
        self.chunks_sent += 1;
        chunk_frame(&mut buf, DOWNLOAD_CHUNK, self.plan.file_id)
            .map_err(|e| (ErrorCode::Storage, e.to_string()))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::arrival::{Arrival, Outcome};
    use std::path::PathBuf;
    use std::time::Duration;

    fn arriving_plan(tag: &str, arrival: &Arc<Arrival>) -> (PathBuf, DownloadPlan) {
        let dir = std::env::temp_dir().join(format!("relaychat-transfer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let source = Source::Arriving {
            arrival: arrival.clone(),
            stored_path: dir.join("1.bin"),
            patience: Duration::from_secs(10),
        };
        let plan = DownloadPlan { file_id: 1, path: dir.join("1.part"), size: 5, offset: 0, source };
        (dir, plan)
    }

    /// The hub announces an arriving file before the uploader's reader has created its `.part`
    /// file; a download asked for in between waits for the file instead of failing with "cannot
    /// read the file" (the files benchmark in CI hit this race once).
    #[test]
    fn a_download_that_asks_before_the_part_file_exists_waits_for_it() {
        let arrival = Arrival::new();
        let (dir, plan) = arriving_plan("early", &arrival);
        let uploader = {
            let (arrival, part) = (arrival.clone(), plan.path.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&part, b"hello").unwrap();
                arrival.written_to(5);
            })
        };
        let file = open(&plan, &AtomicBool::new(false)).expect("opened").expect("not cancelled");
        assert_eq!(file.metadata().unwrap().len(), 5);
        uploader.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An upload that fails before its file exists tells the waiting download why, rather than
    /// "no such file".
    #[test]
    fn a_download_waiting_for_a_part_file_learns_why_the_upload_failed() {
        let arrival = Arrival::new();
        let (dir, plan) = arriving_plan("failed", &arrival);
        let hub = {
            let arrival = arrival.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                arrival.finish(Outcome::Failed("cancelled by the sender".into()));
            })
        };
        let (code, why) = open(&plan, &AtomicBool::new(false)).expect_err("refused");
        assert_eq!(code, ErrorCode::SenderFailed, "{why}");
        assert!(why.contains("cancelled by the sender"), "{why}");
        hub.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
