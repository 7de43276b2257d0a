//! Hostile and broken input. Each case must get an error frame (where the connection still allows
//! it) and a closed connection, while the other clients carry on undisturbed.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{next_chat, next_event, Raw, TestServer};
use relaychat::client::{Client, Event};
use relaychat::frame::{ErrorCode, Frame, MAX_FRAME_LEN};
use relaychat::server::ServerConfig;

/// Two library clients that keep chatting while the hostile connection does its thing.
struct Bystanders {
    alice: Client,
    bob: Client,
}

impl Bystanders {
    fn new(server: &TestServer) -> Bystanders {
        let alice = server.client("alice", "lobby");
        let bob = server.client("bob", "lobby");
        assert!(matches!(next_event(&alice), Event::Joined { .. }));
        Bystanders { alice, bob }
    }

    /// Proves the relay still serves: a message each way.
    fn still_chatting(&self, round: &str) {
        self.alice.send_text(&format!("ping {round}")).unwrap();
        assert_eq!(next_chat(&self.bob), ("alice".into(), format!("ping {round}")));
        self.bob.send_text(&format!("pong {round}")).unwrap();
        assert_eq!(next_chat(&self.alice), ("bob".into(), format!("pong {round}")));
    }
}

fn hello(name: &str) -> Frame {
    Frame::hello(name, "lobby")
}

/// The relay answers with an error frame of `code`, then closes.
fn expect_error_then_close(raw: &mut Raw, code: ErrorCode) -> String {
    let frames = raw.recv_until_closed();
    match frames.as_slice() {
        [.., Frame::Error { code: got, message }] if *got == code => message.clone(),
        other => panic!("expected an error {code:?} and a close, got {other:?}"),
    }
}

/// Each row: a name, the bytes a hostile client sends before its hello, and the error it must get.
#[test]
fn garbage_before_hello_gets_an_error_and_a_close() {
    let server = TestServer::start();
    let bystanders = Bystanders::new(&server);
    let mut bad_utf8 = vec![0, 0, 0, 13, 0x01, 0, 1, 0, 0, 0, 2, 0xff, 0xfe, 0, 0, 0, 0];
    bad_utf8[3] = (bad_utf8.len() - 4) as u8;
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), ErrorCode::Protocol),
        ("oversize length", (MAX_FRAME_LEN as u32 + 1).to_be_bytes().to_vec(), ErrorCode::Protocol),
        ("max u32 length", vec![0xff; 4], ErrorCode::Protocol),
        ("zero length", vec![0, 0, 0, 0], ErrorCode::Protocol),
        ("unknown kind", vec![0, 0, 0, 1, 0x7e], ErrorCode::Protocol),
        ("bad utf-8 name", bad_utf8, ErrorCode::Protocol),
        (
            "text before hello",
            relaychat::frame::encode_to_vec(&Frame::say("hi")).unwrap(),
            ErrorCode::Protocol,
        ),
        ("server-only kind", relaychat::frame::encode_to_vec(&Frame::Goodbye).unwrap(), ErrorCode::Protocol),
    ];
    for (i, (what, bytes, code)) in cases.into_iter().enumerate() {
        let mut raw = Raw::connect(server.addr);
        raw.send_bytes(&bytes);
        let message = expect_error_then_close(&mut raw, code);
        assert!(!message.is_empty(), "{what}: the error says why");
        bystanders.still_chatting(&i.to_string());
    }
}

#[test]
fn bad_hellos_are_refused_with_their_own_codes() {
    let server = TestServer::start();
    let bystanders = Bystanders::new(&server);
    let cases = [
        (
            Frame::Hello {
                version: 99,
                name: "x".into(),
                room: "lobby".into(),
                password: String::new(),
                access: String::new(),
                token: String::new(),
            },
            ErrorCode::VersionMismatch,
        ),
        (hello("bad name"), ErrorCode::BadName),
        (hello(""), ErrorCode::BadName),
        (hello("\u{1b}[2J"), ErrorCode::BadName),
        (Frame::hello("ok", "../etc"), ErrorCode::BadRoom),
        (hello("alice"), ErrorCode::NameTaken),
    ];
    for (i, (frame, code)) in cases.into_iter().enumerate() {
        let mut raw = Raw::connect(server.addr);
        raw.send(&frame);
        let message = expect_error_then_close(&mut raw, code);
        assert!(!message.is_empty());
        bystanders.still_chatting(&i.to_string());
    }
}

