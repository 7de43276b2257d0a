//! Hostile TLS: the relay's TLS front door under attack, and the two threads that share one TLS
//! session (`src/tls.rs`) pushed where a lock or a lost byte would show.
//!
//! Each test plays one attack against a real relay (the `server` binary, through
//! `tests/common/relay_proc.rs` or `tests/common/proc.rs`, so a spinning or leaked thread is seen
//! in `/proc/<pid>` and dies with the process; one test turns it round and plays a hostile relay
//! against the `client` binary) and then checks that a bystander is unharmed: two library clients (TLS, from
//! 127.0.0.1) join and chat within [`BYSTANDER_LIMIT`]. Where it matters it also checks that the
//! relay has no panic in its log, that its thread count comes back to what it was before the attack
//! (every connection thread ended), and how much CPU it burned meanwhile.
//!
//! The attackers speak TLS by hand: [`Manual`] drives a `rustls::ClientConnection` itself, so an
//! attack can put any bytes before, between or after real records; [`TlsConn`] is a well-behaved
//! TLS session (the crate's own [`TlsStream`]) that then says hostile frames.
//!
//! | test | attack |
//! | --- | --- |
//! | `handshakes_that_never_finish_…` | `0x16` alone, half a ClientHello, a ClientHello a byte at a time, no Finished, no hello, a hello a byte at a time |
//! | `garbage_after_the_tls_byte_…` | absurd record and message lengths, random bytes, a record that does not decrypt, an unauthenticated alert |
//! | `close_notify_with_the_clients_finished_…` | close_notify and more bytes in the client's last handshake flight |
//! | `close_notify_after_the_handshake_…` | the same once the handshake is over (the contrast) |
//! | `one_record_trickled_a_byte_at_a_time_…` | one TLS record after the handshake, a byte every 300 ms |
//! | `a_relay_that_says_close_notify_…` | the client side of the same: a hostile relay against the `client` binary |
//! | `many_half_open_handshakes_…` | 150 ClientHellos from one address that never finish |
//! | `tls_application_data_that_is_not_a_frame_…` | absurd frame length inside TLS, 4 MiB of random plaintext, broken and oversized records after joining |
//! | `a_tls_client_that_never_reads_…` | a joined client that never reads while the room floods it, but keeps talking |
//! | `rst_and_close_notify_in_the_middle_of_an_upload_…` | RST, and close_notify mid-frame, during uploads, six times |
//! | `a_plaintext_peer_that_keeps_talking_…` | plaintext against a TLS-only relay, writing on after `TlsRequired` |
//! | `application_data_sent_with_the_clients_finished_…` | a client that sends its first frames (over 32 KiB) with its Finished |
//! | `a_tls_client_turned_away_…` | a TLS client over the per-address cap: does it learn why? |
//!
//! Every wait is bounded, and the tests take a lock so that they run one at a time: several of
//! them measure CPU time and thread counts, which a neighbour's attack would spoil on two cores.
//!
//! Run it with `cargo test --test tls_hostile -- --nocapture` (the `abuse:` lines are the relay's
//! memory for each attack).

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::attacker::{lo, Got};
use common::proc::Proc;
use common::relay::{threads_of, RelayOptions};
use common::watched::WatchedRelay;
use common::{client_config, connect_from, hello_as, test_keys, try_until, TempDir};
use relaychat::client::{Client, Event, Trust};
use relaychat::frame::{self, encode_to_vec, ErrorCode, Frame};
use relaychat::tls::TlsStream;
use relaychat::wire::{write_frame, FrameReader, ReadError, Stream};
use rustls::pki_types::ServerName;

/// The relay's hello deadline (`ServerConfig::hello_timeout`; the binary has no flag for it): the
/// TLS handshake and the hello must both be done this long after the connection starts.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How late after a deadline the relay may act and still count as on time.
const SLACK: Duration = Duration::from_secs(3);
/// "At once": garbage must end a connection this fast, well before the hello deadline.
const PROMPT: Duration = Duration::from_secs(3);
/// Two bystanders connect (TLS handshakes and hellos) and one line goes from one to the other.
const BYSTANDER_LIMIT: Duration = Duration::from_secs(3);
/// How long the relay may take to end the threads of connections that are gone.
const THREADS_SETTLE: Duration = Duration::from_secs(6);

// =============================================================================================
// Attacks
// =============================================================================================

