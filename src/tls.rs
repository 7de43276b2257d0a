//! TLS under the frames: one TLS session shared by a connection's reader and writer threads.
//!
//! A connection has a reader thread and a writer thread on one socket (see `wire.rs`). With TLS
//! they share one session (a [`rustls::Connection`]): the reader decrypts with it, the writer
//! encrypts with it. The session needs a lock, and one careless lock deadlocks: a writer that
//! blocks on a full socket *while holding the lock* stops the reader from decrypting, so the
//! reader stops reading the socket; if the peer does the same, both send buffers fill and
//! nobody ever reads again. The rule that prevents it:
//!
//! **No thread ever blocks on the socket while holding the session's lock.**
//!
//! - The reader reads raw bytes from the socket with the lock *released*, then takes the lock
//!   only to hand them to rustls and take the plaintext out (memory work, microseconds).
//! - The writer takes the lock to encrypt and to take the finished TLS records out into a buffer
//!   of its own, releases it, and only then writes that buffer to the socket, blocking as long
//!   as the network needs.
//! - Only the writer ever takes records out of the session, so they reach the socket in the
//!   order rustls made them. (Records rustls makes while reading, such as a KeyUpdate answer, go
//!   out with the writer's next write.) On the relay the hub may stand in for an idle writer,
//!   holding the writer's turn (`server/hub/direct.rs`, `NowWriter`): it never waits for the
//!   socket, and records the socket did not take wait in the stream for the writer to send
//!   first.
//!
//! The handshake happens before the threads start, on one thread, so it needs no lock at all.
//! `tests/tls.rs` checks the design with both sides writing megabytes at once.
//!
//! The crypto provider is *ring*: it builds with the C compiler that Rust's own linker already
//! needs, with no CMake, NASM or system library, so `cargo run --release --bin server` still
//! works on a fresh machine. Only TLS 1.3 is offered.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::wire::{Bursts, Closer, Socket, Stream, WriteNow, Written};

/// The first byte of every TLS record that starts a handshake. A relaychat frame starts with its
/// length (big-endian, at most 1 MiB), so its first byte is always 0: the relay tells the two
/// apart by one byte (see `server/conn.rs`).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// How much raw TLS the reader takes from the socket at once: at first [`FIRST_RAW`], doubling
/// each time a read fills the buffer (more was waiting: a file, a burst) up to [`RAW_READ`]. A
/// quiet chat connection so keeps 1 KiB instead of 64 (a chat line's record is a few hundred
/// bytes), and goes back to it when a burst is over. Every KiB here is 10 MiB for 10,000 idle
/// connections.
const RAW_READ: usize = 64 * 1024;
const FIRST_RAW: usize = 1024;
/// The writer's record buffer grows to the biggest write (file data: 64 KiB and more); once the
/// writes have stayed at most this big for a second ([`Bursts`]), it is let go, so that it grows again
/// only for the next burst. A few chat lines' records, as the frame buffer in front of it keeps
/// (`outbox::batch`): at 16 KiB, one 15 KiB line said to a big room stayed resident on every
/// connection in it for good (`tests/review_recent_attacks.rs` measured 17.8 KiB each).
const OUT_KEPT: usize = 4 * 1024;

/// The crypto provider both ends use: ring (see the module docs for why).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The only protocol version offered.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A certificate's fingerprint as people compare it: `SHA256:` and 64 hex digits of the SHA-256
/// of the certificate (DER), as SSH shows a host key.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    format!("SHA256:{}", crate::sha::hex(&digest))
}

/// A TCP connection carrying TLS, with the session shared between clones (see the module docs).
pub struct TlsStream {
    /// The socket, shared with the clones of this stream (one descriptor for all of them).
    tcp: Socket,
    session: Arc<Mutex<rustls::Connection>>,
    /// Raw bytes read from the socket and not yet given to rustls: `raw[start..end]`.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    /// When a socket read last brought [`FIRST_RAW`] or more, and when a write last needed more than
    /// [`OUT_KEPT`]: once these bursts are over, the buffers shrink back.
    read_bursts: Bursts,
    write_bursts: Bursts,
    /// The writer's buffer of finished records, reused between writes.
    out: Vec<u8>,
    /// Records the relay's hub made and the socket did not take at once (`NowWriter`), shared
    /// between clones: whoever writes next sends these first. Empty nearly always.
    unsent: Arc<Mutex<Vec<u8>>>,
    /// The read timeout the connection's code asked for ([`Stream::set_read_timeout`]). One
    /// `read` of a TLS stream may take several socket reads (a record arrives in pieces), so the
    /// socket's own timeout, which restarts at every piece, is not enough: `read` spends at most
    /// this long *in all*. Otherwise a peer trickling one record a byte at a time would hold a
    /// connection past its hello deadline, or past the idle timeout, for as long as it liked.
    read_timeout: std::cell::Cell<Option<Duration>>,
}

