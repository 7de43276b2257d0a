//! The client library: one connection to the relay, used by the terminal client (and later the
//! window).
//!
//! ## Threads
//!
//! ```text
//!  your code ──send_text()──▶ send queue (bounded) ──▶ writer thread ──▶ socket
//!  your code ◀──events()───── event queue (bounded) ◀── reader thread ◀── socket
//! ```
//!
//! [`Client::connect`] does the handshake on the calling thread, then starts two threads:
//!
//! - the **writer** owns a clone of the socket and drains the *send queue*. This is the design
//!   card's crossbeam send queue: typing never waits for the network, and the network never waits
//!   for typing. It is bounded, so a program that sends faster than the link can carry is slowed
//!   down instead of filling memory.
//! - the **reader** owns the socket, decodes frames and turns them into [`Event`]s. The event queue
//!   is bounded too: if the program stops reading events, the reader stops reading the socket, and
//!   TCP pushes back on the relay (which will eventually drop a client that never reads).
//!
//! [`Client::close`] is the orderly way out: it queues a goodbye, lets the writer send everything
//! still queued, and joins both threads.

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::frame::{ErrorCode, Frame, PROTOCOL_VERSION};
use crate::rules::{self, RuleError};
use crate::wire::{write_frame, Closer, FrameReader, ReadError, Stream};

