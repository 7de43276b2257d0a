//! # Lesson 8: two threads, one TLS session, and the lock that must not be held
//!
//! With TLS, a connection's reader and writer threads share one session: the reader decrypts with
//! it, the writer encrypts with it. So the session needs a lock. This lesson shows the deadlock
//! the obvious design walks into, with a toy "session" (a counter-based XOR stream: the locking
//! is the point, not the cipher), then the rule that avoids it:
//!
//! ```text
//!  writer A: lock, encrypt, write ... blocks (the network is full)   still holding A's lock
//!  reader A: read bytes from B, then wants A's lock to decrypt ...    waits for writer A
//!            so A stops reading; B's writer fills up and blocks, holding B's lock, and so on:
//!            nobody reads, nobody writes, forever
//! ```
//!
//! **The rule: no thread blocks on the socket while holding the session's lock.** The writer
//! locks only to encrypt into a buffer of its own, unlocks, then writes; the reader reads with
//! the lock released, then locks only to decrypt.
//!
//! ```text
//! cargo run --example 08_tls_threads -- --demo
//! ```
//!
//! The real thing is `src/tls.rs` (`TlsStream`, over rustls), drawn in docs/ARCHITECTURE.md.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes each side sends to the other, at the same time.
const EACH_WAY: u64 = 16 << 20;
const CHUNK: usize = 16 * 1024;

/// The toy session: a position in each direction's key stream. Both directions' state lives
/// behind one lock, as a TLS session's does.
struct Session {
    sent: u64,
    received: u64,
}

fn key(position: u64) -> u8 {
    (position.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

impl Session {
    fn encrypt(&mut self, data: &mut [u8]) {
        for byte in data {
            *byte ^= key(self.sent);
            self.sent += 1;
        }
    }
    fn decrypt(&mut self, data: &mut [u8]) {
        for byte in data {
            *byte ^= key(self.received);
            self.received += 1;
        }
    }
}

/// One end: a writer and a reader thread on one socket, sharing one session. Counts progress.
fn run_end(socket: TcpStream, careful: bool, progress: Arc<AtomicU64>) -> Vec<thread::JoinHandle<()>> {
    let session = Arc::new(Mutex::new(Session { sent: 0, received: 0 }));
    let (mut write_half, mut read_half) = (socket.try_clone().unwrap(), socket);
    let writer_session = session.clone();
    let writer = thread::spawn(move || {
        let mut sent = 0;
        while sent < EACH_WAY {
            let mut chunk = vec![b'x'; CHUNK];
            let written = if careful {
                // Right: encrypt under the lock, write without it.
                writer_session.lock().unwrap().encrypt(&mut chunk);
                write_half.write_all(&chunk)
            } else {
                // Wrong: the lock is still held while `write_all` waits for the network.
                let mut session = writer_session.lock().unwrap();
                session.encrypt(&mut chunk);
                write_half.write_all(&chunk)
            };
            if written.is_err() {
                return;
            }
            sent += CHUNK as u64;
        }
        let _ = write_half.shutdown(Shutdown::Write);
    });
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match read_half.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n, // read with no lock held: right in both designs
            };
            session.lock().unwrap().decrypt(&mut buf[..n]);
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    vec![writer, reader]
}

/// Both ends send [`EACH_WAY`] bytes at once. Returns how long it took, or `None` if progress
/// stopped for two seconds (a deadlock; the sockets are then cut so the threads can end).
fn exchange(careful: bool) -> (Option<Duration>, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    // Small kernel buffers, so the network is "full" after a few chunks, as on a slow link.
    for socket in [&a, &b] {
        let socket = socket2::SockRef::from(socket);
        socket.set_send_buffer_size(32 * 1024).unwrap();
        socket.set_recv_buffer_size(32 * 1024).unwrap();
    }
    let (cut_a, cut_b) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let progress = Arc::new(AtomicU64::new(0));
    let mut threads = run_end(a, careful, progress.clone());
    threads.extend(run_end(b, careful, progress.clone()));
    let started = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    let outcome = loop {
        thread::sleep(Duration::from_millis(20));
        let now = progress.load(Ordering::Relaxed);
        if now >= 2 * EACH_WAY {
            break Some(started.elapsed());
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(2) {
            break None;
        }
    };
    let _ = cut_a.shutdown(Shutdown::Both);
    let _ = cut_b.shutdown(Shutdown::Both);
    for thread in threads {
        let _ = thread.join();
    }
    (outcome, progress.load(Ordering::Relaxed))
}

fn main() {
    if std::env::args().nth(1).as_deref() != Some("--demo") {
        eprintln!("usage: 08_tls_threads --demo");
        return;
    }
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    for (label, careful) in [("lock held across the write", false), ("lock only to encrypt", true)] {
        match exchange(careful) {
            (Some(took), moved) => println!("{label}: moved {:.0} MiB in {took:?}", mib(moved)),
            (None, moved) => println!(
                "{label}: DEADLOCK: stuck after {:.2} MiB of {:.0} MiB (no progress for 2 s)",
                mib(moved),
                mib(2 * EACH_WAY)
            ),
        }
    }
}