#[test]
fn broken_frames_after_joining_get_an_error_and_a_close() {
    let server = TestServer::start();
    let bystanders = Bystanders::new(&server);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversize length", vec![0x7f, 0xff, 0xff, 0xff]),
        ("unknown kind", vec![0, 0, 0, 3, 0x6a, 1, 2]),
        ("bad utf-8 text", vec![0, 0, 0, 7, 0x02, 0, 0, 0, 2, 0xc3, 0x28]),
        ("truncated field", vec![0, 0, 0, 5, 0x02, 0, 0, 0, 200]),
        ("hello twice", relaychat::frame::encode_to_vec(&hello("again")).unwrap()),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let mut raw = server.raw_joined(&format!("evil{i}"), "lobby");
        assert!(matches!(next_event(&bystanders.alice), Event::Joined { .. }));
        assert!(matches!(next_event(&bystanders.bob), Event::Joined { .. }));
        raw.send_bytes(&bytes);
        let message = expect_error_then_close(&mut raw, ErrorCode::Protocol);
        assert!(!message.is_empty(), "{what}");
        assert!(
            matches!(next_event(&bystanders.alice), Event::Left { name, .. } if name == format!("evil{i}"))
        );
        assert!(matches!(next_event(&bystanders.bob), Event::Left { .. }));
        bystanders.still_chatting(what);
    }
}

#[test]
fn a_frame_cut_off_by_disconnect_is_just_a_leave() {
    let server = TestServer::start();
    let bystanders = Bystanders::new(&server);
    let mut raw = server.raw_joined("cutoff", "lobby");
    raw.send_bytes(&[0, 0, 1, 0, 0x02, 0, 0]); // announces 256 bytes, sends 3
    drop(raw);
    for client in [&bystanders.alice, &bystanders.bob] {
        assert!(matches!(next_event(client), Event::Joined { .. }));
        assert_eq!(next_event(client), Event::Left { name: "cutoff".into(), room: "lobby".into() });
    }
    bystanders.still_chatting("after cutoff");
}

#[test]
fn a_text_that_breaks_the_rules_is_refused_but_the_connection_stays() {
    let server = TestServer::start();
    let bystanders = Bystanders::new(&server);
    let mut raw = server.raw_joined("blank", "lobby");
    raw.send(&Frame::say("   "));
    assert!(matches!(raw.recv(), Frame::Error { code: ErrorCode::BadText, .. }));
    raw.send(&Frame::say(&"x".repeat(relaychat::rules::MAX_TEXT_BYTES + 1)));
    assert!(matches!(raw.recv(), Frame::Error { code: ErrorCode::BadText, .. }));
    raw.send(&Frame::say("fine"));
    for client in [&bystanders.alice, &bystanders.bob] {
        assert!(matches!(next_event(client), Event::Joined { .. }));
        assert_eq!(next_chat(client), ("blank".into(), "fine".into()));
    }
    bystanders.still_chatting("after bad text");
}

#[test]
fn a_connection_that_never_says_hello_is_closed_after_the_timeout() {
    let timeout = Duration::from_millis(300);
    let server = TestServer::start_with(ServerConfig { hello_timeout: timeout, ..ServerConfig::default() });
    let bystanders = Bystanders::new(&server);
    let started = Instant::now();
    let mut silent = Raw::connect(server.addr);
    let message = expect_error_then_close(&mut silent, ErrorCode::HelloTimeout);
    assert!(started.elapsed() >= timeout, "closed too early");
    assert!(message.contains("no hello"), "{message}");
    bystanders.still_chatting("after timeout");
}

#[test]
fn the_default_hello_timeout_is_ten_seconds() {
    assert_eq!(ServerConfig::default().hello_timeout, Duration::from_secs(10));
}

#[test]
fn many_half_open_connections_do_not_block_joining() {
    // Fifty from one address: past the default per-address cap, which tests/front_door.rs covers.
    let server = TestServer::start_with(ServerConfig { max_per_address: 64, ..ServerConfig::default() });
    let idle: Vec<Raw> = (0..50).map(|_| Raw::connect(server.addr)).collect();
    thread::sleep(Duration::from_millis(50));
    let bystanders = Bystanders::new(&server);
    bystanders.still_chatting("with 50 idle connections");
    drop(idle);
}
