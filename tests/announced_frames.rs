//! What a frame that is announced but never sent costs the relay. In a test binary of its own:
//! it measures this process's RSS, which other tests running beside it would disturb.

mod common;

use std::time::Duration;

use common::{Raw, TestServer};
use relaychat::frame::{ErrorCode, Frame};
use relaychat::server::ServerConfig;

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// Found by the review: five bytes (a 1 MiB length prefix and a kind) made the relay allocate and
/// zero a whole 1 MiB buffer, before any hello. Now a frame before the hello may be 4 KiB at
/// most, and after it the buffer grows as the bytes arrive.
#[test]
fn a_frame_announced_but_not_sent_costs_the_relay_little() {
    let server = TestServer::start_with(ServerConfig {
        max_per_address: 1000,
        connect_rate: 0,
        ..ServerConfig::default()
    });
    let n = 64;
    let before = rss();
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut raw = Raw::connect(server.addr);
        // A length prefix of 1 MiB (the largest allowed) and the first byte of the frame.
        let len = relaychat::frame::MAX_FRAME_LEN as u32;
        let mut prefix = len.to_be_bytes().to_vec();
        prefix.push(0x01);
        raw.send_bytes(&prefix);
        conns.push(raw);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss().saturating_sub(before);
    println!(
        "{n} connections that sent 5 bytes each: RSS grew {} KiB ({} KiB each)",
        grown / 1024,
        grown / 1024 / n
    );
    assert!(grown / n < 256 * 1024, "each 5-byte connection costs the relay {} KiB", grown / n / 1024);
    // Refused at once: a frame that big is not a hello.
    for mut raw in conns.drain(..) {
        assert!(matches!(raw.recv(), Frame::Error { code: ErrorCode::Protocol, .. }));
    }

    // After the hello the limit is 1 MiB again, but the buffer grows as bytes arrive: the same
    // five bytes from joined connections cost a few KiB each, not a mebibyte.
    let mut joined = Vec::new();
    for i in 0..n {
        joined.push(server.raw_joined(&format!("j{i}"), "quiet"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss();
    for raw in &mut joined {
        let mut prefix = (relaychat::frame::MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
        prefix.push(0x02);
        raw.send_bytes(&prefix);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss().saturating_sub(before);
    println!("{n} joined connections that announced 1 MiB and sent 5 bytes: RSS grew {} KiB", grown / 1024);
    assert!(grown / n < 256 * 1024, "each joined 5-byte frame costs the relay {} KiB", grown / n / 1024);
}
