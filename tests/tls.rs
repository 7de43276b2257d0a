//! Encrypted by default: what crosses the wire, whom the client trusts, and the threads that share
//! one TLS session.
//!
//! A recording proxy sits between client and relay and keeps every byte in both directions. It
//! is the packet capture of the seed's blog post ("a single packet capture shows what we are
//! chatting about"): with TLS it must show nothing readable, and a client that refuses the
//! relay's key must not have sent it anything but its ClientHello.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::proc::Proc;
use common::relay::{Keys, RelayOptions, SERVER};
use common::*;
use relaychat::client::{
    Client, ClientConfig, ClientError, Event, FirstContact, Security, Trust, TrustError,
};
use relaychat::frame::{ErrorCode, Frame};
use relaychat::server::ServerConfig;

const PASSWORD: &str = "correct-horse-battery-staple";
const ROOM_LINE: &str = "the eagle lands at midnight";
const DIRECT_LINE: &str = "meet me by the old library";
/// Written all through the file, so any piece of it in the capture would show.
const FILE_MARK: &[u8] = b"FILE-CONTENTS-MARK-501";

/// What one connection carried: (client → relay, relay → client).
type Recording = (Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<u8>>>);

/// A TCP proxy that records every byte it passes. Its target can be changed between
/// connections (a relay replaced by another on "the same address").
struct Proxy {
    addr: String,
    target: Arc<Mutex<String>>,
    /// Per connection: (client → relay, relay → client).
    captured: Arc<Mutex<Vec<Recording>>>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let target = Arc::new(Mutex::new(target.to_owned()));
        let captured = Arc::new(Mutex::new(Vec::new()));
        let (to, log) = (target.clone(), captured.clone());
        thread::spawn(move || {
            for client in listener.incoming().take(64) {
                let Ok(client) = client else { continue };
                let Ok(relay) = TcpStream::connect(to.lock().unwrap().as_str()) else { continue };
                let up = Arc::new(Mutex::new(Vec::new()));
                let down = Arc::new(Mutex::new(Vec::new()));
                log.lock().unwrap().push((up.clone(), down.clone()));
                pipe(client.try_clone().unwrap(), relay.try_clone().unwrap(), up);
                pipe(relay, client, down);
            }
        });
        Proxy { addr, target, captured }
    }

    fn point_at(&self, target: &str) {
        *self.target.lock().unwrap() = target.to_owned();
    }

    /// Everything recorded, both directions, all connections.
    fn everything(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for (up, down) in self.captured.lock().unwrap().iter() {
            all.extend_from_slice(&up.lock().unwrap());
            all.extend_from_slice(&down.lock().unwrap());
        }
        all
    }

    /// What the client sent on its `n`th connection through the proxy.
    fn sent_by_client(&self, n: usize) -> Vec<u8> {
        self.captured.lock().unwrap()[n].0.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.captured.lock().unwrap().len()
    }
}

