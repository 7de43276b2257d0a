//! The open internet, messages: one hostile client's chat must not hurt anyone else (issue 8,
//! attack classes 4, 7, 8 and 12).
//!
//! Each test plays one of issue 8's attack classes against the real `server` binary, over real
//! loopback sockets, as a hostile client would: frames written by hand, many connections, source
//! addresses of its own (`127.0.0.x`). Each then checks that **the victim is unharmed** (an upload
//! completes, a login works within seconds, Receive works, messages get receipts, bystanders'
//! chat keeps a p99 under 100 ms) and that **the relay's memory stays bounded** (RSS under
//! 256 MiB during the attack, back under 64 MiB within 10 s after it; every test prints
//! `abuse: <class>: peak RSS X MiB, after Y MiB`). Scales are small (flags lower the limits);
//! every loop is bounded in count and time, and every read has a timeout. The tests take a lock
//! so that they run one at a time: each measures memory and latency, which a neighbour under
//! attack would spoil. The shared checks are in `tests/common/abuse.rs`.
//!
//! | test | the attack class |
//! | --- | --- |
//! | `class04_…` | 4. 64 KiB messages flooded to an offline account (direct and to its room) |
//! | `class07_…` (two) | 7. chat floods: the per-sender token bucket, and `--min-free` for history |
//! | `class08_…` | 8. client ids ≥ 2^63 in the same commit batch as someone else's messages, across a restart |
//! | `class12_…` | 12. ten clients that never read, sent 64 KiB messages |
//! | `an_oversized_…` | found in review: 1 MiB lines waiting on the text rate |
//!
//! `class07_chat_history_stops_at_min_free` mounts its own tmpfs (root only, as in CI); elsewhere
//! it prints a skip line.
//!
//! Run it with `cargo test --test abuse_messages -- --test-threads=1 --nocapture` to see the `abuse:` lines.
//! With `ABUSE_SOFT=1`, a failed check is printed and the test goes on, so one run lists every
//! failure (each test still fails at its end).

mod common;

use common::abuse::*;
use common::attacker::{lo, lo_for, Got, Raw, Tally};
use common::latency::Latency;
use common::relay::RelayOptions;
use common::SmallDisk;
use common::{free_bytes, hello_as};
use relaychat::frame::{encode_to_vec, Frame, MARK_OFFLINE};
use relaychat::rules::MAX_TEXT_BYTES;
use std::thread;
use std::time::{Duration, Instant};

/// At most this many 64 KiB messages (about 94 MiB) in the flood.
const FLOOD_MESSAGES: u64 = 1500;

