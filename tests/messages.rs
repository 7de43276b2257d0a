//! Stored messages: offline delivery (and how the client confirms it), history, direct
//! messages, receipts, /leave, and what survives a restart of the relay.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::client_config;
use common::{assert_no_event, next_event, wait_for, Raw, TestServer};
use relaychat::client::{Client, ClientConfig, Event, Mark, Security};
use relaychat::clock::now_ms;
use relaychat::frame::{encode_to_vec, Frame};
use relaychat::server::ServerConfig;
use relaychat::wire::FrameReader;

/// An account holder (password `pw-NAME`) in `room`, with the online list taken.
fn member(server: &TestServer, name: &str, room: &str) -> Client {
    let mut config = client_config(name, room);
    config.password = format!("pw-{name}");
    let client = Client::connect_tcp(&server.addr.to_string(), &config).expect("connects");
    assert!(matches!(next_event(&client), Event::Online { .. }));
    client
}

/// The next chat event as (from, to, mark, text).
fn next_message(client: &Client) -> (String, String, Mark, String) {
    wait_for(client, "a message", |e| match e {
        Event::Chat { from, to, mark, text, .. } => Some((from.clone(), to.clone(), *mark, text.clone())),
        _ => None,
    })
}

fn quiet(client: &Client) {
    assert_no_event(client, Duration::from_millis(200));
}

#[test]
fn a_member_gets_what_was_said_while_away_once_and_in_order() {
    let server = TestServer::start();
    member(&server, "bob", "lobby").close(); // bob is now a member of lobby
    let alice = server.client("alice", "lobby");
    let before = now_ms();
    for text in ["one", "two", "three"] {
        alice.send_text(text).unwrap();
    }
    alice.who().unwrap();
    wait_for(&alice, "the messages to be handled", |e| matches!(e, Event::Online { .. }).then_some(()));

    let bob = member(&server, "bob", "lobby");
    for want in ["one", "two", "three"] {
        let got = wait_for(&bob, "an offline message", |e| match e {
            Event::Chat { from, mark, text, sent_at_ms, .. } => {
                assert!(*sent_at_ms >= before && *sent_at_ms <= now_ms(), "the original time");
                Some((from.clone(), *mark, text.clone()))
            }
            _ => None,
        });
        assert_eq!(got, ("alice".to_string(), Mark::Offline, want.to_string()));
    }
    quiet(&bob); // no history copies of the same three
    bob.close();

    // Delivered once: next time they are history, not offline messages.
    let bob = member(&server, "bob", "lobby");
    for want in ["one", "two", "three"] {
        assert_eq!(next_message(&bob), ("alice".into(), String::new(), Mark::History, want.into()));
    }
    quiet(&bob);
}

#[test]
fn joining_shows_the_last_messages_as_history() {
    let server = TestServer::start_with(ServerConfig { history: 2, ..ServerConfig::default() });
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");
    for text in ["a", "b", "c"] {
        alice.send_text(text).unwrap();
    }
    for _ in 0..3 {
        next_message(&bob);
    }
    let carol = server.client("carol", "lobby"); // a guest: history, never offline delivery
    assert_eq!(next_message(&carol), ("alice".into(), String::new(), Mark::History, "b".into()));
    assert_eq!(next_message(&carol), ("alice".into(), String::new(), Mark::History, "c".into()));
    quiet(&carol);
    let elsewhere = server.client("dave", "other");
    quiet(&elsewhere); // rooms keep their history to themselves
}

#[test]
fn direct_messages_reach_one_person_online_or_offline() {
    let server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let bob = member(&server, "bob", "lobby");
    let carol = server.client("carol", "lobby");
    wait_for(&alice, "carol", |e| matches!(e, Event::Joined { name, .. } if name == "carol").then_some(()));

    alice.send_direct("bob", "just for you").unwrap();
    assert_eq!(next_message(&bob), ("alice".into(), "bob".into(), Mark::Live, "just for you".into()));
    quiet(&carol);

    bob.close();
    alice.send_direct("bob", "while you were out").unwrap();
    let bob = member(&server, "bob", "elsewhere");
    assert_eq!(
        next_message(&bob),
        ("alice".into(), "bob".into(), Mark::Offline, "while you were out".into())
    );

    alice.send_direct("nobody", "hello?").unwrap();
    let warning = wait_for(&alice, "a warning", |e| match e {
        Event::Warning { message, .. } => Some(message.clone()),
        _ => None,
    });
    assert!(warning.contains("\"nobody\" is not online and has no account"), "{warning}");
}

#[test]
fn a_receipt_comes_after_storing_and_a_resend_is_not_delivered_twice() {
    let server = TestServer::start();
    let bob = server.client("bob", "lobby");
    let mut raw = server.raw_joined("raw", "lobby");
    let say = Frame::Say { client_id: 42, to: String::new(), text: "exactly once".into() };
    raw.send(&say);
    let Frame::Sent { client_id: 42, message_id } = next_non_chat(&mut raw) else { panic!() };
    raw.send(&say); // as a client would after a reconnect, not knowing the first got through
    assert_eq!(next_non_chat(&mut raw), Frame::Sent { client_id: 42, message_id });
    assert_eq!(
        wait_for(&bob, "the message", |e| match e {
            Event::Chat { id, text, .. } => Some((*id, text.clone())),
            _ => None,
        }),
        (message_id, "exactly once".to_string())
    );
    quiet(&bob);
}

