//! The loop inside every writer thread: two queues into one socket, urgent first.
//!
//! A connection carries two kinds of traffic. *Urgent* frames are small and someone is waiting for
//! them: chat, join notices, acknowledgements. *Bulk* frames are file chunks, up to 256 KiB each.
//! If both shared one FIFO queue, a line of chat typed during a 1 GiB download would wait behind
//! every chunk already queued. So each writer drains two bounded queues and always looks at the
//! urgent one first: a chat frame waits for at most the one chunk being written.
//!
//! The bulk queue is short (a few chunks), which is also what keeps memory flat during a transfer:
//! whoever produces chunks blocks until the socket has taken the previous ones.
//!
//! ## Chat never waits behind file data ([`Pacing`])
//!
//! Looking at the urgent queue first is not enough on a slow link. Two more places hold file
//! bytes in front of a chat line:
//!
//! - **The chunk being written.** A 256 KiB chunk takes 130 ms on a 16 Mbit/s link. So a chunk is
//!   written as several smaller chunk frames ([`Pacing::piece`], 64 KiB), and the urgent queue is
//!   looked at between them. Chunks carry no offset (the receiver appends them in order), so
//!   nobody can tell one 256 KiB chunk from four 64 KiB ones, and no copy is made: each piece
//!   goes out as its own 17-byte header plus a slice of the original buffer, in one `writev`.
//! - **The kernel's send buffer.** Linux grows a socket's send buffer to megabytes, and every byte
//!   in it is in front of the next chat line: on a 16 Mbit/s link, 1 MiB is half a second. The
//!   socket option `TCP_NOTSENT_LOWAT` ([`Pacing::unsent`], 128 KiB) makes a write wait while
//!   more than that is still unsent, so file data waits *here*, where chat can overtake it.
//!   128 KiB is still several milliseconds of a fast link, enough to keep it busy while this
//!   thread wakes up (the kernel's own advice for the option).
//!
//! ## Taking turns with the senders ([`pump_sharing`])
//!
//! Handing a frame to a sleeping writer thread costs a thread wake-up, tens of microseconds on a
//! small virtual machine, on the path of every chat line. So a client lets its caller write a
//! frame to the socket itself when nothing else is going on (`client/direct.rs`). Frames must
//! still leave in order, so the socket has a *turn* (a `Mutex<()>`): whoever writes holds it,
//! and the writer thread takes it *before* it takes anything from a queue and lets it go only
//! after it has written and flushed all it took. A caller that gets the turn while the urgent
//! queue is empty therefore knows that nothing is waiting or half-written, and may write its
//! frame now; otherwise it queues the frame as usual. The relay's hub takes the same turn to
//! write a small frame into an idle client's socket without waking its writer
//! (`server/hub/direct.rs`), with a write that never waits.
//!
//! ## How a writer sleeps: [`ToWriter`]
//!
//! A writer with nothing to write must sleep until something arrives on either queue. A
//! crossbeam channel can do that by itself (`recv`, `Select`), but before it sleeps it spins and
//! then yields the CPU a few times (`Backoff::snooze`), in case something arrives very soon. For a
//! handful of busy threads that is a good bet. For a relay with 5,000 writers, each woken to write
//! one chat line to a room, it is not: every one of them would yield four times on its way back
//! to sleep, and with thousands of threads ready to run each yield is a switch to another thread.
//! Profiles of a line sent to a room of 2,000 showed more of the relay's time spent yielding and
//! switching than writing.
//!
//! So a writer sleeps the plainest way there is, [`std::thread::park`], and whoever gives it
//! something wakes it with `unpark`: the queues' sending ends are [`ToWriter`]s, crossbeam
//! `Sender`s that remember their writer's thread and unpark it after each send, and when they are
//! dropped (so a closed queue is noticed too). An `unpark` that comes before the `park` is not
//! lost: the thread keeps one wake-up token, and its next `park` returns at once, after which the
//! writer looks at its queues again.
//! ## File data that never enters this process ([`Bulk::File`])
//!
//! On a plaintext connection the relay does not read a stored file to send it: its download
//! thread queues [`FileSlice`]s (an open file, an offset, a length), and this loop writes each as
//! a chunk header followed by the file's bytes, which the kernel moves from the page cache into
//! the socket itself (`sendfile`, see [`crate::wire::send_file_slice`]). The writer still owns the
//! socket alone: the download thread only says *what* to send. Pieces and pacing work the same as
//! for chunks in memory, and the receiver sees the same frames either way.
//!
//! The loop ends when the urgent queue's senders are all gone and it is empty (the relay's hub
//! says "finish up" by dropping its sender), or when [`Urgent::Finish`] arrives on it (the client
//! says it that way, because its reader thread holds a sender too, so its queue never closes by
//! itself). A bulk queue whose senders are gone is simply ignored from then on.

