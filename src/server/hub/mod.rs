//! The hub: the one thread that owns rooms, names and every client's outgoing queue.
//!
//! Connection threads never talk to each other. They send [`ToHub`] events into one bounded
//! channel, and the hub handles them one at a time. Because only the hub touches the peer map,
//! there are no locks, and everyone in a room sees events in the same order.
//!
//! ## A slow client never stalls the hub
//!
//! The hub must never block on a client, or one client that stops reading would freeze the whole
//! relay. So it only ever uses `try_send` on a client's queue. When that queue is full, the frame is
//! kept in a per-client *backlog* (order is preserved: nothing jumps the backlog) and retried on
//! every turn of the loop. A client is disconnected as too slow when its queue makes no progress
//! for `stall_limit`, or when the bytes queued and held back for it pass `max_queued_bytes`, or
//! when it has a backlog while all clients together hold more than `max_queued_total` (see
//! [`meter`]). The limits are in [`ServerConfig`]; a broadcast is encoded once and shared (`Arc`).
//!
//! ## One thread, one idea per file
//!
//! The hub is one thread with one owner of all its state (this file: [`Hub`], and `handle`, the
//! loop's one `match`, where each event is one call). The state is in three named parts:
//! *routing* (who is connected, who is in which room, frames held back), *records* (the store and
//! the caches in front of it) and the login *brake*. What the hub does with it is split by idea:
//!
//! - `presence.rs`: who is here: joining, taking a name over, leaving, the online list;
//! - `crowd.rs`: how a room hears about arrivals and departures: one by one, or in a big room
//!   counted and announced once a second;
//! - `delivery.rs`: getting frames to clients without blocking: queues, backlogs, cutting the
//!   stuck;
//! - `chat.rs`: messages: storing them in batches, receipts, offline delivery a page at a time;
//! - `files.rs`: who an upload is for, storing it, the lists of waiting and expired files;
//! - `brake.rs`: failed logins, per address and per account; `meter.rs`: bytes queued.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub(crate) mod brake;
mod chat;
mod crowd;
mod delivery;
mod direct;
mod files;
mod meter;
mod presence;

pub(crate) use direct::Direct;
use meter::Meter;
pub(crate) use meter::Outgoing;

use super::accept::address_key;
use super::login::{self, AccountAnswer, AccountQuery, Attempt, ClaimOutcome, Grant, TokenHash};
use super::store::{DownloadPlan, Refusal, Store, UploadPlan};
use super::ServerConfig;
use crate::frame::{self, ErrorCode, Frame};
use crate::outbox::ToWriter;
use crate::wire::Closer;

/// One encoded frame, shared by every client it goes to: a broadcast is encoded once.
pub(crate) type Bytes = Arc<[u8]>;

/// A connection's number, given by the accept thread. Names can be reused; ids are not.
pub(crate) type ConnId = u64;

