//! Attacks on the last two work sessions' changes, against the real relay binary on loopback:
//! the hub's own writes into idle clients' sockets (`server/hub/direct.rs`), downloads that
//! follow an upload as it arrives (`server/arrival.rs`, `server/transfer.rs`), and the buffers
//! that grow for a burst and shrink after a quiet second (`wire::Bursts`).
//!
//! Each test plays one attack and asserts what the README's "Limits" table promises; each was
//! checked to fail on the code before its fix (or with the defence taken out), as its comment says.
//! They run one at a time: one of them measures the relay's memory, which a neighbour's load
//! on two cores would blur.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::attacker::{lo, lo_for, Got, Raw};
use common::relay::RelayOptions;
use common::tls_attack::{one_at_a_time, TlsConn};
use common::watched::WatchedRelay;
use common::xorshift_bytes;
use relaychat::frame::{ErrorCode, Frame};
use sha2::{Digest, Sha256};

/// A line of `len` bytes that says which one it is at its start.
fn line(n: usize, len: usize) -> String {
    let mut text = format!("line {n:05} ");
    text.push_str(&"z".repeat(len.saturating_sub(text.len())));
    text
}

/// Reads until the chat line `text` arrives (other frames skipped); false on a timeout or close.
fn got_line(raw: &mut Raw, text: &str) -> bool {
    raw.recv_until(Duration::from_secs(10), |f| {
        matches!(f, Frame::Chat { text: t, .. } if t == text).then_some(())
    })
    .is_some()
}

/// One of the big room's people, over plaintext ([`Raw`]) or TLS ([`TlsConn`]).
trait Person: Sized {
    /// A guest joins `room` as `name` from `from`; panics if refused.
    fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> Self;
    fn say(&mut self, text: &str);
    /// Reads until the chat line `text` arrives (other frames skipped); false on a timeout or close.
    fn hears(&mut self, text: &str) -> bool;
}

impl Person for Raw {
    fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> Raw {
        Raw::join(from, to, name, room)
    }
    fn say(&mut self, text: &str) {
        self.send(&Frame::say(text)).expect("the speaker talks");
    }
    fn hears(&mut self, text: &str) -> bool {
        got_line(self, text)
    }
}

impl Person for TlsConn {
    fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> TlsConn {
        TlsConn::join(from, to, name, room)
    }
    fn say(&mut self, text: &str) {
        self.send(&Frame::say(text)).expect("the speaker talks");
    }
    fn hears(&mut self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(Frame::Chat { text: t, .. }) if t == text => return true,
                Got::Frame(_) => {}
                _ => return false,
            }
        }
    }
}

/// Every KiB a connection keeps after a burst is 10 MiB at the README's 10,000 connections. An
/// attacker says one line of `long` bytes in a room of `people`, waits a second, then says a
/// short one: every recipient's connection has had its burst, and its next write came after a
/// quiet second, so by the table (what a connection's buffers keep between bursts) each must be
/// back to its idle size. Returns the relay's settled growth per person in KiB, and the relay.
fn kept_after_a_long_line<P: Person>(class: &str, people: usize, long: usize) -> (f64, WatchedRelay) {
    let relay = RelayOptions::for_attacks().flag("--msg-rate", 0).flag("--text-rate", 0).watched(class);
    let mut people: Vec<P> =
        (0..people).map(|i| P::join(lo_for(100, i), relay.addr, &format!("p{i}"), "big")).collect();
    let mut speaker = P::join(lo(90), relay.addr, "speaker", "big");
    // Everyone hears one round of short lines (every writer has written, the store has a page),
    // with quiet seconds between, so what is measured next is only what a long line leaves.
    let mut round = |n: usize, len: usize| {
        let text = line(n, len);
        speaker.say(&text);
        for (i, person) in people.iter_mut().enumerate() {
            assert!(person.hears(&text), "p{i} did not get line {n}{}", relay.context());
        }
        std::thread::sleep(Duration::from_millis(1500));
    };
    round(0, 100);
    round(1, 100);
    let before = settled_rss(&relay);
    round(2, long);
    round(3, 100);
    round(4, 100);
    let after = settled_rss(&relay);
    let kept_kib = (after - before) * 1024.0 / people.len() as f64;
    println!(
        "{class}: {before:.1} MiB -> {after:.1} MiB for {} people, {kept_kib:.1} KiB per connection",
        people.len()
    );
    (kept_kib, relay)
}

