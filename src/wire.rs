//! The thin I/O layer around [`crate::frame`]: read frames from, and write frames to, any byte
//! stream.
//!
//! Everything here is generic over [`std::io::Read`] / [`std::io::Write`] (and the small [`Stream`]
//! trait for the extra things a connection needs), so the same server and client code will run
//! over a TLS stream later without a rewrite: only a new `impl Stream` is needed.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{self, Frame, FrameError};

mod budget;
mod now;
pub use budget::ReadBudget;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use now::send_now;
pub use now::{WriteNow, Written};

/// A bidirectional byte stream that a connection can be built on.
///
/// A connection has one reader thread and one writer thread, so it needs a second handle to the
/// same stream ([`Stream::try_clone_stream`]), and a way for a third party to cut it off
/// ([`Stream::closer`]), which is how a stalled thread is woken up at shutdown.
pub trait Stream: Read + Write + Send + Sized + 'static {
    /// A second handle to the same underlying stream, for the writer thread.
    fn try_clone_stream(&self) -> io::Result<Self>;
    /// A handle that can shut the stream down from any thread.
    fn closer(&self) -> io::Result<Closer>;
    /// Sets (or clears) the read timeout; a timed-out read fails with `WouldBlock`/`TimedOut`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Sets (or clears) the write timeout.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Half-closes the stream: "I will send no more" (TCP FIN). The peer reads EOF.
    fn shutdown_write(&self) -> io::Result<()>;

    /// True when [`Stream::write_file_slice`] hands file bytes to the kernel without copying
    /// them through this process (`sendfile`). Then it pays to send a stored file as a slice of
    /// the file instead of reading it into memory first; over TLS it never does, because the
    /// bytes must pass through the cipher here anyway.
    const SENDS_FILES_WITHOUT_COPY: bool = false;

    /// Writes `header`, then `len` bytes of `file` from `offset` (a chunk frame whose data stays
    /// in the file). This portable version reads the slice through a buffer and writes it; a
    /// plain TCP stream on Linux overrides it with `sendfile` (see [`send_file_slice`]).
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        self.write_all(header)?;
        copy_file_slice(file, offset, len, self)
    }

    /// A handle that writes into this stream without ever waiting ([`WriteNow`]), for the relay's
    /// hub (`server/hub/direct.rs`); `None` where the stream has no such way (then the hub always
    /// queues for the writer thread, as it did before).
    fn write_now_handle(&self) -> Option<Box<dyn WriteNow>> {
        None
    }
}

/// Copies `len` bytes of `file` from `offset` into `out`, through a buffer. Reads with an explicit
/// offset (`pread`), so the file's own position is never used and one open file can be shared.
pub fn copy_file_slice<W: Write + ?Sized>(
    file: &File,
    offset: u64,
    len: usize,
    out: &mut W,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(64 * 1024)];
    let (mut at, end) = (offset, offset + len as u64);
    while at < end {
        let want = buf.len().min(usize::try_from(end - at).unwrap_or(usize::MAX));
        let n = read_at(file, &mut buf[..want], at)?;
        if n == 0 {
            return Err(file_ended());
        }
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

fn file_ended() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before the slice did")
}

