//! The relay's bounds behave as documented for honest users: long lists arrive whole, in pages;
//! offline messages arrive whole, in order, a page at a time; caps refuse with a clear error and
//! keep the connection; nobody can touch an upload that is not theirs; things wait only for
//! names someone owns. (The attacks themselves are played in `abuse_*.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use relaychat::client::{Event, Mark};
use relaychat::frame::{ErrorCode, Frame};
use relaychat::server::{ServerConfig, StoreLimits};
use sha2::{Digest, Sha256};

/// No rate limit, so a test can send hundreds of messages quickly.
fn unthrottled() -> ServerConfig {
    ServerConfig { msg_rate: 0, text_rate: 0, request_rate: 0, ..ServerConfig::default() }
}

/// The next frame that is not chat, a notice or a file announcement.
fn next_answer(raw: &mut Raw) -> Frame {
    loop {
        match raw.recv() {
            Frame::Chat { .. } | Frame::Joined { .. } | Frame::Left { .. } | Frame::NewFile(_) => {}
            frame => return frame,
        }
    }
}

/// Uploads `data` over a raw connection; returns the relay's answer to the end of it.
fn raw_upload(raw: &mut Raw, key: &str, data: &[u8], to: &str) -> Frame {
    let start = Frame::UploadStart {
        key: key.into(),
        name: format!("{key}.txt"),
        size: data.len() as u64,
        to: to.into(),
    };
    raw.send(&start);
    let upload_id = match next_answer(raw) {
        Frame::UploadReady { upload_id, offset: 0 } => upload_id,
        refused => return refused,
    };
    raw.send(&Frame::UploadChunk { upload_id, data: data.to_vec() });
    raw.send(&Frame::UploadEnd { upload_id, sha256: Sha256::digest(data).into() });
    next_answer(raw)
}

#[test]
fn offline_messages_arrive_whole_and_in_order_a_page_at_a_time() {
    let server = TestServer::start_with(unthrottled());
    server.account("bob", "pw", "lobby").close();
    let alice = server.client("alice", "lobby");
    for i in 0..300 {
        alice.send_text(&format!("message {i}")).unwrap();
    }
    let bob = server.account("bob", "pw", "lobby");
    let mut got = Vec::new();
    while got.len() < 300 {
        let (mark, text) = wait_for(&bob, "offline messages", |e| match e {
            Event::Chat { mark, text, .. } => Some((*mark, text.clone())),
            _ => None,
        });
        assert_eq!(mark, Mark::Offline, "{text}");
        got.push(text);
    }
    let want: Vec<String> = (0..300).map(|i| format!("message {i}")).collect();
    assert_eq!(got, want);
    // A clean close sends the client's last Seen frames before its goodbye. (A client that dies
    // before confirming gets the unconfirmed ones again, by design.)
    bob.close();
    // Each came once: the next login brings nothing more (the history is of the room, and bob's
    // own delivery marked them seen).
    let bob = server.account("bob", "pw", "lobby");
    bob.who().unwrap();
    let offline = wait_for(&bob, "the online list", |e| match e {
        Event::Chat { mark: Mark::Offline, .. } => Some(true),
        Event::Online { .. } => Some(false),
        _ => None,
    });
    assert!(!offline, "offline messages are delivered once");
}

#[test]
fn a_full_recipient_refuses_with_a_warning_and_the_sender_stays_connected() {
    let server = TestServer::start_with(ServerConfig { max_pending_messages: 3, ..unthrottled() });
    server.account("bob", "pw", "elsewhere").close();
    let alice = server.client("alice", "lobby");
    for i in 0..5 {
        alice.send_direct("bob", &format!("note {i}")).unwrap();
    }
    for _ in 0..2 {
        let (code, message) = wait_for(&alice, "a warning", |e| match e {
            Event::Warning { code, message } => Some((*code, message.clone())),
            _ => None,
        });
        assert_eq!(code, ErrorCode::RecipientFull, "{message}");
        assert!(message.contains("bob"), "{message}");
    }
    alice.send_text("still connected").unwrap();
    let bob = server.account("bob", "pw", "elsewhere");
    let texts: Vec<String> = (0..3)
        .map(|_| {
            wait_for(&bob, "a note", |e| match e {
                Event::Chat { text, .. } => Some(text.clone()),
                _ => None,
            })
        })
        .collect();
    assert_eq!(texts, vec!["note 0", "note 1", "note 2"]);
}

