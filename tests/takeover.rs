//! Getting your name back: a login that proves it is the same person takes an online name over at
//! once, and the old connection hears "logged in elsewhere". Anyone else is still refused.
//!
//! (The same with the real binaries, a crash-and-restart loop and vanished links, in a network
//! namespace: `tests/links.rs`.)

mod common;

use std::time::Duration;

use common::*;
use relaychat::client::{Client, ClientError, Disconnect, Event};
use relaychat::frame::{ErrorCode, Frame};
use relaychat::server::ServerConfig;

const TOKEN_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const TOKEN_B: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

fn connect(server: &TestServer, name: &str, password: &str, token: &str) -> Result<Client, ClientError> {
    let mut config = client_config(name, "lobby");
    config.password = password.into();
    config.token = token.into();
    let client = Client::connect_tcp(&server.addr.to_string(), &config)?;
    match next_event(&client) {
        Event::Online { .. } => Ok(client),
        other => panic!("{name}: expected the online list first, got {other:?}"),
    }
}

/// The old client's last word: it must be LoggedInElsewhere, and nothing after it.
fn assert_taken_over(old: &Client) {
    let why = wait_for(old, "the takeover notice", |e| match e {
        Event::Disconnected(why) => Some(why.clone()),
        _ => None,
    });
    match &why {
        Disconnect::ServerError { code: ErrorCode::LoggedInElsewhere, message } => {
            assert!(message.contains("logged in elsewhere"), "{message}")
        }
        other => panic!("expected LoggedInElsewhere, got {other:?}"),
    }
    assert!(!why.may_reconnect(), "a client must not answer a takeover by reconnecting");
}

fn online(client: &Client) -> Vec<String> {
    client.who().unwrap();
    wait_for(client, "the online list", |e| match e {
        Event::Online { names, .. } => Some(names.clone()),
        _ => None,
    })
}

#[test]
fn the_right_password_takes_an_online_name_over() {
    let server = TestServer::start();
    let first = connect(&server, "alice", "s3cret", "").unwrap();
    let bob = server.client("bob", "lobby");
    // Another machine (another token), the same password: in at once.
    let second = connect(&server, "alice", "s3cret", TOKEN_B).unwrap();
    assert_taken_over(&first);
    assert_eq!(online(&bob), vec!["alice".to_string(), "bob".to_string()]);
    // The new session is the real one: chat reaches it.
    bob.send_text("welcome back").unwrap();
    let text = wait_for(&second, "chat", |e| match e {
        Event::Chat { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(text, "welcome back");
}

#[test]
fn a_wrong_password_takes_nothing_over() {
    let server = TestServer::start();
    let first = connect(&server, "alice", "s3cret", "").unwrap();
    match connect(&server, "alice", "guess", "") {
        Err(ClientError::Refused { code: ErrorCode::BadPassword, .. }) => {}
        other => panic!("expected BadPassword, got {:?}", other.map(|_| "connected")),
    }
    // The first session did not notice anything.
    assert_no_event(&first, Duration::from_millis(300));
    assert_eq!(online(&first), vec!["alice".to_string()]);
}

#[test]
fn the_same_machine_token_takes_over_after_a_crash() {
    // A machine-bound account (token, no password), as the terminal client and window make. Its
    // first client "crashed" without closing: here, a raw connection that just stays open.
    let server = TestServer::start();
    let mut crashed = raw_hello(&server, "alice", TOKEN_A);
    let back = connect(&server, "alice", "", TOKEN_A).unwrap();
    let frames = crashed.recv_until_closed();
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Error { code: ErrorCode::LoggedInElsewhere, .. })),
        "the stale connection is told why and closed: {frames:?}"
    );
    assert_eq!(online(&back), vec!["alice".to_string()]);
    // Another machine's token is still refused.
    assert!(matches!(
        connect(&server, "alice", "", TOKEN_B),
        Err(ClientError::Refused { code: ErrorCode::BadPassword, .. })
    ));
}

#[test]
fn a_guest_takes_over_with_its_resume_token_and_only_with_it() {
    // No new accounts at all: every hello with a token is a guest (the relay's fallback when an
    // address made too many accounts), and the token is its resume secret.
    let config = ServerConfig { accounts_per_address_per_hour: 0, ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    let first = connect(&server, "gus", "", TOKEN_A).unwrap();
    let bob = server.client("bob", "lobby");
    // A stranger, with another token or none, cannot take the guest's name.
    for token in [TOKEN_B, ""] {
        match connect(&server, "gus", "", token) {
            Err(ClientError::Refused { code: ErrorCode::NameTaken, .. }) => {}
            other => panic!("token {token:?}: expected NameTaken, got {:?}", other.map(|_| "connected")),
        }
    }
    // The same machine can.
    let second = connect(&server, "gus", "", TOKEN_A).unwrap();
    assert_taken_over(&first);
    assert_eq!(online(&bob), vec!["bob".to_string(), "gus".to_string()]);
    drop(second);
}

#[test]
fn a_guest_without_a_token_cannot_be_taken_over() {
    let server = TestServer::start();
    let first = connect(&server, "gus", "", "").unwrap();
    match connect(&server, "gus", "", "") {
        Err(ClientError::Refused { code: ErrorCode::NameTaken, .. }) => {}
        other => panic!("expected NameTaken, got {:?}", other.map(|_| "connected")),
    }
    assert_eq!(online(&first), vec!["gus".to_string()]);
}

#[test]
fn a_guest_file_survives_the_guests_takeover() {
    // Files for a guest live as long as its session; a takeover by the same guest continues the
    // session, so the file must still be there.
    let config = ServerConfig { accounts_per_address_per_hour: 0, ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    let first = connect(&server, "gus", "", TOKEN_A).unwrap();
    let bob = server.client("bob", "lobby");
    let dir = TempDir::new("takeover");
    let path = random_file(&dir.path, "for-gus.bin", 10_000, 7);
    bob.send_file(&path, Some("gus")).unwrap();
    wait_uploaded(&bob, "for-gus.bin");
    let second = connect(&server, "gus", "", TOKEN_A).unwrap();
    assert_taken_over(&first);
    let got = dir.path.join("got");
    std::fs::create_dir_all(&got).unwrap();
    let (files, failed) = receive_into(&second, &got);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read(&files[0]).unwrap(), std::fs::read(&path).unwrap());
}

/// A raw connection that said hello with a token and read its welcome.
fn raw_hello(server: &TestServer, name: &str, token: &str) -> Raw {
    let mut raw = Raw::connect(server.addr);
    raw.send(&hello_as(name, "lobby", "", token));
    assert!(matches!(raw.recv(), Frame::Welcome { .. }));
    raw
}
