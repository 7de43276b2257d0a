//! What a connection thread does after the hello: read frames from a joined client and act on
//! them, until the connection ends.
//!
//! Chat frames become hub events. File frames are handled here, on the connection's own thread:
//! upload chunks are written to disk by this thread, and downloads are streamed by a download
//! thread that this session starts on the first request and joins at the end. Where the hub must
//! decide something (recipients, quotas, who may download what), the session asks it and waits for
//! the answer on a one-shot channel.
//!
//! Two rules protect everyone else from this connection:
//!
//! - **It touches only what it owns.** Upload chunks and ends must name the upload running on
//!   *this* connection; anything else is answered with an error and changes nothing. Downloads and
//!   receipts are checked by the hub against the user's own name.
//! - **It cannot ask for work faster than a person would.** Every frame but file chunks goes
//!   through the token buckets of this connection's address; when they are empty, this thread
//!   waits before handling the frame (see `throttle.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Sender, TrySendError};

use super::hub::{ConnId, ToHub};
use super::store::{DownloadPlan, Refusal};
use super::throttle::{pace, SharedThrottle};
use super::transfer::{download_loop, DownloadSettings, UploadReceiver};
use crate::filename;
use crate::frame::{encode_to_vec, ErrorCode, Frame};
use crate::outbox::{Bulk, ToWriter};
use crate::rules;
use crate::wire::{FrameReader, ReadError, Stream};

/// The longest upload key a client may send, in bytes. Clients use a hash (64 hex digits).
pub(crate) const MAX_KEY_BYTES: usize = 128;
/// The longest file name an upload may carry on the wire; the relay cleans and shortens it to
/// [`filename::MAX_NAME_BYTES`] anyway, but will not read a novel to do so.
pub(crate) const MAX_FILE_NAME_BYTES: usize = 1024;

/// Download requests a connection may have waiting behind the one being sent; past them a
/// request is refused with `Busy` (see `Session::download`).
const DOWNLOADS_QUEUED: usize = 4;

/// Whether to keep reading.
enum Flow {
    Continue,
    Stop,
}

/// The download thread of a connection, started on the first download request.
struct Downloader {
    jobs: Sender<DownloadPlan>,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

pub(crate) struct Session {
    pub id: ConnId,
    pub addr: SocketAddr,
    pub to_hub: Sender<ToHub>,
    /// This connection's bulk queue into its writer (upload answers and download chunks).
    pub to_writer: ToWriter<Bulk>,
    pub settings: DownloadSettings,
    throttle: SharedThrottle,
    uploads: UploadReceiver,
    downloader: Option<Downloader>,
}

impl Session {
    pub(crate) fn new(
        id: ConnId,
        addr: SocketAddr,
        to_hub: Sender<ToHub>,
        to_writer: ToWriter<Bulk>,
        settings: DownloadSettings,
        throttle: SharedThrottle,
    ) -> Session {
        Session {
            id,
            addr,
            to_hub,
            to_writer,
            settings,
            throttle,
            uploads: UploadReceiver::default(),
            downloader: None,
        }
    }

