//! Hostile TLS before the session is up: the relay's TLS front door under attack, from the first
//! byte to the hello (the handshake and the hello share one deadline, `HELLO_TIMEOUT`).
//!
//! Each test plays one attack against the real `server` binary (`tests/common/relay.rs`, so a
//! spinning or leaked thread is seen in `/proc/<pid>` and dies with the process) and then checks
//! that a bystander is unharmed: two library clients join and chat within `BYSTANDER_LIMIT`.
//! Where it matters it also checks that the relay has no panic in its log, that its thread count
//! comes back to what it was before the attack, and how much CPU it burned meanwhile. The tools
//! are in `tests/common/tls_attack.rs`.
//!
//! | test | attack |
//! | --- | --- |
//! | `handshakes_that_never_finish_…` | `0x16` alone, half a ClientHello, a ClientHello a byte at a time, no Finished, no hello, a hello a byte at a time |
//! | `garbage_after_the_tls_byte_…` | absurd record and message lengths, random bytes, a record that does not decrypt, an unauthenticated alert |
//! | `close_notify_with_the_clients_finished_…` | close_notify and more bytes in the client's last handshake flight |
//! | `many_half_open_handshakes_…` | 150 ClientHellos from one address that never finish |
//! | `a_plaintext_peer_that_keeps_talking_…` | plaintext against a TLS-only relay, writing on after `TlsRequired` |
//! | `a_tls_client_turned_away_…` | a TLS client over the per-address cap: does it learn why? |
//!
//! Run it with `cargo test --test tls_handshake_attacks -- --nocapture` (the `abuse:` lines are
//! the relay's memory for each attack).

mod common;

