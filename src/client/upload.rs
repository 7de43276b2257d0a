//! The client's upload thread: sends queued files one after another, in chunks, hashing as it goes.
//!
//! For each file: announce it (`UploadStart`), wait for the relay's `UploadReady` (which says where
//! to resume from), re-hash the bytes the relay already has, stream the rest, send the hash
//! (`UploadEnd`) and wait for `UploadDone`. Chunks go into the writer's short bulk queue, so this
//! thread blocks whenever the network is slower than the disk, and memory stays flat.
//!
//! Reading the file and hashing it are two stages on two threads (a read-ahead thread per file
//! feeds this one through a short bounded channel), and the writer thread is a third: while one
//! chunk is being read, the one before it is hashed and the one before that is on the wire, so
//! the client's cores share the work instead of taking turns.
//!
//! Resume works by a key: a hash of the file's path, size, modification time and recipient. Sending
//! the same file again, after the client was killed or the connection dropped, gives the same key,
//! and the relay answers with the offset it already has.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use sha2::{Digest, Sha256};

use super::{Direction, Event, PROGRESS_EVERY};
use crate::filename;
use crate::frame::{chunk_frame, encode_to_vec, Frame, CHUNK_HEADER, MAX_CHUNK_DATA, UPLOAD_CHUNK};
use crate::outbox::ToWriter;
use crate::sha;

/// A file to send.
pub(crate) struct Job {
    pub path: PathBuf,
    /// A user name, or empty for everyone else in the room.
    pub to: String,
}

/// The relay's answers about uploads, passed on by the reader thread.
pub(crate) enum Reply {
    Ready { upload_id: u64, offset: u64 },
    Done { upload_id: u64 },
    Failed { message: String },
}

pub(crate) struct Uploader {
    pub jobs: Receiver<Job>,
    pub replies: Receiver<Reply>,
    /// The writer's bulk queue.
    pub to_writer: ToWriter<Vec<u8>>,
    pub events: Sender<Event>,
    pub cancel: Arc<AtomicBool>,
    pub chunk: usize,
    pub corrupt_chunk: Option<u64>,
    pub chunk_delay: Option<Duration>,
}

/// Why one upload stopped.
enum Stop {
    /// Tell the person.
    Failed(String),
    /// The client is closing or the connection is gone: nothing more to say here (the reader
    /// reports a lost connection).
    Quiet,
}

impl Uploader {
    /// Sends jobs until the job queue closes.
    pub(crate) fn run(self) {
        for job in &self.jobs {
            let name = display_name(&job);
            let outcome = self.upload(&job, &name);
            let event = match outcome {
                Ok(size) => Event::Uploaded { name, size },
                Err(Stop::Failed(reason)) => Event::TransferFailed { direction: Direction::Up, name, reason },
                Err(Stop::Quiet) => return,
            };
            if self.events.send(event).is_err() {
                return;
            }
        }
    }

    fn upload(&self, job: &Job, name: &str) -> Result<u64, Stop> {
        let io_fail = |e: io::Error| Stop::Failed(format!("cannot read {}: {e}", job.path.display()));
        let mut file = File::open(&job.path).map_err(io_fail)?;
        let meta = file.metadata().map_err(io_fail)?;
        if !meta.is_file() {
            return Err(Stop::Failed(format!("{} is not a regular file", job.path.display())));
        }
        let size = meta.len();
        let start = Frame::UploadStart {
            key: transfer_key(job, &meta),
            name: name.to_owned(),
            size,
            to: job.to.clone(),
        };
        self.send(encode_to_vec(&start).map_err(|e| Stop::Failed(e.to_string()))?)?;
        let (upload_id, offset) = match self.reply()? {
            Reply::Ready { upload_id, offset } if offset <= size => (upload_id, offset),
            Reply::Ready { offset, .. } => {
                return Err(Stop::Failed(format!("the relay asked to resume at {offset}, past the end")))
            }
            Reply::Failed { message, .. } => return Err(Stop::Failed(message)),
            Reply::Done { .. } => return Err(Stop::Failed("the relay answered out of turn".into())),
        };
        let mut hasher = Sha256::new();
        file.seek(SeekFrom::Start(0)).map_err(io_fail)?;
        sha::hash_prefix(&mut file, offset, &mut hasher).map_err(io_fail)?;
        self.stream(&mut file, upload_id, offset, size, name, &mut hasher)?;
        let sha256: [u8; 32] = hasher.finalize().into();
        self.send(
            encode_to_vec(&Frame::UploadEnd { upload_id, sha256 })
                .map_err(|e| Stop::Failed(e.to_string()))?,
        )?;
        match self.reply()? {
            Reply::Done { upload_id: done } if done == upload_id => Ok(size),
            Reply::Failed { message, .. } => Err(Stop::Failed(message)),
            _ => Err(Stop::Failed("the relay answered out of turn".into())),
        }
    }