impl TlsStream {
    /// Runs the handshake of `session` over `tcp` until it is done or `deadline` passes, then
    /// wraps both. A failed handshake sends nothing more: in particular a client that refuses
    /// the relay's certificate sends no alert and no application data (see `client/trust.rs`).
    pub fn handshake(
        tcp: impl Into<Socket>,
        session: impl Into<rustls::Connection>,
        deadline: Instant,
    ) -> io::Result<TlsStream> {
        let mut tcp = tcp.into();
        let mut session = session.into();
        let mut raw = vec![0u8; FIRST_RAW];
        // Bytes read but not yet given to rustls: `raw[start..end]`. The peer may send
        // application data right behind its last handshake message, in the same read; rustls
        // takes only what it can hold, and the rest waits here for the first `read`.
        let (mut start, mut end) = (0, 0);
        loop {
            // Writes are bounded by the same deadline: a peer that never reads cannot hold us.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake took too long"));
            }
            tcp.set_write_timeout(Some(left))?;
            while session.wants_write() {
                session.write_tls(&mut tcp)?;
            }
            if !session.is_handshaking() {
                break;
            }
            if start == end {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake took too long"));
                }
                tcp.set_read_timeout(Some(left))?;
                let n = tcp.read(&mut raw)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ));
                }
                if let Some(refusal) = plaintext_refusal(&raw[..n]) {
                    return Err(io::Error::new(io::ErrorKind::ConnectionRefused, refusal));
                }
                (start, end) = (0, n);
            }
            let mut data = &raw[start..end];
            let before = data.len();
            session.read_tls(&mut data)?;
            let used = before - data.len();
            if used == 0 {
                return Err(stalled());
            }
            start += used;
            session.process_new_packets().map_err(tls_error)?;
        }
        tcp.flush()?;
        tcp.set_write_timeout(None)?; // the connection's own code sets the one it wants
        let mut stream = TlsStream::from_parts(tcp, Arc::new(Mutex::new(session)), Arc::default());
        (stream.raw, stream.start, stream.end) = (raw, start, end);
        Ok(stream)
    }

    fn from_parts(
        tcp: Socket,
        session: Arc<Mutex<rustls::Connection>>,
        unsent: Arc<Mutex<Vec<u8>>>,
    ) -> TlsStream {
        TlsStream {
            tcp,
            session,
            raw: Vec::new(),
            start: 0,
            end: 0,
            read_bursts: Bursts::new(),
            write_bursts: Bursts::new(),
            out: Vec::new(),
            unsent,
            read_timeout: Default::default(),
        }
    }

    /// The certificate the peer presented (the relay's, seen from a client).
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        let session = self.lock();
        session.peer_certificates().and_then(|certs| certs.first()).map(|c| c.clone().into_owned())
    }

    /// The session, for memory work only: never held across a socket call.
    fn lock(&self) -> MutexGuard<'_, rustls::Connection> {
        lock(&self.session)
    }

    /// Takes every finished record out of the session into `self.out` (under the lock), then
    /// writes them to the socket (without it).
    fn send_records(
        &mut self,
        encrypt: impl FnOnce(&mut rustls::Connection) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.send_unsent()?;
        self.out.clear();
        let result = {
            let mut session = lock(&self.session);
            let result = encrypt(&mut session);
            while session.wants_write() {
                session.write_tls(&mut self.out)?;
            }
            result
        };
        self.tcp.write_all(&self.out)?;
        if self.out.len() > OUT_KEPT {
            self.write_bursts.seen();
        } else if self.out.capacity() > OUT_KEPT && self.write_bursts.over() {
            // A burst of records (a download) is over: don't keep its buffer for the chat after.
            self.out = Vec::new();
        }
        result
    }

    /// Sends the records the hub left behind (`NowWriter`) before anything newer. Whoever
    /// calls this holds the writer's turn, so nothing can be added meanwhile.
    fn send_unsent(&self) -> io::Result<()> {
        let unsent = std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|e| e.into_inner()));
        if !unsent.is_empty() {
            (&*self.tcp).write_all(&unsent)?;
        }
        Ok(())
    }
}

