//! What a [`super::Client`] reports: the events of a connection, why it ended, and what can go
//! wrong when using it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::TrustError;
use crate::frame::{ErrorCode, FileInfo, FrameError};
use crate::rules::RuleError;

/// How a chat message reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Just sent.
    Live,
    /// Sent while we were offline; delivered at this login.
    Offline,
    /// Part of the room's recent history, shown on joining.
    History,
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From us to the relay.
    Up,
    /// From the relay to us.
    Down,
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Message `id` from `from`: to our room (`to` empty) or to us directly. `mark` says whether
    /// it is live, waited for us while we were away, or is the room's history.
    Chat { id: u64, from: String, to: String, sent_at_ms: u64, mark: Mark, text: String },
    /// Someone entered our room.
    Joined { name: String, room: String },
    /// Someone left our room.
    Left { name: String, room: String },
    /// Who is online in our room (after joining, and in answer to [`Client::who`](super::Client::who)).
    Online { room: String, names: Vec<String> },
    /// Our room is big: it has `online` people, and `joined` came and `left` went since the last
    /// count (both 0 in the count we get on joining). Big rooms announce arrivals and departures
    /// this way, at most once a second, instead of one by one; [`Client::who`](super::Client::who) still lists
    /// everyone.
    Crowd { room: String, online: u32, joined: u32, left: u32 },
    /// The server rejected one of our requests but kept the connection.
    Warning { code: ErrorCode, message: String },
    /// A file is waiting for us on the relay (`[Newfile]`).
    NewFile(FileInfo),
    /// A transfer moved on. `name` is the cleaned file name.
    Progress { direction: Direction, name: String, done: u64, total: u64 },
    /// The relay stored and verified a file we sent.
    Uploaded { name: String, size: u64 },
    /// File `file_id` was downloaded, verified and renamed into place at `path`.
    Downloaded { file_id: u64, name: String, path: PathBuf },
    /// A transfer failed; `reason` says why. Partial data is kept only where it can be resumed.
    TransferFailed { direction: Direction, name: String, reason: String },
    /// The relay stored our message `client_id` as `message_id`: it will reach everyone. Only with
    /// [`ClientConfig::receipts`](super::ClientConfig::receipts).
    Sent { client_id: u64, message_id: u64 },
    /// A file from `from` expired on the relay before we received it.
    FileExpired { from: String, name: String },
    /// A [`Client::receive_all`](super::Client::receive_all) is over.
    ReceiveFinished { received: usize, failed: usize },
    /// The connection is over. Always the last event.
    Disconnected(Disconnect),
}

/// A function the reader thread calls with each event it reports, *instead of* queueing it for
/// [`Client::events`]; whatever it hands back is queued as usual.
///
/// Why: the queue hands every event to another thread, and waking that thread is a cost on the
/// path of every message (tens of microseconds on a small VM). The terminal client prints chat
/// from here (`cli/client/chat.rs`). The price is that the hook runs on the connection's reader
/// thread, so:
///
/// - while it runs, nothing is read from the relay: it should be quick (printing a line is);
/// - it must never wait for anything that waits for this client's threads (closing or dropping
///   the [`Client`] joins them), or the two wait for each other forever;
/// - events of the upload thread (progress, upload verdicts) do not pass through it: they are
///   always queued.
///
/// [`Client::events`]: super::Client::events
/// [`Client`]: super::Client
#[derive(Clone)]
pub struct EventHook(pub Arc<dyn Fn(Event) -> Option<Event> + Send + Sync>);

impl fmt::Debug for EventHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventHook")
    }
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

impl Disconnect {
    /// False when reconnecting would be wrong or useless: the relay closed the connection with an
    /// error that coming back would only repeat ([`ErrorCode::retry_may_help`]). The worst case is
    /// LoggedInElsewhere: the name was taken over by a login elsewhere, and coming back would take
    /// it from that login in turn, in a loop. A link that broke, a relay that went away or said
    /// goodbye (a restart) are worth another try.
    pub fn may_reconnect(&self) -> bool {
        match self {
            Disconnect::ServerError { code, .. } => code.retry_may_help(),
            Disconnect::ServerGoodbye | Disconnect::Closed | Disconnect::Failed(_) => true,
        }
    }
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

/// What can go wrong when using a [`Client`](super::Client).
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
    /// A path we were asked to send cannot be sent (missing, a directory, unreadable).
    BadPath { path: PathBuf, reason: String },
    /// A receive is already running.
    Busy,
    /// The connection is already closed.
    Disconnected,
    /// The relay's certificate is not trusted (unknown, changed, or not the expected one).
    Trust(TrustError),
    /// The TLS handshake failed for another reason.
    Tls(String),
    /// A frame could not be encoded (a field past the protocol's limits): nothing was sent.
    Encode(FrameError),
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
            ClientError::BadPath { path, reason } => write!(f, "cannot send {}: {reason}", path.display()),
            ClientError::Busy => write!(f, "a receive is already in progress"),
            ClientError::Disconnected => write!(f, "not connected"),
            ClientError::Trust(e) => write!(f, "{e}"),
            ClientError::Tls(why) => write!(f, "TLS handshake failed: {why}"),
            ClientError::Encode(e) => write!(f, "cannot send: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Rule(e) => Some(e),
            ClientError::Connect { source, .. } => Some(source),
            ClientError::Trust(e) => Some(e),
            ClientError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RuleError> for ClientError {
    fn from(e: RuleError) -> Self {
        ClientError::Rule(e)
    }
}