    /// Reads until EOF, an error or a goodbye; then stops the download thread and joins it.
    pub(crate) fn run<S: Stream>(mut self, reader: &mut FrameReader<S>) {
        loop {
            let flow = match reader.read_frame() {
                Ok(Some(frame)) => self.handle(frame),
                Ok(None) => Flow::Stop,
                Err(e) if e.is_timeout() => {
                    log::info!("{}: silent past the idle timeout; closing (the link seems dead)", self.addr);
                    Flow::Stop
                }
                Err(ReadError::Io(e)) => {
                    log::info!("{}: read ended: {e}", self.addr);
                    Flow::Stop
                }
                Err(e @ ReadError::NoRoom { .. }) => {
                    // Not the client's fault: many big frames are being read at once (or held
                    // half-sent by someone). RelayFull tells a client to come back a little later,
                    // and an upload resumes from what the relay has.
                    log::warn!("{}: {e}; closing", self.addr);
                    self.fail(ErrorCode::RelayFull, format!("{e}; try again in a moment"))
                }
                Err(e) => {
                    log::warn!("{}: {e}", self.addr);
                    self.fail(ErrorCode::Protocol, e.to_string())
                }
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        if let Some(downloader) = self.downloader.take() {
            downloader.cancel.store(true, Ordering::SeqCst);
            drop(downloader.jobs);
            let _ = downloader.thread.join();
        }
    }

    fn handle(&mut self, frame: Frame) -> Flow {
        let id = self.id;
        // A line the rules refuse (a frame may carry a mebibyte of "text", sixteen times what a
        // line may have) still costs its length in the address's text bucket, but its text is
        // let go before the pause: a throttled connection must not sleep holding it.
        if let Frame::Say { text, .. } = &frame {
            if let Err(e) = rules::check_text(text) {
                let bytes = text.len();
                drop(frame);
                pace(&self.throttle, |t| t.message(bytes));
                return self.hub(ToHub::Warn { id, code: ErrorCode::BadText, message: e.to_string() });
            }
        }
        match &frame {
            Frame::Say { text, .. } => pace(&self.throttle, |t| t.message(text.len())),
            Frame::UploadChunk { .. } | Frame::UploadEnd { .. } => {}
            Frame::ListFiles | Frame::Who => pace(&self.throttle, |t| t.list()),
            _ => pace(&self.throttle, |t| t.request()),
        }
        match frame {
            // Its text passed the rules above.
            Frame::Say { client_id, to, text } => self.hub(ToHub::Say { id, client_id, to, text }),
            Frame::Seen { message_id } => self.hub(ToHub::Seen { id, message_id }),
            Frame::Leave => {
                let _ = self.hub(ToHub::Leave { id });
                Flow::Stop
            }
            Frame::Who => self.hub(ToHub::Who { id }),
            Frame::Ping => self.reply(&Frame::Pong),
            Frame::Goodbye => {
                let _ = self.hub(ToHub::Goodbye { id });
                Flow::Stop
            }
            Frame::UploadStart { key, name, size, to } => self.upload_start(key, name, size, to),
            Frame::UploadChunk { upload_id, data } => self.upload_chunk(upload_id, data),
            Frame::UploadEnd { upload_id, sha256 } => {
                if !self.uploads.is_active(upload_id) {
                    return self.not_ours(upload_id);
                }
                match self.uploads.finish(upload_id, sha256) {
                    Ok(()) => self.hub(ToHub::CommitUpload { id, upload_id, sha256 }),
                    Err(refusal) => self.abort_upload(upload_id, refusal),
                }
            }
            Frame::ListFiles => self.hub(ToHub::ListFiles { id }),
            Frame::Download { file_id, offset } => self.download(file_id, offset),
            Frame::Received { file_id } => self.hub(ToHub::Received { id, file_id }),
            other => {
                let message = format!("frame kind 0x{:02x} is not allowed from a client here", other.kind());
                log::warn!("{}: {message}", self.addr);
                self.fail(ErrorCode::Protocol, message)
            }
        }
    }

    fn hub(&self, event: ToHub) -> Flow {
        match self.to_hub.send(event) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop, // the hub is gone: shutting down
        }
    }

    /// A protocol error: the hub sends the client an error frame and ends the connection.
    fn fail(&self, code: ErrorCode, message: String) -> Flow {
        let _ = self.to_hub.send(ToHub::Fail { id: self.id, code, message });
        Flow::Stop
    }

    /// Sends a frame on this connection's own (bulk) queue.
    fn reply(&self, frame: &Frame) -> Flow {
        let Ok(bytes) = encode_to_vec(frame) else { return Flow::Stop };
        match self.to_writer.send(Bulk::Frame(bytes)) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop, // the writer is gone
        }
    }

    /// Asks the hub for a plan and waits for the answer. `None` when the hub is gone.
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> ToHub) -> Option<T> {
        let (reply, answer) = bounded(1);
        self.to_hub.send(make(reply)).ok()?;
        answer.recv().ok()
    }

