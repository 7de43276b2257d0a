//! The client library: one connection to the relay, used by the terminal client and the window.
//!
//! ## Threads
//!
//! ```text
//!  send_text() ─▶ nothing queued, no file on its way? write it here (Direct) ──────▶ socket
//!       │ otherwise
//!       └──────▶ send queue (urgent, bounded) ─┐
//!                                              ├─▶ writer thread ──────────────────▶ socket
//!  send_file() ─▶ upload thread ─▶ bulk queue ─┘   (urgent first)
//!
//!  events() ◀── event queue (bounded) ◀── reader thread ◀── socket
//!                 (or ClientConfig::on_event,  writes downloads to disk
//!                  on the reader thread)
//! ```
//!
//! [`Client::connect`] does the handshake on the calling thread, then starts three threads:
//!
//! - the **writer** owns a clone of the socket and drains two queues, the *send queue* first (see
//!   [`crate::outbox`]). The send queue is the design card's crossbeam queue: typing never waits
//!   for the network. File chunks travel in the short *bulk* queue behind it, so a line of chat
//!   overtakes a file in progress.
//! - **except, if asked, when the line is free.** Waking the writer to send one line costs a
//!   thread wake-up, tens of microseconds on a small VM, on every line. So with
//!   [`ClientConfig::direct_writes`], when nothing is queued, no file is on its way and the
//!   writer is asleep, [`Client::send_text`] writes the frame to the socket itself, on the
//!   caller's thread, with a clone of the socket kept for that (`client/direct.rs`). The writer
//!   and the callers take turns (a `Mutex<()>`, see [`crate::outbox::pump_sharing`]), so frames
//!   still leave one whole frame at a time and in order. The terminal client asks for it; the
//!   default is off (see the field's docs for why).
//! - the **reader** owns the socket, decodes frames and turns them into [`Event`]s. It also writes
//!   downloaded chunks straight to disk (`client/download.rs`), so file data never piles up in a queue.
//!   The event queue is bounded: if the program stops reading events, the reader stops reading the
//!   socket, and TCP pushes back on the relay. A program can have the reader hand each event to
//!   an [`EventHook`] instead, on the reader's own thread, which saves waking another thread per
//!   event (the terminal client prints chat that way).
//! - the **upload thread** (`client/upload.rs`) sends files one after another: it reads each file in
//!   chunks, hashes them, and blocks on the bulk queue, which keeps memory flat.
//!
//! [`Client::close`] is the orderly way out: it cancels transfers, queues a goodbye, lets the writer
//! send everything still in the send queue, and joins every thread.

mod backoff;
mod catch_up;
mod direct;
mod download;
mod event;
pub mod identity;
mod reader;
mod session;
pub mod trust;
mod upload;

pub use backoff::Backoff;
pub use catch_up::CatchUp;
pub use event::{ClientError, Direction, Disconnect, Event, EventHook, Mark};
pub use session::{retry_may_help, DialError, KeepTrying, Resumed, Session};
pub use trust::{FirstContact, Trust, TrustError, Verdict};

use std::io::{self, BufWriter};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use direct::Direct;

use crate::frame::{encode_to_vec, Frame, PROTOCOL_VERSION};
use crate::outbox::{self, Heartbeat, Pacing, ToWriter, Urgent};
use crate::rules::{self};
use crate::tls::TlsStream;
use crate::wire::{write_frame, Closer, FrameReader, Stream};

pub use crate::frame::{DEFAULT_CHUNK, DEFAULT_PORT};