/// Everything the hub hears about. Sent by the accept thread, connection threads and `run`.
pub(crate) enum ToHub {
    /// A TCP connection was accepted. `closer` lets the hub cut it at shutdown or when it is too slow.
    Connected { id: ConnId, addr: SocketAddr, closer: Closer },
    /// A valid hello arrived (version, name rules and credentials already checked by the
    /// connection thread). `account`: it proved it owns the account; `token`: SHA-256 of its
    /// identity token, a guest's resume secret. `to_client` is the sending half of the new
    /// writer thread's queue; `direct` the hub's own way into its socket, when the stream has
    /// one (see `direct.rs`).
    Hello {
        id: ConnId,
        name: String,
        room: String,
        account: bool,
        token: Option<TokenHash>,
        to_client: ToWriter<Outgoing>,
        direct: Option<Direct>,
    },
    /// Chat text from a joined client (already checked against the text rules), for its room
    /// (`to` empty) or one user. A non-zero `client_id` asks for a `Sent` receipt.
    Say { id: ConnId, client_id: u64, to: String, text: String },
    /// The client has the offline messages up to `message_id`.
    Seen { id: ConnId, message_id: u64 },
    /// The client leaves its room for good.
    Leave { id: ConnId },
    /// The client asked who is online.
    Who { id: ConnId },
    /// Tell this client about a mistake it made, and keep the connection.
    Warn { id: ConnId, code: ErrorCode, message: String },
    /// The client broke the protocol after joining: tell it why and disconnect it.
    Fail { id: ConnId, code: ErrorCode, message: String },
    /// The client said goodbye.
    Goodbye { id: ConnId },
    /// The connection thread is ending; forget this connection.
    Closed { id: ConnId },
    /// Start or resume an upload. The answer goes back on `reply`, because the connection thread
    /// must know where to write before it reads the next frame.
    BeginUpload {
        id: ConnId,
        key: String,
        name: String,
        size: u64,
        to: String,
        reply: Sender<Result<UploadPlan, Refusal>>,
    },
    /// The connection verified an upload's size and hash: store it and tell the recipients.
    CommitUpload { id: ConnId, upload_id: u64, sha256: [u8; 32] },
    /// The connection gave up on an upload: delete it and tell the client why.
    AbortUpload { id: ConnId, upload_id: u64, code: ErrorCode, message: String },
    /// The client asked which files wait for it.
    ListFiles { id: ConnId },
    /// The client wants a file; the plan (or the refusal) goes back on `reply`.
    Download { id: ConnId, file_id: u64, offset: u64, reply: Sender<Result<DownloadPlan, Refusal>> },
    /// The client has a file, verified.
    Received { id: ConnId, file_id: u64 },
    /// A login is being checked: what is stored for the name, and how long the brake says to
    /// wait first (see `login.rs`).
    Account { query: AccountQuery, reply: Sender<AccountAnswer> },
    /// Record an account's credentials: a new account, or a password or token added to one the
    /// connection proved it owns. `reply` says how it went.
    Claim { grant: Grant, reply: Sender<ClaimOutcome> },
    /// How a login from `ip` for `name` ended, for the brake (`hub/brake.rs`).
    LoginResult { ip: IpAddr, name: String, attempt: Attempt },
    /// Time to delete files older than the retention period (sent by the janitor thread).
    Expire,
    /// The server is stopping; see [`super::Server::run`].
    Shutdown,
}

/// A connection the hub knows about, joined or not.
struct Conn {
    addr: SocketAddr,
    closer: Closer,
    /// `Some` once the hello was accepted.
    peer: Option<Peer>,
}

/// A joined client.
struct Peer {
    name: String,
    /// What the name looks like (`login::skeleton`), computed once on joining.
    skeleton: String,
    room: String,
    /// An account holder (a member of rooms, gets offline messages), not a guest.
    account: bool,
    /// SHA-256 of the identity token it joined with: a guest's resume secret (see
    /// [`Hub::may_take_over`]).
    token: Option<TokenHash>,
    to_client: ToWriter<Outgoing>,
    /// Writes small frames straight into the socket while the writer is idle (`direct.rs`).
    direct: Option<Direct>,
    /// Frames waiting because `to_client` was full.
    backlog: VecDeque<Outgoing>,
    /// Bytes queued and held back for this client (and for everyone).
    meter: Arc<Meter>,
    /// When the queue last accepted a frame while a backlog existed.
    last_progress: Instant,
    /// Offline delivery still going on: the last message id sent so far (see `chat.rs`).
    catching_up: Option<u64>,
    /// For a guest: the client ids this session stored, and under which message ids (the last
    /// [`GUEST_RECEIPTS`]), so a resend within the session is recognised without storing a
    /// guest's ids (see `chat.rs`, `is_resend`).
    receipts: VecDeque<(u64, u64)>,
}

/// What a hello brings to [`Hub::join`].
struct Joining {
    name: String,
    room: String,
    account: bool,
    token: Option<TokenHash>,
    direct: Option<Direct>,
}

/// How many of its receipts a guest's session remembers.
pub(super) const GUEST_RECEIPTS: usize = 1024;

/// Names per `Online` frame. A name is at most 32 characters (128 bytes of UTF-8) plus its 4-byte
/// length, so a full page is about 130 KiB: far below the frame limit, whatever the room's size.
const NAMES_PER_FRAME: usize = 1024;
/// Files per `FileList` frame. One entry is at most about 400 bytes (id, two names, size, hash).
const FILES_PER_FRAME: usize = 512;