use std::fs::File;
use std::io::{self, BufWriter, IoSlice, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{never, Receiver, SendError, Sender, TryRecvError, TrySendError};

use crate::frame;
use crate::tuning::spin;
use crate::wire::Stream;

/// The sending end of one of a writer's queues: a bounded crossbeam [`Sender`] that wakes the
/// writer thread after each send, and when it is dropped (see the module docs, "How a writer
/// sleeps"). Make it with the writer's [`Thread`] once the writer is spawned, before anything is
/// sent: a plain `Sender` would leave the writer asleep.
pub struct ToWriter<T> {
    /// `None` only while being dropped: the queue must close before the writer is woken.
    queue: Option<Sender<T>>,
    writer: Thread,
}

impl<T> ToWriter<T> {
    /// `queue`'s receiving end belongs to `writer`, which runs [`pump`].
    pub fn new(queue: Sender<T>, writer: Thread) -> ToWriter<T> {
        ToWriter { queue: Some(queue), writer }
    }

    fn queue(&self) -> &Sender<T> {
        self.queue.as_ref().expect("a ToWriter's queue is only taken when it is dropped")
    }

    /// Queues `item` if there is room, without blocking, and wakes the writer.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.queue().try_send(item)?;
        self.writer.unpark();
        Ok(())
    }

    /// Queues `item`, waiting for room while the queue is full, and wakes the writer.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.queue().send(item)?;
        self.writer.unpark();
        Ok(())
    }

    /// Whether the queue is empty (the writer has taken everything).
    pub fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }
}

impl<T> Clone for ToWriter<T> {
    fn clone(&self) -> Self {
        ToWriter { queue: self.queue.clone(), writer: self.writer.clone() }
    }
}

impl<T> Drop for ToWriter<T> {
    fn drop(&mut self) {
        drop(self.queue.take()); // first close (if this was the last sender), then wake
        self.writer.unpark();
    }
}

impl<T> std::fmt::Debug for ToWriter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ToWriter")
    }
}

/// One thing to write.
enum Item<U> {
    Urgent(U),
    Bulk(Bulk),
}

/// What a bulk queue carries: file data, and answers that must stay in order with it.
#[derive(Debug)]
pub enum Bulk {
    /// An encoded frame: a file chunk read into memory, an upload answer, a Pong, ...
    Frame(Vec<u8>),
    /// A chunk frame whose data is still in a file (see the module docs).
    File(FileSlice),
}

/// Chunk frames of `kind` (`UploadChunk` or `DownloadChunk`) for transfer `id`, whose data is
/// `len` bytes of `file` starting at `offset`, at most `frame_data` bytes per frame. Cheap to
/// queue: the file is shared, not copied, so one slice can cover many chunks.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub kind: u8,
    pub id: u64,
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
    pub frame_data: usize,
}

/// Lets a queue of plain frames (the client's) feed [`pump`] unchanged.
impl From<Vec<u8>> for Bulk {
    fn from(bytes: Vec<u8>) -> Bulk {
        Bulk::Frame(bytes)
    }
}

/// What [`pump`] writes into: bytes, and a header followed by a slice of a file.
pub trait FileWrite: Write {
    /// Writes `header`, then `len` bytes of `file` from `offset`.
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()>;
}