/// Frames the send queue holds before `send_text` blocks.
pub const SEND_QUEUE: usize = 256;
/// Events the event queue holds before the reader stops reading the socket.
pub const EVENT_QUEUE: usize = 1024;
/// How long to wait for the server's answer to our hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to try to reach the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Client::close`] waits for the server to close its side after our goodbye.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who we are, and where we want to be.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our user name; must pass [`rules::check_name`].
    pub name: String,
    /// The room to join; must pass [`rules::check_room`].
    pub room: String,
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Someone else in our room said something.
    Chat { from: String, sent_at_ms: u64, text: String },
    /// Someone entered our room.
    Joined { name: String, room: String },
    /// Someone left our room.
    Left { name: String, room: String },
    /// Who is online in our room (after joining, and in answer to [`Client::who`]).
    Online { room: String, names: Vec<String> },
    /// The server rejected one of our requests but kept the connection.
    Warning { code: ErrorCode, message: String },
    /// The connection is over. Always the last event.
    Disconnected(Disconnect),
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The server said goodbye (it is shutting down).
    ServerGoodbye,
    /// The server sent an error and closed.
    ServerError { code: ErrorCode, message: String },
    /// The server closed the connection without a word.
    Closed,
    /// The connection broke or the server sent something we cannot read.
    Failed(String),
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::ServerGoodbye => write!(f, "the server said goodbye (it is shutting down)"),
            Disconnect::ServerError { message, .. } => {
                write!(f, "the server closed the connection: {message}")
            }
            Disconnect::Closed => write!(f, "the server closed the connection"),
            Disconnect::Failed(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// What can go wrong when using a [`Client`].
#[derive(Debug)]
pub enum ClientError {
    /// Our own name, room or text breaks the rules; nothing was sent.
    Rule(RuleError),
    /// The server could not be reached.
    Connect { server: String, source: io::Error },
    /// The server refused our hello (name taken, bad version, ...).
    Refused { code: ErrorCode, message: String },
    /// The handshake failed: the connection broke or the server is not a relaychat relay.
    Handshake(String),
    /// The connection is already closed.
    Disconnected,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Rule(e) => write!(f, "{e}"),
            ClientError::Connect { server, source } => {
                write!(f, "cannot reach the relay at {server}: {source}")
            }
            ClientError::Refused { message, .. } => write!(f, "the relay refused us: {message}"),
            ClientError::Handshake(why) => write!(f, "handshake failed: {why}"),
            ClientError::Disconnected => write!(f, "not connected"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Rule(e) => Some(e),
            ClientError::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<RuleError> for ClientError {
    fn from(e: RuleError) -> Self {
        ClientError::Rule(e)
    }
}

/// A live connection to the relay.
pub struct Client {
    /// Our name and room as the server registered them.
    name: String,
    room: String,
    /// `Some` until `close` takes it: dropping it is how the writer learns to finish.
    to_writer: Option<Sender<Frame>>,
    events: Receiver<Event>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    closer: Closer,
}

impl Client {
    /// Connects over TCP to `server` (`HOST:PORT`) and joins.
    pub fn connect_tcp(server: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        rules::check_name(&config.name)?;
        rules::check_room(&config.room)?;
        let stream =
            dial(server).map_err(|source| ClientError::Connect { server: server.to_owned(), source })?;
        Client::connect(stream, config)
    }

    /// Joins over an already connected stream: sends the hello, waits for the welcome, then starts
    /// the reader and writer threads.
    pub fn connect<S: Stream>(stream: S, config: &ClientConfig) -> Result<Client, ClientError> {
        rules::check_name(&config.name)?;
        rules::check_room(&config.room)?;
        let hs = |e: io::Error| ClientError::Handshake(e.to_string());
        let mut reader = FrameReader::new(stream);
        let hello =
            Frame::Hello { version: PROTOCOL_VERSION, name: config.name.clone(), room: config.room.clone() };
        write_frame(reader.get_mut(), &hello).map_err(hs)?;
        reader.get_mut().flush().map_err(hs)?;
        reader.get_ref().set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(hs)?;
        let (name, room) = match reader.read_frame() {
            Ok(Some(Frame::Welcome { name, room })) => (name, room),
            Ok(Some(Frame::Error { code, message })) => return Err(ClientError::Refused { code, message }),
            Ok(Some(other)) => {
                return Err(ClientError::Handshake(format!(
                    "expected a welcome, got frame kind 0x{:02x}",
                    other.kind()
                )))
            }
            Ok(None) => return Err(ClientError::Handshake("the server closed the connection".into())),
            Err(e) if e.is_timeout() => {
                return Err(ClientError::Handshake(format!(
                    "no answer within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(ClientError::Handshake(e.to_string())),
        };
        reader.get_ref().set_read_timeout(None).map_err(hs)?;
        let closer = reader.get_ref().closer().map_err(hs)?;
        let write_half = reader.get_ref().try_clone_stream().map_err(hs)?;

        let (to_writer, from_app) = bounded(SEND_QUEUE);
        let (to_app, events) = bounded(EVENT_QUEUE);
        let writer = spawn("client-writer", move || write_loop(write_half, from_app)).map_err(hs)?;
        let reader = spawn("client-reader", move || read_loop(reader, to_app)).map_err(hs)?;
        Ok(Client {
            name,
            room,
            to_writer: Some(to_writer),
            events,
            writer: Some(writer),
            reader: Some(reader),
            closer,
        })
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
        rules::check_text(text)?;
        self.queue(Frame::Say { text: text.to_owned() })
    }

    /// Asks who is online; the answer arrives as [`Event::Online`].
    pub fn who(&self) -> Result<(), ClientError> {
        self.queue(Frame::Who)
    }

    fn queue(&self, frame: Frame) -> Result<(), ClientError> {
        let to_writer = self.to_writer.as_ref().ok_or(ClientError::Disconnected)?;
        to_writer.send(frame).map_err(|_| ClientError::Disconnected)
    }

    /// Leaves cleanly: everything already queued is sent, then a goodbye, then both threads are
    /// joined.
    ///
    /// ## Close sequence
    /// 1. Queue `Goodbye` and drop the send queue's sender. The writer sends all it holds, then the
    ///    goodbye, half-closes the socket and ends. We join it.
    /// 2. Drop the event receiver, so a reader blocked on a full event queue wakes up.
    /// 3. Wait up to [`CLOSE_TIMEOUT`] for the server to close its side (the reader then sees EOF),
    ///    then cut the socket and join the reader.
    pub fn close(mut self) {
        if let Some(to_writer) = self.to_writer.take() {
            let _ = to_writer.send(Frame::Goodbye);
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        drop(std::mem::replace(&mut self.events, crossbeam_channel::never()));
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + CLOSE_TIMEOUT;
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            self.closer.close();
            let _ = reader.join();
        }
    }
}

impl Drop for Client {
    /// A client dropped without [`Client::close`] cuts the connection at once (no goodbye; the
    /// relay sees the connection close) and still joins both threads.
    fn drop(&mut self) {
        self.closer.close();
        self.to_writer.take();
        drop(std::mem::replace(&mut self.events, crossbeam_channel::never()));
        for handle in [self.writer.take(), self.reader.take()].into_iter().flatten() {
            let _ = handle.join();
        }
    }
}

/// Resolves `server` and tries each address in turn, like a browser would.
fn dial(server: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for addr in server.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
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

/// The writer thread: the send queue into the socket, flushing whenever the queue is empty.
fn write_loop<S: Stream>(stream: S, from_app: Receiver<Frame>) {
    let closer = stream.closer().ok();
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    let result = (|| -> io::Result<()> {
        while let Ok(frame) = from_app.recv() {
            write_frame(&mut out, &frame)?;
            while let Ok(more) = from_app.try_recv() {
                write_frame(&mut out, &more)?;
            }
            out.flush()?;
        }
        out.get_ref().shutdown_write()
    })();
    if let Err(e) = result {
        // The reader will see the broken socket too; cut it so it notices at once.
        log::debug!("client writer ended: {e}");
        if let Some(closer) = closer {
            closer.close();
        }
    }
}

/// The reader thread: frames from the socket into events, ending with `Disconnected`.
fn read_loop<S: Stream>(mut reader: FrameReader<S>, to_app: Sender<Event>) {
    let end = loop {
        let event = match reader.read_frame() {
            Ok(Some(Frame::Chat { from, sent_at_ms, text })) => Event::Chat { from, sent_at_ms, text },
            Ok(Some(Frame::Joined { name, room })) => Event::Joined { name, room },
            Ok(Some(Frame::Left { name, room })) => Event::Left { name, room },
            Ok(Some(Frame::Online { room, names })) => Event::Online { room, names },
            Ok(Some(Frame::Error { code, message })) => match code {
                ErrorCode::BadText => Event::Warning { code, message },
                _ => break Disconnect::ServerError { code, message },
            },
            Ok(Some(Frame::Goodbye)) => break Disconnect::ServerGoodbye,
            Ok(Some(other)) => {
                break Disconnect::Failed(format!(
                    "unexpected frame kind 0x{:02x} from the server",
                    other.kind()
                ))
            }
            Ok(None) => break Disconnect::Closed,
            Err(ReadError::Io(e)) => break Disconnect::Failed(e.to_string()),
            Err(e) => break Disconnect::Failed(e.to_string()),
        };
        if to_app.send(event).is_err() {
            return; // the application dropped the client
        }
    };
    let _ = to_app.send(Event::Disconnected(end));
}
