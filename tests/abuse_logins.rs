//! The open internet, names and connections: one hostile client must not take anyone else's name,
//! password or place at the door (issue 8, attack classes 3, 9, 10 and 11).
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
//! | `class03_…` | 3. files for a guest or a name nobody owns; look-alike names; machine-bound names |
//! | `class09_…` | 9. password guessing from one address (with guest logins between) and from many |
//! | `class10_…` | 10. 150 parallel hellos that each need a password hash |
//! | `class11_…` | 11. fd exhaustion, the per-address cap, and hellos sent a byte at a time |
//!
//! Run it with `cargo test --test abuse_logins -- --test-threads=1 --nocapture` to see the `abuse:` lines.
//! With `ABUSE_SOFT=1`, a failed check is printed and the test goes on, so one run lists every
//! failure (each test still fails at its end).

mod common;

use common::abuse::*;
use common::attacker::{lo, Answer, Got, Raw};
use common::latency::Latency;
use common::relay::RelayOptions;
use common::watched::WatchedRelay;
use common::{connect_from, hello_as};
use relaychat::frame::{encode_to_vec, ErrorCode, Frame};
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

/// Two identity tokens, as a client would send them (hex of a SHA-256).
const DORA_TOKEN: &str = "9f2c1b7e4d0a8c3f6e5b2a1d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";
const OTHER_TOKEN: &str = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

#[test]
fn class03_nothing_meant_for_one_person_reaches_another() {
    let _test = begin();
    let class = "3 files for someone else / look-alike names";
    let mut relay = RelayOptions::for_attacks().watched(class);
    let addr = relay.addr;
    let mut sender = Raw::join(lo(1), addr, "sam", "lobby");

    // (a) A file for an online guest does not outlive the guest's session.
    let mut bob = Raw::join(lo(1), addr, "bob", "lobby");
    sender
        .upload("k1", "for-bob.txt", b"for bob only", "bob")
        .expect("a file for an online guest is accepted");
    bob.send(&Frame::Goodbye).unwrap();
    bob.closed_within(Duration::from_secs(3));
    thread::sleep(Duration::from_millis(200));
    let mut n = 0;
    match Raw::join_with(lo(ATTACKER), addr, &hello_as("bob", "lobby", "", ""), Duration::from_secs(10)) {
        Ok(mut fake) => {
            let early = fake.drain(Duration::from_millis(300), Duration::from_secs(2));
            let files = fake.list_files().unwrap_or_default();
            let announced = early.iter().filter(|f| matches!(f, Frame::NewFile(_))).count();
            check!(
                files.is_empty() && announced == 0,
                "{class}: a stranger who took the name \"bob\" after bob (a guest) left sees his files: {files:?}"
            );
        }
        Err(answer) => println!("abuse: {class}: the name bob was refused after he left ({answer:?})"),
    }

    // (b) A file or a message for a name nobody owns, while nobody of that name is online.
    match sender.upload("k2", "x.txt", b"for nobody", "nobody3") {
        Err((code, message)) => {
            check!(code == CODE_UNKNOWN_RECIPIENT && !message.is_empty(), "{class}: {code:?} {message:?}");
        }
        Ok(_) => check_failed(format!(
            "{class}: a file for \"nobody3\" (offline, no account) was stored for whoever takes the name"
        )),
    }
    sender.send(&Frame::Say { client_id: 0, to: "nobody4".into(), text: "hello?".into() }).unwrap();
    let refusal = sender.recv_until(Duration::from_secs(5), |f| match f {
        Frame::Error { code, message } => Some((*code, message.clone())),
        _ => None,
    });
    check!(
        matches!(&refusal, Some((code, m)) if *code == CODE_UNKNOWN_RECIPIENT && !m.is_empty()),
        "{class}: a direct message to an offline name without an account got {refusal:?}"
    );

    // (c) Look-alike names of an account are refused, with and without a password.
    claim_account(&relay, "alice", "lobby", "alice-pw");
    for fake in ["\u{430}lice", "al\u{456}ce"] {
        for password in ["guess", ""] {
            let answer = match Raw::join_with(
                lo(ATTACKER),
                addr,
                &hello_as(fake, "lobby", password, ""),
                Duration::from_secs(10),
            ) {
                Ok(_) => Answer::Welcome,
                Err(answer) => answer,
            };
            check!(
                matches!(&answer, Answer::Refused(code, _) if *code == CODE_CONFUSABLE),
                "{class}: the look-alike name {fake:?} (password {password:?}) next to the account \"alice\" got {answer:?}"
            );
        }
    }
    Raw::join_with(lo(1), addr, &hello_as("alice", "lobby", "alice-pw", ""), Duration::from_secs(10))
        .expect("the real alice still logs in");

    // (d) A name bound to a machine's token: files wait for it, and nobody else gets them.
    let mut dora =
        Raw::join_with(lo(1), addr, &hello_as("dora", "lobby", "", DORA_TOKEN), Duration::from_secs(10))
            .expect("dora claims her name with her machine's token");
    let _ = dora.send(&Frame::Goodbye);
    dora.closed_within(Duration::from_secs(3));
    let file_id = sender.upload("k3", "for-dora.txt", b"for dora only", "dora").unwrap_or_else(|e| {
        panic!("{class}: a file for dora (offline, machine-bound name) was refused: {e:?}")
    });
    for token in ["", OTHER_TOKEN] {
        n += 1;
        let answer = Raw::join_with(
            lo(ATTACKER),
            addr,
            &hello_as("dora", "lobby", "", token),
            Duration::from_secs(10),
        );
        check!(answer.is_err(), "{class}: a stranger (token {token:?}) logged in as dora ({n})");
    }
    let mut dora =
        Raw::join_with(lo(1), addr, &hello_as("dora", "lobby", "", DORA_TOKEN), Duration::from_secs(10))
            .unwrap_or_else(|a| panic!("{class}: dora cannot log in with her token: {a:?}"));
    let got =
        dora.download(file_id).unwrap_or_else(|e| panic!("{class}: dora cannot download her file: {e:?}"));
    check!(got == b"for dora only", "{class}: dora's file arrived changed");
    assert_memory(&mut relay, class);
}

