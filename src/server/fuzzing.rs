//! A test harness for the `relay_frames` fuzz target (`fuzz/fuzz_targets/relay_frames.rs`): one
//! connection's bytes, handled exactly as the relay handles a connection, without a socket.
//!
//! Not part of the relay's API (hence `#[doc(hidden)]`); it lives in the library only because the
//! fuzz target, a separate crate, cannot reach the relay's crate-private types otherwise.
//!
//! ## What one input goes through
//!
//! [`relay_frames`] plays a client that sends a valid hello (guest `fuzz` in room `lobby`) and then
//! the input's bytes, then closes. Those bytes are read by the relay's own connection code
//! (`conn::serve`: hello phase, the writer thread, `Session::run` with its `FrameReader`, uploads to
//! disk, the download thread) talking to a real `Hub` with a real store in a temporary directory.
//! Only the socket is replaced, by `MemStream`: reads come from the input, writes go to a buffer.
//! Then it checks that
//!
//! 1. nothing panicked, and the connection ended (a hang is a libFuzzer timeout),
//! 2. everything the relay wrote back is a sequence of whole, valid frames, and
//! 3. the relay still serves a fresh client: a new connection under the same name (so the old one
//!    must have been forgotten) gets a `Welcome`, and a `Sent` receipt for a chat line (so the hub
//!    and the store still work).
//!
//! A second guest, `watcher`, stays in `lobby` the whole time, so that broadcasts and room uploads
//! have someone to reach. Before they are sent, upload and file ids in the input are made relative
//! to the ids the relay gave out last, and an all-zero upload hash is replaced by the true one
//! (see `Ids`): otherwise a fuzzer could almost never finish an upload or start a download.
//!
//! ## What it leaves out, and what it simplifies
//!
//! - The socket itself: timeouts, partial writes, resets, `Closer` cutting a stuck connection
//!   (closers here cut a spare loopback socket, not the in-memory stream), and the accept loop with
//!   its caps. The hello is always the same guest hello, so login, passwords and the brake are not
//!   fuzzed.
//! - One hub serves one connection at a time (calls are serialised), so races between clients are
//!   not explored. The hub, with its store, is rebuilt every [`RESTART_EVERY`] inputs so that what
//!   inputs leave behind (stored messages, files, unfinished uploads) cannot grow without bound.
//!   An input's effect can depend on the inputs before it; a crash file found by a long run may
//!   need the inputs before it to reproduce (a fresh process replays it on a fresh relay).
//!
//! ## Internal API it depends on
//!
//! `conn::serve` and `conn::ConnInfo`, `login::HashPool::start`, `Hub::new` / `Hub::run`,
//! `ToHub::{Expire, Shutdown}`, `store::Store::open`, and the public [`Stream`] trait. A `Closer` can only be made from a
//! `TcpStream` today, which is why one loopback socket exists per process (see `spare_closer`).

use super::throttle::{Rates, Throttle};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::conn::{self, ConnInfo};
use super::hub::{Hub, ToHub};
use super::login::HashPool;
use super::store::{Store, StoreLimits};
use super::ServerConfig;
use crate::frame::{self, encode_to_vec, Frame};
use crate::wire::{Closer, ReadBudget, Stream};

/// Inputs served by one hub before it is shut down and a fresh one (with an empty store) started.
pub const RESTART_EVERY: u64 = 4096;

/// Inputs between two `Expire` events (retention is zero here, so each one empties the store).
const EXPIRE_EVERY: u64 = 256;

/// The name and room of the fuzzed client. The probe that follows each input reuses the name.
const NAME: &str = "fuzz";
const ROOM: &str = "lobby";