#[test]
fn class04_a_message_flood_cannot_lock_an_account_holder_out() {
    let _test = begin();
    let class = "4 message flood to an offline account";
    let mut relay = RelayOptions::for_attacks()
        .flag(FLAG_MAX_PENDING, PENDING_CAP)
        .flag(FLAG_MSG_RATE, 0)
        .flag(FLAG_BYTE_RATE, 0)
        .watched(class);
    claim_account(&relay, "vera", "home", "vera-pw");
    let latency = Latency::start(&relay, "4");

    // Half the flood is direct messages to vera, half goes to her room while she is away.
    let mut n = 0;
    let mut evil = attacker(&relay, &mut n, "home");
    let tally = Tally::start(&evil);
    let text = big_text();
    let started = Instant::now();
    let mut sent = 0;
    while sent < FLOOD_MESSAGES {
        if started.elapsed() > Duration::from_secs(15) || relay.over(RSS_UNDER_ATTACK_MIB) {
            break;
        }
        if sent.is_multiple_of(16) && tally.get().count(CODE_RECIPIENT_FULL) >= 20 {
            break; // the cap is in force and the sender knows
        }
        let to = if sent % 2 == 0 { "vera" } else { "" };
        if evil.send(&Frame::Say { client_id: sent + 1, to: to.into(), text: text.clone() }).is_err() {
            break;
        }
        sent += 1;
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5) {
        let t = tally.get();
        if t.receipts + t.errors.len() >= sent as usize || t.closed {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_alive(&mut relay, class);
    let flood = tally.get();
    println!(
        "abuse: {class}: {sent} messages of 64 KiB sent in {:.1} s; {} receipts, {} refused as full",
        started.elapsed().as_secs_f64(),
        flood.receipts,
        flood.count(CODE_RECIPIENT_FULL)
    );
    drop(tally);
    drop(evil);

    // vera logs in, takes everything that waited for her, and chats.
    let t0 = Instant::now();
    let mut vera =
        Raw::join_with(lo(1), relay.addr, &hello_as("vera", "home", "vera-pw", ""), Duration::from_secs(10))
            .unwrap_or_else(|a| {
                panic!("{class}: vera cannot log in after the flood: {a:?}{}", relay.context())
            });
    let login = t0.elapsed();
    let (mut offline, mut cut) = (0usize, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match vera.recv(Duration::from_secs(2)) {
            Got::Frame(Frame::Chat { mark, .. }) if mark == MARK_OFFLINE => offline += 1,
            Got::Frame(Frame::Error { code, message }) => {
                cut = Some(format!("{code:?}: {message}"));
                break;
            }
            Got::Frame(_) => {}
            Got::Timeout => break,
            Got::Closed | Got::Broken(_) => {
                cut = Some("closed".into());
                break;
            }
        }
    }
    check!(
        cut.is_none(),
        "{class}: vera was cut at login ({cut:?}) after {offline} offline messages{}",
        relay.context()
    );
    vera.send(&Frame::Say { client_id: 1, to: String::new(), text: "back again".into() }).unwrap();
    let receipt = vera
        .recv_until(Duration::from_secs(5), |f| matches!(f, Frame::Sent { client_id: 1, .. }).then_some(()));
    check!(receipt.is_some(), "{class}: vera's message after login got no receipt{}", relay.context());
    check!(login < LOGIN_LIMIT, "{class}: vera's login took {login:?}");
    println!("abuse: {class}: vera logged in in {login:?} and got {offline} offline messages");

    check!(
        flood.count(CODE_RECIPIENT_FULL) > 0,
        "{class}: {sent} messages of 64 KiB were sent for vera and the relay never refused one with {CODE_RECIPIENT_FULL:?} \
         (cap {PENDING_CAP}); she got {offline} at login{}",
        relay.context()
    );
    check!(offline <= PENDING_CAP + 10, "{class}: {offline} messages waited for vera (cap {PENDING_CAP})");
    assert_latency(&latency.finish(), class, false);
    drop(vera);
    assert_memory(&mut relay, class);
}

#[test]
fn class07_a_chat_flood_is_slowed_by_the_senders_token_bucket() {
    let _test = begin();
    let class = "7 chat flood (rate limit)";
    let mut relay = RelayOptions::for_attacks().watched(class);
    let latency = Latency::start(&relay, "7");
    let watcher = Raw::join(lo(1), relay.addr, "watcher", "spam");
    let seen = Tally::start(&watcher);
    let window = Duration::from_secs(4);

    // One connection floods big messages, another small ones, both as fast as TCP lets them.
    let mut n = 0;
    let floods: Vec<_> = [big_text(), "hi".to_string()]
        .into_iter()
        .map(|text| {
            let mut evil = attacker(&relay, &mut n, "spam");
            let tally = Tally::start(&evil);
            evil.stream().set_write_timeout(Some(Duration::from_millis(500))).unwrap();
            let handle = thread::spawn(move || {
                let started = Instant::now();
                let mut sent = 0u64;
                while started.elapsed() < window {
                    if evil.send(&Frame::Say { client_id: 0, to: String::new(), text: text.clone() }).is_err()
                    {
                        break; // pushed back for half a second: the bucket is doing its job
                    }
                    sent += 1;
                }
                (sent, evil)
            });
            (handle, tally)
        })
        .collect();
    let started = Instant::now();
    let mut attackers = Vec::new();
    for (handle, tally) in floods {
        attackers.push((handle.join().unwrap(), tally));
    }
    thread::sleep((window + Duration::from_secs(1)).saturating_sub(started.elapsed()));
    let got = seen.get();
    let secs = started.elapsed().as_secs_f64();
    assert_alive(&mut relay, class);
    let (big_sent, small_sent) = (attackers[0].0 .0, attackers[1].0 .0);
    println!(
        "abuse: {class}: in {secs:.1} s the attackers wrote {big_sent} big and {small_sent} small messages; \
         a reader in the room got {} messages, {:.1} MiB",
        got.chats,
        mib(got.chat_bytes as u64)
    );
    let byte_bound = 2.0 * (BYTE_BURST + BYTE_RATE * secs);
    let msg_bound = 2.0 * (MSG_BURST + MSG_RATE * secs) + byte_bound / MAX_TEXT_BYTES as f64;
    check!(
        (got.chat_bytes as f64) < byte_bound,
        "{class}: one sender got {:.1} MiB of chat through in {secs:.1} s (bound {:.1} MiB){}",
        mib(got.chat_bytes as u64),
        byte_bound / 1048576.0,
        relay.context()
    );
    check!(
        (got.chats as f64) < msg_bound,
        "{class}: {} messages got through in {secs:.1} s (bound {msg_bound:.0})",
        got.chats
    );
    assert_latency(&latency.finish(), class, true);
    drop(attackers);
    drop(seen);
    assert_memory(&mut relay, class);
}

#[test]
fn class07_chat_history_stops_at_min_free() {
    let _test = begin();
    let class = "7b chat flood against --min-free";
    let Some(disk) = SmallDisk::mount("64m") else {
        println!("abuse: {class}: skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    // The relay counts what its batch and its database log will still write, so the disk stays
    // at --min-free; the test allows it to dip by an eighth of it (the relay's per-message cost is
    // an estimate), not further. (It once sank to 3 MiB: the log, which checkpoints do not shrink,
    // and a batch not yet committed were not counted.)
    let min_free: u64 = 32 << 20;
    let data = disk.dir.path.join("relay");
    std::fs::create_dir_all(&data).unwrap();
    let mut relay = RelayOptions::for_attacks()
        .data_dir(&data)
        .flag(FLAG_MIN_FREE, "32M")
        .flag(FLAG_MSG_RATE, 0)
        .flag(FLAG_BYTE_RATE, 0)
        .watched(class);
    let mut n = 0;
    let mut evil = attacker(&relay, &mut n, "spam");
    let tally = Tally::start(&evil);
    let text = big_text();
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < 1400 && started.elapsed() < Duration::from_secs(20) && !relay.over(RSS_UNDER_ATTACK_MIB) {
        if sent.is_multiple_of(16) {
            let t = tally.get();
            if t.count(CODE_NOT_STORED) >= 3 || t.closed {
                break;
            }
        }
        if evil.send(&Frame::Say { client_id: sent + 1, to: String::new(), text: text.clone() }).is_err() {
            break;
        }
        sent += 1;
    }
    thread::sleep(Duration::from_millis(500));
    assert_alive(&mut relay, class);
    let t = tally.get();
    let free = free_bytes(&data);
    println!(
        "abuse: {class}: {sent} messages of 64 KiB sent; {} stored, {} refused as not stored; {:.1} MiB left free",
        t.receipts,
        t.count(CODE_NOT_STORED),
        mib(free)
    );
    check!(
        free >= min_free / 8 * 7,
        "{class}: chat filled the disk to {:.1} MiB free despite --min-free 32M (errors {:?}: {:?}){}",
        mib(free),
        t.errors.iter().take(3).collect::<Vec<_>>(),
        t.messages,
        relay.context()
    );
    check!(t.count(CODE_NOT_STORED) > 0, "{class}: the flood was never refused with {CODE_NOT_STORED:?}");

    // A new account can still be made, and live chat still flows.
    let t0 = Instant::now();
    let newbie = Raw::join_with(
        lo(1),
        relay.addr,
        &hello_as("newbie", "lobby", "new-pw", ""),
        Duration::from_secs(10),
    );
    check!(newbie.is_ok(), "{class}: a new account was refused: {:?}", newbie.as_ref().err());
    check!(t0.elapsed() < LOGIN_LIMIT, "{class}: the new account took {:?}", t0.elapsed());
    let mut a = Raw::join(lo(1), relay.addr, "amy", "lobby");
    let mut b = Raw::join(lo(1), relay.addr, "ben", "lobby");
    b.drain(Duration::from_millis(100), Duration::from_secs(1));
    a.send(&Frame::say("still talking")).unwrap();
    let live = b.recv_until(Duration::from_secs(2), |f| {
        matches!(f, Frame::Chat { text, .. } if text == "still talking").then_some(())
    });
    check!(live.is_some(), "{class}: live chat stopped after the disk reached --min-free");
    drop((tally, evil, newbie, a, b));
    assert_memory(&mut relay, class);
    drop(relay);
    drop(disk);
}

#[test]
fn class08_a_client_id_above_2_63_cannot_poison_other_peoples_messages() {
    let _test = begin();
    let class = "8 client id >= 2^63 in a batch";
    let relay = RelayOptions::for_attacks().watched(class);
    let poison = (1u64 << 63) + 7;
    // The same sender name before and after the restart: the database's uniqueness is per sender.
    let mut evil = Raw::join(lo(ATTACKER), relay.addr, "mallory1", "lobby");
    let bad_ids = [poison, u64::MAX];
    for id in bad_ids {
        evil.send(&Frame::Say { client_id: id, to: String::new(), text: "poison".into() }).unwrap();
    }
    let answers: Vec<Frame> = evil.drain(Duration::from_millis(500), Duration::from_secs(3));
    let refused = answers
        .iter()
        .filter(|f| matches!(f, Frame::Error { code, .. } if *code == CODE_BAD_MESSAGE_ID))
        .count();
    drop(evil);

    // A restart forgets what is in memory; only the database remembers.
    let mut relay = relay.restart();
    let mut evil = Raw::join(lo(ATTACKER), relay.addr, "mallory1", "lobby");
    let evil_reads = Tally::start(&evil);
    let mut alice = Raw::join(lo(1), relay.addr, "alice", "lobby");
    let bob = Raw::join(lo(1), relay.addr, "bob", "lobby");
    let _bob_reads = Tally::start(&bob);
    let burst: Vec<u8> = (0..30)
        .flat_map(|_| {
            encode_to_vec(&Frame::Say { client_id: poison, to: String::new(), text: "poison".into() })
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for round in 1..=10u64 {
        evil.send_bytes(&burst).unwrap();
        alice
            .send(&Frame::Say { client_id: round, to: String::new(), text: format!("hello {round}") })
            .unwrap();
        let answer = alice.recv_until(Duration::from_secs(5), |f| match f {
            Frame::Sent { client_id, .. } if *client_id == round => Some(Ok(())),
            Frame::Error { code, message } => Some(Err(format!("{code:?}: {message}"))),
            _ => None,
        });
        match answer {
            Some(Ok(())) => {}
            Some(Err(why)) => failures.push(format!("round {round}: {why}")),
            None => failures.push(format!("round {round}: no receipt")),
        }
    }
    assert_alive(&mut relay, class);
    check!(
        failures.is_empty(),
        "{class}: alice's messages, batched with mallory's id {poison}, were not stored: {failures:?}{}",
        relay.context()
    );
    check!(
        refused == bad_ids.len(),
        "{class}: ids above 2^63-1 got {answers:?}, not {CODE_BAD_MESSAGE_ID:?}"
    );
    let evil_told = evil_reads.get();
    check!(!evil_told.closed, "{class}: a bad message id should not cost the connection");
    drop((evil_reads, evil, alice));
    assert_memory(&mut relay, class);
}

/// At most this many 64 KiB messages in the flood (about 280 MiB).
const NEVER_READ_MESSAGES: usize = 4500;

#[test]
fn class12_clients_that_never_read_cost_bounded_memory() {
    let _test = begin();
    let class = "12 clients that never read";
    let mut relay = RelayOptions::for_attacks().flag(FLAG_MSG_RATE, 0).flag(FLAG_BYTE_RATE, 0).watched(class);
    let latency = Latency::start(&relay, "12");
    let sinks: Vec<Raw> =
        (0..10).map(|i| Raw::join(lo(40), relay.addr, &format!("sink{i}"), "sink")).collect();
    let mut flooder = Raw::join(lo(41), relay.addr, "flooder", "flood");
    let tally = Tally::start(&flooder);
    let text = big_text();
    let started = Instant::now();
    let mut sent = 0;
    while sent < NEVER_READ_MESSAGES && started.elapsed() < Duration::from_secs(20) {
        if relay.over(RSS_UNDER_ATTACK_MIB) || (sent.is_multiple_of(32) && tally.get().errors.len() >= 50) {
            break;
        }
        let to = format!("sink{}", sent % sinks.len());
        if flooder.send(&Frame::Say { client_id: 0, to, text: text.clone() }).is_err() {
            break;
        }
        sent += 1;
    }
    thread::sleep(Duration::from_millis(500));
    println!(
        "abuse: {class}: {sent} direct messages of 64 KiB for 10 clients that never read, in {:.1} s; \
         peak so far {:.0} MiB",
        started.elapsed().as_secs_f64(),
        relay.peak_mib()
    );
    assert_alive(&mut relay, class);
    check!(
        relay.peak_mib() < RSS_UNDER_ATTACK_MIB as f64,
        "{class}: the relay's RSS reached {:.0} MiB for clients that never read{}",
        relay.peak_mib(),
        relay.context()
    );
    assert_latency(&latency.finish(), class, false);
    drop((tally, flooder, sinks));
    assert_memory(&mut relay, class);
}

/// Found by a review in stop 19: a Say is paced by its length (the address's text bucket) before
/// its text is checked, so a frame of a mebibyte of "text" (far past the 64 KiB a line may have)
/// slept in the pause holding its decoded text as well as the reader's buffer. 32 connections
/// from two addresses, a slow text rate, one 1 MiB line each: while they all wait their turn,
/// the relay must hold no more than their read buffers (which the shared reading budget counts),
/// not a second mebibyte of text each. (Measured: +59 MiB before, when the text was kept.)
#[test]
fn an_oversized_line_waits_its_turn_without_its_text() {
    const PEOPLE: usize = 32;
    let _test = begin();
    let class = "1 MiB lines, paced";
    let mut relay = RelayOptions::for_attacks().flag("--text-rate", "100K").watched(class);
    let mut people: Vec<Raw> =
        (0..PEOPLE).map(|i| Raw::join(lo_for(140, i), relay.addr, &format!("long{i}"), "lobby")).collect();
    thread::sleep(Duration::from_millis(1500));
    let before = relay.rss_mib();
    let line = encode_to_vec(&Frame::say(&"x".repeat(1000 * 1024))).unwrap();
    for raw in people.iter_mut() {
        raw.send_bytes(&line).expect("the line goes");
    }
    // Each address's bucket now owes ten seconds per line: every connection is waiting.
    thread::sleep(Duration::from_millis(2000));
    let held = relay.rss_mib() - before;
    assert_alive(&mut relay, class);
    println!(
        "abuse: {class}: {PEOPLE} connections waiting with a 1 MiB line each: relay holds {held:.1} MiB more"
    );
    // Their buffers: about 1 MiB each; with the text too it was twice that.
    check!(
        held < 48.0,
        "{class}: the relay holds {held:.1} MiB more for {PEOPLE} paced 1 MiB lines{}",
        relay.context()
    );
    drop(people);
    assert_memory(&mut relay, class);
}