/// How long each guessing phase lasts.
const GUESS_PHASE: Duration = Duration::from_secs(4);

/// One wrong guess from `from`; true if the relay checked it and said "wrong password".
fn guess(relay: &WatchedRelay, from: Ipv4Addr, n: usize, until: Instant) -> Option<Answer> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    let mut raw = Raw::connect(from, relay.addr).ok()?;
    Some(raw.say_hello(&hello_as("victor", "lobby", &format!("guess-{n}"), ""), left))
}

#[test]
fn class09_password_guessing_is_braked_per_address_and_per_account() {
    let _test = begin();
    let class = "9 password guessing";
    let mut relay = RelayOptions::for_attacks().watched(class);
    claim_account(&relay, "victor", "lobby", "correct horse battery");

    // (a) From one address, with a guest login after every guess.
    let until = Instant::now() + GUESS_PHASE;
    let (mut checked_a, mut others) = (0, Vec::new());
    for n in 0..1000 {
        match guess(&relay, lo(ATTACKER), n, until) {
            Some(Answer::Refused(ErrorCode::BadPassword, _)) => checked_a += 1,
            Some(Answer::Welcome) => panic!("{class}: a wrong password was let in"),
            Some(Answer::Timeout) | None => break,
            Some(other) => others.push(other),
        }
        let left = until.saturating_duration_since(Instant::now());
        if let Ok(mut guest) =
            Raw::join_with(lo(ATTACKER), relay.addr, &hello_as(&format!("g{n}"), "lobby", "", ""), left)
        {
            let _ = guest.send(&Frame::Goodbye);
        }
    }
    // (b) From a new address for every guess.
    let until = Instant::now() + GUESS_PHASE;
    let mut checked_b = 0;
    for n in 0..100u8 {
        match guess(&relay, lo(100 + n), 1000 + n as usize, until) {
            Some(Answer::Refused(ErrorCode::BadPassword, _)) => checked_b += 1,
            Some(Answer::Welcome) => panic!("{class}: a wrong password was let in"),
            Some(Answer::Timeout) | None => break,
            Some(other) => others.push(other),
        }
    }
    // (c) Meanwhile the real victor, from his own address, gets in within seconds.
    let t0 = Instant::now();
    let real = Raw::join_with(
        lo(250),
        relay.addr,
        &hello_as("victor", "lobby", "correct horse battery", ""),
        Duration::from_secs(35),
    );
    let took = t0.elapsed();
    assert_alive(&mut relay, class);
    println!(
        "abuse: {class}: {checked_a} guesses checked from one address in {GUESS_PHASE:?}, {checked_b} from changing \
         addresses; victor got in after {took:?}; {} other answers, the first: {:?}",
        others.len(),
        others.iter().take(3).collect::<Vec<_>>()
    );
    let bound = FREE_FAILURES + GUESS_PHASE.as_secs() as usize + 1;
    check!(
        checked_a <= bound,
        "{class}: {checked_a} passwords were checked from one address in {GUESS_PHASE:?} with guest logins in \
         between (bound {bound}): a guest login resets the brake{}",
        relay.context()
    );
    check!(
        checked_b <= bound,
        "{class}: {checked_b} passwords for victor were checked in {GUESS_PHASE:?} from changing addresses \
         (bound {bound}): the brake is per address only{}",
        relay.context()
    );
    check!(real.is_ok(), "{class}: the real victor was refused: {:?}", real.as_ref().err());
    check!(took < LOGIN_LIMIT, "{class}: the real victor waited {took:?} (limit {LOGIN_LIMIT:?})");
    drop(real);
    assert_memory(&mut relay, class);
}