/// Handles `after_hello` as the bytes a client sends after a valid hello, then checks that the
/// relay is still healthy (see the module docs). Panics on any failure, which is what a fuzz
/// target wants. Returns the frames the relay wrote to the fuzzed client.
pub fn relay_frames(after_hello: &[u8]) -> Vec<Frame> {
    let mut relay = lock_relay();
    let relay = relay.get_or_insert_with(Relay::start);
    let mut input = hello(NAME);
    let downloads = relay.ids.rewrite(after_hello, &mut input);
    let reply = relay.connect(input, answers_to(downloads));
    let frames = match whole_frames(&reply) {
        Ok(frames) => frames,
        Err(why) => panic!("the relay wrote bytes that are not whole frames: {why}"),
    };
    relay.ids.learn(&frames);
    let first_from_hub = frames.iter().find(|f| !via_bulk_queue(f));
    assert!(
        matches!(first_from_hub, Some(Frame::Welcome { .. })),
        "the fuzzed client's valid hello was not welcomed: {first_from_hub:?}"
    );
    relay.probe();
    relay.served += 1;
    if relay.served.is_multiple_of(EXPIRE_EVERY) {
        let _ = relay.to_hub.send(ToHub::Expire);
    }
    if relay.served >= RESTART_EVERY {
        std::mem::replace(relay, Relay::start()).stop();
    }
    frames
}

/// Frames that a connection's own threads send on its bulk queue (a Pong, file traffic and upload
/// answers). The reader goes on reading as soon as it has told the hub about the hello, so its
/// answers to a client that does not wait for the Welcome can leave before the hub's Welcome
/// does (found by this fuzz target twice: first through the writer's `select!`, since replaced,
/// then with a Ping right after the hello). So they are skipped when checking that the `Welcome`
/// comes first.
fn via_bulk_queue(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Pong
            | Frame::UploadReady { .. }
            | Frame::UploadFailed { .. }
            | Frame::DownloadChunk { .. }
            | Frame::DownloadEnd { .. }
            | Frame::DownloadFailed { .. }
    )
}

/// Like a real client, the fuzzed one waits for the answers to its downloads before it closes:
/// closing at once would cancel them. An error frame, or the relay closing its side, ends the wait.
fn answers_to(downloads: usize) -> Then {
    if downloads == 0 {
        return Then::Eof;
    }
    let answer = |f: &Frame| matches!(f, Frame::DownloadEnd { .. } | Frame::DownloadFailed { .. });
    Then::WaitUntil(Box::new(move |out| {
        whole_frames(out).is_ok_and(|frames| {
            frames.iter().filter(|f| answer(f)).count() >= downloads
                || frames.iter().any(|f| matches!(f, Frame::Error { .. }))
        })
    }))
}

/// The relay shared by every call in this process. A panic while it was held (a finding) leaves
/// it usable for the next input; its state is whatever the panic left.
fn lock_relay() -> MutexGuard<'static, Option<Relay>> {
    static RELAY: Mutex<Option<Relay>> = Mutex::new(None);
    RELAY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One hub with its store, plus the watcher who stays in the room.
struct Relay {
    to_hub: Sender<ToHub>,
    hub: JoinHandle<Vec<Closer>>,
    /// The password-hash pool `serve` wants. A guest hello never uses it.
    pool: HashPool,
    hash_threads: Vec<JoinHandle<()>>,
    dir: PathBuf,
    config: ServerConfig,
    /// Dropping this ends the watcher's connection (its reads return end of file).
    release_watcher: Sender<()>,
    watcher: JoinHandle<()>,
    next_id: u64,
    served: u64,
    ids: Ids,
}