use common::attacker::lo;
use common::relay::{threads_of, RelayOptions};
use common::tls_attack::*;
use common::{client_config, connect_from, hello_as};
use relaychat::client::Client;
use relaychat::frame::{encode_to_vec, ErrorCode, Frame};
use relaychat::wire::{write_frame, FrameReader};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Handshakes (and hellos after a handshake) that never finish: each connection is closed by the
/// hello deadline, counted from its start, however the bytes trickle in.
#[test]
fn handshakes_that_never_finish_are_closed_by_the_hello_deadline() {
    let _one = one_at_a_time();
    let mut relay = RelayOptions::for_attacks().watched("tls-stalled-handshakes");
    let baseline = idle_threads(&relay);
    let hello = client_hello();
    let addr = relay.addr;
    let cpu_before = cpu_seconds(relay.pid);
    let attacks: Vec<(&str, Attack<'_>)> = vec![
        ("the handshake byte alone", Box::new(|| stall(addr, &[0x16]))),
        ("half a ClientHello", Box::new(|| stall(addr, &hello[..hello.len() / 2]))),
        ("a ClientHello without its last byte", Box::new(|| stall(addr, &hello[..hello.len() - 1]))),
        ("a ClientHello one byte every 200 ms", Box::new(|| trickle_raw(addr, &hello))),
        ("a ClientHello and never a Finished", Box::new(|| stall(addr, &hello))),
        ("a handshake and never a hello", Box::new(|| tls_silent(addr))),
        ("a handshake, then a hello one byte every 200 ms", Box::new(|| tls_trickled_hello(addr))),
    ];
    let verdicts: Vec<(&str, Option<Duration>)> = thread::scope(|scope| {
        let running: Vec<_> = attacks.into_iter().map(|(what, attack)| (what, scope.spawn(attack))).collect();
        // The relay is busy holding seven stalled connections: bystanders must not notice.
        thread::sleep(Duration::from_secs(1));
        let took = bystanders_chat(relay.addr, 1);
        assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?} during the stalled handshakes");
        running.into_iter().map(|(what, handle)| (what, handle.join().expect("attacker thread"))).collect()
    });
    let cpu = cpu_seconds(relay.pid) - cpu_before;
    println!("tls_hostile: closed after {verdicts:?}; relay CPU {cpu:.2} s");
    for (what, closed_after) in &verdicts {
        match closed_after {
            Some(after) => assert!(
                *after >= HELLO_TIMEOUT - SLACK && *after <= HELLO_TIMEOUT + SLACK,
                "{what}: closed after {after:?}, expected at the {HELLO_TIMEOUT:?} deadline{}",
                relay.context()
            ),
            None => {
                panic!("{what}: still open {:?} after it started{}", HELLO_TIMEOUT + SLACK, relay.context())
            }
        }
    }
    assert!(cpu < 3.0, "the relay used {cpu:.1} s of CPU holding seven idle connections");
    assert_threads_back(&relay, baseline);
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// Bytes after a first `0x16` that are not TLS: the connection ends at once (not at the
/// deadline), without a panic, and the relay goes on serving.
#[test]
fn garbage_after_the_tls_byte_is_refused_at_once() {
    let _one = one_at_a_time();
    let mut relay = RelayOptions::for_attacks().watched("tls-garbage");
    let baseline = idle_threads(&relay);
    let hello = client_hello();
    let mut absurd_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    absurd_record.extend(noise(64, 1));
    let mut random = vec![0x16];
    random.extend(noise(64 * 1024, 2));
    // A ClientHello, then an unauthenticated close_notify (a warning, which TLS 1.3 forbids)
    // followed by more bytes: before the handshake, close_notify must count for nothing.
    let mut early_alert = hello.clone();
    early_alert.extend([0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]);
    early_alert.extend(noise(8 * 1024, 3));
    // A ClientHello, then an application data record that cannot decrypt, instead of Finished.
    let mut undecryptable = hello.clone();
    undecryptable.extend([0x17, 0x03, 0x03, 0x00, 0x40]);
    undecryptable.extend(noise(0x40, 4));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a record of 65535 bytes (more than TLS allows)", absurd_record),
        ("an empty handshake record", vec![0x16, 0x03, 0x01, 0x00, 0x00]),
        ("a handshake message claiming 16 MiB", vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff]),
        ("64 KiB of random bytes", random),
        ("a ClientHello, then a plaintext close_notify and more bytes", early_alert),
        ("a ClientHello, then a record that does not decrypt", undecryptable),
    ];
    let mut late = Vec::new();
    for (what, bytes) in &cases {
        let mut tcp = connect_from(lo(3), relay.addr, Duration::from_secs(5)).expect("connect");
        let start = Instant::now();
        // The relay may close before all of it is written; that is its right.
        let _ = tcp.write_all(bytes);
        match closed_within(&mut tcp, start, PROMPT) {
            Some(_) => {}
            None => late.push(*what),
        }
    }
    assert!(late.is_empty(), "still open {PROMPT:?} after the garbage: {late:?}{}", relay.context());
    assert!(relay.alive(), "the relay died{}", relay.context());
    let took = bystanders_chat(relay.addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?} after the garbage");
    assert_threads_back(&relay, baseline);
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// A client whose last handshake flight carries its Finished, then an (authenticated)
/// close_notify, then a few KiB more, all in one write.
///
/// `TlsStream::handshake` feeds what it read to rustls in a loop `while !data.is_empty()`; once
/// rustls has seen close_notify, `read_tls` takes nothing more (returns `Ok(0)`), so the loop
/// never ends: the connection thread spins at full speed forever, never checks the deadline,
/// never closes the socket, and holds its slot of the per-address cap. (A relay in the same
/// process could not even shut down: step 5 of `Server::run` joins that thread.)
#[test]
fn close_notify_with_the_clients_finished_does_not_spin_the_relay() {
    let _one = one_at_a_time();
    let mut relay = RelayOptions::for_attacks().watched("tls-close-notify-in-handshake");
    let baseline = idle_threads(&relay);
    let mut attacker = Manual::up_to_finished(lo(4), relay.addr);
    attacker.tls.send_close_notify();
    let mut flight = attacker.take_records();
    flight.extend(noise(8 * 1024, 5));
    let start = Instant::now();
    attacker.tcp.write_all(&flight).expect("send the last flight");
    // Let the relay take it in, then see what it does with its CPU for two seconds.
    thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_seconds(relay.pid);
    thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(relay.pid) - cpu_before;
    let took = bystanders_chat(relay.addr, 1);
    let closed = closed_within(&mut attacker.tcp, start, HELLO_TIMEOUT + SLACK);
    let threads = settle_threads(relay.pid, baseline, THREADS_SETTLE);
    let busiest = busiest_thread(relay.pid);
    drop(attacker);
    assert!(
        cpu < 0.5 && closed.is_some() && threads <= baseline,
        "after a close_notify in the client's last handshake flight, the relay used {cpu:.2} s of CPU \
         in 2 s (busiest: {busiest}), the connection was {} {:?} after it started, and the relay has \
         {threads} threads (before: {baseline}){}",
        if closed.is_some() { "closed" } else { "still open" },
        closed.unwrap_or(HELLO_TIMEOUT + SLACK),
        relay.context()
    );
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// 150 ClientHellos from one address (its caps raised so that the TLS path itself is tested),
/// none of which ever finishes: the relay does 150 key exchanges and signatures, holds 150
/// threads, and must stay responsive and small, then close them all by the deadline.
#[test]
fn many_half_open_handshakes_from_one_address_stay_bounded() {
    const ATTACKERS: usize = 150;
    let _one = one_at_a_time();
    let mut relay = RelayOptions::for_attacks()
        .flag("--max-per-address", 400)
        .flag("--connect-rate", 1000)
        .flag("--connect-burst", 1000)
        .watched("tls-half-open-flood");
    let baseline = idle_threads(&relay);
    let cpu_before = cpu_seconds(relay.pid);
    let start = Instant::now();
    let mut open = Vec::new();
    for _ in 0..ATTACKERS {
        let mut tcp = connect_from(lo(5), relay.addr, Duration::from_secs(5)).expect("connect");
        tcp.write_all(&client_hello()).expect("send a ClientHello");
        open.push(tcp);
    }
    let opened_in = start.elapsed();
    // The relay answered them (it did the key exchange and signed): the first reads its
    // ServerHello, a handshake record.
    let mut first = [0u8; 1];
    open[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(open[0].read(&mut first), Ok(1) if first[0] == 0x16),
        "no ServerHello for a half-open handshake{}",
        relay.context()
    );
    thread::sleep(Duration::from_millis(500));
    let held = relay.thread_count();
    let cpu = cpu_seconds(relay.pid) - cpu_before;
    let took = bystanders_chat(relay.addr, 1);
    println!(
        "tls_hostile: {ATTACKERS} half-open handshakes opened in {opened_in:?}; relay threads {held} \
         (idle {baseline}), CPU {cpu:.2} s, bystanders {took:?}"
    );
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?} beside {ATTACKERS} half-open handshakes");
    assert!(held >= baseline + ATTACKERS, "the relay holds {held} threads: the attack did not get through");
    assert!(held <= baseline + ATTACKERS + 8, "the relay holds {held} threads for {ATTACKERS} connections");
    assert!(cpu < 10.0, "{ATTACKERS} handshakes cost the relay {cpu:.1} s of CPU");
    assert!(
        relay.peak_mib() < 128.0,
        "peak RSS {:.0} MiB with {ATTACKERS} half-open handshakes",
        relay.peak_mib()
    );
    // Every one of them is closed by the deadline.
    let mut still_open = 0;
    for tcp in &mut open {
        if closed_within(tcp, start, HELLO_TIMEOUT + SLACK + opened_in).is_none() {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "half-open handshakes left open after the deadline{}", relay.context());
    drop(open);
    assert_threads_back(&relay, baseline);
    assert_no_panic(&relay);
    let (peak, after) = relay.memory_report(64, Duration::from_secs(5));
    assert!(peak < 128.0 && after < 64.0, "peak {peak:.0} MiB, after {after:.0} MiB");
}

/// A plaintext peer against a TLS-only relay says hello and keeps writing: it reads
/// `Error{TlsRequired}`, its writes start failing at once, and ten of them leave no thread behind.
#[test]
fn a_plaintext_peer_that_keeps_talking_after_tls_required_is_cut_off() {
    let _one = one_at_a_time();
    let relay = RelayOptions::new().start();
    let (addr, pid) = (relay.addr, relay.pid());
    thread::sleep(Duration::from_millis(300));
    let baseline = threads_of(pid);
    for round in 0..10 {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(PROMPT)).unwrap();
        tcp.set_write_timeout(Some(PROMPT)).unwrap();
        let start = Instant::now();
        write_frame(&mut tcp, &hello_as("plain", "lobby", "", "")).expect("say hello");
        let mut out = tcp.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let junk = encode_to_vec(&Frame::say(&"y".repeat(60 * 1024))).unwrap();
            while start.elapsed() < PROMPT * 2 {
                if out.write_all(&junk).is_err() {
                    return Some(start.elapsed());
                }
            }
            None
        });
        let mut reader = FrameReader::new(tcp);
        match reader.read_frame() {
            Ok(Some(Frame::Error { code: ErrorCode::TlsRequired, .. })) => {}
            other => panic!("round {round}: expected TlsRequired, got {other:?}"),
        }
        let failed_after = writer.join().expect("writer thread");
        assert!(
            failed_after.is_some_and(|after| after < PROMPT),
            "round {round}: the plaintext peer could still write {PROMPT:?} after TlsRequired"
        );
    }
    let took = bystanders_chat(addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    let threads = settle_threads(pid, baseline, THREADS_SETTLE);
    assert!(threads <= baseline, "{threads} relay threads (before: {baseline})");
    let log: Vec<String> = relay.log.try_iter().collect();
    assert!(!log.iter().any(|l| l.contains("panicked")), "the relay panicked:\n{}", log.join("\n"));
}