    fn upload_start(&mut self, key: String, raw_name: String, size: u64, to: String) -> Flow {
        let id = self.id;
        if key.len() > MAX_KEY_BYTES || raw_name.len() > MAX_FILE_NAME_BYTES {
            let message = format!(
                "an upload key may have at most {MAX_KEY_BYTES} bytes and a file name {MAX_FILE_NAME_BYTES}"
            );
            return self.reply(&Frame::UploadFailed { upload_id: 0, code: ErrorCode::FieldTooLong, message });
        }
        let name = filename::clean(&raw_name);
        let Some(answer) = self.ask(|reply| ToHub::BeginUpload { id, key, name, size, to, reply }) else {
            return Flow::Stop;
        };
        let plan = match answer {
            Ok(plan) => plan,
            Err((code, message)) => {
                log::info!("{}: upload refused: {message}", self.addr);
                return self.reply(&Frame::UploadFailed { upload_id: 0, code, message });
            }
        };
        let upload_id = plan.upload_id;
        match self.uploads.start(plan) {
            Ok(offset) => {
                if offset > 0 {
                    log::info!("{}: resuming upload {upload_id} at byte {offset}", self.addr);
                }
                self.reply(&Frame::UploadReady { upload_id, offset })
            }
            Err(e) => self.abort_upload(upload_id, super::transfer::storage_refusal(&e)),
        }
    }

    fn upload_chunk(&mut self, upload_id: u64, data: Vec<u8>) -> Flow {
        if self.uploads.is_failed(upload_id) {
            return Flow::Continue; // chunks that were already on the wire when it failed
        }
        if !self.uploads.is_active(upload_id) {
            return self.not_ours(upload_id);
        }
        match self.uploads.chunk(upload_id, data) {
            Ok(()) => Flow::Continue,
            Err(refusal) => self.abort_upload(upload_id, refusal),
        }
    }

    /// A transfer frame naming an upload that is not running on this connection: someone else's,
    /// or one that never existed. Answered, and nothing changes.
    fn not_ours(&mut self, upload_id: u64) -> Flow {
        log::info!(
            "{}: transfer frame for upload {upload_id}, which is not running here; ignored",
            self.addr
        );
        self.uploads.fail(upload_id); // its other chunks are dropped quietly
        let message = format!("upload {upload_id} is not in progress on this connection");
        self.reply(&Frame::UploadFailed { upload_id, code: ErrorCode::BadTransfer, message })
    }

    /// Ends an upload on this connection and has the hub delete its bytes and tell the client.
    fn abort_upload(&mut self, upload_id: u64, (code, message): Refusal) -> Flow {
        log::info!("{}: upload {upload_id} failed: {message}", self.addr);
        self.uploads.fail(upload_id);
        self.hub(ToHub::AbortUpload { id: self.id, upload_id, code, message })
    }

    fn download(&mut self, file_id: u64, offset: u64) -> Flow {
        let id = self.id;
        let Some(answer) = self.ask(|reply| ToHub::Download { id, file_id, offset, reply }) else {
            return Flow::Stop;
        };
        let plan = match answer {
            Ok(plan) => plan,
            Err((code, message)) => return self.reply(&Frame::DownloadFailed { file_id, code, message }),
        };
        if offset > 0 {
            log::info!("{}: resuming download of file {file_id} at byte {offset}", self.addr);
        }
        let downloader = match self.downloader.take() {
            Some(running) => running,
            None => match self.start_downloader() {
                Ok(started) => started,
                Err(e) => {
                    let message = format!("the relay cannot start a download: {e}");
                    return self.reply(&Frame::DownloadFailed { file_id, code: ErrorCode::Storage, message });
                }
            },
        };
        // `try_send`, never `send`: the download thread may follow a stalled upload for up to
        // 30 s per request, and this thread waiting for room would stop reading the client (its
        // pings, its chat, its close) all that time. A request past the queue is refused.
        let sent = downloader.jobs.try_send(plan);
        self.downloader = Some(downloader);
        match sent {
            Ok(()) => Flow::Continue,
            Err(TrySendError::Full(_)) => {
                let message = format!("{DOWNLOADS_QUEUED} downloads are waiting already; ask again later");
                self.reply(&Frame::DownloadFailed { file_id, code: ErrorCode::Busy, message })
            }
            Err(TrySendError::Disconnected(_)) => Flow::Stop,
        }
    }

    fn start_downloader(&self) -> std::io::Result<Downloader> {
        // A few queued requests at most; a client asks for one file at a time.
        let (jobs, from_session) = bounded(DOWNLOADS_QUEUED);
        let cancel = Arc::new(AtomicBool::new(false));
        let (to_writer, settings, stop) = (self.to_writer.clone(), self.settings, cancel.clone());
        let thread = thread::Builder::new()
            .name(format!("conn-{}-download", self.id))
            .spawn(move || download_loop(from_session, to_writer, settings, &stop))?;
        Ok(Downloader { jobs, cancel, thread })
    }
}
