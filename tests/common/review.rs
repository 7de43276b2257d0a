//! The review tests' tools (`tests/review_file_attacks.rs`, `review_hub_load.rs`,
//! `review_name_attacks.rs`): guests and accounts joining over raw frames, uploads by hand, and
//! bystanders timing their chat while an attacker loops logins.
//!
//! These read with [`recv_until`], which gives `None` on a timeout or a close instead of failing
//! the test (`common::Raw::recv_until` fails it): a finding's test decides itself what a missing
//! answer means. Every read has a time limit.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use relaychat::frame::{ErrorCode, Frame};
use relaychat::server::ServerConfig;
use relaychat::wire::{FrameReader, ReadError};
use sha2::{Digest, Sha256};

use super::Raw;

/// The tests measure time and latency: run them one at a time even without --test-threads=1.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A config with the chat/request rate limits left as they are (the defaults).
pub fn config() -> ServerConfig {
    ServerConfig::default()
}

/// The next frame within `wait`, or `None` (timeout, close or broken stream).
pub fn recv_within(reader: &mut FrameReader<TcpStream>, wait: Duration) -> Option<Frame> {
    reader.get_ref().set_read_timeout(Some(wait.max(Duration::from_millis(1)))).ok()?;
    match reader.read_frame() {
        Ok(Some(frame)) => Some(frame),
        Ok(None) => None,
        Err(ReadError::Io(_)) => None,
        Err(_) => None,
    }
}

/// Reads frames until `pick` accepts one, for at most `wait`.
pub fn recv_until<T>(raw: &mut Raw, wait: Duration, mut pick: impl FnMut(&Frame) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let frame = recv_within(&mut raw.reader, left)?;
        if let Some(found) = pick(&frame) {
            return Some(found);
        }
    }
}

pub fn hello(name: &str, room: &str, token: &str) -> Frame {
    super::hello_as(name, room, "", token)
}

/// Joins as `name` (guest when `token` is empty) and waits for the welcome and the online list.
pub fn join(addr: SocketAddr, name: &str, room: &str, token: &str) -> Raw {
    join_via(Raw::connect(addr), name, room, token)
}

/// The same, from another loopback address (a bystander is not the attacker's machine).
pub fn join_from(from: [u8; 4], addr: SocketAddr, name: &str, room: &str) -> Raw {
    join_via(connect_from(from, addr), name, room, "")
}

/// Joins, or `None` if the relay turns the connection away (its per-address caps and rates).
pub fn try_join(addr: SocketAddr, name: &str, room: &str) -> Option<Raw> {
    let mut raw = Raw::connect(addr);
    raw.send(&hello(name, room, ""));
    let welcome = recv_until(&mut raw, Duration::from_secs(10), |f| match f {
        Frame::Welcome { .. } => Some(true),
        Frame::Error { .. } => Some(false),
        _ => None,
    });
    (welcome == Some(true)).then_some(raw)
}

pub fn join_via(mut raw: Raw, name: &str, room: &str, token: &str) -> Raw {
    raw.send(&hello(name, room, token));
    let welcome = recv_until(&mut raw, Duration::from_secs(10), |f| match f {
        Frame::Welcome { .. } => Some(Ok(())),
        Frame::Error { code, message } => Some(Err(format!("{code:?}: {message}"))),
        _ => None,
    });
    match welcome {
        Some(Ok(())) => {}
        other => panic!("{name}: no welcome: {other:?}"),
    }
    recv_until(&mut raw, Duration::from_secs(10), |f| {
        matches!(f, Frame::Online { more: false, .. }).then_some(())
    })
    .unwrap_or_else(|| panic!("{name}: no online list"));
    raw
}

pub fn start_upload(
    raw: &mut Raw,
    key: &str,
    name: &str,
    size: u64,
    to: &str,
) -> Result<u64, (ErrorCode, String)> {
    raw.send(&Frame::UploadStart { key: key.into(), name: name.into(), size, to: to.into() });
    recv_until(raw, Duration::from_secs(10), |f| match f {
        Frame::UploadReady { upload_id, .. } => Some(Ok(*upload_id)),
        Frame::UploadFailed { code, message, .. } => Some(Err((*code, message.clone()))),
        Frame::Error { code, message } => Some(Err((*code, message.clone()))),
        _ => None,
    })
    .expect("an answer to UploadStart")
}

