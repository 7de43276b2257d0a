//! Attacks on the last two work sessions' changes, against the real relay binary on loopback:
//! the hub's own writes into idle clients' sockets (`server/hub/direct.rs`), downloads that
//! follow an upload as it arrives (`server/arrival.rs`, `server/transfer.rs`), and the buffers
//! that grow for a burst and shrink after a quiet second (`wire::Bursts`).
//!
//! Each test plays one attack and asserts what the README's "Limits" table promises; each was
//! checked to fail on the code before its fix (or with the defence taken out), as its comment says.

mod common;

use std::time::{Duration, Instant};

use common::attacker::{lo, Got, Raw};
use common::relay::RelayOptions;
use relaychat::frame::Frame;

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

/// Every KiB a connection keeps after a burst is 10 MiB at the README's 10,000 connections. An
/// attacker says one 60 KiB line in a room of many, waits a second, then says a short one: every
/// recipient's connection has had its burst, and its next write came after a quiet second, so
/// by the table ("go back to 1 KiB at the first read or write after a quiet second") each must
/// be back to its idle size. The writer thread's 64 KiB `BufWriter` never shrank: the 60 KiB
/// line stayed resident in it on every connection (~60 KiB each, 2.5 times an idle connection).
#[test]
fn a_long_line_to_a_big_room_leaves_no_big_buffer_on_every_connection() {
    const PEOPLE: usize = 160;
    let mut relay = RelayOptions::for_attacks()
        .flag("--msg-rate", 0)
        .flag("--text-rate", 0)
        .watched("recent-burst-buffers");
    let mut people: Vec<Raw> = (0..PEOPLE)
        .map(|i| Raw::join(lo(20 + (i / 12) as u8), relay.addr, &format!("p{i}"), "big"))
        .collect();
    let mut speaker = Raw::join(lo(90), relay.addr, "speaker", "big");
    // Everyone hears one round of short lines (every writer has written, the store has a page),
    // with quiet seconds between, so what is measured next is only what a long line leaves.
    let mut round = |n: usize, len: usize, people: &mut Vec<Raw>| {
        let text = line(n, len);
        speaker.send(&Frame::say(&text)).expect("the speaker talks");
        for (i, person) in people.iter_mut().enumerate() {
            assert!(got_line(person, &text), "p{i} did not get line {n}{}", relay.context());
        }
        std::thread::sleep(Duration::from_millis(1500));
    };
    round(0, 100, &mut people);
    round(1, 100, &mut people);
    let before = settled_rss(&relay);
    round(2, 60 * 1024, &mut people);
    round(3, 100, &mut people);
    round(4, 100, &mut people);
    let after = settled_rss(&relay);
    let kept_kib = (after - before) * 1024.0 / PEOPLE as f64;
    println!("recent-burst-buffers: {before:.1} MiB -> {after:.1} MiB, {kept_kib:.1} KiB per connection");
    assert!(
        kept_kib < 16.0,
        "each connection kept {kept_kib:.1} KiB after a 60 KiB line and a quiet second \
         ({before:.1} -> {after:.1} MiB for {PEOPLE}){}",
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

#[allow(dead_code)]
fn unused(_: Got) {}
