//! A hostile client's tools, for the attack tests (`abuse_*`, `tls_*_attacks`, `review_*`):
//!
//! - [`Raw`]: one TCP connection speaking frames by hand, from any `127.x.y.z` source address
//!   (bound before connecting: [`connect_from`]), with helpers for hellos, uploads and downloads.
//!   Unlike `common::Raw`, which fails the test on anything unexpected, every read here says what
//!   happened ([`Got`]): a timeout or a close is what many attacks are waiting for.
//! - [`Tally`]: reads everything an attacker's connection receives on a thread of its own, and
//!   counts receipts, error codes and chat, so a flood is never cut short by its own full socket.
//!
//! Every read has a timeout and every connect gives up after 5 s.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use relaychat::frame::{encode_to_vec, ErrorCode, Frame};
use relaychat::wire::{FrameReader, ReadError};
use sha2::{Digest, Sha256};

use super::{connect_from, hello_as};

/// `127.0.0.<n>`: a loopback source address of its own, so the relay sees a different client IP.
pub fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// The source address of the `i`-th of many connections, from `127.0.0.<first>` on: as many
/// from each address as the relay lets one address have ([`PER_ADDRESS`](super::abuse::PER_ADDRESS)),
/// then the next address.
pub fn lo_for(first: u8, i: usize) -> Ipv4Addr {
    lo(first + (i / super::abuse::PER_ADDRESS) as u8)
}

/// What came back on a raw connection.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    /// Nothing within the time limit.
    Timeout,
    /// The relay closed the connection (EOF or reset).
    Closed,
    /// Bytes that are not valid protocol, or another I/O error.
    Broken(String),
}

/// Why a read of several frames ([`Raw::read_frames`]) ended without the frame it wanted: a
/// [`Got`] that is not a frame.
#[derive(Debug)]
enum Ended {
    Timeout,
    Closed,
    Broken(String),
}

/// How a hello ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Welcome,
    Refused(ErrorCode, String),
    Closed,
    Timeout,
}

/// One connection that speaks frames by hand.
pub struct Raw {
    pub reader: FrameReader<TcpStream>,
}