/// Handshakes (and hellos after a handshake) that never finish: each connection is closed by the
/// hello deadline, counted from its start, however the bytes trickle in.
#[test]
fn handshakes_that_never_finish_are_closed_by_the_hello_deadline() {
    let _one = one_at_a_time();
    let mut relay = WatchedRelay::start("tls-stalled-handshakes", RelayOptions::for_attacks());
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
    let mut relay = WatchedRelay::start("tls-garbage", RelayOptions::for_attacks());
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
    let mut relay = WatchedRelay::start("tls-close-notify-in-handshake", RelayOptions::for_attacks());
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

/// One TLS record trickled a byte at a time after the handshake. Each byte restarts the socket's
/// own read timeout, and a record is decrypted only once whole, so a relay that let the socket's
/// timeout alone bound a read would wait for the whole record, whenever it came (at this pace,
/// half a minute; at a byte a second, hours). The hello's deadline must hold all the same. (A
/// review found this; the trickled hello above sends whole one-byte records, which it misses.)
#[test]
fn one_record_trickled_a_byte_at_a_time_is_cut_at_the_hello_deadline() {
    let _one = one_at_a_time();
    let relay = WatchedRelay::start("tls-trickled-record", RelayOptions::for_attacks());
    let mut attacker = Manual::up_to_finished(lo(9), relay.addr);
    let finished = attacker.take_records();
    attacker.tcp.write_all(&finished).expect("send the Finished");
    let hello = encode_to_vec(&hello_as(&"t".repeat(32), &"r".repeat(32), "", "")).unwrap();
    let record = attacker.seal(&hello);
    assert!(record.len() > 100, "one record of {} bytes", record.len());
    let start = Instant::now();
    let mut closed = None;
    for byte in &record[..record.len() - 1] {
        if attacker.tcp.write_all(std::slice::from_ref(byte)).is_err() {
            closed = Some(start.elapsed());
            break;
        }
        if let Some(at) = closed_within(&mut attacker.tcp, Instant::now(), Duration::from_millis(300)) {
            closed = Some(start.elapsed() - Duration::from_millis(300) + at);
            break;
        }
        if start.elapsed() > HELLO_TIMEOUT + SLACK {
            break;
        }
    }
    let closed = closed.unwrap_or_else(|| {
        panic!(
            "a record trickled for {:?} held the connection past the hello deadline{}",
            start.elapsed(),
            relay.context()
        )
    });
    assert!(closed <= HELLO_TIMEOUT + SLACK, "closed only after {closed:?}");
    assert_no_panic(&relay);
}

/// The contrast to the test above: close_notify and more bytes once the handshake is over (in
/// the hello phase, read by `TlsStream::read`) end the connection at once.
#[test]
fn close_notify_after_the_handshake_ends_the_connection_at_once() {
    let _one = one_at_a_time();
    let mut relay = WatchedRelay::start("tls-close-notify-after-handshake", RelayOptions::for_attacks());
    let baseline = idle_threads(&relay);
    let mut attacker = Manual::up_to_finished(lo(4), relay.addr);
    let finished = attacker.take_records();
    attacker.tcp.write_all(&finished).expect("send Finished");
    // The relay's handshake is over once it has read the Finished; what follows is read by the
    // connection's `TlsStream`.
    thread::sleep(Duration::from_millis(300));
    attacker.tls.send_close_notify();
    let mut after = attacker.take_records();
    after.extend(noise(8 * 1024, 6));
    let start = Instant::now();
    let _ = attacker.tcp.write_all(&after);
    let closed = closed_within(&mut attacker.tcp, start, PROMPT);
    assert!(closed.is_some(), "still open {PROMPT:?} after close_notify{}", relay.context());
    let took = bystanders_chat(relay.addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    assert_threads_back(&relay, baseline);
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// The client side of the handshake loop: a hostile relay (with the test key, so the client
/// trusts it) sends its whole first flight, a close_notify and 8 KiB more in one write. The
/// `client` binary must give up within its handshake timeout, not spin forever.
#[test]
fn a_relay_that_says_close_notify_in_its_first_flight_does_not_hang_the_client() {
    let _one = one_at_a_time();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let keys = relaychat::server::keys::from_pem_files(&test_keys().cert, &test_keys().key).expect("keys");
    let config = relaychat::server::keys::server_config(&keys).expect("server config");
    let (done, finished) = crossbeam_channel::bounded::<()>(0);
    let (flight_sent, flight_gone) = crossbeam_channel::bounded::<()>(1);
    let fake = thread::spawn(move || {
        let Some(mut tcp) = accept_within(&listener, Duration::from_secs(10)) else { return };
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::ServerConnection::new(config).expect("session");
        let mut buf = vec![0u8; 16 * 1024];
        while !tls.wants_write() {
            let n = tcp.read(&mut buf).expect("the ClientHello");
            assert!(n > 0, "the client closed before its ClientHello");
            let mut data = &buf[..n];
            while !data.is_empty() {
                tls.read_tls(&mut data).unwrap();
                tls.process_new_packets().expect("a valid ClientHello");
            }
        }
        tls.send_close_notify();
        let mut flight = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut flight).unwrap();
        }
        flight.extend(noise(8 * 1024, 7));
        tcp.write_all(&flight).expect("send the flight");
        let _ = flight_sent.send(());
        // Hold the connection open until the test is over, so only the client can end it.
        let _ = finished.recv_timeout(Duration::from_secs(25));
    });
    let downloads = TempDir::new("hostile-relay-downloads");
    let server = addr.to_string();
    let fingerprint = test_keys().fingerprint.clone();
    let dir = downloads.path.display().to_string();
    let args = [
        "--server",
        &server,
        "--name",
        "probe",
        "--fingerprint",
        &fingerprint,
        "--downloads",
        &dir,
        "receive",
    ];
    let mut client = Proc::spawn(env!("CARGO_BIN_EXE_client"), &args, &[]);
    let pid = client.child.id();
    let start = Instant::now();
    let limit = relaychat::client::HANDSHAKE_TIMEOUT + SLACK;
    let mut exited = None;
    let mut cpu = 0.0;
    let mut busiest = String::new();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = client.child.try_wait() {
            exited = Some(status);
            break;
        }
        cpu = cpu_seconds(pid);
        busiest = busiest_thread(pid);
        // A client waiting on a socket uses next to no CPU: three seconds of it is a spin, and
        // waiting out the handshake timeout would only burn more of a shared machine.
        if cpu > 3.0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let waited = start.elapsed();
    drop(client); // kills it if it is still running
    drop(done);
    let _ = fake.join();
    assert!(
        flight_gone.try_recv().is_ok(),
        "the hostile relay never sent its flight: the test did not happen"
    );
    assert!(
        !exited.is_some_and(|status| status.success()),
        "the client succeeded against a relay that closed"
    );
    assert!(
        exited.is_some(),
        "the client was still in its handshake {waited:.1?} after it started, having used {cpu:.1} s \
         of CPU (busiest: {busiest})"
    );
}

/// 150 ClientHellos from one address (its caps raised so that the TLS path itself is tested),
/// none of which ever finishes: the relay does 150 key exchanges and signatures, holds 150
/// threads, and must stay responsive and small, then close them all by the deadline.
#[test]
fn many_half_open_handshakes_from_one_address_stay_bounded() {
    const ATTACKERS: usize = 150;
    let _one = one_at_a_time();
    let mut relay = WatchedRelay::start(
        "tls-half-open-flood",
        RelayOptions::for_attacks()
            .flag("--max-per-address", 400)
            .flag("--connect-rate", 1000)
            .flag("--connect-burst", 1000),
    );
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

/// A finished handshake, then application data that is not protocol: an absurd frame length
/// (before the hello), 4 MiB of random plaintext after joining, and after joining TLS records
/// that do not decrypt or are longer than TLS allows. Each ends only that connection, at once.
#[test]
fn tls_application_data_that_is_not_a_frame_ends_only_that_connection() {
    let _one = one_at_a_time();
    let mut relay = WatchedRelay::start("tls-bad-application-data", RelayOptions::for_attacks());
    let baseline = idle_threads(&relay);
    let bob = connect(relay.addr, "bob");

    // An absurd length prefix: refused with an error frame, before anything is allocated for it.
    let mut huge = TlsConn::connect(lo(6), relay.addr);
    let mut prefix = vec![0xff, 0xff, 0xff, 0xff, 0x02];
    prefix.extend(noise(1024, 8));
    huge.send_bytes(&prefix).expect("send the absurd frame");
    let answer = huge.recv(PROMPT);
    assert!(
        matches!(answer, Got::Frame(Frame::Error { code: ErrorCode::Protocol, .. })),
        "an absurd frame length got {answer:?}"
    );
    assert!(huge.closed_within(PROMPT), "still open after an absurd frame length");

    // Megabytes of random plaintext from a joined client.
    let mut noisy = TlsConn::join(lo(6), relay.addr, "mallory", "lobby");
    let start = Instant::now();
    let writer = {
        let mut out = noisy.reader.get_ref().try_clone_stream().expect("clone");
        thread::spawn(move || {
            let noise = noise(4 * 1024 * 1024, 9);
            // Stops at the first failed write: the relay has closed.
            let _ = noise.chunks(64 * 1024).try_for_each(|c| out.write_all(c));
        })
    };
    assert!(noisy.closed_within(PROMPT), "still open {PROMPT:?} into 4 MiB of random plaintext");
    let _ = writer.join();
    assert!(start.elapsed() < PROMPT + Duration::from_secs(1), "the noise writer was not stopped at once");

    // Records that do not decrypt, and a record longer than TLS allows, after joining.
    for (what, record) in [
        ("a record that does not decrypt", [vec![0x17, 0x03, 0x03, 0x00, 0x40], noise(0x40, 10)].concat()),
        ("a record of 65535 bytes", [vec![0x17, 0x03, 0x03, 0xff, 0xff], noise(256, 11)].concat()),
    ] {
        let mut conn = TlsConn::join(lo(6), relay.addr, "trudy", "lobby");
        conn.tcp.write_all(&record).expect("write the record");
        assert!(conn.closed_within(PROMPT), "{what}: still open {PROMPT:?} after it{}", relay.context());
    }

    // Bob, in the same room all along, is still there and can chat.
    let took = bystanders_chat(relay.addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    bob.send_text("still here").expect("bob sends");
    assert!(relay.peak_mib() < 96.0, "peak RSS {:.0} MiB", relay.peak_mib());
    bob.close();
    assert_threads_back(&relay, baseline);
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// Both directions saturated: mallory (TLS, a 4 KiB receive window) never reads while carol
/// floods the room with 60 KiB lines, so the relay's writer to mallory blocks on a full socket.
/// Mallory keeps talking. Her lines must still reach bob at once: the relay's reader for her
/// decrypts with the session the blocked writer shares, so a lock held across the blocked write
/// would stop them. Then the relay cuts her off as too slow, and frees her threads.
#[test]
fn a_tls_client_that_never_reads_cannot_stall_its_own_reader() {
    const FLOOD: usize = 40;
    let _one = one_at_a_time();
    let mut relay = WatchedRelay::start(
        "tls-never-reads",
        RelayOptions::for_attacks()
            .flag("--msg-rate", 0)
            .flag("--text-rate", 0)
            .flag("--max-queued-bytes", "64M")
            .flag("--max-queued-total", "256M"),
    );
    let baseline = idle_threads(&relay);
    let bob = connect(relay.addr, "bob");
    let carol = connect(relay.addr, "carol");
    let tcp = small_window(lo(8), relay.addr);
    let mut mallory = TlsConn::handshake(tcp);
    mallory.send(&hello_as("mallory", "lobby", "", "")).expect("mallory says hello");
    assert!(matches!(mallory.recv(Duration::from_secs(5)), Got::Frame(Frame::Welcome { .. })));
    wait_event(
        &bob,
        "mallory joining",
        Duration::from_secs(5),
        |e| matches!(e, Event::Joined { name, .. } if name == "mallory"),
    );

    let line = "x".repeat(60 * 1024);
    for _ in 0..FLOOD {
        carol.send_text(&line).expect("carol floods");
    }
    // Once bob has half the flood, mallory's socket (4 KiB window, 128 KiB unsent) is long full.
    let mut flood_seen = 0;
    while flood_seen < FLOOD / 2 {
        wait_event(
            &bob,
            "carol's flood",
            Duration::from_secs(10),
            |e| matches!(e, Event::Chat { from, .. } if from == "carol"),
        );
        flood_seen += 1;
    }
    // Her writer is blocked in a socket write right now (where the kernel tells us).
    if let Some(blocked) = writers_blocked_in_send(relay.pid) {
        assert!(blocked >= 1, "no relay writer is blocked on a full socket: the scenario did not happen");
    }
    let sent_at = Instant::now();
    for n in 0..5 {
        mallory.send(&Frame::say(&format!("mallory line {n}"))).expect("mallory talks");
    }
    let mut heard = Vec::new();
    let deadline = sent_at + Duration::from_secs(3);
    while heard.len() < 5 {
        match bob.events().recv_deadline(deadline) {
            Ok(Event::Chat { from, text, .. }) if from == "mallory" => heard.push(text),
            Ok(Event::Left { name, .. }) if name == "mallory" => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        heard.len(),
        5,
        "bob heard {heard:?} from mallory within 3 s while her writer was blocked{}",
        relay.context()
    );
    // The relay cuts her off (its writer's stall limit is 5 s): bob sees her leave.
    wait_event(
        &bob,
        "mallory cut off",
        Duration::from_secs(15),
        |e| matches!(e, Event::Left { name, .. } if name == "mallory"),
    );
    let took = bystanders_chat(relay.addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    drop(mallory);
    bob.close();
    carol.close();
    assert_threads_back(&relay, baseline);
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// Uploads cut off in the middle, six times: by a TCP reset (SO_LINGER 0), and by close_notify
/// and FIN in the middle of a chunk frame. The relay frees every connection (threads and file
/// descriptors back to before), tells bob nothing arrived, and goes on serving.
#[test]
fn rst_and_close_notify_in_the_middle_of_an_upload_free_the_connection() {
    let _one = one_at_a_time();
    let mut relay = WatchedRelay::start("tls-cut-uploads", RelayOptions::for_attacks());
    let bob = connect(relay.addr, "bob");
    let baseline = idle_threads(&relay);
    let fds = relay.fd_count();
    for round in 0..6u64 {
        let mut mallory = TlsConn::join(lo(9), relay.addr, "mallory", "lobby");
        let start = Frame::UploadStart {
            key: format!("cut-{round}"),
            name: format!("cut-{round}.bin"),
            size: 8 * 1024 * 1024,
            to: "bob".into(),
        };
        mallory.send(&start).expect("start an upload");
        let upload_id = match mallory.recv(Duration::from_secs(5)) {
            Got::Frame(Frame::UploadReady { upload_id, .. }) => upload_id,
            other => panic!("round {round}: expected UploadReady, got {other:?}{}", relay.context()),
        };
        for chunk in 0..16u64 {
            let data = noise(64 * 1024, 100 + round * 16 + chunk);
            mallory.send(&Frame::UploadChunk { upload_id, data }).expect("send a chunk");
        }
        let half = encode_to_vec(&Frame::UploadChunk { upload_id, data: noise(64 * 1024, 99) }).unwrap();
        mallory.send_bytes(&half[..half.len() / 2]).expect("half a chunk frame");
        if round % 2 == 0 {
            mallory.reset();
        } else {
            mallory.reader.get_ref().shutdown_write().expect("close_notify and FIN");
            assert!(
                mallory.closed_within(PROMPT),
                "round {round}: the relay did not close after close_notify"
            );
        }
        wait_event(
            &bob,
            "mallory leaving",
            Duration::from_secs(5),
            |e| matches!(e, Event::Left { name, .. } if name == "mallory"),
        );
    }
    let threads = settle_threads(relay.pid, baseline, THREADS_SETTLE);
    let fds_after = relay.fd_count();
    assert!(threads <= baseline, "{threads} relay threads after six cut uploads (before: {baseline})");
    assert!(fds_after <= fds + 2, "{fds_after} relay fds after six cut uploads (before: {fds})");
    while let Ok(event) = bob.events().recv_timeout(Duration::from_millis(200)) {
        assert!(!matches!(event, Event::NewFile(_)), "bob was offered a cut upload: {event:?}");
    }
    let took = bystanders_chat(relay.addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    bob.close();
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
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

/// A TLS client may send application data right behind its Finished, in the same segment: here
/// its hello and a 40 KiB line (three records). Over plaintext the relay serves exactly that (the
/// control). Over TLS, `TlsStream::handshake` hands rustls everything it read before it lets the
/// connection go on, but rustls takes no more TLS while over 16 KiB of decrypted plaintext waits
/// to be read (`read_tls` fails with "received plaintext buffer full"): the relay logs "TLS
/// handshake failed" and drops a client that did nothing wrong. (Fails only when the relay's
/// first read takes in more than two full records with the Finished, which one write on loopback
/// does.)
#[test]
fn application_data_sent_with_the_clients_finished_is_not_lost() {
    let _one = one_at_a_time();
    let mut relay =
        WatchedRelay::start("tls-pipelined-hello", RelayOptions::for_attacks().flag("--text-rate", 0));
    let pipelined = |name: &str| {
        let hello = encode_to_vec(&hello_as(name, "lobby", "", "")).unwrap();
        let line = Frame::Say { client_id: 7, to: String::new(), text: "z".repeat(40 * 1024) };
        [hello, encode_to_vec(&line).unwrap()].concat()
    };

    // The control: the same bytes in plaintext, in one write, are served.
    let mut plain = connect_from(lo(10), relay.addr, Duration::from_secs(5)).expect("connect");
    plain.write_all(&pipelined("plain")).expect("send");
    let mut reader = FrameReader::new(plain);
    reader.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|f| matches!(f, Frame::Sent { client_id: 7, .. })) {
        match reader.read_frame() {
            Ok(Some(frame)) => seen.push(frame),
            other => panic!("plaintext: the relay ended with {other:?} after {seen:?}"),
        }
    }
    drop(reader);

    // Over TLS: Finished, hello and line in one write.
    let mut eager = Manual::up_to_finished(lo(10), relay.addr);
    let mut flight = eager.take_records();
    flight.extend(eager.seal(&pipelined("eager")));
    eager.tcp.write_all(&flight).expect("send");
    let (frames, closed) =
        eager.recv_frames(Duration::from_secs(5), |f| matches!(f, Frame::Sent { client_id: 7, .. }));
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Sent { client_id: 7, .. })),
        "TLS: the relay {} after {frames:?}, without the line's receipt{}",
        if closed { "closed the connection" } else { "went quiet" },
        relay.context()
    );
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
}

/// The per-address cap turns a connection away with a plaintext `Error{RelayFull}` frame, written
/// by the accept thread before any TLS. A plaintext client reads it and says why (the control); a
/// TLS client (the default) feeds it to rustls as if it were a TLS record, and its user is told
/// that the TLS handshake failed and that the relay may speak only plaintext, when it is full.
#[test]
fn a_tls_client_turned_away_by_the_per_address_cap_is_told_why() {
    let _one = one_at_a_time();
    let relay =
        WatchedRelay::start("tls-turned-away", RelayOptions::for_attacks().flag("--max-per-address", 2));
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

// =============================================================================================
// Attack helpers
// =============================================================================================

/// One attack run on a thread of its own: when the relay closed its connection (from the
/// connection's start), or `None` if it was still open at the deadline plus [`SLACK`].
type Attack<'a> = Box<dyn FnOnce() -> Option<Duration> + Send + 'a>;

/// Connects from `127.0.0.2`, sends `bytes`, then waits: when did the relay close? (From the
/// connection's start; `None` if still open at the deadline plus [`SLACK`].)
fn stall(addr: SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let mut tcp = connect_from(lo(2), addr, Duration::from_secs(5)).ok()?;
    let start = Instant::now();
    tcp.write_all(bytes).ok()?;
    closed_within(&mut tcp, start, HELLO_TIMEOUT + SLACK)
}

/// Sends `bytes` one every 200 ms; when did the relay close the connection?
fn trickle_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let mut tcp = connect_from(lo(2), addr, Duration::from_secs(5)).ok()?;
    let start = Instant::now();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut sink = [0u8; 4096];
    for byte in bytes {
        if start.elapsed() > HELLO_TIMEOUT + SLACK {
            return None;
        }
        if tcp.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(start.elapsed());
        }
        match tcp.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    panic!("the whole ClientHello went out a byte at a time: make the trickle slower")
}

/// A finished handshake, then silence.
fn tls_silent(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut conn = TlsConn::connect(lo(2), addr);
    conn.closed_within((HELLO_TIMEOUT + SLACK).saturating_sub(start.elapsed())).then(|| start.elapsed())
}

/// A finished handshake, then a hello one byte (one TLS record) every 200 ms.
fn tls_trickled_hello(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut conn = TlsConn::connect(lo(2), addr);
    let hello = encode_to_vec(&hello_as(&"n".repeat(32), &"r".repeat(32), "", "")).unwrap();
    for byte in &hello {
        if conn.send_bytes(std::slice::from_ref(byte)).is_err() {
            return Some(start.elapsed());
        }
        match conn.recv(Duration::from_millis(200)) {
            Got::Timeout => {}
            Got::Frame(Frame::Error { code: ErrorCode::HelloTimeout, .. }) | Got::Closed | Got::Broken(_) => {
                return conn.closed_within(SLACK).then(|| start.elapsed());
            }
            Got::Frame(other) => panic!("a trickled hello got {other:?}"),
        }
        if start.elapsed() > HELLO_TIMEOUT + SLACK {
            return None;
        }
    }
    panic!("the whole hello went out a byte at a time: make it longer")
}

/// A TCP connection from `from` whose receive buffer is as small as the kernel allows (set
/// before connecting, so the window it offers is small from the start).
fn small_window(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.bind(&SocketAddr::from((from, 0)).into()).expect("bind");
    socket.connect_timeout(&to.into(), Duration::from_secs(5)).expect("connect");
    socket.into()
}

/// The next connection to `listener`, or `None` if none comes within `wait`.
fn accept_within(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((tcp, _)) => {
                tcp.set_nonblocking(false).ok()?;
                return Some(tcp);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
    None
}

/// Reads (and throws away) what the relay sends until it closes the connection: how long after
/// `start` that was, or `None` if it is still open `within` after `start`.
fn closed_within(tcp: &mut TcpStream, start: Instant, within: Duration) -> Option<Duration> {
    let mut sink = [0u8; 16 * 1024];
    loop {
        let left = (start + within).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tcp.set_read_timeout(Some(left)).ok()?;
        match tcp.read(&mut sink) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// `len` reproducible pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

// =============================================================================================
// TLS by hand
// =============================================================================================

/// The attackers' TLS configuration: the real client's (TLS 1.3 with ring, and its pinning
/// check), trusting exactly the shared test key.
fn tls_config() -> Arc<rustls::ClientConfig> {
    let trust = Trust { fingerprint: Some(test_keys().fingerprint.clone()), ..Trust::default() };
    relaychat::client::trust::client_config("relaychat:0", &trust).expect("the client's TLS configuration")
}

fn new_session() -> rustls::ClientConnection {
    let name = ServerName::try_from("relaychat").expect("a DNS name");
    rustls::ClientConnection::new(tls_config(), name).expect("a client session")
}

/// The bytes of a fresh ClientHello (one record, starting with `0x16`).
fn client_hello() -> Vec<u8> {
    let mut session = new_session();
    let mut hello = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], relaychat::tls::TLS_HANDSHAKE_BYTE);
    hello
}

/// A TLS client driven by hand: the attack decides which records go out, when, and with what
/// around them.
struct Manual {
    tcp: TcpStream,
    tls: rustls::ClientConnection,
}

impl Manual {
    /// Connects from `from` and runs the handshake up to the client's last flight (its
    /// Finished), which is left unsent: [`Manual::take_records`] has it.
    fn up_to_finished(from: Ipv4Addr, to: SocketAddr) -> Manual {
        let tcp = connect_from(from, to, Duration::from_secs(5)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut manual = Manual { tcp, tls: new_session() };
        let hello = manual.take_records();
        manual.tcp.write_all(&hello).expect("send the ClientHello");
        let mut buf = vec![0u8; 16 * 1024];
        while manual.tls.is_handshaking() {
            let n = manual.tcp.read(&mut buf).expect("the relay's handshake flight");
            assert!(n > 0, "the relay closed during the handshake");
            let mut data = &buf[..n];
            while !data.is_empty() {
                manual.tls.read_tls(&mut data).unwrap();
                manual.tls.process_new_packets().expect("the relay's flight is valid TLS");
            }
        }
        manual
    }

    /// The records rustls has ready to go out, taken out but not sent.
    fn take_records(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        out
    }

    /// `plain` as application data records (with anything else pending first), not sent.
    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        self.tls.writer().write_all(plain).unwrap();
        self.take_records()
    }

    /// Reads and decrypts frames for up to `wait`, until `enough` accepts one or the relay
    /// closes: (the frames, whether it closed).
    fn recv_frames(&mut self, wait: Duration, mut enough: impl FnMut(&Frame) -> bool) -> (Vec<Frame>, bool) {
        let deadline = Instant::now() + wait;
        let (mut frames, mut plain) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (frames, false);
            }
            self.tcp.set_read_timeout(Some(left)).unwrap();
            let n = match self.tcp.read(&mut buf) {
                Ok(0) => return (frames, true),
                Ok(n) => n,
                Err(e) if is_timeout(&e) => return (frames, false),
                Err(_) => return (frames, true),
            };
            let mut data = &buf[..n];
            while !data.is_empty() {
                if self.tls.read_tls(&mut data).is_err() || self.tls.process_new_packets().is_err() {
                    return (frames, true);
                }
                let _ = self.tls.reader().read_to_end(&mut plain);
            }
            while let Ok(Some((frame, used))) = frame::decode(&plain) {
                plain.drain(..used);
                let done = enough(&frame);
                frames.push(frame);
                if done {
                    return (frames, false);
                }
            }
        }
    }
}

/// A TLS session made by the crate's own [`TlsStream`], saying frames (or any bytes) by hand.
struct TlsConn {
    reader: FrameReader<TlsStream>,
    /// The same socket, for bytes under TLS and for socket options.
    tcp: TcpStream,
}

impl TlsConn {
    fn connect(from: Ipv4Addr, to: SocketAddr) -> TlsConn {
        TlsConn::handshake(connect_from(from, to, Duration::from_secs(5)).expect("connect"))
    }

    fn handshake(tcp: TcpStream) -> TlsConn {
        tcp.set_nodelay(true).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let raw = tcp.try_clone().expect("clone");
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream =
            TlsStream::handshake(tcp, new_session(), deadline).expect("a TLS handshake with the relay");
        TlsConn { reader: FrameReader::new(stream), tcp: raw }
    }

    /// Handshake and hello: joined as a guest, with the welcome and the online list read.
    fn join(from: Ipv4Addr, to: SocketAddr, name: &str, room: &str) -> TlsConn {
        let mut conn = TlsConn::connect(from, to);
        conn.send(&hello_as(name, room, "", "")).expect("say hello");
        match conn.recv(Duration::from_secs(5)) {
            Got::Frame(Frame::Welcome { .. }) => {}
            other => panic!("{name}: expected a welcome, got {other:?}"),
        }
        match conn.recv(Duration::from_secs(5)) {
            Got::Frame(Frame::Online { .. }) => {}
            other => panic!("{name}: expected the online list, got {other:?}"),
        }
        conn
    }

    fn send(&mut self, frame: &Frame) -> io::Result<()> {
        write_frame(self.reader.get_mut(), frame)?;
        self.reader.get_mut().flush()
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)?;
        self.reader.get_mut().flush()
    }

    fn recv(&mut self, timeout: Duration) -> Got {
        if self.reader.get_ref().set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).is_err() {
            return Got::Closed;
        }
        match self.reader.read_frame() {
            Ok(Some(frame)) => Got::Frame(frame),
            Ok(None) => Got::Closed,
            Err(e) if e.is_timeout() => Got::Timeout,
            Err(ReadError::TruncatedAtEof { .. }) => Got::Closed,
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Got::Closed
            }
            Err(e) => Got::Broken(e.to_string()),
        }
    }

    /// True if the relay closes the connection within `wait` (frames on the way are skipped).
    fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(_) => {}
                Got::Timeout => return false,
                Got::Closed | Got::Broken(_) => return true,
            }
        }
    }

    /// Ends the connection with a TCP reset (SO_LINGER 0), as a crashed host or a middlebox would.
    fn reset(self) {
        socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    }
}

