//! One client connection on the relay: a reader (this thread) and a writer thread.
//!
//! The life of a connection:
//!
//! 1. **Hello phase.** The connection thread owns the whole stream. The whole [`Frame::Hello`]
//!    must arrive within `hello_timeout` of the connection starting (a deadline, not a timeout
//!    per read: trickling a byte at a time does not extend it). It checks the version, the names
//!    and the length of every secret, then the credentials (`login.rs`), and on any problem writes
//!    an error frame itself and closes. No other thread exists yet.
//! 2. **Joined phase.** It clones the stream, starts the writer thread with the clone and a
//!    bounded queue, and hands the queue's sender to the hub. From now on only the writer writes.
//!    This thread only reads frames and turns them into [`ToHub`] events.
//! 3. **End.** When the reader sees EOF or an error it tells the hub `Closed`, then joins the
//!    writer. The writer ends when the hub drops its queue sender (after `Closed`, a goodbye, a
//!    protocol error, a slow-client disconnect or shutdown).
//!
//! Everything after the first byte is generic over [`Stream`]: the same code serves TLS
//! ([`TlsStream`]) and plaintext ([`TcpStream`]) connections ([`serve_tcp`]).

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::hub::{ConnId, Direct, Outgoing, ToHub};
use super::login::{self, Credentials, Door, HashPool};
use super::session::Session;
use super::throttle::SharedThrottle;
use super::transfer::DownloadSettings;
use super::ServerConfig;
use crate::frame::{ErrorCode, Frame, PROTOCOL_VERSION};
use crate::outbox::{self, Bulk, ToWriter};
use crate::rules;
use crate::tls::{TlsStream, TLS_HANDSHAKE_BYTE};
use crate::wire::{write_frame, FrameReader, ReadBudget, Socket, Stream};

/// Frames in a connection's bulk queue (file chunks of up to 256 KiB, and upload answers).
const BULK_QUEUE: usize = 4;

/// Who this connection is, for logs and for the hub.
pub(crate) struct ConnInfo {
    pub id: ConnId,
    pub addr: SocketAddr,
    /// The rate limits of this connection's address, shared with its other connections.
    pub throttle: SharedThrottle,
    /// What all connections' readers may hold for big frames, shared by every connection.
    pub reading: Arc<ReadBudget>,
}

/// Serves one TCP connection to its end. Runs on the connection's own thread.
///
/// TLS or plaintext is told apart by the first byte, on the same port: a TLS ClientHello starts
/// with 0x16 (a handshake record), a relaychat frame with 0 (the top byte of its length, which is
/// at most 1 MiB). The TLS handshake runs here, within the hello's deadline, before anything else
/// is read; then the connection goes on exactly like a plaintext one, over a [`TlsStream`].
/// Plaintext is served only with `--allow-plaintext`; without it the peer gets one plaintext
/// error frame saying so (which any relaychat client can read) and the connection closes.
///
/// `config` comes boxed so that it lives on the heap and not in this thread's stack, whose pages
/// stay with the thread for the whole connection (see `tuning::memory::release_unused_stack`).
pub(crate) fn serve_tcp(
    stream: TcpStream,
    info: ConnInfo,
    to_hub: Sender<ToHub>,
    pool: HashPool,
    config: Box<ServerConfig>,
    tls: Arc<rustls::ServerConfig>,
) {
    let deadline = Instant::now() + config.hello_timeout;
    // From here on the socket is shared, not duplicated: the hub's kill switch, the reader and
    // the writer hold one descriptor between them (see `wire::Socket`).
    let stream = Socket::new(stream);
    if !announce(&stream, &info, &to_hub) {
        return;
    }
    let addr = info.addr;
    match first_byte(&stream, deadline) {
        Ok(Some(TLS_HANDSHAKE_BYTE)) => match tls_handshake(stream, tls, deadline) {
            Ok(stream) => serve_announced(stream, &info, deadline, &to_hub, &pool, &config),
            Err(e) => {
                log::info!("{addr}: TLS handshake failed: {e}");
                let _ = to_hub.send(ToHub::Closed { id: info.id });
            }
        },
        Ok(Some(_)) if config.allow_plaintext => {
            serve_announced(stream, &info, deadline, &to_hub, &pool, &config)
        }
        Ok(Some(_)) => {
            log::info!("{addr}: refused: plaintext (this relay needs TLS)");
            let message =
                "this relay speaks only TLS: use a client with TLS (the default), or ask the relay's \
                           operator for --allow-plaintext";
            refuse(stream, ErrorCode::TlsRequired, message, &config);
            let _ = to_hub.send(ToHub::Closed { id: info.id });
        }
        Ok(None) => {
            log::info!("{addr}: closed before saying anything");
            let _ = to_hub.send(ToHub::Closed { id: info.id });
        }
        Err(e) => {
            log::info!("{addr}: nothing received in time: {e}");
            let why = format!("no hello within {} s", config.hello_timeout.as_secs_f64());
            refuse(stream, ErrorCode::HelloTimeout, &why, &config);
            let _ = to_hub.send(ToHub::Closed { id: info.id });
        }
    }
}