/// Copies `from` into `to` on a thread of its own, recording every byte.
fn pipe(mut from: TcpStream, mut to: TcpStream, record: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A file made of the mark and random bytes, so that any part of it is recognisable.
fn marked_file(dir: &Path, size: usize) -> std::path::PathBuf {
    let noise = random_file(dir, "noise.bin", size, 5);
    let mut data = std::fs::read(&noise).unwrap();
    for chunk in data.chunks_mut(256) {
        let n = chunk.len().min(FILE_MARK.len());
        chunk[..n].copy_from_slice(&FILE_MARK[..n]);
    }
    let path = dir.join("secret-plans.pdf");
    std::fs::write(&path, data).unwrap();
    path
}

/// Alice (with a password) and bob chat in the room, alice writes to bob directly, bob sends
/// alice a file: everything the seed's capture would have shown.
fn converse(proxy: &Proxy, security: &dyn Fn(ClientConfig) -> ClientConfig) {
    let mut config = security(ClientConfig::new("alice", "lobby"));
    config.password = PASSWORD.into();
    let alice = Client::connect_tcp(&proxy.addr, &config).expect("alice logs in through the proxy");
    let bob =
        Client::connect_tcp(&proxy.addr, &security(ClientConfig::new("bob", "lobby"))).expect("bob joins");
    alice.send_text(ROOM_LINE).unwrap();
    wait_for(&bob, "the room line", |e| {
        matches!(e, Event::Chat { text, .. } if text == ROOM_LINE).then_some(())
    });
    alice.send_direct("bob", DIRECT_LINE).unwrap();
    wait_for(&bob, "the direct line", |e| {
        matches!(e, Event::Chat { text, .. } if text == DIRECT_LINE).then_some(())
    });
    let dir = TempDir::new("tls-files");
    let file = marked_file(&dir.path, 300_000);
    bob.send_file(&file, Some("alice")).unwrap();
    wait_uploaded(&bob, "secret-plans.pdf");
    let got = dir.path.join("got");
    let (paths, failed) = receive_into(&alice, &got);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(std::fs::read(&paths[0]).unwrap(), std::fs::read(&file).unwrap());
    alice.close();
    bob.close();
}

#[test]
fn a_capture_of_a_tls_conversation_shows_nothing_readable() {
    let server = TestServer::start();
    let proxy = Proxy::start(&server.addr.to_string());
    converse(&proxy, &trusting);
    let capture = proxy.everything();
    assert!(capture.len() > 600_000, "the proxy saw the file go both ways: {} bytes", capture.len());
    for (what, secret) in [
        ("the room line", ROOM_LINE.as_bytes()),
        ("the direct line", DIRECT_LINE.as_bytes()),
        ("the password", PASSWORD.as_bytes()),
        ("the file's contents", FILE_MARK),
    ] {
        assert!(!contains(&capture, secret), "{what} is readable in the capture");
    }
}

#[test]
fn the_same_capture_in_plaintext_shows_everything() {
    // The control: the proxy and the search work, so the test above could fail.
    let server = TestServer::start();
    let proxy = Proxy::start(&server.addr.to_string());
    converse(&proxy, &|config| ClientConfig { security: Security::Plaintext, ..config });
    let capture = proxy.everything();
    for secret in [ROOM_LINE.as_bytes(), DIRECT_LINE.as_bytes(), PASSWORD.as_bytes(), FILE_MARK] {
        assert!(
            contains(&capture, secret),
            "{:?} should be in a plaintext capture",
            String::from_utf8_lossy(secret)
        );
    }
}

/// A relay with a key of its own (not the shared test key), in a data dir of its own.
fn relay_with_own_key() -> TestServer {
    let data = TempDir::new("own-key");
    let keys = relaychat::server::keys::load_or_create(&data.path).unwrap();
    let files = (data.path.join("tls/cert.pem"), data.path.join("tls/key.pem"));
    assert!(keys.fingerprint.starts_with("SHA256:"));
    TestServer::start_in(ServerConfig { tls_files: Some(files), ..ServerConfig::default() }, data)
}

/// TLS records in a byte stream: (content type, length) of each.
fn records(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        out.push((rest[0], len));
        rest = &rest[(5 + len).min(rest.len())..];
    }
    out
}

#[test]
fn a_changed_key_is_refused_before_anything_is_sent() {
    let first = relay_with_own_key();
    let second = relay_with_own_key();
    let proxy = Proxy::start(&first.addr.to_string());
    let home = TempDir::new("known");
    let known = home.path.join("known_relays");
    let config = |password: &str| {
        let trust = Trust {
            known_relays: Some(known.clone()),
            first_contact: FirstContact::Accept,
            ..Trust::default()
        };
        ClientConfig {
            password: password.into(),
            security: Security::Tls(trust),
            ..ClientConfig::new("alice", "lobby")
        }
    };
    // First contact: trusted and pinned.
    let alice = Client::connect_tcp(&proxy.addr, &config(PASSWORD)).expect("first contact is accepted");
    assert!(matches!(alice.verdict(), Some(relaychat::client::Verdict::FirstContact { .. })));
    assert!(std::fs::read_to_string(&known).unwrap().contains(&proxy.addr));
    alice.close();
    // The same address now leads to another key.
    proxy.point_at(&second.addr.to_string());
    let refused = Client::connect_tcp(&proxy.addr, &config(PASSWORD));
    match refused {
        Err(ClientError::Trust(TrustError::Changed { server, file, .. })) => {
            assert_eq!(server, proxy.addr);
            assert_eq!(file, known);
        }
        other => panic!("expected a changed-key refusal, got {:?}", other.map(|_| "connected")),
    }
    let message = ClientError::Trust(TrustError::Changed {
        server: "s".into(),
        known: "a".into(),
        presented: "b".into(),
        file: known.clone(),
    })
    .to_string();
    assert!(message.contains("CHANGED") && message.contains("known_relays"), "{message}");
    // What the client sent on that connection: its ClientHello and nothing else. No encrypted
    // record at all (TLS 1.3 sends even the client's Finished encrypted), so certainly no hello.
    thread::sleep(Duration::from_millis(200));
    let sent = proxy.sent_by_client(proxy.connections() - 1);
    let kinds = records(&sent);
    assert!(!kinds.is_empty(), "the ClientHello went out");
    assert!(kinds.iter().all(|(kind, _)| *kind == 0x16), "only handshake records: {kinds:?}");
    assert!(!contains(&sent, PASSWORD.as_bytes()));
}