/// A writer thread's buffered stream: what is buffered goes first, then the stream sends the
/// header and the slice its own way ([`Stream::write_file_slice`]: `sendfile` on plain TCP).
impl<S: Stream> FileWrite for BufWriter<S> {
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        self.flush()?;
        self.get_mut().write_file_slice(header, file, offset, len)
    }
}

/// In-memory output (tests): the slice is read and appended.
impl FileWrite for Vec<u8> {
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        self.extend_from_slice(header);
        crate::wire::copy_file_slice(file, offset, len, self)
    }
}

enum Polled<U> {
    Item(Item<U>),
    Empty,
    Finished,
}

/// What an urgent queue carries: frames to write and, for a queue that cannot simply be closed,
/// the order to finish.
pub trait UrgentItem {
    /// The bytes to write, or `None` for "finish: that was all".
    fn frame(&self) -> Option<&[u8]>;
}

/// The client's urgent queue: a frame, or the order to finish (see the module docs).
#[derive(Debug)]
pub enum Urgent {
    Frame(Vec<u8>),
    Finish,
}

impl UrgentItem for Urgent {
    fn frame(&self) -> Option<&[u8]> {
        match self {
            Urgent::Frame(bytes) => Some(bytes),
            Urgent::Finish => None,
        }
    }
}

/// Plain byte buffers are always frames (a queue of them ends by being closed).
impl UrgentItem for Vec<u8> {
    fn frame(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// How a writer paces file data so that chat overtakes it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// `TCP_NOTSENT_LOWAT`: bytes written but not yet sent that the kernel may hold for the
    /// socket before a write waits. 0 leaves the kernel's default (no limit).
    pub unsent: u32,
    /// File chunks go out as chunk frames of at most this many data bytes, with urgent frames
    /// between them. 0 writes each chunk whole.
    pub piece: usize,
}

impl Pacing {
    /// What the relay and the client use unless told otherwise.
    pub const DEFAULT: Pacing = Pacing { unsent: 128 * 1024, piece: 64 * 1024 };
    /// No pacing: whole chunks into an unlimited send buffer (how it was before; for comparison).
    pub const OFF: Pacing = Pacing { unsent: 0, piece: 0 };
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing::DEFAULT
    }
}

/// How a writer thread writes: see [`pump`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Poll the queues for this long before sleeping on them (see [`crate::tuning::spin`]); zero never polls.
    pub spin: Duration,
    /// Something to say after a quiet spell; `None` stays quiet.
    pub heartbeat: Option<Heartbeat>,
    /// Chunks larger than this go out in pieces ([`Pacing::piece`]; 0: whole).
    pub piece: usize,
}

/// What a writer says on a schedule: `frame` (an encoded Ping) every `every`, busy or not. The
/// relay answers each Ping with a Pong, so each side hears the other at least that often: while
/// idle (which keeps NATs on the way from forgetting the connection), and while the client is
/// busy *sending* a file, when the relay would otherwise say nothing until the upload is done
/// (see docs/PROTOCOL.md, "Heartbeat").
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub every: Duration,
    pub frame: Vec<u8>,
}

/// Writes from both queues until the urgent queue is closed and drained. Flushes `out` whenever
/// both queues are momentarily empty (so a burst becomes few system calls, and a lone frame
/// still leaves at once) and before returning.
pub fn pump<W: FileWrite, U: UrgentItem, B: Into<Bulk>>(
    out: &mut W,
    urgent: &Receiver<U>,
    bulk: Receiver<B>,
    options: &Options,
) -> io::Result<()> {
    pump_sharing(out, urgent, bulk, options, None)
}