/// The TLS handshake, in a stack frame of its own (never inlined into the caller).
///
/// The handshake is the deepest thing a connection thread ever does (key exchange, signing,
/// a `rustls::ServerConnection` of over 1 KiB moved about by value), and it happens once. Done
/// in a function of its own, all of that lies *below* the frames the connection keeps for its
/// whole life, and [`crate::tuning::memory::release_unused_stack`] can give it back once the
/// hello is through. Inlined, it would widen `serve_tcp`'s own frame for good.
#[inline(never)]
fn tls_handshake(
    stream: Socket,
    tls: Arc<rustls::ServerConfig>,
    deadline: Instant,
) -> Result<TlsStream, String> {
    let session =
        rustls::ServerConnection::new(tls).map_err(|e| format!("cannot start a TLS session: {e}"))?;
    TlsStream::handshake(stream, session, deadline).map_err(|e| e.to_string())
}

/// The first byte the peer sent, left in the socket (peeked). `None`: it closed first.
fn first_byte(stream: &Socket, deadline: Instant) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the hello's deadline passed"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.peek(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes one plaintext error frame and closes, without waiting long for a peer that does not
/// read.
fn refuse(mut stream: Socket, code: ErrorCode, message: &str, config: &ServerConfig) {
    let _ = stream.set_write_timeout(Some(config.linger));
    let _ = write_frame(&mut stream, &Frame::Error { code, message: message.to_owned() });
    let _ = std::io::Write::flush(&mut stream);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Serves one connection over any [`Stream`] (plaintext; the fuzzing harness uses it with an
/// in-memory stream). Runs on the connection's own thread.
pub(crate) fn serve<S: Stream>(
    stream: S,
    info: ConnInfo,
    to_hub: Sender<ToHub>,
    pool: HashPool,
    config: ServerConfig,
) {
    // The hello's deadline starts with the connection, before anything else is done for it.
    let deadline = Instant::now() + config.hello_timeout;
    if announce(&stream, &info, &to_hub) {
        serve_announced(stream, &info, deadline, &to_hub, &pool, &config);
    }
}

/// Tells the hub about the connection, with the kill switch it uses at shutdown. False when the
/// hub is gone (the server is shutting down) or the stream cannot make a kill switch.
fn announce<S: Stream>(stream: &S, info: &ConnInfo, to_hub: &Sender<ToHub>) -> bool {
    let closer = match stream.closer() {
        Ok(closer) => closer,
        Err(e) => {
            log::warn!("{}: cannot set up connection: {e}", info.addr);
            return false;
        }
    };
    to_hub.send(ToHub::Connected { id: info.id, addr: info.addr, closer }).is_ok()
}

/// The hello, then the joined phase, then the end: the life of a connection the hub knows about.
fn serve_announced<S: Stream>(
    stream: S,
    info: &ConnInfo,
    deadline: Instant,
    to_hub: &Sender<ToHub>,
    pool: &HashPool,
    config: &ServerConfig,
) {
    let mut reader = FrameReader::new(stream);
    let writer = match hello_phase(&mut reader, info, deadline, to_hub, pool, config) {
        Some(joiner) => joined_phase(reader, info, joiner, to_hub, config),
        None => None,
    };
    // The hub forgets us and drops our queue's sender; only then can the writer finish.
    let _ = to_hub.send(ToHub::Closed { id: info.id });
    if let Some(writer) = writer {
        if writer.join().is_err() {
            log::error!("{}: writer thread panicked", info.addr);
        }
    }
}

/// Who passed the hello.
pub(crate) struct Joiner {
    pub name: String,
    pub room: String,
    /// True for an account holder, false for a guest.
    pub account: bool,
    /// SHA-256 of the hello's identity token, if it had one: a guest's resume secret (see
    /// "Taking a name back" in docs/PROTOCOL.md).
    pub token: Option<login::TokenHash>,
}

/// The largest frame accepted before the hello: a Hello's fields are at most a 128-byte name and
/// room, 1 KiB password and access, and a 128-byte token, with their lengths: under 3 KiB.
const MAX_HELLO_FRAME: usize = 4 * 1024;

/// Waits for a valid hello. On success returns the name and room; on failure tells the client
/// why (while we still own the whole stream) and returns `None`.
fn hello_phase<S: Stream>(
    reader: &mut FrameReader<S>,
    info: &ConnInfo,
    deadline: Instant,
    to_hub: &Sender<ToHub>,
    pool: &HashPool,
    config: &ServerConfig,
) -> Option<Joiner> {
    let addr = info.addr;
    // Until it has said who it is, a peer may send one small frame: the hello.
    reader.set_limit(MAX_HELLO_FRAME);
    let hello = reader.read_frame_by(deadline);
    reader.set_limit(crate::frame::MAX_FRAME_LEN);
    let refusal = match hello {
        Ok(Some(Frame::Hello { version, name, room, password, access, token })) => {
            let checked = check_hello(version, &name, &room)
                .and_then(|()| login::check_lengths(&password, &access, &token))
                .and_then(|()| password_allowed(&password, &info.throttle))
                .and_then(|()| {
                    let hello =
                        Credentials { name: &name, password: &password, access: &access, token: &token };
                    let required_access = config.access_password.as_deref();
                    let door = Door { ip: addr.ip(), required_access, to_hub, pool };
                    login::authenticate(&hello, &door)
                });
            match checked {
                Ok(account) => {
                    let token = (!token.is_empty()).then(|| login::token_hash(&token));
                    return Some(Joiner { name, room, account, token });
                }
                Err(refusal) => refusal,
            }
        }
        Ok(Some(other)) => {
            (ErrorCode::Protocol, format!("expected a hello frame first, got kind 0x{:02x}", other.kind()))
        }
        Ok(None) => {
            log::info!("{addr}: closed before saying hello");
            return None;
        }
        Err(e) if e.is_timeout() => {
            (ErrorCode::HelloTimeout, format!("no hello within {} s", config.hello_timeout.as_secs_f64()))
        }
        Err(e) => (ErrorCode::Protocol, e.to_string()),
    };
    let (code, message) = refusal;
    log::info!("{addr}: refused: {message}");
    // Best effort: the peer may already be gone. A short write timeout keeps a peer that does not
    // read from holding this thread.
    let _ = reader.get_ref().set_write_timeout(Some(config.linger));
    let _ = write_frame(reader.get_mut(), &Frame::Error { code, message });
    let _ = reader.get_mut().flush();
    None
}

/// A hello with a password costs an argon2 check on the shared hash pool; one address may start
/// only so many a second (see `throttle.rs`). Refused rather than delayed: a waiting hello would
/// hold a thread, and the client can simply try again.
fn password_allowed(password: &str, throttle: &SharedThrottle) -> Result<(), (ErrorCode, String)> {
    if password.is_empty() || throttle.lock().unwrap_or_else(|e| e.into_inner()).password_check() {
        return Ok(());
    }
    Err((
        ErrorCode::LoginBusy,
        "too many password logins from your address; try again in a few seconds".into(),
    ))
}

fn check_hello(version: u16, name: &str, room: &str) -> Result<(), (ErrorCode, String)> {
    if version != PROTOCOL_VERSION {
        return Err((
            ErrorCode::VersionMismatch,
            format!(
                "protocol version {version} is not supported; this relay speaks version {PROTOCOL_VERSION}"
            ),
        ));
    }
    rules::check_name(name).map_err(|e| (ErrorCode::BadName, e.to_string()))?;
    rules::check_room(room).map_err(|e| (ErrorCode::BadRoom, e.to_string()))?;
    Ok(())
}

/// Starts the writer, joins the hub, and reads frames until the connection ends. Returns the
/// writer's handle for `serve` to join.
fn joined_phase<S: Stream>(
    mut reader: FrameReader<S>,
    info: &ConnInfo,
    joiner: Joiner,
    to_hub: &Sender<ToHub>,
    config: &ServerConfig,
) -> Option<JoinHandle<()>> {
    let addr = info.addr;
    let id = info.id;
    // From here on a frame may be up to 1 MiB; what a reader holds for one past what chat needs
    // comes from the relay's shared budget (`wire::ReadBudget`).
    reader.share_budget(info.reading.clone());
    let writer_stream = match prepare_writer_stream(&reader, config) {
        Ok(stream) => stream,
        Err(e) => {
            log::warn!("{addr}: cannot set up the writer: {e}");
            return None;
        }
    };
    // Bounded: this queue is the buffer between the hub (fast) and this client's network (maybe
    // slow). The hub never blocks on it; see `hub/mod.rs` for what happens when it is full.
    let (to_client, from_hub) = bounded::<Outgoing>(config.client_queue);
    // Bounded and short: file chunks wait here, so a download holds at most this many in memory.
    // (A plaintext download queues file slices here instead, a few bytes each; see `transfer.rs`.)
    let (to_writer, from_conn) = bounded::<Bulk>(BULK_QUEUE);
    // The writer's turn at the socket, which the hub may take to write a small frame itself
    // while the writer is idle (`hub/direct.rs`); the hub looks at the bulk queue only to see
    // whether a file is on its way.
    let turn = Arc::new(Mutex::new(()));
    let (writer_turn, bulk_seen) = (turn.clone(), from_conn.clone());
    // The reader keeps `_reader_alive` until it returns; the writer watches the other end to know
    // when the client has closed its side (see `write_loop`).
    let (_reader_alive, reader_gone) = bounded::<()>(0);
    let linger = config.linger;
    let options = outbox::Options { spin: config.spin, heartbeat: None, piece: config.pacing.piece };
    let writer = thread::Builder::new().name(format!("conn-{id}-writer")).spawn(move || {
        let queues = Queues { from_hub, from_conn, turn: writer_turn };
        write_loop(writer_stream, queues, reader_gone, linger, options)
    });
    let writer = match writer {
        Ok(handle) => handle,
        Err(e) => {
            log::error!("{addr}: cannot start the writer thread: {e}");
            return None;
        }
    };
    // Whoever queues something for the writer wakes it (see `outbox`, "How a writer sleeps").
    let to_client = ToWriter::new(to_client, writer.thread().clone());
    let to_writer = ToWriter::new(to_writer, writer.thread().clone());
    let direct = reader.get_ref().write_now_handle().map(|out| Direct { turn, out, bulk: bulk_seen });
    let Joiner { name, room, account, token } = joiner;
    let hello = ToHub::Hello { id, name, room, account, token, to_client, direct };
    if to_hub.send(hello).is_ok() {
        let settings = DownloadSettings {
            chunk: config.chunk_size,
            corrupt_chunk: config.corrupt_download_chunk,
            zero_copy: S::SENDS_FILES_WITHOUT_COPY && config.sendfile,
        };
        // The handshake and the hello are over, and this thread now reads frames for as long as
        // the connection lasts: the stack pages they touched below this frame go back.
        crate::tuning::memory::release_unused_stack();
        Session::new(id, addr, to_hub.clone(), to_writer, settings, info.throttle.clone()).run(&mut reader);
    }
    // `_reader_alive` is dropped here, telling a lingering writer that the client has closed.
    Some(writer)
}

fn prepare_writer_stream<S: Stream>(reader: &FrameReader<S>, config: &ServerConfig) -> std::io::Result<S> {
    let stream = reader.get_ref();
    // A joined client that says nothing for this long is gone (its client pings every 20 s when
    // idle): the reader's next read fails, and the connection ends and frees the name.
    stream.set_read_timeout(Some(config.idle_timeout))?;
    // A write that cannot make progress for this long means the client stopped reading.
    stream.set_write_timeout(Some(config.stall_limit))?;
    stream.try_clone_stream()
}

/// What the writer thread writes from: the hub's queue, the connection's bulk queue, and the
/// turn it shares with the hub (see `hub/direct.rs`).
struct Queues {
    from_hub: Receiver<Outgoing>,
    from_conn: Receiver<Bulk>,
    turn: Arc<Mutex<()>>,
}

/// The writer thread: drains the hub's queue and the connection's bulk queue into the socket (see
/// [`crate::outbox`]) until the hub drops its sender.
///
/// When the queue closes, it flushes, half-closes the socket (TCP FIN: "nothing more from me") and
/// waits up to `linger` for the reader to finish, i.e. for the client to close its side. Then it
/// shuts the socket down completely, which also wakes a reader whose client never closes.
fn write_loop<S: Stream>(
    stream: S,
    queues: Queues,
    reader_gone: Receiver<()>,
    linger: Duration,
    options: outbox::Options,
) {
    let closer = stream.closer().ok();
    // Not a `BufWriter`: its 64 KiB would stay for the whole connection (see `outbox/batch.rs`).
    let mut out = outbox::Batched::new(stream);
    let Queues { from_hub, from_conn, turn } = queues;
    let result = outbox::pump_sharing(&mut out, &from_hub, from_conn, &options, Some(&turn))
        .and_then(|()| out.get_ref().shutdown_write());
    if let Err(e) = result {
        log::debug!("writer ended: {e}");
    } else {
        // Returns when the reader drops its end (client closed) or when linger runs out.
        let _ = reader_gone.recv_timeout(linger);
    }
    if let Some(closer) = closer {
        closer.close();
    }
}