    /// Sends the bytes from `offset` to `size` as chunk frames. A read-ahead thread reads the
    /// file (see [`read_ahead`]); this thread hashes each chunk and hands it to the writer.
    fn stream(
        &self,
        file: &mut File,
        upload_id: u64,
        offset: u64,
        size: u64,
        name: &str,
        hasher: &mut Sha256,
    ) -> Result<(), Stop> {
        let chunk = self.chunk.clamp(1, MAX_CHUNK_DATA);
        // Bounded and short: the reader stays at most this many chunks ahead, so memory is flat
        // however big the file, and a slow network stops the reading too.
        let (to_hasher, chunks) = bounded::<io::Result<Vec<u8>>>(READ_AHEAD);
        thread::scope(|scope| {
            let reader = thread::Builder::new()
                .name("client-read".into())
                .spawn_scoped(scope, move || read_ahead(file, size - offset, chunk, to_hasher))
                .map_err(|e| Stop::Failed(format!("cannot start a thread: {e}")))?;
            let sent = self.send_chunks(&chunks, upload_id, offset, size, name, hasher);
            // Dropping the receiver wakes a reader blocked on a full channel; then it ends.
            drop(chunks);
            let _ = reader.join();
            sent
        })
    }

    fn send_chunks(
        &self,
        chunks: &Receiver<io::Result<Vec<u8>>>,
        upload_id: u64,
        offset: u64,
        size: u64,
        name: &str,
        hasher: &mut Sha256,
    ) -> Result<(), Stop> {
        let mut done = offset;
        let mut index = 0u64;
        let mut last_progress = Instant::now();
        while done < size {
            if self.cancel.load(Ordering::SeqCst) {
                return Err(Stop::Quiet);
            }
            // The relay may refuse mid-way (a full disk): stop sending at once.
            if let Ok(Reply::Failed { message, .. }) = self.replies.try_recv() {
                return Err(Stop::Failed(message));
            }
            let read =
                chunks.recv().unwrap_or_else(|_| Err(io::Error::other("the read-ahead thread stopped")));
            let mut buf =
                read.map_err(|e| Stop::Failed(format!("the file changed or cannot be read: {e}")))?;
            let n = buf.len() - CHUNK_HEADER;
            hasher.update(&buf[CHUNK_HEADER..]);
            if self.corrupt_chunk == Some(index) {
                buf[CHUNK_HEADER] ^= 0xff; // test hook: the relay must notice
            }
            chunk_frame(&mut buf, UPLOAD_CHUNK, upload_id).map_err(|e| Stop::Failed(e.to_string()))?;
            self.send(buf)?;
            if let Some(delay) = self.chunk_delay {
                std::thread::sleep(delay);
            }
            done += n as u64;
            index += 1;
            if last_progress.elapsed() >= PROGRESS_EVERY || done == size {
                last_progress = Instant::now();
                let progress =
                    Event::Progress { direction: Direction::Up, name: name.to_owned(), done, total: size };
                let _ = self.events.send(progress);
            }
        }
        Ok(())
    }

    fn send(&self, bytes: Vec<u8>) -> Result<(), Stop> {
        self.to_writer.send(bytes).map_err(|_| Stop::Quiet)
    }

    /// Waits for the relay's answer, checking now and then whether the client is closing.
    fn reply(&self) -> Result<Reply, Stop> {
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                return Err(Stop::Quiet);
            }
            match self.replies.recv_timeout(Duration::from_millis(50)) {
                Ok(reply) => return Ok(reply),
                Err(RecvTimeoutError::Timeout) => {}
                // The link is gone: the reader reports that (Disconnected), and whoever
                // reconnects queues the file again (see `CatchUp`); the relay resumes it.
                Err(RecvTimeoutError::Disconnected) => return Err(Stop::Quiet),
            }
        }
    }
}

/// Chunks the read-ahead thread may have read and not yet handed over.
const READ_AHEAD: usize = 2;

/// The read-ahead thread: reads the next `left` bytes of `file` in chunks laid out for a chunk
/// frame ([`crate::wire::read_chunk`]), and stops at the first error (passed on) or when the
/// uploader hangs up.
fn read_ahead(file: &mut File, left: u64, chunk: usize, to_hasher: Sender<io::Result<Vec<u8>>>) {
    let mut left = left;
    while left > 0 {
        let n = chunk.min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = crate::wire::read_chunk(file, n);
        let failed = read.is_err();
        if to_hasher.send(read).is_err() || failed {
            return;
        }
        left -= n as u64;
    }
}

/// The cleaned name the relay and the recipients will see.
fn display_name(job: &Job) -> String {
    let raw = job.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    filename::clean(&raw)
}

/// Identifies "the same transfer" across restarts of the client: same file (path, size, mtime)
/// to the same recipient.
fn transfer_key(job: &Job, meta: &std::fs::Metadata) -> String {
    let mut h = Sha256::new();
    let path = std::fs::canonicalize(&job.path).unwrap_or_else(|_| job.path.clone());
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_be_bytes());
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    h.update(mtime.as_nanos().to_be_bytes());
    h.update(job.to.as_bytes());
    sha::hex(&h.finalize()[..16])
}