/// The per-address cap turns a connection away with a plaintext `Error{RelayFull}` frame, written
/// by the accept thread before any TLS. A plaintext client reads it and says why (the control); a
/// TLS client (the default) feeds it to rustls as if it were a TLS record, and its user is told
/// that the TLS handshake failed and that the relay may speak only plaintext, when it is full.
#[test]
fn a_tls_client_turned_away_by_the_per_address_cap_is_told_why() {
    let _one = one_at_a_time();
    let relay = RelayOptions::for_attacks().flag("--max-per-address", 2).watched("tls-turned-away");
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| connect_from(Ipv4Addr::LOCALHOST, relay.addr, Duration::from_secs(5)).expect("connect"))
        .collect();
    thread::sleep(Duration::from_millis(200));
    let server = relay.addr.to_string();
    let plain = relaychat::client::ClientConfig {
        security: relaychat::client::Security::Plaintext,
        ..client_config("late", "lobby")
    };
    match Client::connect_tcp(&server, &plain) {
        Err(relaychat::client::ClientError::Refused { code: ErrorCode::RelayFull, .. }) => {}
        Err(e) => panic!("plaintext: expected RelayFull, got {e}"),
        Ok(_) => panic!("plaintext: joined past a cap of 2 with 2 connections held"),
    }
    match Client::connect_tcp(&server, &client_config("late", "lobby")) {
        Err(relaychat::client::ClientError::Refused { code: ErrorCode::RelayFull, .. }) => {}
        Err(e) => panic!("TLS: expected RelayFull (\"too many connections from your address\"), got: {e}"),
        Ok(_) => panic!("TLS: joined past a cap of 2 with 2 connections held"),
    }
    drop(holders);
}