/// `header`, then a slice of `file`, into a TCP socket, without the file's bytes entering this
/// process: `sendfile(2)` has the kernel take them from the page cache straight into the socket.
///
/// Why it matters: a download otherwise copies every byte twice on the relay (file into a
/// buffer, buffer into the socket) and both copies compete for the same CPUs as everything
/// else. The header goes first with `MSG_MORE` ("more is coming"), so it leaves in the same
/// packet as the data that follows instead of as a 17-byte packet of its own.
///
/// The socket's write timeout still applies: a `sendfile` that cannot make progress for that
/// long fails with `WouldBlock`, like a `write` would.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn send_file_slice(
    socket: &TcpStream,
    header: &[u8],
    file: &File,
    offset: u64,
    len: usize,
) -> io::Result<()> {
    use rustix::net::{send, SendFlags};
    let mut rest = header;
    while !rest.is_empty() {
        match send(socket, rest, SendFlags::MORE | SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (mut at, end) = (offset, offset + len as u64);
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX);
        // `sendfile` advances `at` by what it sent; the file's own position is left alone.
        match rustix::fs::sendfile(socket, file, Some(&mut at), want) {
            Ok(0) => return Err(file_ended()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Stream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn closer(&self) -> io::Result<Closer> {
        let clone = self.try_clone()?;
        Ok(Closer(Box::new(move || {
            // Errors are ignored on purpose: the stream may already be closed, which is the goal.
            let _ = clone.shutdown(Shutdown::Both);
        })))
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    const SENDS_FILES_WITHOUT_COPY: bool = cfg!(any(target_os = "linux", target_os = "android"));

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        send_file_slice(self, header, file, offset, len)
    }
}

/// One TCP socket shared by the threads of its connection: the reader, the writer and the
/// kill switch each hold an `Arc` of the same socket, not a copy of its file descriptor.
///
/// `TcpStream::try_clone` would work too, but each clone is another descriptor (a `dup`), and a
/// relay holding 10,000 connections would need 40,000 of them where 10,000 do. The kernel's
/// socket is the same either way: reading from one thread and writing from another is what a
/// socket is for (`&TcpStream` implements both `Read` and `Write`), and options such as timeouts
/// belong to the socket, not to a handle.
#[derive(Clone, Debug)]
pub struct Socket(std::sync::Arc<TcpStream>);

impl Socket {
    pub fn new(stream: TcpStream) -> Socket {
        Socket(std::sync::Arc::new(stream))
    }
}

impl From<TcpStream> for Socket {
    fn from(stream: TcpStream) -> Socket {
        Socket::new(stream)
    }
}

impl std::ops::Deref for Socket {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl Stream for Socket {
    fn try_clone_stream(&self) -> io::Result<Self> {
        Ok(self.clone())
    }
    fn closer(&self) -> io::Result<Closer> {
        let socket = self.0.clone();
        Ok(Closer(Box::new(move || {
            // Errors are ignored on purpose: the stream may already be closed, which is the goal.
            let _ = socket.shutdown(Shutdown::Both);
        })))
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_write_timeout(timeout)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.0.shutdown(Shutdown::Write)
    }

    // The relay's plaintext downloads go out by `sendfile` through the shared socket, exactly as
    // through a `TcpStream` of its own.
    const SENDS_FILES_WITHOUT_COPY: bool = cfg!(any(target_os = "linux", target_os = "android"));

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        send_file_slice(&self.0, header, file, offset, len)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn write_now_handle(&self) -> Option<Box<dyn WriteNow>> {
        Some(Box::new(self.clone()))
    }
}

/// A kill switch for one stream. Calling [`Closer::close`] makes every blocked `read` on the stream
/// return EOF and every blocked `write` fail, so the threads that own the stream wake up and end.
///
/// Holding a `Closer` does not mean owning the stream: the only thing it can do is close it.
pub struct Closer(Box<dyn Fn() + Send + Sync>);

impl Closer {
    /// Shuts the stream down in both directions. Safe to call more than once.
    pub fn close(&self) {
        (self.0)()
    }
}

impl fmt::Debug for Closer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closer")
    }
}

/// Why [`FrameReader::read_frame`] failed.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed (reset, timeout, ...).
    Io(io::Error),
    /// The bytes are not valid protocol.
    Frame(FrameError),
    /// The peer closed the stream in the middle of a frame, `have` bytes into it.
    TruncatedAtEof { have: usize },
    /// A frame of `len` bytes is arriving, and the budget that every reader of the relay shares
    /// for big frames is spent ([`ReadBudget`]): the reader did not grow its buffer for it.
    NoRoom { len: usize },
}

impl ReadError {
    /// True when the error is a read timeout (`SO_RCVTIMEO` expired).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReadError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Frame(e) => write!(f, "bad frame: {e}"),
            ReadError::TruncatedAtEof { have } => {
                write!(f, "connection closed in the middle of a frame ({have} bytes into it)")
            }
            ReadError::NoRoom { len } => {
                write!(
                    f,
                    "no room for a frame of {len} bytes now: the relay's memory for big frames is in use"
                )
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::Frame(e) => Some(e),
            ReadError::TruncatedAtEof { .. } | ReadError::NoRoom { .. } => None,
        }
    }
}

/// How much to ask the kernel for in one `read`, at most. Big enough that a burst of small chat
/// frames arrives in one system call.
const READ_CHUNK: usize = 64 * 1024;
/// How much a reader asks for at first. It doubles each time a read fills the buffer (more was
/// waiting), up to [`READ_CHUNK`]: a quiet connection keeps 1 KiB (a chat frame is a few hundred
/// bytes; every KiB here is 10 MiB for 10,000 idle connections), a busy one gets big reads, and
/// one that goes quiet again goes back to 1 KiB.
const FIRST_READ: usize = 1024;
/// How long after its last burst a connection counts as quiet: a buffer that grew for the burst
/// is let go at its next read (or, for the TLS writer's buffer, its next write) after that. (A
/// reader blocked in `read` still holds its buffer; the client's ping every 20 s is what comes
/// next on an idle connection.) Not sooner: in the middle of a file a read can come back short now and
/// then, and shrinking there would make the buffer grow again, a reallocation at a time.
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(1);

/// When a buffer was last needed at its grown size: the frame reader, the TLS reader and the TLS
/// writer each keep one, and let their buffer go once the bursts are over (see [`QUIET_AFTER`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bursts {
    last: Instant,
}

