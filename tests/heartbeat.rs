//! The heartbeat: a silent connection is closed by the relay and its name freed; an idle client
//! that pings stays; a client notices a relay that has gone silent.
//!
//! (The vanished-link tests in a network namespace, with `tc`, belong to the rest of issue 9.)

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use relaychat::client::{Client, ClientConfig, Event, Security};
use relaychat::frame::{encode_to_vec, Frame};
use relaychat::server::ServerConfig;

fn quick_idle() -> ServerConfig {
    ServerConfig { idle_timeout: Duration::from_millis(800), ..ServerConfig::default() }
}

#[test]
fn a_silent_connection_is_closed_and_its_name_freed() {
    let server = TestServer::start_with(quick_idle());
    let mut silent = server.raw_joined("bob", "lobby"); // says hello, then nothing at all
    let started = Instant::now();
    assert!(silent.recv_until_closed().iter().all(|f| !matches!(f, Frame::Error { .. })));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(5), "closed after {took:?}");
    // The name is free again at once.
    let bob = server.client("bob", "lobby");
    drop(bob);
}

#[test]
fn an_idle_client_that_pings_stays_connected() {
    let server = TestServer::start_with(quick_idle());
    let mut config = client_config("alice", "lobby");
    config.ping_every = Duration::from_millis(200);
    let alice = Client::connect_tcp(&server.addr.to_string(), &config).unwrap();
    thread::sleep(Duration::from_secs(3)); // nearly four idle timeouts, saying nothing but Ping
    let bob = server.client("bob", "lobby");
    bob.send_text("still there?").unwrap();
    let text = wait_for(&alice, "chat", |e| match e {
        Event::Chat { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(text, "still there?");
}

#[test]
fn a_client_notices_a_relay_that_went_silent() {
    // A "relay" that welcomes, then never says anything again: as if the link had vanished.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let welcome = Frame::Welcome { name: "alice".into(), room: "lobby".into() };
        let online = Frame::Online { room: "lobby".into(), names: vec!["alice".into()], more: false };
        for frame in [welcome, online] {
            stream.write_all(&encode_to_vec(&frame).unwrap()).unwrap();
        }
        thread::sleep(Duration::from_secs(5)); // reads nothing, answers no Ping
    });
    let mut config = ClientConfig::new("alice", "lobby");
    config.security = Security::Plaintext; // the fake relay speaks no TLS
    config.ping_every = Duration::from_millis(200);
    config.idle_timeout = Duration::from_millis(800);
    let alice = Client::connect_tcp(&addr.to_string(), &config).unwrap();
    let started = Instant::now();
    let why = wait_for(&alice, "the client to give up", |e| match e {
        Event::Disconnected(why) => Some(format!("{why:?}")),
        _ => None,
    });
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "noticed after {took:?}");
    assert!(why.contains("no sign of life"), "{why}");
    drop(alice);
    fake.join().unwrap();
}

#[test]
fn a_long_upload_is_not_taken_for_a_dead_relay() {
    // While a client uploads, the relay has nothing to say until the upload is done. The client
    // must still hear from it (the Pongs to the Pings its busy writer keeps sending), or an
    // upload longer than the idle timeout would be cut as a dead link. Found in a namespace test
    // on a 16 Mbit/s link (tests/links.rs); here the upload is slowed by a delay per chunk.
    let server = TestServer::start_with(quick_idle());
    let dir = TempDir::new("long-upload");
    let path = random_file(&dir.path, "long.bin", 16 * 64 * 1024, 3);
    let mut config = client_config("alice", "lobby");
    config.ping_every = Duration::from_millis(200);
    config.idle_timeout = Duration::from_millis(800);
    config.chunk_size = 64 * 1024;
    config.chunk_delay = Some(Duration::from_millis(150)); // 16 chunks: about 2.4 s, 3 idle timeouts
    let alice = Client::connect_tcp(&server.addr.to_string(), &config).unwrap();
    let mut bob_config = client_config("bob", "lobby");
    bob_config.ping_every = Duration::from_millis(200); // bob idles through it all
    let bob = Client::connect_tcp(&server.addr.to_string(), &bob_config).unwrap();
    let started = Instant::now();
    alice.send_file(&path, Some("bob")).unwrap();
    let outcome = wait_for(&alice, "the upload's end", |e| match e {
        Event::Uploaded { .. } => Some(Ok(())),
        Event::TransferFailed { reason, .. } => Some(Err(reason.clone())),
        Event::Disconnected(why) => Some(Err(format!("{why}"))),
        _ => None,
    });
    assert_eq!(outcome, Ok(()));
    assert!(started.elapsed() > Duration::from_secs(2), "the upload was meant to outlast the idle timeout");
    drop(bob);
}
