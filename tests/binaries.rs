//! End-to-end: the real `server` and `client` binaries, driven through stdin/stdout/stderr, exactly
//! as a script would. This is the terminal client's contract (see `src/cli/client.rs`).

mod common;

use std::time::{Duration, Instant};

use common::client_config;
use common::proc::Proc;
use common::relay::RelayOptions;
use common::{receive_until, TempDir, WAIT};
use relaychat::client::Client;

/// `[HH:MM:SS] ` at the start of a line.
fn has_clock(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 11 && b[0] == b'[' && b[3] == b':' && b[6] == b':' && b[9] == b']' && b[10] == b' '
}

#[test]
fn two_terminal_clients_chat_through_the_real_relay() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let mut alice = Proc::client(&addr, "alice", &[]);
    let mut bob = Proc::client(&addr, "bob", &["--room", "lobby"]);
    let joined = alice.expect(&alice.stdout, "* bob joined lobby");
    assert!(has_clock(&joined), "{joined}");

    bob.type_line("hello 你好 🎉");
    let line = alice.expect(&alice.stdout, "bob: hello 你好 🎉");
    assert!(has_clock(&line), "{line}");
    alice.type_line("hi bob");
    bob.expect(&bob.stdout, "alice: hi bob");

    alice.type_line("/who");
    alice.expect(&alice.stdout, "* online in lobby: alice, bob");
    bob.type_line("\u{1b}[31mred\u{7}");
    alice.expect(&alice.stdout, "bob: \\x1b[31mred\\x07");
    bob.type_line("/help");
    bob.expect(&bob.stdout, "commands: /who");
    bob.type_line("/nonsense");
    bob.expect(&bob.stderr, "error: unknown command /nonsense");
    bob.type_line("//slash");
    alice.expect(&alice.stdout, "bob: /slash");

    // EOF on stdin: bob's last line is still delivered, then he leaves and exits 0.
    bob.type_line("last words");
    drop(bob.stdin.take());
    assert!(bob.wait().success());
    alice.expect(&alice.stdout, "bob: last words");
    alice.expect(&alice.stdout, "* bob left lobby");

    alice.type_line("/quit");
    assert!(alice.wait().success());
}

#[test]
fn multi_line_messages_are_indented_and_own_lines_not_echoed() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let mut alice = Proc::client(&addr, "alice", &[]);
    let lib = Client::connect_tcp(&addr, &client_config("lib", "lobby")).unwrap();
    alice.expect(&alice.stdout, "* lib joined lobby");
    lib.send_text("first\nsecond\u{1b}[2J").unwrap();
    alice.expect(&alice.stdout, "lib: first");
    let next = alice.stdout.recv_timeout(WAIT).unwrap();
    assert_eq!(next, "  second\\x1b[2J");

    alice.type_line("mine");
    lib.send_text("marker").unwrap();
    let line = alice.expect(&alice.stdout, "lib: marker");
    assert!(!line.contains("mine"));
    drop(alice.stdin.take());
    assert!(alice.wait().success());
    let rest: Vec<String> = alice.stdout.try_iter().collect();
    assert!(rest.iter().all(|l| !l.contains("mine")), "own line echoed: {rest:?}");
    lib.close();
}

#[test]
fn someone_elses_name_exits_non_zero_with_one_error_line() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let _alice = Proc::client(&addr, "alice", &[]);
    // Another machine (its own identity secret) asking for alice's machine-bound name.
    let elsewhere = TempDir::new("other-machine");
    let dir = elsewhere.path.to_str().unwrap();
    let mut second = Proc::spawn(
        env!("CARGO_BIN_EXE_client"),
        &["--server", &addr, "--name", "alice"],
        &[("RELAYCHAT_CONFIG_DIR", dir), ("XDG_CONFIG_HOME", dir)],
    );
    let status = second.wait();
    assert!(!status.success());
    let err = second.expect(&second.stderr, "error: ");
    assert!(err.contains("bound to another machine"), "{err}");
}

#[test]
fn a_login_elsewhere_ends_the_old_client_without_a_fight() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    // The old client would reconnect for 30 s after a lost link; a takeover must not count.
    let mut first = Proc::spawn(
        env!("CARGO_BIN_EXE_client"),
        &["--server", &addr, "--name", "alice", "--password", "s3cret"],
        &[("RELAYCHAT_RECONNECT_FOR", "30")],
    );
    first.expect(&first.stdout, "connected to");
    // The same person on another machine: the password takes the name over.
    let elsewhere = TempDir::new("other-machine");
    let dir = elsewhere.path.to_str().unwrap();
    let mut second = Proc::spawn(
        env!("CARGO_BIN_EXE_client"),
        &["--server", &addr, "--name", "alice", "--password", "s3cret"],
        &[("RELAYCHAT_CONFIG_DIR", dir), ("XDG_CONFIG_HOME", dir)],
    );
    second.expect(&second.stdout, "connected to");
    // The old client says why and exits non-zero, even though it may reconnect for 30 s.
    let err = first.expect(&first.stderr, "error: ");
    assert!(err.contains("logged in elsewhere"), "{err}");
    assert!(!first.wait().success());
    // And the new one keeps the name: nothing came to take it back.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(second.child.try_wait().unwrap().is_none(), "the new client was pushed out");
    let lost: Vec<String> = second.stdout.try_iter().filter(|l| l.contains("connection lost")).collect();
    assert!(lost.is_empty(), "{lost:?}");
}

