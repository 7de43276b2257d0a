//! Writing into a socket without ever waiting for it ([`WriteNow`]), for the relay's hub, which
//! serves every client and so cannot sit behind one that stopped reading (see
//! `server/hub/direct.rs` for who uses it and why; `tls.rs` has the TLS side).

use std::io;
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::net::TcpStream;

#[cfg(any(target_os = "linux", target_os = "android"))]
use super::Socket;

/// A way to write into a socket that never waits: see the module docs.
pub trait WriteNow: Send {
    /// Writes as much of `frame` as the socket takes at once, without waiting, and says what
    /// became of the rest. Called only while its caller holds the writer's turn with nothing
    /// queued (see `outbox`, "Taking turns with the senders"), so nothing can come between.
    fn write_now(&mut self, frame: &[u8]) -> io::Result<Written>;
}

/// What [`WriteNow::write_now`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// All of it is in the socket.
    All,
    /// Only the first `n` bytes went: the caller must have the rest written next, before
    /// anything else (it queues them for the writer thread).
    Part(usize),
    /// The stream keeps what did not go (TLS: records already encrypted cannot be made again)
    /// and sends it first with its next write or flush: the caller must wake the writer.
    Held,
}

/// The plain socket's way to write without waiting: `send` with `MSG_DONTWAIT`, which takes what
/// fits in the socket's buffer and never sleeps, on this one call only (the reader and the
/// writer keep their blocking socket).
#[cfg(any(target_os = "linux", target_os = "android"))]
impl WriteNow for Socket {
    fn write_now(&mut self, frame: &[u8]) -> io::Result<Written> {
        Ok(match send_now(&self.0, frame)? {
            n if n == frame.len() => Written::All,
            n => Written::Part(n),
        })
    }
}

/// Sends what the socket takes now of `bytes` (0 when its buffer is full), without waiting.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn send_now(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    match socket2::SockRef::from(socket).send_with_flags(bytes, flags) {
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(0),
        Err(e) => Err(e),
    }
}