#[test]
fn things_wait_only_for_names_someone_owns() {
    let server = TestServer::start_with(unthrottled());
    let mut raw = server.raw_joined("alice", "lobby");
    raw.send(&Frame::Say { client_id: 0, to: "stranger".into(), text: "hello?".into() });
    match next_answer(&mut raw) {
        Frame::Error { code: ErrorCode::UnknownRecipient, message } => {
            assert!(message.contains("no account"), "{message}")
        }
        other => panic!("expected UnknownRecipient, got {other:?}"),
    }
    match raw_upload(&mut raw, "k", b"data", "stranger") {
        Frame::UploadFailed { code: ErrorCode::UnknownRecipient, .. } => {}
        other => panic!("expected UnknownRecipient, got {other:?}"),
    }
    // A guest online gets a file, but only for as long as its session lasts.
    let gus = server.client("gus", "lobby");
    assert!(matches!(raw_upload(&mut raw, "g", b"for gus", "gus"), Frame::UploadDone { .. }));
    wait_for(&gus, "the announcement", |e| matches!(e, Event::NewFile(_)).then_some(()));
    gus.close();
    let files = server.data_dir.path.join("files");
    wait_until("gus's file to go with his session", WAIT, || files_under(&files).is_empty().then_some(()));
    let gus = server.client("gus", "lobby");
    let dl = TempDir::new("dl");
    let (paths, failures) = receive_into(&gus, &dl.path);
    assert!(paths.is_empty() && failures.is_empty(), "the next gus finds nothing");
}

#[test]
fn nobody_touches_an_upload_that_is_not_theirs() {
    let server = TestServer::start_with(unthrottled());
    server.account("bob", "pw", "elsewhere").close();
    let mut alice = server.raw_joined("alice", "lobby");
    let mut mallory = server.raw_joined("mallory", "lobby");
    let data = vec![7u8; 10_000];
    alice.send(&Frame::UploadStart { key: "k".into(), name: "a.bin".into(), size: 10_000, to: "bob".into() });
    let Frame::UploadReady { upload_id, .. } = next_answer(&mut alice) else { panic!("not ready") };
    alice.send(&Frame::UploadChunk { upload_id, data: data[..5000].to_vec() });
    // Mallory names alice's upload: a clear error, and nothing changes.
    mallory.send(&Frame::UploadChunk { upload_id, data: vec![0; 10] });
    mallory.send(&Frame::UploadEnd { upload_id, sha256: [0; 32] });
    match next_answer(&mut mallory) {
        Frame::UploadFailed { upload_id: id, code: ErrorCode::BadTransfer, .. } => assert_eq!(id, upload_id),
        other => panic!("expected BadTransfer, got {other:?}"),
    }
    alice.send(&Frame::UploadChunk { upload_id, data: data[5000..].to_vec() });
    alice.send(&Frame::UploadEnd { upload_id, sha256: Sha256::digest(&data).into() });
    assert!(matches!(next_answer(&mut alice), Frame::UploadDone { .. }), "alice's upload completes");
}

