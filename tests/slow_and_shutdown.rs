//! A client that stops reading must not slow anyone else down, and must eventually be dropped.
//! Shutdown must finish promptly even with clients connected, including stuck ones.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{next_chat, next_event, Raw, TestServer};
use relaychat::client::{Disconnect, Event};
use relaychat::frame::Frame;
use relaychat::server::ServerConfig;

/// 400 messages of 60 KiB: about 24 MiB, far more than the kernel's socket buffers on loopback
/// plus the relay's queue, so a client that never reads is certain to fall behind.
const FLOOD: usize = 400;

fn flood_text(i: usize) -> String {
    format!("{i:04}{}", "x".repeat(60 * 1024))
}

#[test]
fn a_stalled_reader_does_not_delay_the_others() {
    // Limits far beyond the test's duration: the stalled client stays connected throughout, so if
    // the relay waited on it, bob would receive nothing and the test would time out.
    let config = ServerConfig {
        client_queue: 16,
        stall_limit: Duration::from_secs(120),
        max_queued_bytes: usize::MAX,
        max_queued_total: usize::MAX,
        // The stalled client sends nothing either; it must not be closed as a dead link.
        idle_timeout: Duration::from_secs(120),
        // And alice's flood is not slowed by the chat rate: this test is about the stalled one.
        msg_rate: 0,
        text_rate: 0,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(config);
    let _stalled = server.raw_joined("stalled", "lobby"); // never reads again
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");
    assert!(matches!(next_event(&alice), Event::Joined { .. }));

    let started = Instant::now();
    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..FLOOD {
                alice.send_text(&flood_text(i)).unwrap();
            }
        });
        for i in 0..FLOOD {
            let (from, text) = next_chat(&bob);
            assert_eq!(from, "alice");
            assert_eq!(text, flood_text(i));
        }
    });
    bob.who().unwrap();
    match next_event(&bob) {
        Event::Online { names, .. } => assert!(names.contains(&"stalled".to_string()), "still connected"),
        other => panic!("{other:?}"),
    }
    println!("{FLOOD} messages of 60 KiB past a stalled reader in {:?}", started.elapsed());
}

#[test]
fn a_stalled_reader_is_disconnected_after_the_stall_limit() {
    let config =
        ServerConfig { client_queue: 16, stall_limit: Duration::from_millis(500), ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    let mut stalled = server.raw_joined("stalled", "lobby");
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");

    thread::scope(|s| {
        s.spawn(|| {
            for i in 0..FLOOD {
                alice.send_text(&flood_text(i)).unwrap();
            }
        });
        let mut seen_left = false;
        let mut chats = 0;
        while chats < FLOOD || !seen_left {
            match next_event(&bob) {
                Event::Chat { .. } => chats += 1,
                Event::Left { name, .. } if name == "stalled" => seen_left = true,
                Event::Joined { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    });
    // The relay cut the connection: after the frames it had buffered, the socket ends.
    stalled.reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frames = 0;
    while let Ok(Some(_)) = stalled.reader.read_frame() {
        frames += 1;
    }
    assert!(frames < FLOOD + 3, "it was dropped before getting everything ({frames} frames)");
}

#[test]
fn shutdown_with_clients_connected_says_goodbye_and_stops_quickly() {
    let mut server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "other");
    let mut raw = server.raw_joined("raw", "lobby");
    let _never_said_hello = Raw::connect(server.addr);
    // A joined client that never reads and never closes: the relay must not wait for it forever.
    let mut silent = server.raw_joined("silent", "quiet");
    silent.send(&Frame::Who);
    thread::sleep(Duration::from_millis(100));

    let took = server.stop();
    println!("shutdown took {took:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");

    assert_eq!(next_event(&bob), Event::Disconnected(Disconnect::ServerGoodbye));
    loop {
        match next_event(&alice) {
            Event::Disconnected(why) => {
                assert_eq!(why, Disconnect::ServerGoodbye);
                break;
            }
            Event::Joined { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let frames = raw.recv_until_closed();
    assert_eq!(frames.last(), Some(&Frame::Goodbye), "{frames:?}");
}
