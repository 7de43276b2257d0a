//! The front door, over real loopback sockets: connection caps, the hello deadline, bounded
//! password hashing, the login brake, identity tokens (machine-bound accounts) and look-alike
//! names. Everything a peer can make the relay hold before it has joined is bounded here.
//!
//! Tests that need a second source address connect *from* 127.0.0.2, 127.0.0.3, ... (the whole
//! 127/8 is loopback on Linux); they are Linux-only.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::client_config;
use common::proc::Proc;
use common::relay::{Keys, RelayOptions};
use common::{next_event, wait_until, Raw, TempDir, TestServer, WAIT};
use relaychat::client::{Client, ClientConfig, ClientError, Event};
use relaychat::frame::{encode_to_vec, ErrorCode, Frame};
use relaychat::server::ServerConfig;

const TOKEN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn hello(name: &str, password: &str, token: &str) -> Frame {
    common::hello_as(name, "lobby", password, token)
}

fn config(name: &str, password: &str, token: &str) -> ClientConfig {
    let mut config = client_config(name, "lobby");
    config.password = password.into();
    config.token = token.into();
    config
}

/// Logs in with the library client from 127.0.0.1.
fn login(server: &TestServer, name: &str, password: &str, token: &str) -> Result<Client, ClientError> {
    Client::connect_tcp(&server.addr.to_string(), &config(name, password, token))
}

/// Logs in with the library client from another loopback address.
#[cfg(target_os = "linux")]
fn login_from(
    from: [u8; 4],
    server: &TestServer,
    name: &str,
    password: &str,
    token: &str,
) -> Result<Client, ClientError> {
    Client::connect(connect_from(from, server.addr), &config(name, password, token))
}

/// A TCP connection from a chosen loopback address.
#[cfg(target_os = "linux")]
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let stream = common::connect_from(from.into(), to, WAIT).expect("connect from a loopback address");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
}

fn refused(result: Result<Client, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got in"),
    }
}

/// The first frame a raw connection gets must be an error with `code`, then the end.
fn expect_refusal(raw: &mut Raw, code: ErrorCode) -> String {
    let frames = raw.recv_until_closed();
    match frames.as_slice() {
        [Frame::Error { code: got, message }] if *got == code => message.clone(),
        other => panic!("expected only an error {code:?} and a close, got {other:?}"),
    }
}

fn joined(client: Client) -> Client {
    assert!(matches!(next_event(&client), Event::Online { .. }));
    client
}

// ---- Connection caps ----

#[test]
fn over_the_connection_cap_a_newcomer_gets_relay_full_and_a_slot_frees_when_someone_leaves() {
    let server = TestServer::start_with(ServerConfig {
        max_connections: Some(3),
        max_per_address: 100,
        ..ServerConfig::default()
    });
    let mut idle: Vec<Raw> = (0..3).map(|_| Raw::connect(server.addr)).collect();
    let mut late = Raw::connect(server.addr);
    let message = expect_refusal(&mut late, ErrorCode::RelayFull);
    assert!(message.contains("full"), "{message}");
    idle.pop(); // its thread ends, and the accept thread counts it out at the next connection
    wait_until("a freed slot is given to a newcomer", WAIT, || {
        let mut raw = Raw::connect(server.addr);
        raw.send(&Frame::hello("newcomer", "lobby"));
        matches!(raw.reader.read_frame(), Ok(Some(Frame::Welcome { .. }))).then_some(())
    });
}

#[cfg(target_os = "linux")]
#[test]
fn one_address_is_capped_and_another_still_gets_in() {
    let server = TestServer::start_with(ServerConfig { max_per_address: 2, ..ServerConfig::default() });
    let _held = [Raw::connect(server.addr), Raw::connect(server.addr)];
    let mut third = Raw::connect(server.addr);
    let message = expect_refusal(&mut third, ErrorCode::RelayFull);
    assert!(message.contains("your address"), "{message}");
    joined(login_from([127, 0, 0, 2], &server, "other", "", "").expect("another address gets in")).close();
}

// ---- The hello ----