#[test]
fn class10_parallel_password_hellos_hold_bounded_memory_and_guests_still_get_in() {
    let _test = begin();
    let class = "10 parallel password hellos";
    let mut relay = RelayOptions::for_attacks().watched(class);
    claim_account(&relay, "victor", "lobby", "right-pw");
    let latency = Latency::start(&relay, "10");

    // 150 hellos that each need a password hash, from 10 addresses (15 each, under every cap).
    let addr = relay.addr;
    let floods: Vec<_> = (0..10u8)
        .map(|a| {
            thread::spawn(move || {
                let mut conns: Vec<Raw> = Vec::new();
                for i in 0..15 {
                    if let Ok(mut raw) = Raw::connect(lo(10 + a), addr) {
                        let _ =
                            raw.send(&hello_as(&format!("h{a}x{i}"), "lobby", &format!("pw-{a}-{i}"), ""));
                        conns.push(raw);
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut answers = Vec::new();
                for raw in &mut conns {
                    answers.push(match raw.recv(deadline.saturating_duration_since(Instant::now())) {
                        Got::Frame(Frame::Welcome { .. }) => "welcome".to_string(),
                        Got::Frame(Frame::Error { code, .. }) => format!("{code:?}"),
                        other => format!("{other:?}").chars().take(20).collect(),
                    });
                }
                answers
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));

    // A guest walks in meanwhile; so does victor, retrying while the relay says it is busy.
    let t0 = Instant::now();
    let guest = Raw::join_with(lo(1), addr, &hello_as("walkin", "lobby", "", ""), Duration::from_secs(20));
    let guest_took = t0.elapsed();
    let t0 = Instant::now();
    let mut victor = Err(Answer::Timeout);
    while t0.elapsed() < Duration::from_secs(15) {
        victor = Raw::join_with(
            lo(2),
            addr,
            &hello_as("victor", "lobby", "right-pw", ""),
            Duration::from_secs(15),
        );
        match &victor {
            Err(Answer::Refused(ErrorCode::LoginBusy, _)) => thread::sleep(Duration::from_millis(200)),
            _ => break,
        }
    }
    let victor_took = t0.elapsed();
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    for flood in floods {
        for answer in flood.join().unwrap() {
            *tally.entry(answer).or_default() += 1;
        }
    }
    println!("abuse: {class}: answers to the 150 hellos: {tally:?}; guest in after {guest_took:?}, victor after {victor_took:?}");
    assert_alive(&mut relay, class);
    check!(
        relay.peak_mib() < RSS_UNDER_ATTACK_MIB as f64,
        "{class}: the relay's RSS reached {:.0} MiB while hashing passwords{}",
        relay.peak_mib(),
        relay.context()
    );
    check!(guest.is_ok(), "{class}: the guest was refused: {:?}", guest.as_ref().err());
    check!(
        guest_took < GUEST_LOGIN_LIMIT,
        "{class}: the guest waited {guest_took:?} (limit {GUEST_LOGIN_LIMIT:?})"
    );
    check!(victor.is_ok(), "{class}: victor could not log in: {:?}", victor.as_ref().err());
    assert_latency(&latency.finish(), class, true);
    drop((guest, victor));
    assert_memory(&mut relay, class);
}

/// The relay's fd limit in this test (soft and hard). The design derives its connection cap from
/// it: (256 - 64) / 6 = 32.
const NOFILE: u64 = 256;

/// Sends a hello one byte every 700 ms; returns how long until the relay closed the connection,
/// or `None` if it was still open after `give_up`.
fn slow_hello(addr: SocketAddr, from: Ipv4Addr, i: usize, give_up: Duration) -> Option<Duration> {
    let bytes = encode_to_vec(&hello_as(&format!("slowpoke{i}"), "lobby", "", "")).unwrap();
    let mut raw = Raw::connect(from, addr).ok()?;
    let started = Instant::now();
    for byte in bytes {
        if started.elapsed() > give_up {
            return None;
        }
        if raw.send_bytes(&[byte]).is_err() || raw.closed_within(Duration::from_millis(700)) {
            return Some(started.elapsed());
        }
    }
    None
}

/// Of `conns`, how many the relay refused with an error of `code`, closed silently, or still holds
/// (no frame and no close within `wait` in all).
fn sort_out(conns: &mut [Raw], code: ErrorCode, wait: Duration) -> (usize, usize, usize) {
    let deadline = Instant::now() + wait;
    let (mut refused, mut closed, mut held) = (0, 0, 0);
    for raw in conns {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(5));
        match raw.recv(left) {
            Got::Frame(Frame::Error { code: c, .. }) if c == code => refused += 1,
            Got::Frame(_) | Got::Closed | Got::Broken(_) => closed += 1,
            Got::Timeout => held += 1,
        }
    }
    (refused, closed, held)
}

#[test]
fn class11_connections_are_capped_and_a_hello_has_a_deadline() {
    let _test = begin();
    let class = "11 fd exhaustion / per-address cap / slow hello";
    let mut relay =
        RelayOptions::for_attacks().nofile(NOFILE).flag(FLAG_MAX_PER_ADDRESS, PER_ADDRESS).watched(class);
    let addr = relay.addr;
    let slow: Vec<_> = (0..4)
        .map(|i| thread::spawn(move || slow_hello(addr, lo(30), i, HELLO_DEADLINE + Duration::from_secs(4))))
        .collect();

    // (a) One address opens 60 connections and says nothing.
    let mut one: Vec<Raw> = (0..60).filter_map(|_| Raw::connect(lo(31), addr).ok()).collect();
    thread::sleep(Duration::from_millis(500));
    let (refused, closed, held) = sort_out(&mut one, CODE_RELAY_FULL, Duration::from_secs(2));
    println!(
        "abuse: {class}: one address, 60 connections: {held} held, {refused} refused as full, {closed} closed; \
         relay has {} fds, {} threads",
        relay.fd_count(),
        relay.thread_count()
    );
    assert_alive(&mut relay, class);
    assert_file_round_trip(&relay, class, "11", 64 * 1024);
    check!(
        held <= PER_ADDRESS,
        "{class}: one address holds {held} connections (cap {PER_ADDRESS}){}",
        relay.context()
    );
    check!(refused > 0, "{class}: connections over the per-address cap were not told {CODE_RELAY_FULL:?}");
    drop(one);

    // (b) Twenty addresses open 16 connections each: more than the fd limit allows.
    let started = Instant::now();
    let mut many: Vec<Raw> = Vec::new();
    let mut timeouts = 0;
    'open: for a in 0..20u8 {
        for _ in 0..PER_ADDRESS {
            if started.elapsed() > Duration::from_secs(8) || timeouts >= 3 {
                break 'open;
            }
            match connect_from(lo(40 + a), addr, Duration::from_secs(1)) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                    many.push(Raw { reader: relaychat::wire::FrameReader::new(stream) });
                }
                Err(_) => timeouts += 1,
            }
        }
    }
    thread::sleep(Duration::from_millis(500));
    let fds = relay.fd_count();
    let (refused, closed, held) = sort_out(&mut many, CODE_RELAY_FULL, Duration::from_secs(2));
    println!(
        "abuse: {class}: 20 addresses, {} connections: {held} held, {refused} refused as full, {closed} closed, \
         {timeouts} connects timed out; relay has {fds} fds (limit {NOFILE})",
        many.len()
    );
    assert_alive(&mut relay, class);
    check!(
        fds + 16 < NOFILE as usize,
        "{class}: the relay used {fds} of its {NOFILE} fds{}",
        relay.context()
    );
    check!(
        held <= (NOFILE as usize) / 4,
        "{class}: {held} silent connections are held with {NOFILE} fds{}",
        relay.context()
    );
    check!(refused > 0, "{class}: connections over the total cap were not told {CODE_RELAY_FULL:?}");
    drop(many);
    thread::sleep(Duration::from_millis(500)); // the relay notices the closes

    // Once they are gone, a victim gets in at once and can still open files.
    let t0 = Instant::now();
    assert_file_round_trip(&relay, class, "11b", 64 * 1024);
    println!("abuse: {class}: after the flood a victim's upload and receive took {:?}", t0.elapsed());

    // (c) Hellos sent a byte at a time are cut at the hello deadline.
    for (i, handle) in slow.into_iter().enumerate() {
        let cut = handle.join().unwrap();
        check!(
            cut.is_some_and(|t| t <= HELLO_DEADLINE + Duration::from_secs(2)),
            "{class}: slow hello {i} (a byte every 0.7 s) was cut after {cut:?}; the deadline is {HELLO_DEADLINE:?} \
             for the whole hello"
        );
    }
    assert_memory(&mut relay, class);
}
