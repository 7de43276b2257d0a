//! The client's reader thread: frames from the socket become [`Event`]s; upload answers go to the
//! upload thread; download chunks go to disk through [`super::download::Receiving`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::download::{Receiving, Step};
use super::upload::Reply;
use super::{Direction, Disconnect, Event, EventHook, Mark};
use crate::frame::{encode_to_vec, Frame, MARK_HISTORY, MARK_OFFLINE};
use crate::outbox::{ToWriter, Urgent};
use crate::wire::{FrameReader, ReadError, Stream};

/// Requests from the [`super::Client`] to the reader.
pub(crate) enum Command {
    /// The next file list is the answer to a receive: download everything on it into `dir`.
    ReceiveAll { dir: PathBuf },
}

pub(crate) struct Reader<S> {
    pub frames: FrameReader<S>,
    pub events: Sender<Event>,
    /// The send queue, for download requests and receipts.
    pub to_writer: ToWriter<Urgent>,
    pub upload_replies: Sender<Reply>,
    pub commands: Receiver<Command>,
    pub receiving: Arc<AtomicBool>,
    pub cancel: Arc<AtomicBool>,
    pub chunk_delay: Option<std::time::Duration>,
    /// Pass receipts on as events.
    pub receipts: bool,
    /// Called with each event before (instead of) queueing it: see [`EventHook`].
    pub hook: Option<EventHook>,
}