impl Bursts {
    /// Starts as if a burst had just ended, so a new connection keeps what it was given for a
    /// second (its hello and the welcome after it come in that time).
    pub(crate) fn new() -> Bursts {
        Bursts { last: Instant::now() }
    }

    /// A read or write just needed more than the small buffer.
    pub(crate) fn seen(&mut self) {
        self.last = Instant::now();
    }

    /// Whether nothing big has come for [`QUIET_AFTER`].
    pub(crate) fn over(&self) -> bool {
        self.last.elapsed() >= QUIET_AFTER
    }
}

/// Reads whole frames from a byte stream, buffering partial ones.
///
/// The buffer holds at most one frame plus one read's worth of bytes: it never grows past
/// `4 + MAX_FRAME_LEN + READ_CHUNK`, because the length prefix is checked before the payload is
/// awaited.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes `buf[start..end]` are received but not yet decoded.
    start: usize,
    end: usize,
    /// The room kept free for one read: [`FIRST_READ`], doubling up to [`READ_CHUNK`].
    read_size: usize,
    /// Reads that brought more than a chat frame's worth: see [`QUIET_AFTER`].
    bursts: Bursts,
    /// The size of the last frame decoded: while big frames follow each other (a file), the
    /// buffer keeps its size between them instead of shrinking and growing back for each.
    last_len: usize,
    /// The largest frame (kind + payload) accepted now: [`frame::MAX_FRAME_LEN`] unless lowered
    /// with [`FrameReader::set_limit`] (the relay does before the hello).
    limit: usize,
    /// Where the buffer's bytes past [`budget::FREE_BELOW`] come from, if they are counted (the
    /// relay's readers: [`FrameReader::share_budget`]), and how many of them this reader holds.
    budget: Option<Arc<ReadBudget>>,
    charged: usize,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: vec![0; FIRST_READ],
            start: 0,
            end: 0,
            read_size: FIRST_READ,
            bursts: Bursts::new(),
            last_len: 0,
            limit: frame::MAX_FRAME_LEN,
            budget: None,
            charged: 0,
        }
    }

    /// From now on, the buffer's bytes past what chat needs are taken from `budget` before the
    /// buffer grows, and given back when it shrinks or the reader is dropped: see [`ReadBudget`].
    /// A frame the budget has no room for fails with [`ReadError::NoRoom`].
    pub fn share_budget(&mut self, budget: Arc<ReadBudget>) {
        self.settle(0);
        self.budget = Some(budget);
        self.settle(self.buf.len());
    }

    /// Accepts frames of at most `limit` bytes (kind + payload) from now on; a longer one is
    /// refused with [`FrameError::TooLarge`] as soon as its length prefix arrives. The relay
    /// lowers it until the hello has arrived: a Hello is a few KiB at most, and a stranger who has
    /// not said who they are must not make it hold a buffer for a 1 MiB frame.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(frame::MAX_FRAME_LEN);
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The wrapped stream, mutably: for writing to it while no other thread does.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Whether a whole frame is already buffered, so that the next [`FrameReader::read_frame`]
    /// returns it without reading the stream. False means the next call reads (and may wait):
    /// the moment to send what was held back for a batch (the client's `Seen`, see
    /// `client/reader.rs`).
    pub fn has_frame(&self) -> bool {
        let pending = &self.buf[self.start..self.end];
        matches!(frame::frame_size(pending), Ok(Some(size)) if size <= pending.len())
    }

    /// Returns the next frame, or `Ok(None)` on a clean EOF (the peer closed between frames).
    pub fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        self.read_frame_with(|_| Ok(()))
    }

    /// The loop behind both ways of reading: `before_read` runs before every `read` on the stream
    /// (see [`FrameReader::read_frame_by`], which uses it to shorten the timeout as time passes).
    fn read_frame_with(
        &mut self,
        mut before_read: impl FnMut(&R) -> io::Result<()>,
    ) -> Result<Option<Frame>, ReadError> {
        loop {
            let pending = &self.buf[self.start..self.end];
            match frame::decode(pending) {
                Ok(Some((frame, used))) => {
                    self.start += used;
                    self.last_len = used;
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Frame(e)),
            }
            // Need more bytes. `frame_size` has already vetted the length (or there are fewer
            // than four bytes), so growing the buffer to it is safe.
            let needed = frame::frame_size(pending).map_err(ReadError::Frame)?.unwrap_or(frame::LEN_PREFIX);
            if needed - frame::LEN_PREFIX > self.limit {
                let len = needed - frame::LEN_PREFIX;
                return Err(ReadError::Frame(FrameError::TooLarge { len, max: self.limit }));
            }
            self.make_room(needed)?;
            before_read(&self.inner).map_err(ReadError::Io)?;
            let n = match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            };
            if n == 0 {
                let have = self.end - self.start;
                return if have == 0 { Ok(None) } else { Err(ReadError::TruncatedAtEof { have }) };
            }
            self.end += n;
            let filled = self.end == self.buf.len();
            if n >= FIRST_READ || filled {
                self.bursts.seen(); // not quiet: see `make_room`
            }
            if filled {
                self.read_size = (2 * self.read_size).min(READ_CHUNK); // more was waiting
            }
        }
    }

    /// Moves undecoded bytes to the front and makes room for the next read of a frame of
    /// `needed` bytes. The room grows as the frame's bytes arrive (at most doubling per read),
    /// not to `needed` at once: a peer that announces a 1 MiB frame and sends five bytes gets a
    /// few KiB, not a mebibyte it never fills.
    ///
    /// With a budget ([`FrameReader::share_budget`]) the growth is taken from it first; if it is
    /// not there, nothing grows and the frame fails with [`ReadError::NoRoom`].
    fn make_room(&mut self, needed: usize) -> Result<(), ReadError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let growing = (2 * self.end).max(self.end + self.read_size);
        let want = needed.min(growing).max(self.end + 1).max(self.read_size);
        if self.end == 0 && self.buf.len() > FIRST_READ && self.bursts.over() {
            // Nothing pending, and the last burst is over: back to the small buffer.
            (self.buf, self.read_size) = (vec![0; FIRST_READ], FIRST_READ);
            self.settle(FIRST_READ);
        } else if self.buf.len() < want {
            if !self.settle(want) {
                return Err(ReadError::NoRoom { len: needed });
            }
            // Exactly `want`, not the doubling `resize` alone may pick: the budget counts it.
            self.buf.reserve_exact(want - self.buf.len());
            self.buf.resize(want, 0);
        } else if self.buf.len() > 2 * READ_CHUNK
            && self.end < READ_CHUNK
            && needed <= READ_CHUNK
            && self.last_len <= READ_CHUNK
        {
            // Big frames passed through earlier, and a small one came after; give the memory back.
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
            self.settle(READ_CHUNK);
        }
        Ok(())
    }

    /// Brings what this reader holds of its budget to what a buffer of `len` bytes costs: takes
    /// the difference (false, and nothing changed, if the budget has not got it) or gives it back.
    /// Without a budget, always true.
    fn settle(&mut self, len: usize) -> bool {
        let Some(budget) = &self.budget else { return true };
        let cost = len.saturating_sub(budget::FREE_BELOW);
        if cost > self.charged {
            if !budget.take(cost - self.charged) {
                return false;
            }
        } else {
            budget.give(self.charged - cost);
        }
        self.charged = cost;
        true
    }
}