/// [`pump`], taking `turn` (see the module docs) from before it takes anything from a queue
/// until it has flushed what it took; it never holds it while it sleeps on the queues.
pub fn pump_sharing<W: FileWrite, U: UrgentItem, B: Into<Bulk>>(
    out: &mut W,
    urgent: &Receiver<U>,
    bulk: Receiver<B>,
    options: &Options,
    turn: Option<&Mutex<()>>,
) -> io::Result<()> {
    let mut bulk = bulk;
    let mut beat = Beat::new(options.heartbeat.as_ref());
    // Held from before the first item is taken until everything taken is flushed, across items:
    // a frame in `out`'s buffer is "taken" too.
    let mut held = None;
    loop {
        if held.is_none() {
            held = turn.map(take_turn);
        }
        beat.write_if_due(out)?;
        let item = match poll(urgent, &mut bulk) {
            Polled::Item(item) => item,
            Polled::Finished => return out.flush(),
            Polled::Empty => {
                out.flush()?;
                held = None;
                // Back to the top for the item, turn first: a caller may have written meanwhile.
                wait(urgent, &bulk, options.spin, beat.due);
                continue;
            }
        };
        match item {
            Item::Urgent(item) => match item.frame() {
                Some(bytes) => out.write_all(bytes)?,
                // `poll` never hands out a Finish; kept total for the type's sake.
                None => return out.flush(),
            },
            Item::Bulk(bulk) => {
                if let Between::Finish = write_bulk(out, bulk, urgent, options.piece, &mut beat)? {
                    return out.flush();
                }
            }
        }
    }
}

/// When the next heartbeat is due, if the writer has one.
struct Beat<'a> {
    heartbeat: Option<&'a Heartbeat>,
    due: Option<Instant>,
}

impl<'a> Beat<'a> {
    fn new(heartbeat: Option<&'a Heartbeat>) -> Beat<'a> {
        Beat { heartbeat, due: heartbeat.map(|beat| Instant::now() + beat.every) }
    }

    fn write_if_due<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        if let (Some(beat), Some(due)) = (self.heartbeat, self.due) {
            if Instant::now() >= due {
                out.write_all(&beat.frame)?;
                self.due = Some(Instant::now() + beat.every);
            }
        }
        Ok(())
    }
}

/// What the urgent queue said while a chunk was going out in pieces.
enum Between {
    Nothing,
    /// It closed (or sent the empty "finish" buffer): stop after the piece just written.
    Finish,
}

/// Writes one bulk item. A file chunk with more than `piece` data bytes goes out as several
/// chunk frames, and urgent frames queued meanwhile are written between them.
fn write_bulk<W: FileWrite, U: UrgentItem>(
    out: &mut W,
    bulk: Bulk,
    urgent: &Receiver<U>,
    piece: usize,
    beat: &mut Beat<'_>,
) -> io::Result<Between> {
    let bytes = match bulk {
        Bulk::Frame(bytes) => bytes,
        Bulk::File(slice) => return write_file_slice(out, &slice, urgent, piece, beat),
    };
    let parts = frame::chunk_parts(&bytes).filter(|(_, _, data)| piece > 0 && data.len() > piece);
    let Some((kind, id, data)) = parts else {
        out.write_all(&bytes)?;
        return Ok(Between::Nothing);
    };
    let mut pieces = data.chunks(piece).peekable();
    while let Some(data) = pieces.next() {
        let header = frame::chunk_header(kind, id, data.len()).map_err(io::Error::other)?;
        write_all_vectored(out, &mut [IoSlice::new(&header), IoSlice::new(data)])?;
        if pieces.peek().is_none() {
            break;
        }
        if let Between::Finish = between_pieces(out, urgent, beat)? {
            return Ok(Between::Finish);
        }
    }
    Ok(Between::Nothing)
}