/// Splits a list into pages of at most `per_page`, each with its `more` flag. An empty list is
/// one empty page, so the client always gets an answer.
fn paged<T>(items: Vec<T>, per_page: usize) -> Vec<(Vec<T>, bool)> {
    let mut pages = Vec::new();
    let mut items = items.into_iter().peekable();
    loop {
        let page: Vec<T> = items.by_ref().take(per_page).collect();
        let more = items.peek().is_some();
        pages.push((page, more));
        if !more {
            return pages;
        }
    }
}

/// How often the hub retries backlogs while any exist and the last retry moved nothing (a client
/// that is not reading: waking often would only burn CPU until it is cut).
const BACKLOG_TICK: Duration = Duration::from_millis(5);
/// How often while the last retry moved frames: the writer is draining its queue, and each retry
/// refills it (`client_queue` frames at a time). With the 5 ms tick a burst to one client could
/// never go faster than 64 frames per 5 ms, about 13,000 a second.
const DRAINING_TICK: Duration = Duration::from_micros(100);

/// The hub's state, in three named parts; `config` and `events` are its settings and its inbox.
pub(crate) struct Hub {
    config: ServerConfig,
    events: Receiver<ToHub>,
    /// Who is connected and where frames go: the routing idea (`presence.rs`, `delivery.rs`).
    routing: Routing,
    /// What is kept: the store and the caches in front of it (`chat.rs`, `files.rs`).
    records: Records,
    /// Failed logins per address and per account (`brake.rs`).
    brake: brake::Brake,
}

/// Who is connected, who is in which room, and the frames held back for slow clients.
struct Routing {
    conns: HashMap<ConnId, Conn>,
    /// Online names, across all rooms: names are unique server-wide.
    names: HashMap<String, ConnId>,
    /// The skeleton of each online name (`login::skeleton`: what it looks like), and the name:
    /// how a login finds an online look-alike in one look-up.
    look_alikes: HashMap<String, String>,
    /// Room → members by name. A `BTreeMap` keeps the online list sorted for free.
    rooms: HashMap<String, BTreeMap<String, ConnId>>,
    /// Clients with frames held back: the only ones `retry_backlogs` needs to look at, so a
    /// thousand idle connections cost nothing per event.
    backlogged: BTreeSet<ConnId>,
    /// Whether the last `retry_backlogs` moved any frame: then the next comes soon (see
    /// [`DRAINING_TICK`]).
    backlog_moving: bool,
    /// Clients to disconnect as too slow at the end of this turn.
    too_slow: Vec<(ConnId, String)>,
    /// Bytes queued for all clients together (see [`meter`]).
    queued_total: Arc<AtomicUsize>,
    /// The big rooms, whose presence is counted (`crowd.rs`).
    crowds: crowd::Crowds,
    /// Each room's online list, encoded, from the last `Who` until someone comes or goes.
    online_pages: HashMap<String, Vec<Bytes>>,
}

/// The store, and what the hub remembers in front of it so that a message costs no look-up.
struct Records {
    store: Store,
    /// Messages delivered but not yet stored; see `chat.rs` (group commit).
    batch: Vec<chat::Queued>,
    /// The last message id given out.
    last_message_id: u64,
    /// Room members (account holders), loaded from the store on first use and kept current.
    members: HashMap<String, BTreeSet<String>>,
    /// Per sender, the highest client id seen: ids above it are new messages, no lookup needed.
    highest_client_id: HashMap<String, u64>,
    /// Messages waiting per recipient, counted on first use and kept current (see `chat.rs`).
    pending_counts: HashMap<String, u64>,
    /// Bytes of messages that may still be stored before the disk must be looked at again, and
    /// when it last was (see `chat.rs`, `disk_has_room`).
    disk_budget: (u64, Option<Instant>),
    /// Clients still being sent the messages that waited for them, a page at a time.
    catching_up: BTreeSet<ConnId>,
    /// Expired messages may be left to delete (a batch at a time: `files.rs`, `continue_expiry`),
    /// and when the last batch went.
    expiring: bool,
    expired_at: Instant,
}