/// Frames the send queue holds before `send_text` blocks.
pub const SEND_QUEUE: usize = 256;
/// Chunks the bulk queue holds; with 256 KiB chunks, 1 MiB of file data at most.
pub const BULK_QUEUE: usize = 4;
/// Events the event queue holds before the reader stops reading the socket.
pub const EVENT_QUEUE: usize = 1024;
/// How long to wait for the server's answer to our hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to try to reach the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Client::close`] waits for the server to close its side after our goodbye.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a transfer reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Who we are, and where we want to be.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our user name; must pass [`rules::check_name`].
    pub name: String,
    /// The room to join; must pass [`rules::check_room`].
    pub room: String,
    /// The account password: claims the name on first use, proves it later. Empty: a guest.
    pub password: String,
    /// The relay's access password, if it has one.
    pub access: String,
    /// This machine's identity token for this relay (empty: none). The front ends keep it in
    /// the config dir; see docs/PROTOCOL.md, "Identity".
    pub token: String,
    /// Report the relay's receipts as [`Event::Sent`] (off by default: chat programs do not need
    /// them; code that resends after a crash does).
    pub receipts: bool,
    /// Data bytes per upload chunk. Default [`DEFAULT_CHUNK`].
    pub chunk_size: usize,
    /// Test hook: flip a byte in this upload chunk (0-based) after hashing it.
    #[doc(hidden)]
    pub corrupt_upload_chunk: Option<u64>,
    /// Test hook: pause this long after every chunk sent or received, so a test can interrupt a
    /// transfer in the middle.
    #[doc(hidden)]
    pub chunk_delay: Option<Duration>,
    /// Send a Ping this often (the relay answers each with a Pong). Default [`PING_EVERY`].
    pub ping_every: Duration,
    /// Give the connection up as dead after this long without a byte from the relay (its Pongs
    /// keep an idle connection talking). Default [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// How the writer keeps chat from waiting behind an upload (see [`crate::outbox::Pacing`]).
    pub pacing: Pacing,
    /// TLS and whom to trust (the default: TLS, trusting only what a CA vouches for; see
    /// `client/trust.rs`), or plaintext.
    pub security: Security,
    /// Let [`Client::send_text`] write a frame on the caller's thread when the writer has
    /// nothing to do, instead of waking the writer (`client/direct.rs`). It saves a thread
    /// wake-up per line when the caller goes straight back to waiting for something else, as
    /// the terminal client's keyboard thread does (back to reading stdin). A caller that stays
    /// busy right after sending can instead hold up the relay's thread the write just woke, if
    /// the kernel puts that thread on the caller's CPU. Through the library
    /// (`benches/latency.rs`, whose loop waits on `events()` at once) it showed no clear gain:
    /// between 15 µs better and 15 µs worse at the median from one session to the next. So it
    /// is off unless asked for. Default `false`.
    pub direct_writes: bool,
    /// Handle the reader's events on its own thread instead of queueing them ([`EventHook`]).
    /// Default `None`: every event is queued for [`Client::events`].
    pub on_event: Option<EventHook>,
}

/// Whether the connection is encrypted.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS 1.3, trusting the relay as [`Trust`] says.
    Tls(Trust),
    /// No encryption: the password and every message cross the network as they are. For the
    /// lesson on reading frames in Wireshark, and only with a relay that allows it
    /// (`--allow-plaintext`).
    Plaintext,
}

impl Default for Security {
    fn default() -> Self {
        Security::Tls(Trust::default())
    }
}

/// How often an idle client says "still here" (a Ping). Every 20 s: well under the relay's
/// idle timeout (60 s), and under the shortest idle timeouts that home routers and carrier NATs
/// commonly give a TCP mapping (some drop them after 30–60 s; most allow minutes), so an idle
/// chat through a NAT stays open. A Ping is 5 bytes: 20 s costs nothing worth counting.
pub const PING_EVERY: Duration = Duration::from_secs(20);

/// How long a client waits without hearing anything from the relay before it gives the
/// connection up and reconnects: three missed Pong rounds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl ClientConfig {
    /// A guest configuration (no passwords) with the default chunk size.
    pub fn new(name: impl Into<String>, room: impl Into<String>) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            room: room.into(),
            password: String::new(),
            access: String::new(),
            token: String::new(),
            receipts: false,
            chunk_size: DEFAULT_CHUNK,
            corrupt_upload_chunk: None,
            chunk_delay: None,
            ping_every: PING_EVERY,
            idle_timeout: IDLE_TIMEOUT,
            pacing: Pacing::DEFAULT,
            security: Security::default(),
            direct_writes: false,
            on_event: None,
        }
    }
}