// =============================================================================================
// The bystanders and the relay's health
// =============================================================================================

/// Serialises the tests of this file (see the module docs).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A library client (TLS, trusting the test key) in the lobby, with the online list taken.
fn connect(addr: SocketAddr, name: &str) -> Client {
    let client = Client::connect_tcp(&addr.to_string(), &client_config(name, "lobby"))
        .unwrap_or_else(|e| panic!("{name} cannot connect: {e}"));
    wait_event(&client, "the online list", Duration::from_secs(5), |e| matches!(e, Event::Online { .. }));
    client
}

/// Waits up to `wait` for an event that `pick` accepts, skipping others.
fn wait_event(client: &Client, what: &str, wait: Duration, mut pick: impl FnMut(&Event) -> bool) {
    let deadline = Instant::now() + wait;
    let mut skipped = Vec::new();
    loop {
        match client.events().recv_deadline(deadline) {
            Ok(event) if pick(&event) => return,
            Ok(Event::Chat { from, text, .. }) => {
                skipped.push(format!("chat from {from} ({} bytes)", text.len()))
            }
            Ok(event) => skipped.push(format!("{event:?}")),
            Err(_) => panic!("no {what} within {wait:?}; skipped {skipped:?}"),
        }
    }
}

/// Two fresh bystanders join the relay over TLS and one line goes from one to the other: how
/// long that took. Fails the test if it does not happen within 10 s.
fn bystanders_chat(addr: SocketAddr, n: u32) -> Duration {
    let start = Instant::now();
    let (alice, bob) = (format!("alice{n}"), format!("bob{n}"));
    let room = format!("quiet{n}");
    let connect = |name: &str| {
        let client = Client::connect_tcp(&addr.to_string(), &client_config(name, &room))
            .unwrap_or_else(|e| panic!("bystander {name} cannot connect: {e}"));
        wait_event(&client, "the online list", Duration::from_secs(10), |e| {
            matches!(e, Event::Online { .. })
        });
        client
    };
    let (alice, bob) = (connect(&alice), connect(&bob));
    alice.send_text("the relay is fine").expect("alice sends");
    wait_event(
        &bob,
        "alice's line",
        Duration::from_secs(10),
        |e| matches!(e, Event::Chat { text, .. } if text == "the relay is fine"),
    );
    let took = start.elapsed();
    alice.close();
    bob.close();
    took
}