/// Writes chunks whose data is in a file, in pieces like [`write_bulk`]. Once a piece's header
/// is out, its data must follow: a file that turns out shorter fails the whole connection
/// (the receiver could not tell where the frame ends otherwise).
fn write_file_slice<W: FileWrite, U: UrgentItem>(
    out: &mut W,
    slice: &FileSlice,
    urgent: &Receiver<U>,
    piece: usize,
    beat: &mut Beat<'_>,
) -> io::Result<Between> {
    let frame_data = slice.frame_data.clamp(1, frame::MAX_CHUNK_DATA);
    let piece = if piece == 0 { frame_data } else { piece.min(frame_data) };
    let (mut at, end) = (slice.offset, slice.offset + slice.len);
    while at < end {
        let len = piece.min(usize::try_from(end - at).unwrap_or(usize::MAX));
        let header = frame::chunk_header(slice.kind, slice.id, len).map_err(io::Error::other)?;
        out.write_file_slice(&header, &slice.file, at, len)?;
        at += len as u64;
        if at < end {
            if let Between::Finish = between_pieces(out, urgent, beat)? {
                return Ok(Between::Finish);
            }
        }
    }
    Ok(Between::Nothing)
}

/// Between two pieces of a chunk: the point of the pieces. Whatever chat is waiting goes now,
/// not after the chunk. (So does a heartbeat that fell due: on a very slow link one chunk can
/// take longer than the heartbeat's period.)
fn between_pieces<W: Write, U: UrgentItem>(
    out: &mut W,
    urgent: &Receiver<U>,
    beat: &mut Beat<'_>,
) -> io::Result<Between> {
    beat.write_if_due(out)?;
    loop {
        match urgent.try_recv() {
            Ok(item) => match item.frame() {
                Some(bytes) => out.write_all(bytes)?,
                None => return Ok(Between::Finish),
            },
            Err(TryRecvError::Disconnected) => return Ok(Between::Finish),
            Err(TryRecvError::Empty) => return Ok(Between::Nothing),
        }
    }
}

/// `write_all` for several buffers at once: one `writev` system call when the socket takes it
/// all, which is what lets a piece's header and data leave without being copied together.
fn write_all_vectored<W: Write>(out: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One look at both queues, urgent first.
fn poll<U: UrgentItem, B: Into<Bulk>>(urgent: &Receiver<U>, bulk: &mut Receiver<B>) -> Polled<U> {
    match urgent.try_recv() {
        Ok(item) if item.frame().is_none() => return Polled::Finished,
        Ok(item) => return Polled::Item(Item::Urgent(item)),
        Err(TryRecvError::Disconnected) => return Polled::Finished,
        Err(TryRecvError::Empty) => {}
    }
    match bulk.try_recv() {
        Ok(item) => Polled::Item(Item::Bulk(item.into())),
        Err(TryRecvError::Disconnected) => {
            *bulk = never();
            Polled::Empty
        }
        Err(TryRecvError::Empty) => Polled::Empty,
    }
}

/// Takes the turn to write. A thread that panicked while holding it left nothing half-done that
/// matters here (the connection is over either way), so a poisoned turn is simply taken.
fn take_turn(turn: &Mutex<()>) -> MutexGuard<'_, ()> {
    turn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until either queue has something, or a sender wakes us (an item, or a queue closing:
/// see "How a writer sleeps"), or `beat_due` comes: polls for `spin` (see
/// [`crate::tuning::spin`]), then sleeps in [`thread::park`]. It takes nothing and may return
/// with nothing new (a harmless extra look): the caller takes the item, urgent first, once it
/// holds the turn. (`select!` would *take* from whichever queue it happened to pick when both
/// were ready, at random, and a file chunk could then overtake a chat frame queued before it: the
/// fuzzer found a relay's welcome overtaken by an upload answer this way.) The queues are looked
/// at with `is_empty`, not crossbeam's `Select::try_ready`, which spins and yields before it
/// answers "nothing".
fn wait<U, B>(urgent: &Receiver<U>, bulk: &Receiver<B>, spin: Duration, beat_due: Option<Instant>) {
    let has_work = || !urgent.is_empty() || !bulk.is_empty();
    if spin::poll_for(spin, || has_work().then_some(())).is_some() || has_work() {
        return;
    }
    match beat_due {
        None => thread::park(),
        Some(due) => {
            let now = Instant::now();
            if now < due {
                thread::park_timeout(due - now); // past it, the top of the loop writes the beat
            }
        }
    }
}

mod batch;
pub(crate) use batch::Batched;

#[cfg(test)]
mod tests;
