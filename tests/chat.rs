//! Chat through a real relay on loopback, using the client library.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use common::client_config;
use common::{assert_no_event, next_chat, next_event, TestServer};
use relaychat::client::{Client, ClientError, Event};
use relaychat::frame::ErrorCode;
use relaychat::server::ServerConfig;

#[test]
fn two_clients_chat_both_ways_with_chinese_and_emoji() {
    let server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");
    assert_eq!(next_event(&alice), Event::Joined { name: "bob".into(), room: "lobby".into() });

    alice.send_text("你好，bob 🎉").unwrap();
    assert_eq!(next_chat(&bob), ("alice".into(), "你好，bob 🎉".into()));
    bob.send_text("hi alice\nsecond line").unwrap();
    assert_eq!(next_chat(&alice), ("bob".into(), "hi alice\nsecond line".into()));

    // Nobody hears their own messages back.
    assert_no_event(&alice, Duration::from_millis(100));
    assert_no_event(&bob, Duration::from_millis(100));
}

#[test]
fn three_clients_in_a_room_all_hear_each_other_and_leave_notices() {
    let server = TestServer::start();
    let a = server.client("a", "501");
    let b = server.client("b", "501");
    let c = server.client("c", "501");
    assert!(matches!(next_event(&a), Event::Joined { name, .. } if name == "b"));
    assert!(matches!(next_event(&a), Event::Joined { name, .. } if name == "c"));
    assert!(matches!(next_event(&b), Event::Joined { name, .. } if name == "c"));

    b.send_text("from b").unwrap();
    assert_eq!(next_chat(&a), ("b".into(), "from b".into()));
    assert_eq!(next_chat(&c), ("b".into(), "from b".into()));

    c.who().unwrap();
    assert_eq!(
        next_event(&c),
        Event::Online { room: "501".into(), names: vec!["a".into(), "b".into(), "c".into()] }
    );

    c.close();
    assert_eq!(next_event(&a), Event::Left { name: "c".into(), room: "501".into() });
    assert_eq!(next_event(&b), Event::Left { name: "c".into(), room: "501".into() });
}

#[test]
fn rooms_are_isolated() {
    let server = TestServer::start();
    let red1 = server.client("red1", "red");
    let red2 = server.client("red2", "red");
    let blue = server.client("blue1", "blue");
    assert!(matches!(next_event(&red1), Event::Joined { .. }));

    red1.send_text("only for red").unwrap();
    assert_eq!(next_chat(&red2), ("red1".into(), "only for red".into()));
    blue.send_text("only for blue").unwrap();
    blue.who().unwrap();
    assert_eq!(next_event(&blue), Event::Online { room: "blue".into(), names: vec!["blue1".into()] });
    // blue heard nothing from red (the online list came first), and red hears nothing from blue.
    assert_no_event(&red1, Duration::from_millis(200));
    assert_no_event(&red2, Duration::from_millis(50));
}

#[test]
fn a_duplicate_name_is_refused_with_a_clear_error_even_in_another_room() {
    let server = TestServer::start();
    let _alice = server.client("alice", "lobby");
    let config = client_config("alice", "elsewhere");
    match Client::connect_tcp(&server.addr.to_string(), &config) {
        Err(ClientError::Refused { code: ErrorCode::NameTaken, message }) => {
            assert!(message.contains("already taken"), "{message}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second alice was let in"),
    }
    // Once alice leaves, the name is free again.
    _alice.close();
    let again = client_config("alice", "lobby");
    let mut tries = 0;
    while Client::connect_tcp(&server.addr.to_string(), &again).is_err() {
        tries += 1;
        assert!(tries < 100, "the name was never released");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_client_checks_names_before_sending_anything() {
    let config = client_config("bad name", "lobby");
    // Port 9 on loopback: nothing listens, but the rule check must fail first.
    assert!(matches!(Client::connect_tcp("127.0.0.1:9", &config), Err(ClientError::Rule(_))));
}

#[test]
fn an_unreachable_relay_is_a_connect_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = client_config("alice", "lobby");
    assert!(matches!(Client::connect_tcp(&free.to_string(), &config), Err(ClientError::Connect { .. })));
}

/// 50 clients each send 100 numbered messages into one room at once. Every client must receive
/// every other client's 100 messages exactly once and in order.
#[test]
fn fifty_clients_times_a_hundred_messages_nothing_lost_duplicated_or_reordered() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 100;
    // Fifty clients from one address: more than the relay lets one stranger hold by default.
    let server = TestServer::start_with(ServerConfig {
        max_per_address: 64,
        connect_burst: 64,
        msg_rate: 0, // the chat rate is per address, and all fifty share 127.0.0.1
        ..ServerConfig::default()
    });
    let clients: Vec<Client> = (0..CLIENTS).map(|i| server.client(&format!("u{i}"), "load")).collect();
    // Wait until everyone is in: the last client to join is announced to the first.
    let first = &clients[0];
    loop {
        match next_event(first) {
            Event::Joined { name, .. } if name == format!("u{}", CLIENTS - 1) => break,
            Event::Joined { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    thread::sleep(Duration::from_millis(200)); // let the other join notices arrive

    thread::scope(|s| {
        for (i, client) in clients.iter().enumerate() {
            s.spawn(move || {
                for m in 0..MESSAGES {
                    client.send_text(&format!("{i}:{m}")).unwrap();
                }
            });
        }
        for (i, client) in clients.iter().enumerate() {
            s.spawn(move || {
                let mut next_from: HashMap<String, usize> = HashMap::new();
                let mut received = 0;
                while received < (CLIENTS - 1) * MESSAGES {
                    match next_event(client) {
                        Event::Chat { from, text, .. } => {
                            let (sender, m) = text.split_once(':').unwrap();
                            assert_eq!(format!("u{sender}"), from, "sender label matches the text");
                            assert_ne!(from, format!("u{i}"), "own message echoed back");
                            let expected = next_from.entry(from.clone()).or_insert(0);
                            assert_eq!(
                                m.parse::<usize>().unwrap(),
                                *expected,
                                "u{i}: from {from} out of order"
                            );
                            *expected += 1;
                            received += 1;
                        }
                        Event::Joined { .. } => {}
                        other => panic!("u{i}: unexpected {other:?}"),
                    }
                }
                assert_eq!(next_from.len(), CLIENTS - 1);
                assert!(next_from.values().all(|&n| n == MESSAGES));
            });
        }
    });
    for client in &clients {
        assert_no_event(client, Duration::from_millis(1));
    }
}