impl Raw {
    /// Connects from `from`; fails after 5 s.
    pub fn connect(from: Ipv4Addr, to: SocketAddr) -> io::Result<Raw> {
        let stream = connect_from(from, to, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        // A relay that stops reading must fail our writes, not hang the test.
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Raw { reader: FrameReader::new(stream) })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.send_bytes(&encode_to_vec(frame).expect("the test's frames fit"))
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// The next frame, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Got {
        let timeout = timeout.max(Duration::from_millis(1));
        if self.reader.get_ref().set_read_timeout(Some(timeout)).is_err() {
            return Got::Closed;
        }
        match self.reader.read_frame() {
            Ok(Some(frame)) => Got::Frame(frame),
            Ok(None) => Got::Closed,
            Err(e) if e.is_timeout() => Got::Timeout,
            Err(ReadError::Io(e))
                if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) =>
            {
                Got::Closed
            }
            Err(ReadError::TruncatedAtEof { .. }) => Got::Closed,
            Err(e) => Got::Broken(e.to_string()),
        }
    }

    /// Reads frames until `pick` accepts one, skipping the others, for at most `total`, each
    /// read waiting at most `gap`: what `pick` returned, or what ended the reading instead. The
    /// one read loop of this type.
    fn read_frames<T>(
        &mut self,
        total: Duration,
        gap: Duration,
        mut pick: impl FnMut(Frame) -> Option<T>,
    ) -> Result<T, Ended> {
        let start = Instant::now();
        loop {
            let left = total.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Ended::Timeout);
            }
            match self.recv(left.min(gap)) {
                Got::Frame(frame) => {
                    if let Some(found) = pick(frame) {
                        return Ok(found);
                    }
                }
                Got::Timeout => return Err(Ended::Timeout),
                Got::Closed => return Err(Ended::Closed),
                Got::Broken(why) => return Err(Ended::Broken(why)),
            }
        }
    }

    /// Reads until `pick` accepts a frame, skipping the others; `None` on timeout or close.
    pub fn recv_until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Option<T> {
        self.read_frames(timeout, timeout, |frame| pick(&frame)).ok()
    }

    /// Reads frames until none arrives for `quiet` (or the relay closes); at most `max` time.
    pub fn drain(&mut self, quiet: Duration, max: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        let _ = self.read_frames(max, quiet, |frame| -> Option<()> {
            frames.push(frame);
            None
        });
        frames
    }

    /// Sends `hello` and waits up to `timeout` for the answer: the welcome, or the refusal.
    pub fn say_hello(&mut self, hello: &Frame, timeout: Duration) -> Answer {
        if self.send(hello).is_err() {
            return Answer::Closed;
        }
        match self.recv(timeout) {
            Got::Frame(Frame::Welcome { .. }) => Answer::Welcome,
            Got::Frame(Frame::Error { code, message }) => Answer::Refused(code, message),
            Got::Frame(other) => Answer::Refused(ErrorCode::Other(0), format!("unexpected {other:?}")),
            Got::Timeout => Answer::Timeout,
            Got::Closed | Got::Broken(_) => Answer::Closed,
        }
    }

    /// Connects from `from` and says `hello`; the connection if welcomed, else the answer.
    pub fn join_with(
        from: Ipv4Addr,
        to: SocketAddr,
        hello: &Frame,
        timeout: Duration,
    ) -> Result<Raw, Answer> {
        let mut raw = Raw::connect(from, to).map_err(|_| Answer::Closed)?;
        match raw.say_hello(hello, timeout) {
            Answer::Welcome => Ok(raw),
            other => Err(other),
        }
    }

    /// A guest joins `room` as `name` from `from`; panics if refused.
    pub fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> Raw {
        match Raw::join_with(from, to, &hello_as(name, room, "", ""), Duration::from_secs(10)) {
            Ok(raw) => raw,
            Err(answer) => panic!("{name} from {from} could not join: {answer:?}"),
        }
    }

    /// Uploads `data` as one file (64 KiB chunks): `Ok(file_id)`, or the refusal's code and text.
    pub fn upload(
        &mut self,
        key: &str,
        name: &str,
        data: &[u8],
        to: &str,
    ) -> Result<u64, (ErrorCode, String)> {
        let wait = Duration::from_secs(10);
        let start =
            Frame::UploadStart { key: key.into(), name: name.into(), size: data.len() as u64, to: to.into() };
        self.send(&start).map_err(io_refusal)?;
        let (upload_id, offset) = self.upload_answer(wait)?;
        let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        for chunk in data[offset..].chunks(64 * 1024) {
            self.send(&Frame::UploadChunk { upload_id, data: chunk.to_vec() }).map_err(io_refusal)?;
        }
        let sha256: [u8; 32] = Sha256::digest(data).into();
        self.send(&Frame::UploadEnd { upload_id, sha256 }).map_err(io_refusal)?;
        self.upload_done(upload_id, wait)
    }

    /// Waits for the answer to an `UploadStart`: `(upload_id, offset)` or the refusal.
    pub fn upload_answer(&mut self, wait: Duration) -> Result<(u64, u64), (ErrorCode, String)> {
        let answer = self.recv_until(wait, |f| match f {
            Frame::UploadReady { upload_id, offset } => Some(Ok((*upload_id, *offset))),
            Frame::UploadFailed { code, message, .. } | Frame::Error { code, message } => {
                Some(Err((*code, message.clone())))
            }
            _ => None,
        });
        answer.unwrap_or_else(|| {
            Err((ErrorCode::Other(0), "no answer to UploadStart (timeout or closed)".into()))
        })
    }

    /// Waits for the end of upload `upload_id`: its file id, or the refusal.
    pub fn upload_done(&mut self, upload_id: u64, wait: Duration) -> Result<u64, (ErrorCode, String)> {
        let answer = self.recv_until(wait, |f| match f {
            Frame::UploadDone { upload_id: u, file_id } if *u == upload_id => Some(Ok(*file_id)),
            Frame::UploadFailed { upload_id: u, code, message } if *u == upload_id || *u == 0 => {
                Some(Err((*code, message.clone())))
            }
            Frame::Error { code, message } => Some(Err((*code, message.clone()))),
            _ => None,
        });
        answer.unwrap_or_else(|| {
            Err((ErrorCode::Other(0), "no answer to UploadEnd (timeout or closed)".into()))
        })
    }

    /// Downloads file `file_id` whole: its bytes, or the refusal.
    pub fn download(&mut self, file_id: u64) -> Result<Vec<u8>, (ErrorCode, String)> {
        self.send(&Frame::Download { file_id, offset: 0 }).map_err(io_refusal)?;
        let mut data = Vec::new();
        let wait = Duration::from_secs(10);
        let end = self.read_frames(wait, wait, |frame| match frame {
            Frame::DownloadChunk { file_id: f, data: d } if f == file_id => {
                data.extend(d);
                None
            }
            Frame::DownloadEnd { file_id: f, .. } if f == file_id => Some(Ok(())),
            Frame::DownloadFailed { code, message, .. } | Frame::Error { code, message } => {
                Some(Err((code, message)))
            }
            _ => None,
        });
        match end {
            Ok(Ok(())) => Ok(data),
            Ok(Err(refusal)) => Err(refusal),
            Err(other) => Err((ErrorCode::Other(0), format!("download ended: {other:?}"))),
        }
    }

    /// Every file waiting for us, across all `FileList` pages.
    pub fn list_files(&mut self) -> Option<Vec<relaychat::frame::FileInfo>> {
        self.send(&Frame::ListFiles).ok()?;
        let mut all = Vec::new();
        loop {
            let (files, more) = self.recv_until(Duration::from_secs(10), |f| match f {
                Frame::FileList { files, more } => Some((files.clone(), *more)),
                _ => None,
            })?;
            all.extend(files);
            if !more {
                return Some(all);
            }
        }
    }

    /// True if the relay has closed this connection (a read sees EOF or a reset, not a timeout).
    /// Frames that arrive first are skipped.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let skip_all = |_| None::<()>;
        matches!(self.read_frames(wait, wait, skip_all), Err(Ended::Closed | Ended::Broken(_)))
    }
}