impl Hub {
    pub(crate) fn new(config: ServerConfig, events: Receiver<ToHub>, store: Store) -> Hub {
        let brake = brake::Brake::new(config.login_backoff);
        let routing = Routing {
            conns: HashMap::new(),
            names: HashMap::new(),
            look_alikes: HashMap::new(),
            rooms: HashMap::new(),
            backlogged: BTreeSet::new(),
            backlog_moving: false,
            too_slow: Vec::new(),
            queued_total: Arc::new(AtomicUsize::new(0)),
            crowds: crowd::Crowds::default(),
            online_pages: HashMap::new(),
        };
        let records = Records {
            last_message_id: store.last_message_id(),
            store,
            batch: Vec::new(),
            members: HashMap::new(),
            highest_client_id: HashMap::new(),
            pending_counts: HashMap::new(),
            disk_budget: (0, None),
            catching_up: BTreeSet::new(),
            expiring: false,
            expired_at: Instant::now(),
        };
        Hub { config, events, routing, records, brake }
    }

    /// Handles events until [`ToHub::Shutdown`] (or until every sender is gone). Returns the closer
    /// of every connection still open, so `run` can cut the ones that do not end by themselves.
    pub(crate) fn run(mut self) -> Vec<Closer> {
        loop {
            let event = if let Some(wake_at) = self.wake_at() {
                match self.events.recv_deadline(wake_at) {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match crate::tuning::spin::recv(&self.events, self.config.spin) {
                    Ok(event) => Some(event),
                    Err(_) => break,
                }
            };
            if let Some(ToHub::Shutdown) = event {
                break;
            }
            if let Some(event) = event {
                // Anything other than a message first delivers the messages before it, so that
                // everyone sees events in the order the hub received them.
                if !matches!(event, ToHub::Say { .. }) {
                    self.flush_messages();
                }
                self.handle(event);
            }
            // Group commit: store every message received in this burst in one transaction, once
            // nothing else is waiting (or the batch is full), then deliver them.
            if !self.records.batch.is_empty()
                && (self.events.is_empty() || self.records.batch.len() >= chat::MAX_BATCH)
            {
                // Deliver before storing, in time too: the writers `say` just woke usually wait
                // for this very core (the kernel wakes a thread near its waker), and a commit
                // keeps it for tens of µs. Stepping aside once lets them write first (measured
                // with `perf sched`: a writer's wait for the CPU went from 87 to 38 µs at p99).
                std::thread::yield_now();
                self.flush_messages();
            }
            self.retry_backlogs();
            self.continue_catch_ups();
            self.continue_expiry();
            self.count_crowds();
            // Whoever the last two pushed over a limit is cut now, not at the next event.
            self.cut_too_slow();
        }
        self.flush_messages();
        self.say_goodbye_to_all()
    }

    /// When the loop must wake up even if no event comes: soon while frames are held back or
    /// offline messages are still going out, when a big room's counts are due, or never (`None`).
    fn wake_at(&self) -> Option<Instant> {
        let tick = if self.routing.backlog_moving { DRAINING_TICK } else { BACKLOG_TICK };
        if self.records.expiring {
            return Some(Instant::now()); // more expired messages to delete: don't sleep
        }
        let retry =
            (self.any_backlog() || !self.records.catching_up.is_empty()).then(|| Instant::now() + tick);
        match (retry, self.routing.crowds.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One event, one call: each idea's code lives in its own file (see the module docs).
    fn handle(&mut self, event: ToHub) {
        match event {
            ToHub::Connected { id, addr, closer } => self.connected(id, addr, closer),
            ToHub::Hello { id, name, room, account, token, to_client, direct } => {
                self.join(id, Joining { name, room, account, token, direct }, to_client)
            }
            ToHub::Say { id, client_id, to, text } => self.say(id, client_id, to, text),
            ToHub::Seen { id, message_id } => self.seen(id, message_id),
            ToHub::Leave { id } => self.leave_for_good(id),
            ToHub::Who { id } => self.who(id),
            ToHub::Warn { id, code, message } => self.send_to(id, &Frame::Error { code, message }),
            ToHub::Fail { id, code, message } => self.fail(id, code, message),
            ToHub::Goodbye { id } => self.leave(id, "said goodbye"),
            ToHub::Closed { id } => self.closed(id),
            ToHub::BeginUpload { id, key, name, size, to, reply } => {
                let _ = reply.send(self.begin_upload(id, &key, &name, size, &to));
            }
            ToHub::CommitUpload { id, upload_id, sha256 } => self.commit_upload(id, upload_id, sha256),
            ToHub::AbortUpload { id, upload_id, code, message } => {
                self.abort_upload(id, upload_id, code, message)
            }
            ToHub::ListFiles { id } => self.list_files(id),
            ToHub::Download { id, file_id, offset, reply } => {
                if let Some(plan) = self.plan_download(id, file_id, offset) {
                    let _ = reply.send(plan);
                }
            }
            ToHub::Received { id, file_id } => self.received(id, file_id),
            ToHub::Account { query, reply } => {
                let _ = reply.send(self.answer_login(query));
            }
            ToHub::Claim { grant, reply } => {
                let _ = reply.send(self.record_claim(grant));
            }
            ToHub::LoginResult { ip, name, attempt } => {
                self.brake.record(address_key(ip), &name, attempt, Instant::now())
            }
            ToHub::Expire => self.expire(),
            ToHub::Shutdown => {}
        }
    }

    /// The front door's questions (`login.rs` decides; the hub only looks things up and records).
    fn answer_login(&mut self, query: AccountQuery) -> AccountAnswer {
        login::answer(&self.records.store, &mut self.brake, &self.routing.look_alikes, &self.config, query)
    }

    fn record_claim(&mut self, grant: Grant) -> ClaimOutcome {
        login::record(&mut self.records.store, &self.routing.look_alikes, &self.config, grant)
    }

    fn peer(&self, id: ConnId) -> Option<&Peer> {
        self.routing.conns.get(&id)?.peer.as_ref()
    }

    fn peer_mut(&mut self, id: ConnId) -> Option<&mut Peer> {
        self.routing.conns.get_mut(&id)?.peer.as_mut()
    }
}

/// Why nothing can wait for `name`: the sentence a sender sees.
fn offline_stranger(name: &str, what: &str) -> String {
    format!(
        "not sent: {name:?} is not online and has no account on this relay, so {what} cannot wait for them \
         (things wait only for names someone owns); send it while they are online"
    )
}

/// Encodes a frame the hub built itself. Those frames are small by construction (names are at
/// most 32 characters, text was checked against the text limit), so encoding cannot fail; if it
/// ever did, the receiver gets an error frame instead of a panic.
fn encode(frame: &Frame) -> Bytes {
    match frame::encode_to_vec(frame) {
        Ok(bytes) => bytes.into(),
        Err(e) => {
            log::error!("internal: cannot encode {:?} frame: {e}", frame.kind());
            let fallback = Frame::Error { code: ErrorCode::Other(0), message: e.to_string() };
            frame::encode_to_vec(&fallback).unwrap_or_default().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FileInfo;

    #[test]
    fn lists_are_cut_into_pages_that_always_fit_a_frame() {
        let sizes =
            |pages: &[(Vec<u32>, bool)]| pages.iter().map(|(p, more)| (p.len(), *more)).collect::<Vec<_>>();
        assert_eq!(sizes(&paged(Vec::new(), 3)), vec![(0, false)], "an empty list is one empty page");
        assert_eq!(sizes(&paged((0..3).collect(), 3)), vec![(3, false)]);
        assert_eq!(sizes(&paged((0..7).collect(), 3)), vec![(3, true), (3, true), (1, false)]);
        // The largest page of the longest names and of the largest file entries fits a frame.
        let names = vec!["名".repeat(crate::rules::MAX_NAME_CHARS); NAMES_PER_FRAME];
        let online = Frame::Online { room: "r".repeat(crate::rules::MAX_NAME_CHARS), names, more: true };
        assert!(frame::encode_to_vec(&online).is_ok());
        let info = FileInfo {
            file_id: u64::MAX,
            from: "名".repeat(crate::rules::MAX_NAME_CHARS),
            name: "n".repeat(crate::filename::MAX_NAME_BYTES),
            size: u64::MAX,
            sha256: Some([0xff; 32]),
        };
        let list = Frame::FileList { files: vec![info; FILES_PER_FRAME], more: true };
        assert!(frame::encode_to_vec(&list).is_ok());
    }
}