#[test]
fn a_hello_trickled_one_byte_at_a_time_still_meets_the_deadline() {
    let timeout = Duration::from_millis(800);
    let server = TestServer::start_with(ServerConfig { hello_timeout: timeout, ..ServerConfig::default() });
    let mut raw = Raw::connect(server.addr);
    let started = Instant::now();
    let mut writer = raw.reader.get_ref().try_clone().unwrap();
    let bytes = encode_to_vec(&hello("slowpoke", "", "")).unwrap();
    // Each byte comes well within the timeout of the one before: a per-read timeout would never
    // fire, and the whole hello would take seconds.
    let trickle = thread::spawn(move || {
        for byte in bytes.iter().take(bytes.len() - 1) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(150));
        }
    });
    let message = expect_refusal(&mut raw, ErrorCode::HelloTimeout);
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(700),
        "closed after {took:?}: {message}"
    );
    let _ = trickle.join();
}

#[test]
fn oversize_secrets_in_a_hello_are_refused_as_field_too_long() {
    let server = TestServer::start();
    let long = |n| "x".repeat(n);
    for (what, frame) in [
        ("password", hello("p", &long(1025), "")),
        ("token", hello("t", "", &long(129))),
        ("access password", {
            let Frame::Hello { version, name, room, password, token, .. } = hello("a", "", "") else {
                unreachable!()
            };
            Frame::Hello { version, name, room, password, access: long(1025), token }
        }),
    ] {
        let mut raw = Raw::connect(server.addr);
        raw.send(&frame);
        let message = expect_refusal(&mut raw, ErrorCode::FieldTooLong);
        assert!(message.contains(what), "{message}");
    }
    // At the limits, all is well.
    joined(login(&server, "fits", &long(1024), &long(128)).unwrap()).close();
}

// ---- The hash pool ----

/// VmHWM (peak resident memory) of a process, in bytes.
#[cfg(target_os = "linux")]
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().to_owned();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn a_flood_of_password_hellos_holds_bounded_memory_and_guests_still_get_in() {
    // The real relay binary, so its memory is its own.
    // One address plays many strangers here: its own caps on connections, new connections and
    // password checks are lifted, so what is measured is the hash pool itself. The flood speaks
    // raw frames.
    let relay = RelayOptions::new()
        .keys(Keys::SharedAndPlaintext)
        .flag("--max-per-address", 1000)
        .flag("--connect-rate", 0)
        .flag("--password-rate", 0)
        .start();
    let addr = relay.addr;
    let server_addr = addr.to_string();
    Client::connect_tcp(&server_addr, &config("victim", "hunter2", "")).unwrap().close();
    let before = peak_rss(relay.pid());

    // 150 hellos at once, each with the right password: nothing here is a failure for the brake
    // to slow down, so every one of them wants an argon2 check right away.
    let flood: Vec<_> = (0..150)
        .map(|_| {
            thread::spawn(move || {
                let mut raw = Raw::connect(addr);
                raw.send(&hello("victim", "hunter2", ""));
                match raw.reader.read_frame() {
                    Ok(Some(Frame::Error { code, .. })) => Some(code),
                    Ok(Some(_)) => None, // got in (or was told the name is online)
                    other => panic!("no answer to a password hello: {other:?}"),
                }
            })
        })
        .collect();
    let started = Instant::now();
    joined(Client::connect_tcp(&server_addr, &config("guest", "", "")).expect("a guest gets in")).close();
    let guest_took = started.elapsed();
    let codes: Vec<Option<ErrorCode>> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let busy = codes.iter().filter(|c| **c == Some(ErrorCode::LoginBusy)).count();
    let peak = peak_rss(relay.pid());
    assert!(guest_took < Duration::from_secs(2), "the guest waited {guest_took:?}");
    assert!(busy > 0, "a full hash queue answers LoginBusy: {codes:?}");
    assert!(
        codes.iter().all(|c| matches!(c, None | Some(ErrorCode::LoginBusy) | Some(ErrorCode::NameTaken))),
        "{codes:?}"
    );
    // Two argon2 hashes in flight (2 × 19 MiB) plus the relay itself; 150 at once would be ~2.8 GiB.
    assert!(peak < 160 << 20, "peak RSS {} MiB (before the flood: {} MiB)", peak >> 20, before >> 20);
    eprintln!("flood: {busy}/150 told busy, guest in {guest_took:?}, relay peak RSS {} MiB", peak >> 20);
}

// ---- The brake ----