impl<S: Stream> Reader<S> {
    /// Reads until the connection ends; the last event sent is always `Disconnected`.
    pub(crate) fn run(mut self) {
        let mut receive: Option<Receiving> = None;
        // Long lists arrive in pages (`more` set on all but the last); these collect them.
        let mut online_so_far: Vec<String> = Vec::new();
        let mut files_so_far: Vec<crate::frame::FileInfo> = Vec::new();
        // The highest offline message not yet confirmed with a Seen (see `confirm_offline`).
        let mut unconfirmed: Option<u64> = None;
        let end = loop {
            let frame = match self.frames.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break Disconnect::Closed,
                Err(e) if e.is_timeout() => {
                    // Our Pings get a Pong, so silence this long means the relay or the link is
                    // gone (a dropped Wi-Fi, a NAT that forgot us): give up and let the caller
                    // reconnect.
                    break Disconnect::Failed("no sign of life from the relay; the link seems dead".into());
                }
                Err(ReadError::Io(e)) => break Disconnect::Failed(e.to_string()),
                Err(e) => break Disconnect::Failed(e.to_string()),
            };
            let event = match frame {
                Frame::Chat { id, from, to, sent_at_ms, mark, text } => {
                    let mark = match mark {
                        MARK_OFFLINE => {
                            unconfirmed = Some(unconfirmed.map_or(id, |seen| seen.max(id)));
                            Mark::Offline
                        }
                        MARK_HISTORY => Mark::History,
                        _ => Mark::Live,
                    };
                    Some(Event::Chat { id, from, to, sent_at_ms, mark, text })
                }
                Frame::Sent { client_id, message_id } => {
                    self.receipts.then_some(Event::Sent { client_id, message_id })
                }
                Frame::Pong => None, // it did its job by arriving
                Frame::Joined { name, room } => Some(Event::Joined { name, room }),
                Frame::Left { name, room } => Some(Event::Left { name, room }),
                Frame::Crowd { room, online, joined, left } => {
                    Some(Event::Crowd { room, online, joined, left })
                }
                Frame::Online { room, names, more } => {
                    online_so_far.extend(names);
                    if more {
                        None
                    } else {
                        Some(Event::Online { room, names: std::mem::take(&mut online_so_far) })
                    }
                }
                Frame::NewFile(info) => Some(Event::NewFile(info)),
                Frame::FileExpired { from, name } => Some(Event::FileExpired { from, name }),
                Frame::Error { code, message } if !code.closes_connection() => {
                    Some(Event::Warning { code, message })
                }
                Frame::Error { code, message } => break Disconnect::ServerError { code, message },
                Frame::Goodbye => break Disconnect::ServerGoodbye,
                Frame::UploadReady { upload_id, offset } => {
                    self.to_uploader(Reply::Ready { upload_id, offset })
                }
                Frame::UploadDone { upload_id, .. } => self.to_uploader(Reply::Done { upload_id }),
                Frame::UploadFailed { message, .. } => self.to_uploader(Reply::Failed { message }),
                Frame::FileList { files, more } => {
                    files_so_far.extend(files);
                    if !more {
                        let files = std::mem::take(&mut files_so_far);
                        if let Ok(Command::ReceiveAll { dir }) = self.commands.try_recv() {
                            receive = Some(Receiving::new(dir, files));
                            self.advance(&mut receive, Step::Next);
                        } // else: a list nobody asked for
                    }
                    None
                }
                Frame::DownloadChunk { file_id, data } => {
                    if let Some(delay) = self.chunk_delay {
                        std::thread::sleep(delay);
                    }
                    let step = receive.as_mut().map_or(Step::Nothing, |r| r.chunk(file_id, data));
                    self.advance(&mut receive, step);
                    None
                }
                Frame::DownloadEnd { file_id, sha256 } => {
                    let step = receive.as_mut().map_or(Step::Nothing, |r| r.end(file_id, sha256));
                    self.advance(&mut receive, step);
                    None
                }
                Frame::DownloadFailed { file_id, code, message } => {
                    let step = receive.as_mut().map_or(Step::Nothing, |r| r.failed(file_id, code, &message));
                    self.advance(&mut receive, step);
                    None
                }
                other => {
                    break Disconnect::Failed(format!(
                        "unexpected frame kind 0x{:02x} from the server",
                        other.kind()
                    ))
                }
            };
            let offline = matches!(event, Some(Event::Chat { mark: Mark::Offline, .. }));
            if !(offline && self.frames.has_frame()) {
                self.confirm_offline(&mut unconfirmed);
            }
            if let Some(event) = event {
                if !self.deliver(event) {
                    return; // the application dropped the client
                }
            }
            if self.cancel.load(Ordering::SeqCst) {
                receive = None; // stop downloading; the .part files stay for a resume
            }
        };
        if let Some(r) = receive.as_ref() {
            self.deliver(r.interrupted(&end.to_string()));
        }
        self.receiving.store(false, Ordering::SeqCst);
        self.deliver(Event::Disconnected(end));
    }

    /// Tells the relay it can stop keeping the offline messages up to `unconfirmed` for us.
    ///
    /// Seen means "everything up to this id" (docs/PROTOCOL.md), so one answers a whole run of
    /// offline messages, and `run` holds it back only while the next frame is already in memory
    /// and this one was offline too. One per message, as this reader once sent, cost the relay
    /// a database write each, and each is a request under the relay's rate limit (500 a second
    /// per address): after a login with thousands waiting, the client's own lines, queued
    /// behind the Seens, waited seconds for the relay to read them (`tests/durability.rs` ran
    /// out of time on it). Held back no longer than that, a Seen is queued before the reader
    /// reads the socket again, and before any other event reaches the application, so one
    /// that closes after its offline messages still queues its goodbye behind the Seen.
    fn confirm_offline(&self, unconfirmed: &mut Option<u64>) {
        if let Some(message_id) = unconfirmed.take() {
            self.send(&Frame::Seen { message_id });
        }
    }

    /// Hands an event to the hook if there is one, and queues what it gives back (or the event
    /// itself). False when the application is gone (the queue's receiver was dropped).
    fn deliver(&self, event: Event) -> bool {
        let event = match &self.hook {
            Some(EventHook(hook)) => hook(event),
            None => Some(event),
        };
        event.is_none_or(|event| self.events.send(event).is_ok())
    }

    fn to_uploader(&self, reply: Reply) -> Option<Event> {
        let _ = self.upload_replies.try_send(reply);
        None
    }

    /// Carries out what the download side asked for: report an event, send a receipt, start the
    /// next file (sending its request), or finish the whole receive.
    fn advance(&mut self, receive: &mut Option<Receiving>, first: Step) {
        let mut step = first;
        loop {
            let Some(r) = receive.as_mut() else { return };
            step = match step {
                Step::Nothing => return,
                Step::Event(event) => return self.emit(event),
                Step::Done(event, file_id) => {
                    self.send(&Frame::Received { file_id });
                    self.emit(event);
                    Step::Next
                }
                Step::Failed(event) => {
                    self.emit(event);
                    Step::Next
                }
                Step::Next => match r.start_next() {
                    Some(Ok(request)) => return self.send(&request),
                    Some(Err(event)) => {
                        self.emit(event);
                        Step::Next
                    }
                    None => {
                        let finished = r.finished();
                        *receive = None;
                        self.receiving.store(false, Ordering::SeqCst);
                        return self.emit(finished);
                    }
                },
            };
        }
    }

    /// Sends an event; if the application is gone, the main loop notices on its next send.
    fn emit(&self, event: Event) {
        self.deliver(event);
    }

    fn send(&self, frame: &Frame) {
        if let Ok(bytes) = encode_to_vec(frame) {
            let _ = self.to_writer.send(Urgent::Frame(bytes));
        }
    }
}

/// The event for a download that could not finish because the connection ended.
pub(crate) fn interrupted_event(name: String, why: &str) -> Event {
    Event::TransferFailed {
        direction: Direction::Down,
        name,
        reason: format!("interrupted ({why}); run receive again to resume"),
    }
}