pub fn token(n: u64) -> String {
    format!("{:064x}", 0xfeed_0000_0000u64 + n)
}

/// Runs `threads` attacker loops (each: connect, guest hello into `room`, wait for the welcome,
/// close) for `window`, while two bystanders in another room time a message every 50 ms.
/// Returns (cycles done by the attacker, p99 of the bystanders' delivery times, median).
pub fn bystanders_during_join_loops(
    addr: SocketAddr,
    room: &'static str,
    threads: usize,
    window: Duration,
) -> (usize, Duration, Duration) {
    let mut v1 = join_from([127, 0, 0, 91], addr, "bystander1", "quiet");
    let mut v2 = join_from([127, 0, 0, 92], addr, "bystander2", "quiet");
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, cycles) = (stop.clone(), cycles.clone());
            thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && i < 100_000 {
                    let mut raw = Raw::connect(addr);
                    raw.send(&hello(&format!("drive{t}by{i}"), room, ""));
                    let _ = recv_until(&mut raw, Duration::from_secs(20), |f| {
                        matches!(f, Frame::Welcome { .. } | Frame::Error { .. }).then_some(())
                    });
                    drop(raw);
                    cycles.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    let times = ping_times(&mut v1, &mut v2, window);
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        let _ = a.join();
    }
    let p99 = times.get((times.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    (cycles.load(Ordering::SeqCst), p99, median)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

// Finding 8 (medium): successful password logins are never braked, so a couple of addresses
// logging in to their own account in a loop keep the hash queue full, and honest password users
// are refused with LoginBusy for as long as they like.

/// A raw connection from a loopback source address of our own (127.0.0.x).
pub fn connect_from(from: [u8; 4], to: SocketAddr) -> Raw {
    let stream = super::connect_from(from.into(), to, Duration::from_secs(5)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Raw { reader: FrameReader::new(stream) }
}

pub fn password_hello(name: &str, password: &str) -> Frame {
    super::hello_as(name, "lobby", password, "")
}

/// How a hello ended: `Ok(())` for a welcome, else the error code.
pub fn login(raw: &mut Raw, hello: &Frame) -> Result<(), Option<ErrorCode>> {
    raw.send(hello);
    match recv_until(raw, Duration::from_secs(30), |f| match f {
        Frame::Welcome { .. } => Some(Ok(())),
        Frame::Error { code, .. } => Some(Err(Some(*code))),
        _ => None,
    }) {
        Some(result) => result,
        None => Err(None),
    }
}

// Finding 9 (medium): the quota is per sender *name*, and a guest picks a new name per connection:
// one address stores without bound (down to --min-free, then every upload fails for everyone).

pub fn upload(raw: &mut Raw, key: &str, data: &[u8], to: &str) -> Result<u64, (ErrorCode, String)> {
    let upload_id = start_upload(raw, key, "blob.bin", data.len() as u64, to)?;
    raw.send(&Frame::UploadChunk { upload_id, data: data.to_vec() });
    raw.send(&Frame::UploadEnd { upload_id, sha256: Sha256::digest(data).into() });
    recv_until(raw, Duration::from_secs(10), |f| match f {
        Frame::UploadDone { file_id, .. } => Some(Ok(*file_id)),
        Frame::UploadFailed { code, message, .. } => Some(Err((*code, message.clone()))),
        _ => None,
    })
    .expect("an answer to UploadEnd")
}

/// Bystander `v1` sends `ping {n}` to the room it shares with `v2`: how long it took to reach
/// `v2`, and whether it did within 20 s.
pub fn ping(v1: &mut Raw, v2: &mut Raw, n: u64) -> (Duration, bool) {
    let text = format!("ping {n}");
    let t = Instant::now();
    v1.send(&Frame::Say { client_id: 0, to: String::new(), text: text.clone() });
    let got = recv_until(v2, Duration::from_secs(20), |f| {
        matches!(f, Frame::Chat { text: t, .. } if *t == text).then_some(())
    });
    (t.elapsed(), got.is_some())
}

/// [`ping`]s 50 ms apart for `window`: the delivery times, sorted.
pub fn ping_times(v1: &mut Raw, v2: &mut Raw, window: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut times = Vec::new();
    let mut n = 0;
    while started.elapsed() < window {
        n += 1;
        times.push(ping(v1, v2, n).0);
        thread::sleep(Duration::from_millis(50));
    }
    times.sort();
    times
}