/// The name to use when none is given: the OS user name. One function for the terminal client
/// and the window, so both pick the same one.
pub fn default_name() -> Option<String> {
    ["USER", "USERNAME", "LOGNAME"].iter().find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

/// A live connection to the relay.
pub struct Client {
    /// Our name and room as the server registered them.
    name: String,
    room: String,
    /// The send queue. `close` sends the empty "finish" buffer on it (see [`crate::outbox`]).
    to_writer: ToWriter<Urgent>,
    /// Writing a frame at once, on the caller's thread, when the writer has nothing to do
    /// (only with [`ClientConfig::direct_writes`]).
    direct: Option<Direct>,
    /// Files to upload; `None` once closing.
    to_uploader: Option<Sender<upload::Job>>,
    /// Receive requests for the reader.
    to_reader: Sender<reader::Command>,
    /// True while a receive is running (set here, cleared by the reader).
    receiving: Arc<AtomicBool>,
    /// Set when closing: transfers stop at the next chunk.
    cancel: Arc<AtomicBool>,
    events: Receiver<Event>,
    threads: Vec<JoinHandle<()>>,
    closer: Closer,
    /// Why the relay's certificate was trusted (`None` over plaintext).
    verdict: Option<Verdict>,
}

impl Client {
    /// Connects over TCP to `server` (`HOST:PORT`) and joins.
    ///
    /// With [`Security::Tls`] (the default) the TLS handshake comes first, and the relay's
    /// certificate is checked inside it (`client/trust.rs`): nothing of ours, the password
    /// included, is sent to a relay that is not trusted.
    pub fn connect_tcp(server: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        rules::check_name(&config.name)?;
        rules::check_room(&config.room)?;
        let stream = dial(server, config.pacing.unsent)
            .map_err(|source| ClientError::Connect { server: server.to_owned(), source })?;
        let trust = match &config.security {
            Security::Plaintext => return Client::connect(stream, config),
            Security::Tls(trust) => trust,
        };
        let (tls_config, pinning) = trust::tls_config(server, trust).map_err(ClientError::Trust)?;
        let name = trust::server_name(server)
            .ok_or_else(|| ClientError::Tls(format!("{server:?} is not a host name and port")))?;
        let session =
            rustls::ClientConnection::new(tls_config, name).map_err(|e| ClientError::Tls(e.to_string()))?;
        let stream = match TlsStream::handshake(stream, session, Instant::now() + HANDSHAKE_TIMEOUT) {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(refusal) =
                    e.get_ref().and_then(|inner| inner.downcast_ref::<crate::tls::PlaintextRefusal>())
                {
                    return Err(ClientError::Refused {
                        code: refusal.code,
                        message: refusal.message.clone(),
                    });
                }
                return Err(match pinning.outcome() {
                    Some(Err(refused)) => ClientError::Trust(refused),
                    _ => ClientError::Tls(format!(
                        "{e} (is {server} a relaychat relay with TLS? One that speaks only plaintext needs \
                         --plaintext)"
                    )),
                });
            }
        };
        // The relay has proved it holds the key: now a first contact's fingerprint may be kept.
        pinning.pin_now().map_err(ClientError::Trust)?;
        let mut client = Client::connect(stream, config)?;
        client.verdict = pinning.outcome().and_then(Result::ok);
        Ok(client)
    }

    /// Joins over an already connected stream: sends the hello, waits for the welcome, then starts
    /// the threads.
    pub fn connect<S: Stream>(stream: S, config: &ClientConfig) -> Result<Client, ClientError> {
        rules::check_name(&config.name)?;
        rules::check_room(&config.room)?;
        let hs = |e: io::Error| ClientError::Handshake(e.to_string());
        let mut reader = FrameReader::new(stream);
        let (name, room) = handshake(&mut reader, config)?;
        let closer = reader.get_ref().closer().map_err(hs)?;
        let write_half = reader.get_ref().try_clone_stream().map_err(hs)?;
        let turn = Arc::new(Mutex::new(()));

        let (to_writer, from_app) = bounded(SEND_QUEUE);
        let (to_bulk, from_bulk) = bounded(BULK_QUEUE);
        let (to_app, events) = bounded(EVENT_QUEUE);
        let (to_uploader, jobs) = bounded(64);
        let (to_upload_replies, upload_replies) = bounded(16);
        let (to_reader, commands) = bounded(4);
        let receiving = Arc::new(AtomicBool::new(false));
        let cancel = Arc::new(AtomicBool::new(false));

        let ping = encode_to_vec(&Frame::Ping).map_err(ClientError::Encode)?;
        let options = outbox::Options {
            // No polling on the client: it sends at human pace, and one thread fewer spins.
            spin: Duration::ZERO,
            heartbeat: Some(Heartbeat { every: config.ping_every, frame: ping }),
            piece: config.pacing.piece,
        };
        let direct = match config.direct_writes {
            false => None,
            true => Some(Direct {
                turn: turn.clone(),
                out: Mutex::new(Box::new(reader.get_ref().try_clone_stream().map_err(hs)?)),
                bulk: from_bulk.clone(),
                closer: reader.get_ref().closer().map_err(hs)?,
            }),
        };
        let mut threads = Vec::new();
        let writer =
            spawn("client-writer", move || write_loop(write_half, from_app, from_bulk, options, &turn))
                .map_err(hs)?;
        // Whoever queues something for the writer wakes it (see `outbox`, "How a writer sleeps").
        let to_writer = ToWriter::new(to_writer, writer.thread().clone());
        let to_bulk = ToWriter::new(to_bulk, writer.thread().clone());
        threads.push(writer);
        let uploads = upload::Uploader {
            jobs,
            replies: upload_replies,
            to_writer: to_bulk,
            events: to_app.clone(),
            cancel: cancel.clone(),
            chunk: config.chunk_size,
            corrupt_chunk: config.corrupt_upload_chunk,
            chunk_delay: config.chunk_delay,
        };
        threads.push(spawn("client-upload", move || uploads.run()).map_err(hs)?);
        let reads = reader::Reader {
            frames: reader,
            events: to_app,
            to_writer: to_writer.clone(),
            upload_replies: to_upload_replies,
            commands,
            receiving: receiving.clone(),
            cancel: cancel.clone(),
            chunk_delay: config.chunk_delay,
            receipts: config.receipts,
            hook: config.on_event.clone(),
        };
        threads.push(spawn("client-reader", move || reads.run()).map_err(hs)?);
        Ok(Client {
            name,
            room,
            to_writer,
            direct,
            to_uploader: Some(to_uploader),
            to_reader,
            receiving,
            cancel,
            events,
            threads,
            closer,
            verdict: None,
        })
    }

    /// Why the relay's certificate was trusted: by a CA, by its pin, or on first contact (a
    /// front end tells the person so). `None` over plaintext.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// Our name, as registered.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Our room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Incoming events. Use it with `crossbeam_channel::select!` to wait on other things too.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Queues text for everyone else in our room. Blocks only if the send queue is full.
    pub fn send_text(&self, text: &str) -> Result<(), ClientError> {
        self.say(String::new(), text)
    }

    /// Queues text for one user, online or (if they have an account) offline.
    pub fn send_direct(&self, to: &str, text: &str) -> Result<(), ClientError> {
        rules::check_name(to)?;
        self.say(to.to_owned(), text)
    }

    fn say(&self, to: String, text: &str) -> Result<(), ClientError> {
        // One id source for the whole process (see `catch_up::next_message_id`).
        let client_id = catch_up::next_message_id();
        self.send_with_id(client_id, &to, text).map(|_| ())
    }

    /// Sends text under a client id the caller chooses, and returns it. The relay answers with
    /// [`Event::Sent`] once the message is stored; sending the same id again (after a reconnect,
    /// when no receipt came) is harmless: the relay only repeats the receipt. `to` empty: the room.
    pub fn send_with_id(&self, client_id: u64, to: &str, text: &str) -> Result<u64, ClientError> {
        rules::check_text(text)?;
        if !to.is_empty() {
            rules::check_name(to)?;
        }
        self.queue(&Frame::Say { client_id, to: to.to_owned(), text: text.to_owned() })?;
        Ok(client_id)
    }

    /// Leaves our room for good (no more offline messages from it), then closes like
    /// [`Client::close`].
    pub fn leave_room(self) {
        let _ = self.queue(&Frame::Leave);
        self.close();
    }

    /// Asks who is online; the answer arrives as [`Event::Online`].
    pub fn who(&self) -> Result<(), ClientError> {
        self.queue(&Frame::Who)
    }

    /// Queues a file for upload: to `to` (whether or not they are online), or, with `None`, to
    /// everyone else in our room. Files are sent one after another; progress and the outcome arrive
    /// as events ([`Event::Progress`], [`Event::Uploaded`], [`Event::TransferFailed`]).
    ///
    /// Checks here, before anything is queued, that the path is a readable regular file.
    pub fn send_file(&self, path: &Path, to: Option<&str>) -> Result<(), ClientError> {
        if let Some(to) = to {
            rules::check_name(to)?;
        }
        let bad = |reason: String| ClientError::BadPath { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.is_dir() {
            return Err(bad("it is a directory; send the files inside it one by one".into()));
        }
        if !meta.is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        let job = upload::Job { path: path.to_owned(), to: to.unwrap_or_default().to_owned() };
        let to_uploader = self.to_uploader.as_ref().ok_or(ClientError::Disconnected)?;
        to_uploader.send(job).map_err(|_| ClientError::Disconnected)
    }

    /// Downloads every file waiting for us into `dir` (created if needed), one after another.
    /// Ends with [`Event::ReceiveFinished`]; each file gives [`Event::Downloaded`] or
    /// [`Event::TransferFailed`].
    pub fn receive_all(&self, dir: &Path) -> Result<(), ClientError> {
        if self.receiving.swap(true, Ordering::SeqCst) {
            return Err(ClientError::Busy);
        }
        // The command first, then the request: the reader looks for the command when the list
        // arrives.
        let sent = self.to_reader.send(reader::Command::ReceiveAll { dir: dir.to_owned() });
        if sent.is_err() {
            self.receiving.store(false, Ordering::SeqCst);
            return Err(ClientError::Disconnected);
        }
        self.queue(&Frame::ListFiles)
    }

    /// Sends a frame: at once on this thread if that is allowed and the writer has nothing to do
    /// (see `Direct`), else through the send queue.
    fn queue(&self, frame: &Frame) -> Result<(), ClientError> {
        let bytes = encode_to_vec(frame).map_err(ClientError::Encode)?;
        if self.direct.as_ref().is_some_and(|direct| direct.try_write(&bytes, &self.to_writer)) {
            return Ok(());
        }
        self.to_writer.send(Urgent::Frame(bytes)).map_err(|_| ClientError::Disconnected)
    }

    /// Leaves cleanly: transfers in progress stop (they can be resumed later), everything already
    /// in the send queue is sent, then a goodbye, then every thread is joined.
    ///
    /// ## Close sequence
    /// 1. Set `cancel` and drop the upload queue: the upload thread stops at its next chunk.
    /// 2. Queue `Goodbye` and then the empty "finish" buffer: the writer sends all the send queue
    ///    holds, then half-closes the socket and ends.
    /// 3. Drop the event receiver, so a reader blocked on a full event queue wakes up.
    /// 4. Wait up to [`CLOSE_TIMEOUT`] for the server to close its side (the reader then sees EOF),
    ///    then cut the socket and join every thread.
    pub fn close(mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.to_uploader.take();
        let _ = self.queue(&Frame::Goodbye);
        let _ = self.to_writer.send(Urgent::Finish);
        drop(std::mem::replace(&mut self.events, crossbeam_channel::never()));
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while !self.threads.iter().all(JoinHandle::is_finished) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        // Drop joins every thread after cutting the socket.
    }
}

impl Drop for Client {
    /// Cuts the connection (no goodbye if `close` was not called) and joins every thread.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.closer.close();
        self.to_uploader.take();
        let _ = self.to_writer.try_send(Urgent::Finish);
        drop(std::mem::replace(&mut self.events, crossbeam_channel::never()));
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Sends the hello and waits for the welcome.
fn handshake<S: Stream>(
    reader: &mut FrameReader<S>,
    config: &ClientConfig,
) -> Result<(String, String), ClientError> {
    let hs = |e: io::Error| ClientError::Handshake(e.to_string());
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        name: config.name.clone(),
        room: config.room.clone(),
        password: config.password.clone(),
        access: config.access.clone(),
        token: config.token.clone(),
    };
    write_frame(reader.get_mut(), &hello).map_err(hs)?;
    reader.get_mut().flush().map_err(hs)?;
    reader.get_ref().set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(hs)?;
    let answer = match reader.read_frame() {
        Ok(Some(Frame::Welcome { name, room })) => Ok((name, room)),
        Ok(Some(Frame::Error { code, message })) => Err(ClientError::Refused { code, message }),
        Ok(Some(other)) => {
            Err(ClientError::Handshake(format!("expected a welcome, got frame kind 0x{:02x}", other.kind())))
        }
        Ok(None) => Err(ClientError::Handshake("the server closed the connection".into())),
        Err(e) if e.is_timeout() => {
            Err(ClientError::Handshake(format!("no answer within {} s", HANDSHAKE_TIMEOUT.as_secs())))
        }
        Err(e) => Err(ClientError::Handshake(e.to_string())),
    };
    // From now on a read that waits longer than this means the relay (or the link) is gone.
    reader.get_ref().set_read_timeout(Some(config.idle_timeout)).map_err(hs)?;
    answer
}

/// Resolves `server` and tries each address in turn, like a browser would.
fn dial(server: &str, unsent: u32) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for addr in server.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                crate::wire::limit_unsent(&stream, unsent)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.into()).spawn(f)
}

/// The writer thread: the send queue and the bulk queue into the socket, urgent first.
fn write_loop<S: Stream>(
    stream: S,
    from_app: Receiver<Urgent>,
    from_bulk: Receiver<Vec<u8>>,
    options: outbox::Options,
    turn: &Mutex<()>,
) {
    let closer = stream.closer().ok();
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    let result = outbox::pump_sharing(&mut out, &from_app, from_bulk, &options, Some(turn))
        .and_then(|()| out.get_ref().shutdown_write());
    if let Err(e) = result {
        // The reader will see the broken socket too; cut it so it notices at once.
        log::debug!("client writer ended: {e}");
        if let Some(closer) = closer {
            closer.close();
        }
    }
}