#[test]
fn a_guest_login_from_the_same_address_does_not_release_the_brake() {
    let backoff = Duration::from_millis(300);
    // The brake is what this test watches, not the per-address rate of password checks.
    let config = ServerConfig { login_backoff: backoff, password_rate: 0, ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    login(&server, "alice", "right", "").unwrap().close();
    for _ in 0..3 {
        assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    }
    // A guest in between: the address's count stays.
    joined(login(&server, "guest", "", "").unwrap()).close();
    let started = Instant::now();
    assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    assert!(started.elapsed() >= backoff, "the brake was released: {:?}", started.elapsed());
    // Nor does the right password clear the address's count (only alice's account count).
    joined(login(&server, "alice", "right", "").unwrap()).close();
    let started = Instant::now();
    assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    assert!(started.elapsed() >= 2 * backoff, "the address brake went on: {:?}", started.elapsed());
}

#[test]
fn a_login_waiting_out_the_brake_does_not_hold_up_shutdown() {
    let backoff = Duration::from_secs(20);
    let mut server =
        TestServer::start_with(ServerConfig { login_backoff: backoff, ..ServerConfig::default() });
    login(&server, "alice", "right", "").unwrap().close();
    for _ in 0..3 {
        assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    }
    let addr = server.addr.to_string();
    let braked = thread::spawn(move || Client::connect_tcp(&addr, &config("alice", "wrong", "")).is_err());
    thread::sleep(Duration::from_millis(300)); // it is waiting out its 20 s now
    let took = server.stop();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(braked.join().unwrap(), "the braked login was not let in");
}

#[cfg(target_os = "linux")]
#[test]
fn guessing_from_many_addresses_delays_the_real_user_two_seconds_at_most_and_not_with_her_token() {
    // A brake of 0.5 s, doubling: the account's wait reaches its 2 s cap after five failures.
    let backoff = Duration::from_millis(500);
    let server = TestServer::start_with(ServerConfig { login_backoff: backoff, ..ServerConfig::default() });
    joined(login(&server, "alice", "right", TOKEN_A).unwrap()).close();
    // One guess from each of seven addresses: no address reaches its threshold, but alice's
    // account counts seven failures (which would mean 8 s without the cap).
    let guess_from_seven = |first: u8| {
        for last in first..first + 7 {
            let result = login_from([127, 0, 0, last], &server, "alice", "guess", "");
            assert_eq!(refused(result).0, ErrorCode::BadPassword);
        }
    };
    guess_from_seven(2);
    let started = Instant::now();
    joined(login(&server, "alice", "", TOKEN_A).unwrap()).close();
    assert!(started.elapsed() < backoff, "with her token she does not wait: {:?}", started.elapsed());
    // Proving the account cleared its count; guess again, and now she comes with the password.
    guess_from_seven(20);
    let started = Instant::now();
    joined(login(&server, "alice", "right", "").unwrap()).close();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1800), "the account brake applies: {waited:?}");
    assert!(waited < Duration::from_millis(3500), "but for about 2 s at most: {waited:?}");
}

// ---- Identity tokens and machine-bound accounts ----