#[test]
fn the_client_binary_refuses_a_changed_key_and_exits_non_zero() {
    let first = relay_with_own_key();
    let second = relay_with_own_key();
    let proxy = Proxy::start(&first.addr.to_string());
    let home = TempDir::new("cli-known");
    let dir = home.path.to_str().unwrap();
    let envs = [("RELAYCHAT_CONFIG_DIR", dir), ("XDG_CONFIG_HOME", dir)];
    let downloads = TempDir::new("cli-dl");
    let args = [
        "receive",
        "--server",
        &proxy.addr,
        "--name",
        "carol",
        "--downloads",
        downloads.path.to_str().unwrap(),
    ];
    // A script's first contact: trusted with a notice on stderr.
    let mut once = Proc::spawn(env!("CARGO_BIN_EXE_client"), &args, &envs);
    assert!(once.wait().success());
    let notice = once.expect(&once.stderr, "first contact");
    assert!(notice.contains("SHA256:"), "{notice}");
    proxy.point_at(&second.addr.to_string());
    let mut again = Proc::spawn(env!("CARGO_BIN_EXE_client"), &args, &envs);
    assert!(!again.wait().success(), "a changed key must fail the command");
    let error = again.expect(&again.stderr, "error:");
    assert!(error.contains("CHANGED") && error.contains("known_relays"), "{error}");
}

#[test]
fn a_fingerprint_given_on_the_command_line_must_match() {
    let server = relay_with_own_key();
    let wrong = "SHA256:".to_string() + &"0".repeat(64);
    let trust = Trust { fingerprint: Some(wrong), ..Trust::default() };
    let config = ClientConfig { security: Security::Tls(trust), ..ClientConfig::new("dave", "lobby") };
    assert!(matches!(
        Client::connect_tcp(&server.addr.to_string(), &config),
        Err(ClientError::Trust(TrustError::NotExpected { .. }))
    ));
    // Without any pin or CA, a library client refuses by default and says what it saw.
    let config = ClientConfig::new("dave", "lobby");
    match Client::connect_tcp(&server.addr.to_string(), &config) {
        Err(ClientError::Trust(TrustError::Unknown { fingerprint, .. })) => {
            assert!(fingerprint.starts_with("SHA256:"))
        }
        other => panic!("expected an unknown-key refusal, got {:?}", other.map(|_| "connected")),
    }
}