/// Plaintext: the writer thread's 64 KiB `BufWriter` never shrank, so a 60 KiB line stayed
/// resident in it on every connection (~60 KiB each, more than an idle one costs).
#[test]
fn a_long_line_to_a_big_room_leaves_no_big_buffer_on_every_connection() {
    let _one = one_at_a_time();
    let (kept_kib, mut relay) = kept_after_a_long_line::<Raw>("recent-burst-buffers", 640, 60 * 1024);
    // Measured 59 KiB before the fix and 1-10 after. The rest is the allocator's: glibc keeps
    // up to 4 MiB free at the top of each of its arenas resident (`tuning/memory.rs`), a few
    // MiB whatever the number of connections, so there are many connections to spread it over.
    assert!(
        kept_kib < 30.0,
        "each connection kept {kept_kib:.1} KiB after a 60 KiB line and a quiet second{}",
        relay.context()
    );
    relay.memory_report(1024, Duration::from_secs(1));
}

/// TLS, with a line of 15 KiB: more than the frame buffer keeps between bursts (4 KiB, so that
/// one goes), but less than the TLS writer's record buffer used to keep (16 KiB), so its records
/// stayed resident on every connection for good: 15 KiB each, a third of what an idle TLS
/// connection costs in all.
#[test]
fn a_long_line_to_a_big_tls_room_leaves_no_record_buffer_on_every_connection() {
    let _one = one_at_a_time();
    let (kept_kib, mut relay) =
        kept_after_a_long_line::<TlsConn>("recent-tls-record-buffers", 1000, 15 * 1024);
    // Measured 17.8 KiB before the fix and 5.3-7.0 after: the same allocator remainder as above,
    // spread over 1,000 connections.
    assert!(
        kept_kib < 12.0,
        "each TLS connection kept {kept_kib:.1} KiB after a 15 KiB line and a quiet second{}",
        relay.context()
    );
    relay.memory_report(1024, Duration::from_secs(1));
}

/// The relay's resident set once the janitor has trimmed the allocator (every 2 s): the lowest of
/// a few readings over 5 s.
fn settled_rss(relay: &common::watched::WatchedRelay) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lowest = f64::MAX;
    while Instant::now() < deadline {
        lowest = lowest.min(relay.rss_mib());
        std::thread::sleep(Duration::from_millis(250));
    }
    lowest
}

/// An upload sent by hand, so that a test decides when it pauses, restarts or ends.
struct Upload {
    raw: Raw,
    upload_id: u64,
    data: Vec<u8>,
}

impl Upload {
    /// `name` joins `room` from `from` and starts uploading `size` random bytes to `to` (one
    /// name, or "": everyone else in the room); returns the upload and where the relay said to
    /// start.
    fn start(
        relay: &WatchedRelay,
        from: u8,
        (name, room): (&str, &str),
        to: &str,
        size: usize,
    ) -> (Upload, u64) {
        let raw = Raw::join(lo(from), relay.addr, name, room);
        let data = xorshift_bytes(size, size as u64);
        let mut upload = Upload { raw, upload_id: 0, data };
        let offset = upload.begin(to);
        (upload, offset)
    }

    /// Says `UploadStart` (again: a restart of the same upload) and takes the relay's answer.
    fn begin(&mut self, to: &str) -> u64 {
        let start = Frame::UploadStart {
            key: "k".into(),
            name: "f.bin".into(),
            size: self.data.len() as u64,
            to: to.into(),
        };
        self.raw.send(&start).expect("UploadStart");
        let (upload_id, offset) = self.raw.upload_answer(Duration::from_secs(10)).expect("the upload starts");
        self.upload_id = upload_id;
        offset
    }

    /// Sends bytes `from..to` of the file.
    fn send(&mut self, from: usize, to: usize) {
        for piece in self.data[from..to].chunks(64 * 1024) {
            let chunk = Frame::UploadChunk { upload_id: self.upload_id, data: piece.to_vec() };
            self.raw.send(&chunk).expect("a chunk");
        }
    }

    /// Sends the rest from `from` and the hash; the stored file's id.
    fn finish(&mut self, from: usize) -> u64 {
        self.send(from, self.data.len());
        let sha256: [u8; 32] = Sha256::digest(&self.data).into();
        self.raw.send(&Frame::UploadEnd { upload_id: self.upload_id, sha256 }).expect("UploadEnd");
        self.raw.upload_done(self.upload_id, Duration::from_secs(10)).expect("the upload is stored")
    }
}

/// The id of the file arriving for `raw` (its `NewFile` offer without a hash).
fn arriving_offer(raw: &mut Raw) -> u64 {
    raw.recv_until(Duration::from_secs(10), |f| match f {
        Frame::NewFile(info) if info.sha256.is_none() => Some(info.file_id),
        _ => None,
    })
    .expect("the arriving file is offered")
}