impl Relay {
    fn start() -> Relay {
        let dir = fresh_dir();
        let config = ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            // Small, so an input that makes many frames runs the hub's backlog path. Not tiny: each
            // turn of a backlog costs the hub's 5 ms tick, and inputs must stay fast.
            client_queue: 64,
            // A short history, so that the join of each connection queues a few frames, not 50.
            history: 8,
            linger: Duration::from_millis(100),
            spin: Duration::ZERO,
            data_dir: dir.clone(),
            // Small files, so a download costs little; the quota bounds the disk an input can use.
            limits: StoreLimits {
                max_file_size: 16 * 1024,
                quota: 256 * 1024,
                min_free: 0,
                ..StoreLimits::default()
            },
            // The token buckets run, but with bursts no input of libFuzzer's 4 KiB can exhaust:
            // an empty bucket makes the reader sleep, which would only slow the fuzzing down.
            msg_burst: 10_000,
            request_rate: 10_000,
            hash_threads: 1,
            chunk_size: 4096,
            retention: Duration::ZERO,
            ..ServerConfig::default()
        };
        let store = match Store::open(&dir, config.limits.clone()) {
            Ok(store) => store,
            Err(e) => panic!("fuzz harness: cannot open a store in {}: {e}", dir.display()),
        };
        let (pool, hash_threads) = match HashPool::start(config.hash_threads, config.hash_queue) {
            Ok(started) => started,
            Err(e) => panic!("fuzz harness: cannot start the hash pool: {e}"),
        };
        let (to_hub, events) = bounded(64);
        let hub = Hub::new(config.clone(), events, store);
        let hub = thread::spawn(move || hub.run());
        let (release_watcher, wait) = bounded::<()>(0);
        let (output, to_hub_w, pool_w, config_w) =
            (Output::new(4096), to_hub.clone(), pool.clone(), config.clone());
        let stream = MemStream::new(hello("watcher"), Then::WaitFor(wait), output.clone());
        let throttle = Throttle::shared(Rates::from_config(&config));
        let reading = Arc::new(ReadBudget::new(config.max_reading_total));
        let info = ConnInfo { id: 1, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)), throttle, reading };
        let watcher = thread::spawn(move || conn::serve(stream, info, to_hub_w, pool_w, config_w));
        let ids = Ids::default();
        let relay = Relay {
            to_hub,
            hub,
            pool,
            hash_threads,
            dir,
            config,
            release_watcher,
            watcher,
            next_id: 2,
            served: 0,
            ids,
        };
        relay.wait_for_welcome(&output);
        relay
    }

    fn wait_for_welcome(&self, output: &Output) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let bytes = output.bytes();
            if let Ok(Some((Frame::Welcome { .. }, _))) = frame::decode(&bytes) {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("fuzz harness: the watcher was not welcomed within 10 s");
    }

    /// Serves one connection whose client sends `input` and then closes; returns what the relay
    /// wrote to it. Returns when the connection has ended, as `serve` does on a real socket.
    fn connect(&mut self, input: Vec<u8>, then: Then) -> Vec<u8> {
        self.next_id += 1;
        let output = Output::new(usize::MAX);
        let stream = MemStream::new(input, then, output.clone());
        // Every connection comes "from" a different port, as it would on a real network.
        let port = (self.next_id % 60_000) as u16 + 1024;
        // A fresh set of buckets per input, as for a new address: one input never slows the next.
        let throttle = Throttle::shared(Rates::from_config(&self.config));
        let reading = Arc::new(ReadBudget::new(self.config.max_reading_total));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let info = ConnInfo { id: self.next_id, addr, throttle, reading };
        conn::serve(stream, info, self.to_hub.clone(), self.pool.clone(), self.config.clone());
        output.bytes()
    }

    /// A fresh client under the fuzzed client's name says one line, waits for its receipt (as a
    /// real client would) and closes. It must be welcomed and get the receipt.
    ///
    /// It must wait: the hub discards the frames it still holds back for a client that leaves, so
    /// a goodbye right after the line can lose the receipt when the client's queue was full.
    fn probe(&mut self) {
        let client_id = self.next_id + 1; // unique per connection, so never a harmless resend
        let mut input = hello(NAME);
        let say = Frame::Say { client_id, to: String::new(), text: "still there?".into() };
        input.extend(encode_to_vec(&say).unwrap_or_default());
        let receipt = move |f: &Frame| matches!(f, Frame::Sent { client_id: c, .. } if *c == client_id);
        let until = Then::WaitUntil(Box::new(move |out| {
            whole_frames(out).is_ok_and(|frames| frames.iter().any(receipt))
        }));
        let frames = whole_frames(&self.connect(input, until)).unwrap_or_default();
        assert!(
            matches!(frames.first(), Some(Frame::Welcome { .. })),
            "after this input the relay no longer welcomes a new client: {frames:?}"
        );
        assert!(
            frames.iter().any(receipt),
            "after this input the relay no longer stores messages: {frames:?}"
        );
    }

    /// Shuts the hub down as `Server::run` does, ends the watcher and deletes the data.
    fn stop(self) {
        let _ = self.to_hub.send(ToHub::Shutdown);
        drop(self.to_hub);
        let _ = self.hub.join();
        drop(self.release_watcher);
        let _ = self.watcher.join();
        drop(self.pool);
        for handle in self.hash_threads {
            let _ = handle.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Upload and file ids, as the fuzzer writes them and as the relay gives them out.
///
/// The relay numbers uploads and files upwards, for the life of a store, so an id that the input
/// could guess is almost always stale. So small ids in the input are relative to the highest id the
/// relay has announced so far: 1..=0x7fff count up from it (1 is the next new one), 0x8000..=0xffff
/// count down (earlier ones); anything else passes unchanged. And an `UploadEnd` whose hash is all
/// zeros gets the true SHA-256 of the chunks this input sent for that upload, so that uploads can
/// complete. Only frames before the first undecodable byte are rewritten; the rest passes as is.
#[derive(Default)]
struct Ids {
    upload: u64,
    file: u64,
}

impl Ids {
    /// Appends `input`, rewritten, to `out`; returns how many downloads it asks for.
    fn rewrite(&self, mut input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut downloads = 0;
        let mut hashes: std::collections::HashMap<u64, sha2::Sha256> = Default::default();
        while let Ok(Some((frame, used))) = frame::decode(input) {
            let frame = match frame {
                Frame::UploadChunk { upload_id, data } => {
                    let upload_id = relative(upload_id, self.upload);
                    sha2::Digest::update(hashes.entry(upload_id).or_default(), &data);
                    Frame::UploadChunk { upload_id, data }
                }
                Frame::UploadEnd { upload_id, sha256 } => {
                    let upload_id = relative(upload_id, self.upload);
                    let sha256 = match hashes.remove(&upload_id) {
                        Some(hasher) if sha256 == [0; 32] => sha2::Digest::finalize(hasher).into(),
                        _ => sha256,
                    };
                    Frame::UploadEnd { upload_id, sha256 }
                }
                Frame::Download { file_id, offset } => {
                    downloads += 1;
                    Frame::Download { file_id: relative(file_id, self.file), offset }
                }
                Frame::Received { file_id } => Frame::Received { file_id: relative(file_id, self.file) },
                other => other,
            };
            // The rewritten frame has the same size as the original, so it encodes.
            out.extend(encode_to_vec(&frame).unwrap_or_default());
            input = &input[used..];
        }
        out.extend_from_slice(input);
        downloads
    }

    /// Remembers the highest ids in what the relay wrote.
    fn learn(&mut self, frames: &[Frame]) {
        for frame in frames {
            match frame {
                Frame::UploadReady { upload_id, .. } | Frame::UploadFailed { upload_id, .. } => {
                    self.upload = self.upload.max(*upload_id);
                }
                Frame::UploadDone { upload_id, file_id } => {
                    self.upload = self.upload.max(*upload_id);
                    self.file = self.file.max(*file_id);
                }
                Frame::NewFile(info) => self.file = self.file.max(info.file_id),
                Frame::FileList { files, .. } => {
                    self.file = files.iter().map(|f| f.file_id).fold(self.file, u64::max);
                }
                _ => {}
            }
        }
    }
}

fn relative(id: u64, base: u64) -> u64 {
    match id {
        1..=0x7fff => base.saturating_add(id),
        0x8000..=0xffff => base.saturating_sub(id - 0x7fff),
        _ => id,
    }
}

/// The encoded guest hello for `name` in the fuzzed room.
fn hello(name: &str) -> Vec<u8> {
    encode_to_vec(&Frame::hello(name, ROOM)).unwrap_or_default()
}

/// Decodes `bytes` completely; an error names the first problem.
fn whole_frames(mut bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        match frame::decode(bytes) {
            Ok(Some((frame, used))) => {
                frames.push(frame);
                bytes = &bytes[used..];
            }
            Ok(None) => return Err(format!("{} bytes of an unfinished frame at the end", bytes.len())),
            Err(e) => return Err(format!("after {} good frames: {e}", frames.len())),
        }
    }
    Ok(frames)
}

/// A directory for one hub's store, in `/dev/shm` or else the system's temp dir. Directories left by earlier
/// processes that are gone (killed fuzz runs) are removed first.
fn fresh_dir() -> PathBuf {
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    // Memory-backed where there is one: SQLite's syncs on a real disk would cost most of the time.
    let shm = PathBuf::from("/dev/shm");
    let temp = if shm.is_dir() { shm } else { std::env::temp_dir() };
    let pid = std::process::id();
    if let Ok(entries) = std::fs::read_dir(&temp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name.strip_prefix("relaychat-fuzz-").and_then(|rest| rest.split('-').next());
            let gone = owner.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| !process_alive(p));
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let dir = temp.join(format!("relaychat-fuzz-{pid}-{generation}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
    // Signal 0 checks that the process exists without sending anything. EPERM: it exists.
    // SAFETY: kill(2) with signal 0 has no effect on the target; it only reads the process table.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A `Closer` for the hub's bookkeeping. Closers can only be made from a `TcpStream`, so the
/// process keeps one connected loopback pair just for this; cutting it affects no in-memory
/// connection.
fn spare_closer() -> io::Result<Closer> {
    static SPARE: OnceLock<io::Result<(TcpStream, TcpStream)>> = OnceLock::new();
    let pair = SPARE.get_or_init(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok((client, server))
    });
    match pair {
        Ok((client, _)) => Stream::closer(client),
        Err(e) => Err(io::Error::new(e.kind(), format!("no loopback socket for closers: {e}"))),
    }
}

/// What the relay wrote to one connection, shared by the stream's clones (the writer thread owns
/// one). Keeps at most `keep` bytes; the watcher needs only its first frames.
#[derive(Clone)]
struct Output {
    bytes: Arc<Mutex<Vec<u8>>>,
    keep: usize,
    /// Set when the writer half-closes: the relay will write nothing more.
    closed: Arc<AtomicBool>,
}

impl Output {
    fn new(keep: usize) -> Output {
        Output { bytes: Arc::default(), keep, closed: Arc::default() }
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// What a [`MemStream`]'s reads do once the client's bytes are used up.
enum Then {
    /// End of file at once: the client closed.
    Eof,
    /// Block until this channel's sender is dropped, then end of file.
    WaitFor(Receiver<()>),
    /// Block until what the relay wrote satisfies this, or the relay closes its side (or 10 s
    /// pass), then end of file.
    WaitUntil(Condition),
}

/// A test on everything the relay has written to a connection so far.
type Condition = Box<dyn Fn(&[u8]) -> bool + Send>;

/// The in-memory stand-in for a `TcpStream`: reads return the client's bytes, then do what
/// [`Then`] says. Writes are kept in [`Output`].
struct MemStream {
    input: io::Cursor<Vec<u8>>,
    then: Then,
    output: Output,
}

impl MemStream {
    fn new(input: Vec<u8>, then: Then, output: Output) -> MemStream {
        MemStream { input: io::Cursor::new(input), then, output }
    }
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if n == 0 && !buf.is_empty() {
            match std::mem::replace(&mut self.then, Then::Eof) {
                Then::Eof => {}
                Then::WaitFor(released) => {
                    let _ = released.recv(); // returns when the sender is dropped
                }
                Then::WaitUntil(done) => {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let closed = || self.output.closed.load(Ordering::SeqCst);
                    while !closed() && !done(&self.output.bytes()) && Instant::now() < deadline {
                        thread::sleep(Duration::from_micros(50));
                    }
                }
            }
        }
        Ok(n)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut out) = self.output.bytes.lock() {
            let room = self.output.keep.saturating_sub(out.len());
            out.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for MemStream {
    /// The clone is the writer's: it shares the output and reads nothing.
    fn try_clone_stream(&self) -> io::Result<Self> {
        Ok(MemStream::new(Vec::new(), Then::Eof, self.output.clone()))
    }
    fn closer(&self) -> io::Result<Closer> {
        spare_closer()
    }
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.output.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
