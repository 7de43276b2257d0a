//! Accounts and the access password, over loopback, with the relay's real SQLite file.

mod common;

use std::time::{Duration, Instant};

use common::client_config;
use common::proc::Proc;
use common::relay::RelayOptions;
use common::TestServer;
use relaychat::client::{Client, ClientError};
use relaychat::frame::ErrorCode;
use relaychat::server::ServerConfig;

fn login(server: &TestServer, name: &str, password: &str, access: &str) -> Result<Client, ClientError> {
    let mut config = client_config(name, "lobby");
    config.password = password.into();
    config.access = access.into();
    Client::connect_tcp(&server.addr.to_string(), &config)
}

fn refused(result: Result<Client, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got in"),
    }
}

#[test]
fn the_first_login_with_a_password_claims_the_name() {
    let server = TestServer::start();
    login(&server, "alice", "correct horse", "").unwrap().close();

    login(&server, "alice", "correct horse", "").unwrap().close();
    let (code, message) = refused(login(&server, "alice", "wrong", ""));
    assert_eq!(code, ErrorCode::BadPassword);
    assert!(message.contains("wrong password"), "{message}");
    let (code, message) = refused(login(&server, "alice", "", ""));
    assert_eq!(code, ErrorCode::BadPassword);
    assert!(message.contains("has an account"), "{message}");
    // Guests are fine under names nobody claimed.
    login(&server, "bob", "", "").unwrap().close();
    login(&server, "bob", "", "").unwrap().close();
}

#[test]
fn only_argon2_hashes_are_stored_and_accounts_survive_a_restart() {
    let server = TestServer::start();
    login(&server, "alice", "s3cret-密码", "").unwrap().close();
    let data = server.stop_and_keep_data();

    let db = rusqlite::Connection::open(data.path.join("relay.db")).unwrap();
    let hash: String =
        db.query_row("SELECT password_hash FROM accounts WHERE name = 'alice'", [], |r| r.get(0)).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"), "the password itself is not stored");
    drop(db);

    let server = TestServer::start_in(ServerConfig::default(), data);
    assert_eq!(refused(login(&server, "alice", "guess", "")).0, ErrorCode::BadPassword);
    login(&server, "alice", "s3cret-密码", "").unwrap().close();
}

#[test]
fn an_access_password_keeps_everyone_else_out() {
    let config = ServerConfig { access_password: Some("open sesame".into()), ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    let (code, message) = refused(login(&server, "alice", "", ""));
    assert_eq!(code, ErrorCode::AccessDenied);
    assert!(message.contains("access password"), "{message}");
    assert_eq!(refused(login(&server, "alice", "", "open sesame!")).0, ErrorCode::AccessDenied);
    login(&server, "alice", "", "open sesame").unwrap().close();
}

#[test]
fn repeated_wrong_passwords_from_one_address_are_slowed_down() {
    let backoff = Duration::from_millis(400);
    // The brake, not the per-address rate of password checks (tests/bounds.rs), is what this
    // test watches, so the rate is off.
    let config = ServerConfig { login_backoff: backoff, password_rate: 0, ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    login(&server, "alice", "right", "").unwrap().close();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
        assert!(started.elapsed() < backoff, "the first failures are not delayed");
    }
    let started = Instant::now();
    assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    assert!(started.elapsed() >= backoff, "the fourth failure waited {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    assert!(started.elapsed() >= 2 * backoff, "the wait doubles: {:?}", started.elapsed());
    // The right password still works (after the wait). It clears only the account's count: the
    // address keeps its brake, so a guesser cannot reset it with a login of its own.
    login(&server, "alice", "right", "").unwrap().close();
    let started = Instant::now();
    assert_eq!(refused(login(&server, "alice", "wrong", "")).0, ErrorCode::BadPassword);
    assert!(started.elapsed() >= 4 * backoff, "the address brake stays: {:?}", started.elapsed());
}

#[test]
fn the_binaries_take_passwords_from_flags_and_the_environment() {
    let server = RelayOptions::new().env("RELAYCHAT_ACCESS_PASSWORD", "door").start();
    let addr = server.addr.to_string();
    let client = env!("CARGO_BIN_EXE_client");

    let mut no_access = Proc::spawn(client, &["--server", &addr, "--name", "carol"], &[]);
    assert!(!no_access.wait().success());
    no_access.expect(&no_access.stderr, "error: the relay refused us: this relay needs its access password");

    let alice = Proc::spawn(
        client,
        &["--server", &addr, "--name", "alice", "--password", "pw", "--access-password", "door"],
        &[],
    );
    alice.expect(&alice.stdout, "* connected to");
    drop(alice);
    let mut wrong = Proc::spawn(
        client,
        &["--server", &addr, "--name", "alice", "--access-password", "door"],
        &[("RELAYCHAT_PASSWORD", "not-pw")],
    );
    assert!(!wrong.wait().success());
    wrong.expect(&wrong.stderr, "wrong password for \"alice\"");
}