/// Reads one download of `file_id` to its end: the bytes and the hash, or the refusal.
fn download_result(raw: &mut Raw, file_id: u64) -> Result<(Vec<u8>, [u8; 32]), (ErrorCode, String)> {
    let mut data = Vec::new();
    loop {
        match raw.recv(Duration::from_secs(10)) {
            Got::Frame(Frame::DownloadChunk { file_id: f, data: d }) if f == file_id => data.extend(d),
            Got::Frame(Frame::DownloadEnd { file_id: f, sha256 }) if f == file_id => {
                return Ok((data, sha256))
            }
            Got::Frame(Frame::DownloadFailed { code, message, .. }) => return Err((code, message)),
            Got::Frame(_) => {}
            other => return Err((ErrorCode::Other(0), format!("the download ended: {other:?}"))),
        }
    }
}

/// Two recipients follow one upload at once, bob from the start and dora from a byte the
/// upload has not reached yet; carol, who is not a recipient, asks for it too. Both recipients
/// get exactly their bytes and the verified hash; carol gets a refusal and not a byte.
#[test]
fn two_followers_one_from_past_what_arrived_get_their_bytes_and_a_stranger_none() {
    let _one = one_at_a_time();
    const SIZE: usize = 1 << 20;
    let relay = RelayOptions::for_attacks().watched("recent-two-followers");
    let mut bob = Raw::join(lo(40), relay.addr, "bob", "films");
    let mut dora = Raw::join(lo(41), relay.addr, "dora", "films");
    let mut carol = Raw::join(lo(42), relay.addr, "carol", "lobby");
    let (mut alice, offset) = Upload::start(&relay, 43, ("alice", "films"), "", SIZE);
    assert_eq!(offset, 0);
    let file_id = arriving_offer(&mut bob);
    assert_eq!(arriving_offer(&mut dora), file_id);
    alice.send(0, 64 * 1024);

    let past = 700 * 1024; // the upload is at 64 KiB
    bob.send(&Frame::Download { file_id, offset: 0 }).unwrap();
    dora.send(&Frame::Download { file_id, offset: past as u64 }).unwrap();
    carol.send(&Frame::Download { file_id, offset: 0 }).unwrap();
    let refused = download_result(&mut carol, file_id);
    assert!(matches!(refused, Err((ErrorCode::NoSuchFile, _))), "carol, no recipient, got {refused:?}");

    std::thread::sleep(Duration::from_millis(300)); // both downloads are waiting for bytes
    let stored_as = alice.finish(64 * 1024);
    assert_eq!(stored_as, file_id);
    let sha256: [u8; 32] = Sha256::digest(&alice.data).into();
    let (bobs, bob_hash) = download_result(&mut bob, file_id).expect("bob's download");
    let (doras, dora_hash) = download_result(&mut dora, file_id).expect("dora's download");
    assert!(bobs == alice.data, "bob got {} bytes, not the file", bobs.len());
    assert!(doras == alice.data[past..], "dora got {} bytes, not the file from {past}", doras.len());
    assert_eq!((bob_hash, dora_hash), (sha256, sha256));
    assert!(carol
        .drain(Duration::from_millis(300), Duration::from_secs(2))
        .iter()
        .all(|f| !matches!(f, Frame::DownloadChunk { .. } | Frame::NewFile(_))));
}

/// The sender starts its upload over on the same connection while bob follows it: the upload
/// resumes under a new `Arrival`, bob's download stops with `SenderStopped` (not a hang, not
/// wrong bytes), and a download from what bob has then follows the resumed upload to the end.
#[test]
fn an_upload_restarted_while_followed_stops_the_follower_who_then_resumes_it() {
    let _one = one_at_a_time();
    const SIZE: usize = 1 << 20;
    let relay = RelayOptions::for_attacks().watched("recent-restart-followed");
    let mut bob = Raw::join(lo(44), relay.addr, "bob", "lobby");
    let (mut alice, _) = Upload::start(&relay, 45, ("alice", "lobby"), "bob", SIZE);
    let file_id = arriving_offer(&mut bob);
    alice.send(0, 256 * 1024);
    bob.send(&Frame::Download { file_id, offset: 0 }).unwrap();
    let mut have = Vec::new();
    while have.len() < 256 * 1024 {
        match bob.recv(Duration::from_secs(10)) {
            Got::Frame(Frame::DownloadChunk { data, .. }) => have.extend(data),
            Got::Frame(_) => {}
            other => panic!("bob's download of what arrived ended: {other:?}"),
        }
    }
    let resumed_at = alice.begin("bob");
    assert_eq!(resumed_at, 256 * 1024, "the relay resumes where the upload was");
    let stopped = download_result(&mut bob, file_id);
    assert!(matches!(stopped, Err((ErrorCode::SenderStopped, _))), "bob's download: {stopped:?}");

    bob.send(&Frame::Download { file_id, offset: have.len() as u64 }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(alice.finish(resumed_at as usize), file_id);
    let (rest, hash) = download_result(&mut bob, file_id).expect("the resumed download");
    have.extend(rest);
    assert!(have == alice.data, "bob has {} bytes, not the file", have.len());
    assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&alice.data)));
}