#[test]
fn a_token_alone_claims_a_name_for_its_machine() {
    let server = TestServer::start();
    joined(login(&server, "dora", "", TOKEN_A).unwrap()).close();
    joined(login(&server, "dora", "", TOKEN_A).unwrap()).close();
    let (code, message) = refused(login(&server, "dora", "", TOKEN_B));
    assert_eq!(code, ErrorCode::BadPassword);
    assert!(message.contains("another machine"), "{message}");
    let (code, message) = refused(login(&server, "dora", "", ""));
    assert_eq!(code, ErrorCode::BadPassword);
    assert!(message.contains("has an account"), "{message}");
    assert_eq!(refused(login(&server, "dora", "anything", TOKEN_B)).0, ErrorCode::BadPassword);

    // The first machine sets a password; then it works from anywhere, and the second machine's
    // token is bound by that login.
    joined(login(&server, "dora", "s3cret", TOKEN_A).unwrap()).close();
    assert_eq!(
        refused(login(&server, "dora", "wrong", TOKEN_A)).0,
        ErrorCode::BadPassword,
        "a given password decides"
    );
    joined(login(&server, "dora", "s3cret", TOKEN_B).unwrap()).close();
    joined(login(&server, "dora", "", TOKEN_B).unwrap()).close();

    let data = server.stop_and_keep_data();
    let db = rusqlite::Connection::open(data.path.join("relay.db")).unwrap();
    let tokens: i64 =
        db.query_row("SELECT COUNT(*) FROM account_tokens WHERE name = 'dora'", [], |r| r.get(0)).unwrap();
    assert_eq!(tokens, 2);
    let stored: Vec<u8> = db
        .query_row("SELECT token_sha256 FROM account_tokens WHERE name = 'dora' LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored.len(), 32, "only SHA-256 of a token is kept");
    assert!(!String::from_utf8_lossy(&stored).contains("aaaa"));
}

#[test]
fn a_machine_bound_account_gets_messages_while_offline() {
    let server = TestServer::start();
    joined(login(&server, "dora", "", TOKEN_A).unwrap()).close();
    let sender = joined(login(&server, "sam", "", "").unwrap());
    sender.send_direct("dora", "while you were out").unwrap();
    sender.close();
    let dora = login(&server, "dora", "", TOKEN_A).unwrap();
    let got = common::wait_for(&dora, "the offline message", |e| match e {
        Event::Chat { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(got, "while you were out");
    dora.close();
}

#[test]
fn look_alike_names_are_refused() {
    let server = TestServer::start();
    joined(login(&server, "alice", "pw", "").unwrap()).close();
    let cyrillic_a = "\u{0430}lice";
    let (code, message) = refused(login(&server, cyrillic_a, "", ""));
    assert_eq!(code, ErrorCode::NameConfusable);
    assert!(message.contains("alice"), "{message}");
    assert_eq!(refused(login(&server, "Alice", "other", "")).0, ErrorCode::NameConfusable);
    assert_eq!(refused(login(&server, cyrillic_a, "", TOKEN_A)).0, ErrorCode::NameConfusable);
    // An online guest's name is protected while it is online.
    let bob = joined(login(&server, "bob", "", "").unwrap());
    assert_eq!(refused(login(&server, "b\u{043e}b", "", "")).0, ErrorCode::NameConfusable);
    bob.close();
    // ...and only while it is online: once bob has left, his look-alike may join.
    wait_until("bob's look-alike to be let in once bob left", WAIT, || {
        login(&server, "b\u{043e}b", "", "").ok().map(Client::close)
    });
    // Different names are fine.
    joined(login(&server, "alicia", "", "").unwrap()).close();
}

#[test]
fn new_accounts_per_address_are_capped_per_hour() {
    let server =
        TestServer::start_with(ServerConfig { accounts_per_address_per_hour: 2, ..ServerConfig::default() });
    joined(login(&server, "one", "pw", "").unwrap()).close();
    joined(login(&server, "two", "", TOKEN_A).unwrap()).close();
    let (code, message) = refused(login(&server, "three", "pw", ""));
    assert_eq!(code, ErrorCode::LoginBusy);
    assert!(message.contains("new accounts"), "{message}");
    // A token-only hello over the cap still gets in, as a guest: the name is not kept for it.
    joined(login(&server, "four", "", TOKEN_A).unwrap()).close();
    joined(login(&server, "four", "", TOKEN_B).unwrap()).close();
    // Existing accounts are unaffected.
    joined(login(&server, "one", "pw", "").unwrap()).close();
}

// ---- The binaries keep an identity file ----

#[test]
fn the_terminal_client_keeps_its_name_with_an_identity_file() {
    let relay = RelayOptions::new().start();
    let addr = relay.addr.to_string();
    let home = TempDir::new("identity-home");
    let other = TempDir::new("identity-other");
    let dir = home.path.to_string_lossy().into_owned();
    let run = |config_dir: &str| {
        Proc::spawn(
            env!("CARGO_BIN_EXE_client"),
            &["--server", &addr, "--name", "dora"],
            &[("RELAYCHAT_CONFIG_DIR", config_dir)],
        )
    };
    for round in 0..2 {
        let mut client = run(&dir);
        client.expect(&client.stdout, "* connected to");
        client.type_line("/quit");
        assert!(client.wait().success(), "round {round}");
    }
    let identity = home.path.join("identity");
    let text = std::fs::read_to_string(&identity).expect("the identity file was created");
    assert_eq!(text.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let mut stranger = run(&other.path.to_string_lossy());
    assert!(!stranger.wait().success());
    stranger.expect(&stranger.stderr, "another machine");
}