#[test]
fn an_unreachable_relay_exits_non_zero() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut client = Proc::spawn(env!("CARGO_BIN_EXE_client"), &["--server", &free, "--name", "x"], &[]);
    assert!(!client.wait().success());
    let err = client.expect(&client.stderr, "error: ");
    assert!(err.contains("cannot reach the relay"), "{err}");
}

#[test]
fn a_bad_name_is_refused_before_connecting() {
    let mut client =
        Proc::spawn(env!("CARGO_BIN_EXE_client"), &["--server", "127.0.0.1:9", "--name", "a b"], &[]);
    assert!(!client.wait().success());
    client.expect(&client.stderr, "error: name contains ' '");
}

#[test]
fn environment_variables_choose_server_and_name() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let client = Proc::spawn(
        env!("CARGO_BIN_EXE_client"),
        &[],
        &[("RELAYCHAT_SERVER", &addr), ("RELAYCHAT_NAME", "envy")],
    );
    client.expect(&client.stdout, &format!("* connected to {addr} as envy in lobby"));
}

#[test]
fn sigterm_stops_the_relay_within_five_seconds_and_clients_exit_non_zero() {
    let mut server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let mut alice = Proc::client(&addr, "alice", &[]);
    let mut bob = Proc::client(&addr, "bob", &["--room", "elsewhere"]);
    let started = Instant::now();
    server.terminate();
    let status = server.wait();
    let took = started.elapsed();
    assert!(status.success(), "server exit status {status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    server.expect("relay stopped");
    for client in [&mut alice, &mut bob] {
        assert!(!client.wait().success());
        client.expect(&client.stderr, "error: the server said goodbye");
    }
}

/// The relay is killed and restarted: the terminal client says so, reconnects by itself, does not
/// show again what it had already shown, and chats on.
#[test]
fn the_terminal_client_reconnects_after_the_relay_restarts() {
    let mut server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let data = server.take_data_dir();
    let mut alice = Proc::spawn(
        env!("CARGO_BIN_EXE_client"),
        &["--server", &addr, "--name", "alice"],
        &[("RELAYCHAT_RECONNECT_FOR", "20")],
    );
    alice.expect(&alice.stdout, "* connected to");
    let bob = Client::connect_tcp(&addr, &client_config("bob", "lobby")).unwrap();
    alice.expect(&alice.stdout, "* bob joined lobby");
    bob.send_text("before the restart").unwrap();
    alice.expect(&alice.stdout, "bob: before the restart");

    server.kill();
    drop(bob);
    let restarted = RelayOptions::new().bind(&addr).data_dir(&data.path).start();
    alice.expect(&alice.stdout, "* connection lost");
    alice.expect(&alice.stdout, "* reconnected");

    let bob = Client::connect_tcp(&addr, &client_config("bob", "lobby")).unwrap();
    // Everything alice shows between the reconnect and bob's return: no repeat of the history.
    let mut between = Vec::new();
    loop {
        let line = alice.stdout.recv_timeout(WAIT).expect("alice shows bob coming back");
        if line.contains("* bob joined lobby") {
            break;
        }
        between.push(line);
    }
    assert!(!between.iter().any(|l| l.contains("before the restart")), "shown twice: {between:?}");
    alice.type_line("after the restart");
    let heard = loop {
        let event = bob.events().recv_timeout(WAIT).expect("bob hears alice");
        if let relaychat::client::Event::Chat { text, mark: relaychat::client::Mark::Live, .. } = event {
            break text;
        }
    };
    assert_eq!(heard, "after the restart");
    drop(alice.stdin.take());
    assert!(alice.wait().success());
    drop(restarted);
    drop(data);
}

#[test]
fn events_reach_the_screen_in_order_whichever_thread_prints_them() {
    // The terminal client prints an event on its reader thread when nothing is queued, and from
    // its main thread otherwise (src/cli/client/chat.rs). Here the two overlap: alice's history
    // (50 lines) and the first live lines arrive while her chat is still starting, so they are
    // queued, and more live lines follow at once, while the main thread is still printing the
    // queue. The screen must show them all in the order they were sent. (The relay lets one
    // address send 100 messages in a burst: all of these fit.)
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let lib = Client::connect_tcp(&addr, &client_config("lib", "lobby")).unwrap();
    for n in 0..50 {
        lib.send_text(&format!("early {n:03}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // stored, so alice gets them as history
    let mut alice = Proc::spawn(env!("CARGO_BIN_EXE_client"), &["--server", &addr, "--name", "alice"], &[]);
    let started = Instant::now();
    let (_, joined) =
        receive_until(lib.events(), WAIT, |e| matches!(e, relaychat::client::Event::Joined { .. }));
    assert!(joined, "alice never joined");
    for n in 0..40 {
        lib.send_text(&format!("live {n:03}")).unwrap();
    }
    alice.type_line("typing meanwhile");
    let mut seen = Vec::new();
    // The same time limit covers the join and all 90 lines.
    receive_until(&alice.stdout, WAIT.saturating_sub(started.elapsed()), |line| {
        for (marker, kind) in [("lib (history): early ", "early"), ("lib: live ", "live")] {
            if let Some(at) = line.find(marker) {
                seen.push(format!("{kind} {}", &line[at + marker.len()..]));
            }
        }
        seen.len() >= 90
    });
    let sent: Vec<String> =
        (0..50).map(|n| format!("early {n:03}")).chain((0..40).map(|n| format!("live {n:03}"))).collect();
    assert_eq!(seen, sent);
    lib.close();
}