/// The relay's thread count once it has settled after starting.
fn idle_threads(relay: &WatchedRelay) -> usize {
    thread::sleep(Duration::from_millis(300));
    relay.thread_count()
}

/// Waits up to `within` for the thread count of the relay `pid` to fall to `baseline`; the last
/// count.
fn settle_threads(pid: u32, baseline: usize, within: Duration) -> usize {
    try_until(within, || Some(threads_of(pid)).filter(|&now| now <= baseline))
        .unwrap_or_else(|| threads_of(pid))
}

fn assert_threads_back(relay: &WatchedRelay, baseline: usize) {
    let threads = settle_threads(relay.pid, baseline, THREADS_SETTLE);
    assert!(
        threads <= baseline,
        "the relay has {threads} threads {THREADS_SETTLE:?} after the attack (before it: {baseline}){}",
        relay.context()
    );
}

fn assert_no_panic(relay: &WatchedRelay) {
    let log = relay.log_tail(300);
    assert!(!log.contains("panicked"), "the relay panicked:\n{log}");
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_of(&format!("/proc/{pid}/stat"))
}

/// The busiest thread of process `pid`: its name and CPU seconds so far (for failure messages).
fn busiest_thread(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return "(gone)".into() };
    let mut busiest = (String::new(), 0.0);
    for task in tasks.flatten() {
        let cpu = cpu_of(&task.path().join("stat").display().to_string());
        if cpu > busiest.1 {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            busiest = (name.trim().to_owned(), cpu);
        }
    }
    format!("thread {:?} with {:.1} s of CPU", busiest.0, busiest.1)
}

/// How many of the relay's writer threads (`conn-N-writer`) wait in the kernel for room in a
/// socket's send buffer; `None` where the kernel does not say (`wchan` reads `0` for all).
///
/// A writer that waits for work waits on a channel (a futex); the only socket call it makes is a
/// write, so a writer sleeping in the socket layer (`sk_stream_wait_memory`, or `wait_woken`
/// which it calls) is blocked on a full send buffer.
fn writers_blocked_in_send(pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut known, mut blocked) = (false, 0);
    for task in tasks.flatten() {
        let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        known |= !wchan.is_empty() && wchan != "0";
        if name.trim().ends_with("-writer")
            && matches!(wchan.as_str(), "sk_stream_wait_memory" | "wait_woken")
        {
            blocked += 1;
        }
    }
    known.then_some(blocked)
}

/// User + system CPU seconds from a `/proc/.../stat` file.
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces): field 3 is
    // the first; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    fields.iter().sum::<u64>() as f64 / hz
}