fn next_non_chat(raw: &mut Raw) -> Frame {
    loop {
        match raw.recv() {
            Frame::Joined { .. } | Frame::Left { .. } => {}
            other => return other,
        }
    }
}

#[test]
fn leave_ends_membership() {
    let server = TestServer::start();
    member(&server, "bob", "lobby").leave_room();
    let alice = server.client("alice", "lobby");
    alice.send_text("after bob left").unwrap();
    alice.who().unwrap();
    wait_for(&alice, "the message to be handled", |e| matches!(e, Event::Online { .. }).then_some(()));
    let bob = member(&server, "bob", "lobby");
    // History, yes (he is back in the room); an offline delivery, no.
    assert_eq!(next_message(&bob).2, Mark::History);
    quiet(&bob);
}

#[test]
fn stored_messages_survive_a_restart_of_the_relay() {
    let server = TestServer::start();
    member(&server, "bob", "lobby").close();
    let mut raw = server.raw_joined("raw", "lobby");
    raw.send(&Frame::Say { client_id: 7, to: String::new(), text: "before the restart".into() });
    assert!(matches!(next_non_chat(&mut raw), Frame::Sent { client_id: 7, .. }));
    drop(raw);
    let server = server.restart();
    let bob = member(&server, "bob", "lobby");
    assert_eq!(next_message(&bob), ("raw".into(), String::new(), Mark::Offline, "before the restart".into()));
}

/// Seen means "everything up to here", so a client answers a run of offline messages with a few
/// Seens, not one each: every Seen is a database write on the relay and a request under its rate
/// limit, with the client's own lines queued behind it. A fake relay sends 300 offline messages
/// in one write and counts what comes back.
#[test]
fn a_run_of_offline_messages_is_confirmed_with_a_few_seens_up_to_the_last() {
    const OFFLINE: u64 = 300;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = FrameReader::new(stream);
        assert!(matches!(reader.read_frame(), Ok(Some(Frame::Hello { .. }))));
        let mut flight = encode_to_vec(&Frame::Welcome { name: "bob".into(), room: "lobby".into() }).unwrap();
        let online = Frame::Online { room: "lobby".into(), names: vec!["bob".into()], more: false };
        flight.extend(encode_to_vec(&online).unwrap());
        for id in 1..=OFFLINE {
            let chat = Frame::Chat {
                id,
                from: "alice".into(),
                to: String::new(),
                sent_at_ms: now_ms(),
                mark: relaychat::frame::MARK_OFFLINE,
                text: format!("while you were out {id}"),
            };
            flight.extend(encode_to_vec(&chat).unwrap());
        }
        reader.get_mut().write_all(&flight).unwrap();
        let mut seens = Vec::new();
        while let Ok(Some(frame)) = reader.read_frame() {
            if let Frame::Seen { message_id } = frame {
                seens.push(message_id);
                if message_id == OFFLINE {
                    break;
                }
            }
        }
        seens
    });
    let mut config = ClientConfig::new("bob", "lobby");
    config.security = Security::Plaintext; // the fake relay speaks no TLS
    let bob = Client::connect_tcp(&addr.to_string(), &config).unwrap();
    for want in 1..=OFFLINE {
        let (id, mark) = wait_for(&bob, "an offline message", |e| match e {
            Event::Chat { id, mark, .. } => Some((*id, *mark)),
            _ => None,
        });
        assert_eq!((id, mark), (want, Mark::Offline));
    }
    let seens = fake.join().unwrap();
    assert_eq!(seens.last(), Some(&OFFLINE), "the last Seen confirms them all: {seens:?}");
    assert!(seens.windows(2).all(|w| w[0] < w[1]), "each Seen goes further: {seens:?}");
    // One per socket read at most; the client reads 1 KiB first, doubling while reads fill it.
    assert!(seens.len() <= 30, "{} Seens for {OFFLINE} offline messages: {seens:?}", seens.len());
    drop(bob);
}

/// What the Seens cost a person, on a real relay with its default request rate (500 a second
/// per address, bursts of 1000): after a login that brings 4000 waiting messages, the user's
/// first line is stored at once, not after the relay has read (and paced) a Seen for each
/// message in front of it: 3000 over the burst would be 6 s.
#[test]
fn after_a_big_catch_up_the_first_line_is_not_stuck_behind_the_seens() {
    const WAITING: usize = 4000;
    let server =
        TestServer::start_with(ServerConfig { msg_rate: 0, text_rate: 0, ..ServerConfig::default() });
    member(&server, "bob", "lobby").close();
    let alice = server.client("alice", "lobby");
    for i in 0..WAITING {
        alice.send_text(&format!("message {i}")).unwrap();
    }
    alice.who().unwrap();
    wait_for(&alice, "the messages to be handled", |e| matches!(e, Event::Online { .. }).then_some(()));

    let mut config = client_config("bob", "lobby");
    config.password = "pw-bob".into();
    config.receipts = true;
    let bob = Client::connect_tcp(&server.addr.to_string(), &config).expect("connects");
    let mut offline = 0;
    while offline < WAITING {
        offline += wait_for(&bob, "the offline messages", |e| match e {
            Event::Chat { mark: Mark::Offline, .. } => Some(1),
            Event::Chat { .. } | Event::Online { .. } => Some(0),
            _ => None,
        });
    }
    let sent = Instant::now();
    bob.send_with_id(1, "", "back, and caught up").unwrap();
    wait_for(&bob, "the receipt", |e| matches!(e, Event::Sent { client_id: 1, .. }).then_some(()));
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(2), "bob's first line waited {took:?} for its receipt");
}