fn io_refusal(e: io::Error) -> (ErrorCode, String) {
    (ErrorCode::Other(0), format!("connection failed: {e}"))
}

/// Reads everything a connection receives on a thread of its own and keeps count, so a flooding
/// attacker's socket never fills (which would get it cut as too slow and end the attack early).
pub struct Tally {
    state: Arc<Mutex<TallyState>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default, Debug, Clone)]
pub struct TallyState {
    /// `Sent` receipts.
    pub receipts: usize,
    /// Error codes seen (`Error` and `UploadFailed` frames), in order.
    pub errors: Vec<ErrorCode>,
    /// The text of the first few errors.
    pub messages: Vec<String>,
    /// `Chat` frames, and their text bytes.
    pub chats: usize,
    pub chat_bytes: usize,
    /// True once the relay closed the connection.
    pub closed: bool,
}

impl TallyState {
    pub fn count(&self, code: ErrorCode) -> usize {
        self.errors.iter().filter(|c| **c == code).count()
    }
}

impl Tally {
    /// Starts counting on a clone of `raw`'s socket; `raw` keeps the writing side.
    pub fn start(raw: &Raw) -> Tally {
        let stream = raw.stream().try_clone().expect("clone a socket");
        let state = Arc::new(Mutex::new(TallyState::default()));
        let shared = state.clone();
        let thread = thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut reader = FrameReader::new(stream);
            // Ends when the `Tally` is dropped (checked between frames, and at least every 200 ms
            // while nothing arrives) or when the relay closes the connection.
            while Arc::strong_count(&shared) > 1 {
                match reader.read_frame() {
                    Ok(Some(frame)) => {
                        let mut s = shared.lock().unwrap();
                        match frame {
                            Frame::Sent { .. } => s.receipts += 1,
                            Frame::Error { code, message } | Frame::UploadFailed { code, message, .. } => {
                                s.errors.push(code);
                                if s.messages.len() < 5 {
                                    s.messages.push(message);
                                }
                            }
                            Frame::Chat { text, .. } => {
                                s.chats += 1;
                                s.chat_bytes += text.len();
                            }
                            _ => {}
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    _ => {
                        shared.lock().unwrap().closed = true;
                        return;
                    }
                }
            }
        });
        Tally { state, thread: Some(thread) }
    }

    pub fn get(&self) -> TallyState {
        self.state.lock().unwrap().clone()
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let thread = self.thread.take();
        let state = std::mem::replace(&mut self.state, Arc::new(Mutex::new(TallyState::default())));
        drop(state);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
