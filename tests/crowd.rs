//! Big rooms: past `big_room` people, arrivals and departures are counted and announced once a
//! second (`Crowd`), not one by one to everyone (docs/PROTOCOL.md, "Big rooms").

mod common;

use std::time::{Duration, Instant};

use common::{Raw, TestServer};
use relaychat::frame::Frame;
use relaychat::server::ServerConfig;

fn relay(big_room: usize) -> TestServer {
    TestServer::start_with(ServerConfig {
        big_room,
        max_per_address: 1000,
        connect_rate: 0,
        request_rate: 0,
        ..ServerConfig::default()
    })
}

/// Says hello and reads the welcome; returns the connection and what came right after it.
fn join(server: &TestServer, name: &str) -> (Raw, Frame) {
    let mut raw = Raw::connect(server.addr);
    raw.send(&Frame::hello(name, "hall"));
    assert_eq!(raw.recv(), Frame::Welcome { name: name.into(), room: "hall".into() });
    let next = raw.recv();
    (raw, next)
}

/// Reads presence frames until a Crowd says `online`; returns the Crowds seen. Anything else
/// (a Joined or Left in a big room) fails the test.
fn crowds_until(raw: &mut Raw, online: u32) -> Vec<(u32, u32, u32)> {
    let mut seen = Vec::new();
    raw.recv_until(&format!("Crowd with {online} online"), |frame| match frame {
        Frame::Crowd { online: n, joined, left, .. } => {
            seen.push((*n, *joined, *left));
            *n == online
        }
        other => panic!("a big room announced {other:?}"),
    });
    seen
}

#[test]
fn a_big_room_counts_arrivals_and_departures_and_a_shrunk_one_lists_again() {
    let server = relay(4);
    // Small: one by one, and each newcomer gets the list.
    let (mut first, online) = join(&server, "m0");
    assert_eq!(online, Frame::Online { room: "hall".into(), names: vec!["m0".into()], more: false });
    let mut members = vec![];
    for i in 1..4 {
        let (raw, online) = join(&server, &format!("m{i}"));
        assert!(matches!(online, Frame::Online { ref names, .. } if names.len() == i + 1), "{online:?}");
        assert_eq!(first.recv(), Frame::Joined { name: format!("m{i}"), room: "hall".into() });
        members.push(raw);
    }

    // The fifth makes the room big: it gets the head count, not the list, and nobody gets a
    // Joined for it or for the next two.
    let started = Instant::now();
    for i in 4..7 {
        let (raw, count) = join(&server, &format!("m{i}"));
        assert_eq!(count, Frame::Crowd { room: "hall".into(), online: i as u32 + 1, joined: 0, left: 0 });
        members.push(raw);
    }
    let crowds = crowds_until(&mut first, 7);
    let joined: u32 = crowds.iter().map(|c| c.1).sum();
    assert_eq!(joined, 3, "every arrival is counted once: {crowds:?}");
    assert!(crowds.len() <= 3, "at most one count per arrival, usually one for all: {crowds:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "counts come within about a second");

    // Who still lists everyone in a big room.
    first.send(&Frame::Who);
    match first.recv() {
        Frame::Online { names, more: false, .. } => assert_eq!(names.len(), 7),
        other => panic!("expected the full list, got {other:?}"),
    }

    // Three leave (7 -> 4, still above half of 4): counted.
    for raw in members.drain(3..6) {
        drop(raw);
    }
    let crowds = crowds_until(&mut first, 4);
    assert_eq!(crowds.iter().map(|c| c.2).sum::<u32>(), 3, "{crowds:?}");

    // Down to 2 (half of 4): small again, and everyone left gets the list once.
    members.drain(1..3);
    match first.recv() {
        Frame::Online { names, more: false, .. } => assert_eq!(names, vec!["m0".to_string(), "m1".into()]),
        other => panic!("a room shrunk back to small sends the list, got {other:?}"),
    }
    let (_again, _) = join(&server, "m9");
    assert_eq!(first.recv(), Frame::Joined { name: "m9".into(), room: "hall".into() }, "one by one again");
}

/// The regression test for the quadratic: filling a room of 300 must cost one member about
/// `big_room` presence frames, not 300, and each newcomer one frame, not a list of hundreds.
#[test]
fn filling_a_room_of_300_costs_each_member_a_bounded_number_of_presence_frames() {
    let server = relay(ServerConfig::default().big_room);
    let (mut first, _) = join(&server, "p0");
    let mut others = Vec::new();
    for i in 1..300 {
        let (raw, after_welcome) = join(&server, &format!("p{i}"));
        if i > 100 {
            assert!(matches!(after_welcome, Frame::Crowd { .. }), "newcomer {i} got {after_welcome:?}");
        }
        others.push(raw);
    }
    let mut joined = 0;
    let mut frames = 0;
    first.recv_until("the room to settle at 300 online", |frame| {
        frames += 1;
        match frame {
            Frame::Joined { .. } => joined += 1,
            Frame::Crowd { online: 300, .. } => return true,
            Frame::Crowd { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        false
    });
    assert_eq!(joined, 99, "one by one only while the room was small (2..=100 people)");
    assert!(frames <= 99 + 12, "{frames} presence frames for 299 arrivals");
}