#[test]
fn a_relay_with_a_ca_signed_certificate_is_trusted_through_tls_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = TempDir::new("ca");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let (cert, key, ca_file) =
        (dir.path.join("leaf.pem"), dir.path.join("leaf.key"), dir.path.join("ca.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let server =
        TestServer::start_with(ServerConfig { tls_files: Some((cert, key)), ..ServerConfig::default() });
    // Refused (unknown) without the CA, trusted by authority with it; nothing is pinned.
    let plain = Trust::default();
    let with_ca = Trust { extra_roots: vec![ca.der().clone()], ..Trust::default() };
    let addr = server.addr.to_string();
    let connect = |trust: Trust| {
        Client::connect_tcp(
            &addr,
            &ClientConfig { security: Security::Tls(trust), ..ClientConfig::new("erin", "lobby") },
        )
    };
    assert!(matches!(connect(plain), Err(ClientError::Trust(TrustError::Unknown { .. }))));
    let erin = connect(with_ca).expect("a CA-signed relay is trusted");
    assert_eq!(erin.verdict(), Some(&relaychat::client::Verdict::Authority));
}

#[test]
fn a_plaintext_hello_to_a_tls_only_relay_gets_a_clear_error() {
    // The binary with a data dir of its own: it makes its key on first start and logs the
    // fingerprint before it listens.
    let data = TempDir::new("own-binary");
    let dir = data.path.to_str().unwrap();
    let relay = RelayOptions::new().keys(Keys::Own).data_dir(&data.path).start();
    let logged = relay.expect("relay fingerprint: ");
    let mut raw = Raw::connect(relay.addr);
    raw.send(&Frame::hello("frank", "lobby"));
    match raw.recv() {
        Frame::Error { code: ErrorCode::TlsRequired, message } => {
            assert!(message.contains("TLS"), "{message}")
        }
        other => panic!("expected TlsRequired, got {other:?}"),
    }
    // `--fingerprint` prints the same one and exits; the key file is the owner's only.
    let mut printed = Proc::spawn(SERVER, &["--fingerprint", "--data-dir", dir], &[]);
    assert!(printed.wait().success());
    let fingerprint = printed.expect(&printed.stdout, "SHA256:");
    assert!(logged.ends_with(fingerprint.trim()), "logged {logged:?}, printed {fingerprint:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path.join("tls/key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    relay.terminate();
}

#[test]
fn both_ends_writing_megabytes_at_once_do_not_deadlock() {
    // One connection, both directions full at the same time: alice uploads to bob while the
    // relay sends her bob's file. A writer that held the TLS session's lock while blocked on a
    // full socket would stop its own reader, and with the other side doing the same, neither
    // would ever read again.
    let server = TestServer::start();
    let dir = TempDir::new("both-ways");
    let size = 24 * 1024 * 1024;
    let for_alice = random_file(&dir.path, "for-alice.bin", size, 21);
    let for_bob = random_file(&dir.path, "for-bob.bin", size, 22);
    let mut config = client_config("alice", "lobby");
    config.chunk_size = 256 * 1024;
    let alice = Client::connect_tcp(&server.addr.to_string(), &config).unwrap();
    let bob = server.client("bob", "lobby");
    bob.send_file(&for_alice, Some("alice")).unwrap();
    wait_uploaded(&bob, "for-alice.bin");
    let started = Instant::now();
    let got = dir.path.join("alice-got");
    alice.receive_all(&got).unwrap();
    alice.send_file(&for_bob, Some("bob")).unwrap();
    let (mut received, mut uploaded) = (false, false);
    while !(received && uploaded) {
        let event = alice.events().recv_timeout(Duration::from_secs(60)).expect("progress within a minute");
        match event {
            Event::Downloaded { .. } => received = true,
            Event::Uploaded { .. } => uploaded = true,
            Event::TransferFailed { reason, .. } => panic!("{reason}"),
            Event::Disconnected(why) => panic!("{why}"),
            _ => {}
        }
    }
    let took = started.elapsed();
    assert_eq!(std::fs::read(got.join("for-alice.bin")).unwrap(), std::fs::read(&for_alice).unwrap());
    println!("both directions, {} MiB each, over one TLS connection: {took:?}", size >> 20);
}

#[test]
fn a_terminal_asks_on_first_contact_and_remembers_the_answer() {
    // A real terminal for the client: util-linux's `script` runs it on a pseudo-terminal and
    // passes our stdin to it. Without `script`, say so and stop.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        println!("SKIP a_terminal_asks_on_first_contact: no `script` (util-linux) to make a terminal");
        return;
    }
    let server = relay_with_own_key();
    let home = TempDir::new("tty-home");
    let dir = home.path.to_str().unwrap().to_owned();
    let client = env!("CARGO_BIN_EXE_client");
    let command = format!("{client} --cli --server {} --name gina --password pw-gina", server.addr);
    let run = |answer: &str| {
        let mut script =
            Proc::spawn("script", &["-qfec", &command, "/dev/null"], &[("RELAYCHAT_CONFIG_DIR", &dir)]);
        script.type_line(answer);
        script
    };
    // "n": nothing is trusted, nothing kept, non-zero exit.
    let mut refused = run("n");
    refused.expect(&refused.stdout, "SHA256:");
    assert!(!refused.wait().success());
    assert!(!home.path.join("known_relays").exists(), "a refused key is not kept");
    // "y": trusted, kept, connected.
    let mut trusted = run("y");
    trusted.expect(&trusted.stdout, "trusted; saved in");
    trusted.expect(&trusted.stdout, "connected to");
    trusted.type_line("/quit");
    assert!(trusted.wait().success());
    let known = std::fs::read_to_string(home.path.join("known_relays")).unwrap();
    assert!(known.contains(&server.addr.to_string()) && known.contains("SHA256:"), "{known}");
    // Next time there is no question: it goes straight in.
    let mut again = run("/quit");
    again.expect(&again.stdout, "connected to");
    assert!(again.wait().success());
}