/// A reader gives back what it holds of a shared budget when it goes.
impl<R> Drop for FrameReader<R> {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.charged);
        }
    }
}

impl<S: Stream> FrameReader<S> {
    /// Like [`FrameReader::read_frame`], but the whole frame must arrive before `deadline`.
    ///
    /// A read timeout alone bounds each `read`, not the frame: a peer that sends one byte every
    /// few seconds would reset it forever. So before every read the timeout is set to the time
    /// *left*, and once none is left the read fails with `TimedOut` ([`ReadError::is_timeout`]).
    /// The stream's read timeout is left changed; the caller sets the one it wants next.
    pub fn read_frame_by(&mut self, deadline: Instant) -> Result<Option<Frame>, ReadError> {
        self.read_frame_with(|stream| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            stream.set_read_timeout(Some(left))
        })
    }
}

/// Limits how many bytes the kernel keeps written-but-unsent for this socket
/// (`TCP_NOTSENT_LOWAT`): a write then waits until the unsent bytes fall below `bytes`, so file
/// data queues in the writer, where chat can overtake it, rather than in the kernel, where it
/// cannot (see `crate::outbox`, "Chat never waits behind file data"). `0` leaves the kernel's
/// default. On systems without the option this does nothing, and chat just waits a little longer.
pub fn limit_unsent(stream: &std::net::TcpStream, bytes: u32) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if bytes > 0 {
        return socket2::SockRef::from(stream).set_tcp_notsent_lowat(bytes);
    }
    let _ = (stream, bytes);
    Ok(())
}

/// Reads the next `len` bytes of `source` (a file, in practice) into a new buffer laid out for
/// [`frame::chunk_frame`]: header space, then the data, read straight in with no zero-filling and
/// no extra copy.
pub fn read_chunk<R: Read>(source: &mut R, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(frame::CHUNK_HEADER + len);
    buf.resize(frame::CHUNK_HEADER, 0);
    source.by_ref().take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != frame::CHUNK_HEADER + len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early"));
    }
    Ok(buf)
}

/// Encodes `frame` and writes it in one `write_all`. Does not flush.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> io::Result<()> {
    let bytes = frame::encode_to_vec(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&bytes)
}

#[cfg(test)]
mod tests;