/// The relay hub's way into a TLS connection without waiting ([`WriteNow`]): it encrypts under
/// the session's lock as the writer does, then offers the records to the socket without
/// waiting; what the socket does not take at once waits in the stream's `unsent`, and the
/// writer thread sends it before its own next records. (Records cannot be handed back: rustls
/// has numbered them, and the next ones must follow them.)
#[cfg(any(target_os = "linux", target_os = "android"))]
struct NowWriter {
    tcp: Socket,
    session: Arc<Mutex<rustls::Connection>>,
    unsent: Arc<Mutex<Vec<u8>>>,
    out: Vec<u8>,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl WriteNow for NowWriter {
    fn write_now(&mut self, frame: &[u8]) -> io::Result<Written> {
        self.out.clear();
        {
            let mut session = lock(&self.session);
            let mut rest = frame;
            while !rest.is_empty() {
                let n = session.writer().write(rest)?;
                while session.wants_write() {
                    session.write_tls(&mut self.out)?;
                }
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "the TLS session took nothing"));
                }
                rest = &rest[n..];
            }
        }
        let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
        // Something of an earlier frame still waits (its writer failed before sending it): stay
        // behind it. Otherwise offer the records to the socket, which never waits here.
        let sent = if unsent.is_empty() { crate::wire::send_now(&self.tcp, &self.out)? } else { 0 };
        let written = if sent == self.out.len() {
            Written::All
        } else {
            unsent.extend_from_slice(&self.out[sent..]);
            Written::Held
        };
        // The hub writes lone frames here, and a long one (up to 16 KiB) may not be followed by
        // another for hours: its records are not kept, as the writer's are after a burst.
        if self.out.capacity() > OUT_KEPT {
            self.out = Vec::new();
        }
        Ok(written)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.raw.is_empty() {
            self.raw = vec![0u8; FIRST_RAW];
        }
        let deadline = self.read_timeout.get().map(|timeout| Instant::now() + timeout);
        loop {
            {
                let mut session = lock(&self.session);
                // Plaintext waiting? `Ok(0)` is a clean close (the peer's close_notify).
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Raw bytes waiting? Give rustls what it takes, and decrypt.
                if self.start < self.end {
                    let mut data = &self.raw[self.start..self.end];
                    let before = data.len();
                    session.read_tls(&mut data)?;
                    let used = before - data.len();
                    if used == 0 {
                        // rustls took nothing and has no plaintext for us: it never will.
                        return Err(stalled());
                    }
                    self.start += used;
                    session.process_new_packets().map_err(tls_error)?;
                    continue;
                }
            }
            // Nothing to decrypt: wait for the network, with the lock released, but never past
            // the time this whole `read` was given.
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no whole TLS record in time"));
                }
                self.tcp.set_read_timeout(Some(left))?;
            }
            if self.raw.len() > FIRST_RAW && self.read_bursts.over() {
                // The peer went quiet after a burst (a file): a connection that now only chats
                // goes back to the small buffer instead of keeping up to 64 KiB for good.
                self.raw = vec![0u8; FIRST_RAW];
            }
            let n = self.tcp.read(&mut self.raw)?;
            (self.start, self.end) = (0, n);
            if n >= FIRST_RAW || n == self.raw.len() {
                self.read_bursts.seen();
            }
            if n == self.raw.len() && n < RAW_READ {
                self.raw.resize(2 * n, 0); // the socket had more: read more at once next time
            }
            if n == 0 {
                // EOF: rustls decides whether it was clean (close_notify came first) or not.
                let mut session = lock(&self.session);
                session.read_tls(&mut io::empty())?;
                session.process_new_packets().map_err(tls_error)?;
                return match session.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_records(|session| session.writer().write(buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_records(|session| session.writer().write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records(|session| session.writer().flush().map(|()| 0))?;
        self.tcp.flush()
    }
}

impl Stream for TlsStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        Ok(TlsStream::from_parts(self.tcp.clone(), self.session.clone(), self.unsent.clone()))
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn write_now_handle(&self) -> Option<Box<dyn WriteNow>> {
        Some(Box::new(NowWriter {
            tcp: self.tcp.clone(),
            session: self.session.clone(),
            unsent: self.unsent.clone(),
            out: Vec::new(),
        }))
    }
    fn closer(&self) -> io::Result<Closer> {
        self.tcp.closer()
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout);
        self.tcp.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_write_timeout(timeout)
    }
    /// Says close_notify (TLS's "I will send no more"), then half-closes the socket.
    fn shutdown_write(&self) -> io::Result<()> {
        self.send_unsent()?;
        let mut records = Vec::new();
        {
            let mut session = self.lock();
            session.send_close_notify();
            while session.wants_write() {
                session.write_tls(&mut records)?;
            }
        }
        (&*self.tcp).write_all(&records)?;
        self.tcp.shutdown_write()
    }
}

/// Locks a session. A panic while it was held cannot leave rustls half-updated in a way that
/// matters here: the connection is over either way, and the next call reports its error.
fn lock(session: &Mutex<rustls::Connection>) -> MutexGuard<'_, rustls::Connection> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// A relay that turns a connection away before any TLS (the connection caps in
/// `server/accept.rs` answer at once, without a thread or a handshake) sends one plaintext
/// `Error` frame. A TLS record starts with its content type (0x14–0x17); a frame starts with the
/// top byte of its length, 0. Found in place of a ServerHello, the frame is the real reason.
#[derive(Debug)]
pub struct PlaintextRefusal {
    pub code: crate::frame::ErrorCode,
    pub message: String,
}