/// A recipient asks for an arriving file many times over while its sender has stalled (still
/// connected, pinging, sending nothing). The relay holds one download thread and a few queued
/// requests per connection; a request past those must be refused at once. It was queued with a
/// blocking `send` by the connection's reader, which so stopped reading: the recipient's Ping
/// (and chat, and its close) went unread until the stalled download gave up, 30 s later.
#[test]
fn a_recipient_asking_again_and_again_for_a_stalled_arrival_is_still_read() {
    let _one = one_at_a_time();
    let relay = RelayOptions::for_attacks().watched("recent-download-requests");
    let mut bob = Raw::join(lo(46), relay.addr, "bob", "lobby");
    let (mut alice, _) = Upload::start(&relay, 47, ("alice", "lobby"), "bob", 1 << 20);
    let file_id = arriving_offer(&mut bob);
    alice.send(0, 64 * 1024); // then nothing

    for _ in 0..8 {
        bob.send(&Frame::Download { file_id, offset: 0 }).unwrap();
    }
    let asked = Instant::now();
    bob.send(&Frame::Ping).unwrap();
    let mut busy = 0;
    let pong = bob.recv_until(Duration::from_secs(5), |f| match f {
        Frame::DownloadFailed { code: ErrorCode::Busy, .. } => {
            busy += 1;
            None
        }
        Frame::Pong => Some(()),
        _ => None,
    });
    assert!(
        pong.is_some(),
        "bob's Ping went unanswered for {:?} while his download requests waited{}",
        asked.elapsed(),
        relay.context()
    );
    assert!(busy >= 1, "the requests past the queue were refused as Busy");
    drop(alice);
}

/// The plaintext side of the hub's own writes (`hub/direct.rs`), through the real relay: mallory
/// (a 4 KiB receive window) stops reading in a room of three while carol talks at a typing pace,
/// so the hub writes each line itself into her socket until it fills, then in part (the rest
/// queued for her writer, with the turn still held), then not at all. Bob must hear every line
/// at once meanwhile; mallory, reading again, must find every line whole and in order. (Checked:
/// with the rest of a part-written frame dropped instead of queued, mallory's stream breaks.)
#[test]
fn a_plaintext_client_that_reads_late_gets_every_line_and_holds_nobody_up() {
    let _one = one_at_a_time();
    const LINES: usize = 150;
    let relay =
        RelayOptions::for_attacks().flag("--msg-rate", 0).flag("--text-rate", 0).watched("recent-reads-late");
    let mut bob = Raw::join(lo(50), relay.addr, "bob", "lobby");
    let mut carol = Raw::join(lo(51), relay.addr, "carol", "lobby");
    let tcp = common::tls_attack::small_window(lo(52), relay.addr);
    tcp.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut mallory = Raw { reader: relaychat::wire::FrameReader::new(tcp) };
    let hello = common::hello_as("mallory", "lobby", "", "");
    assert_eq!(mallory.say_hello(&hello, Duration::from_secs(10)), common::attacker::Answer::Welcome);

    // Bob reads as he should, on a thread of his own, while carol talks.
    let started = Instant::now();
    let bob_heard = std::thread::scope(|s| {
        let listener = s.spawn(|| (0..LINES).all(|n| got_line(&mut bob, &line(n, 2000))));
        for n in 0..LINES {
            carol.send(&Frame::say(&line(n, 2000))).expect("carol talks");
            std::thread::sleep(Duration::from_millis(2));
        }
        listener.join().expect("bob's reader")
    });
    let took = started.elapsed();
    assert!(bob_heard, "bob missed lines of carol's{}", relay.context());
    assert!(took < Duration::from_secs(3), "bob needed {took:?} for {LINES} lines past mallory");
    for n in 0..LINES {
        let text = line(n, 2000);
        let next = mallory.recv_until(Duration::from_secs(5), |f| match f {
            Frame::Chat { from, text, .. } if from == "carol" => Some(text.clone()),
            _ => None,
        });
        assert!(
            next.as_deref() == Some(text.as_str()),
            "mallory's line {n} was {next:.20?}{}",
            relay.context()
        );
    }
}