#[test]
fn long_file_lists_come_in_pages_and_caps_refuse_clearly() {
    let limits = StoreLimits { files_per_recipient: 600, ..StoreLimits::default() };
    let server = TestServer::start_with(ServerConfig { limits, ..unthrottled() });
    server.account("bob", "pw", "elsewhere").close();
    let mut alice = server.raw_joined("alice", "lobby");
    for i in 0..600 {
        let answer = raw_upload(&mut alice, &format!("f{i}"), b"x", "bob");
        assert!(matches!(answer, Frame::UploadDone { .. }), "file {i}: {answer:?}");
    }
    match raw_upload(&mut alice, "one-too-many", b"x", "bob") {
        Frame::UploadFailed { code: ErrorCode::RecipientFull, message, .. } => {
            assert!(message.contains("bob"), "{message}")
        }
        other => panic!("expected RecipientFull, got {other:?}"),
    }
    let mut bob = Raw::connect(server.addr);
    bob.send(&hello_as("bob", "elsewhere", "pw", ""));
    assert!(matches!(bob.recv(), Frame::Welcome { .. }));
    bob.send(&Frame::ListFiles);
    let (mut files, mut pages) = (0, 0);
    loop {
        match bob.recv() {
            Frame::FileList { files: page, more } => {
                files += page.len();
                pages += 1;
                if !more {
                    break;
                }
            }
            _ => continue,
        }
    }
    assert_eq!((files, pages), (600, 2), "512 per frame");
}

#[test]
fn a_message_id_out_of_range_is_refused_and_the_connection_kept() {
    let server = TestServer::start_with(unthrottled());
    let mut raw = server.raw_joined("raw", "lobby");
    raw.send(&Frame::Say { client_id: u64::MAX, to: String::new(), text: "too big".into() });
    match next_answer(&mut raw) {
        Frame::Error { code: ErrorCode::BadMessageId, .. } => {}
        other => panic!("expected BadMessageId, got {other:?}"),
    }
    raw.send(&Frame::Say { client_id: 5, to: String::new(), text: "fine".into() });
    assert!(matches!(next_answer(&mut raw), Frame::Sent { client_id: 5, .. }));
}

#[test]
fn a_fast_sender_is_slowed_to_the_rate_and_loses_nothing() {
    let config = ServerConfig { msg_rate: 20, msg_burst: 10, ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    let bob = server.client("bob", "lobby");
    let alice = server.client("alice", "lobby");
    let start = Instant::now();
    for i in 0..30 {
        alice.send_text(&format!("{i}")).unwrap();
    }
    for i in 0..30 {
        let text = wait_for(&bob, "chat", |e| match e {
            Event::Chat { text, .. } => Some(text.clone()),
            _ => None,
        });
        assert_eq!(text, format!("{i}"));
    }
    // 10 at once, then 20 at 20 per second.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "the rate held: {took:?}");
}

#[test]
fn joining_a_room_full_of_the_largest_messages_does_not_get_anyone_cut() {
    // 50 messages of history at 64 KiB would be 3.2 MiB, over this queue limit at once.
    let server = TestServer::start_with(ServerConfig { max_queued_bytes: 3 << 20, ..unthrottled() });
    server.account("bob", "pw", "lobby").close();
    let alice = server.client("alice", "lobby");
    let big = "x".repeat(relaychat::rules::MAX_TEXT_BYTES);
    for _ in 0..120 {
        alice.send_text(&big).unwrap(); // 7.5 MiB for bob, and as much history for anyone
    }
    alice.who().unwrap();
    wait_for(&alice, "the relay to take them", |e| matches!(e, Event::Online { .. }).then_some(()));
    let bob = server.account("bob", "pw", "lobby");
    let carol = server.client("carol", "lobby");
    let mut offline = 0;
    while offline < 120 {
        let mark = wait_for(&bob, "offline messages", |e| match e {
            Event::Chat { mark, .. } => Some(*mark),
            _ => None,
        });
        offline += usize::from(mark == Mark::Offline);
    }
    // carol got a history (trimmed to what fits a page) and is still connected, as is bob.
    carol.who().unwrap();
    wait_for(&carol, "the online list", |e| matches!(e, Event::Online { .. }).then_some(()));
    bob.who().unwrap();
    wait_for(&bob, "the online list", |e| matches!(e, Event::Online { .. }).then_some(()));
}