impl std::fmt::Display for PlaintextRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for PlaintextRefusal {}

fn plaintext_refusal(bytes: &[u8]) -> Option<PlaintextRefusal> {
    if bytes.first().is_none_or(|&b| (0x14..=0x17).contains(&b)) {
        return None;
    }
    match crate::frame::decode(bytes) {
        Ok(Some((crate::frame::Frame::Error { code, message }, _))) => {
            Some(PlaintextRefusal { code, message })
        }
        _ => None,
    }
}

/// rustls would take no more bytes and gave no plaintext: looping on would spin forever.
fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the TLS layer accepted no more data")
}

/// A TLS failure as an I/O error, so it travels the same paths as a broken socket.
pub fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Both ends of a TLS connection over loopback, the client pinning the relay's own key.
    fn pair() -> (TlsStream, TlsStream) {
        // One key directory per pair: the tests run in parallel, and each removes its own.
        static PAIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("relaychat-tls-unit-{}-{n}", std::process::id()));
        let keys = crate::server::keys::load_or_create(&dir).expect("a key pair");
        let server_config = crate::server::keys::server_config(&keys).expect("a server config");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let trust =
            crate::client::trust::Trust { fingerprint: Some(keys.fingerprint.clone()), ..Default::default() };
        let client_config = crate::client::trust::client_config(&addr, &trust).expect("a client config");
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            TlsStream::handshake(tcp, rustls::ServerConnection::new(server_config).unwrap(), deadline)
                .unwrap()
        });
        let name = crate::client::trust::server_name(&addr).unwrap();
        let session = rustls::ClientConnection::new(client_config, name).unwrap();
        let client = TlsStream::handshake(TcpStream::connect(&addr).unwrap(), session, deadline).unwrap();
        let server = server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (client, server)
    }

    #[test]
    fn a_tls_stream_lets_its_burst_buffers_go_once_the_peer_is_quiet() {
        let (mut client, mut server) = pair();
        let burst = vec![7u8; 256 * 1024];
        let sender = std::thread::spawn(move || {
            client.write_all(&burst).unwrap();
            client.flush().unwrap();
            client
        });
        let mut got = vec![0u8; 256 * 1024];
        server.read_exact(&mut got).unwrap();
        let mut client = sender.join().unwrap();
        assert!(server.raw.len() > FIRST_RAW, "the read buffer grew for the burst: {}", server.raw.len());
        assert!(client.out.capacity() > OUT_KEPT, "the record buffer grew: {}", client.out.capacity());

        // A second of quiet, then a chat-sized line: both buffers go back to small.
        std::thread::sleep(crate::wire::QUIET_AFTER + Duration::from_millis(500));
        client.write_all(b"hi").unwrap();
        client.flush().unwrap();
        let mut line = [0u8; 2];
        server.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hi");
        assert_eq!(server.raw.len(), FIRST_RAW);
        assert!(client.out.capacity() <= OUT_KEPT, "still {} bytes", client.out.capacity());
    }

    /// A long chat line (12 KiB: more than [`OUT_KEPT`], less than a file's writes) is a burst
    /// too: the writer lets its records go at the first write after a quiet second, and the
    /// hub's direct writer (`NowWriter`) does not keep them at all. Both used to stay for the
    /// life of the connection, on every connection a long line was said to.
    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn a_long_line_leaves_no_record_buffer_behind() {
        let (mut client, mut server) = pair();
        let line = vec![b'z'; 12 * 1024];
        server.write_all(&line).unwrap();
        let mut got = vec![0u8; line.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, line);
        assert!(server.out.capacity() > OUT_KEPT, "the record buffer grew: {}", server.out.capacity());
        std::thread::sleep(crate::wire::QUIET_AFTER + Duration::from_millis(500));
        server.write_all(b"hi").unwrap();
        let mut hi = [0u8; 2];
        client.read_exact(&mut hi).unwrap();
        assert_eq!(&hi, b"hi");
        assert!(server.out.capacity() <= OUT_KEPT, "the writer kept {} bytes", server.out.capacity());

        let mut now = NowWriter {
            tcp: server.tcp.clone(),
            session: server.session.clone(),
            unsent: server.unsent.clone(),
            out: Vec::new(),
        };
        assert!(matches!(now.write_now(&line).unwrap(), Written::All), "loopback takes 12 KiB at once");
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, line);
        assert!(now.out.capacity() <= OUT_KEPT, "the hub's writer kept {} bytes", now.out.capacity());
    }
}
