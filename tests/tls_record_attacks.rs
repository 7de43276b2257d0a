//! Hostile TLS once the session is up: records that trickle, do not decrypt or hold no frame,
//! close_notify and resets in the middle of a frame, and the two threads that share one TLS
//! session (`src/tls.rs`) pushed where a lock or a lost byte would show.
//!
//! Each test plays one attack against the real `server` binary (`tests/common/relay.rs`) and then
//! checks that a bystander is unharmed: two library clients join and chat within
//! `BYSTANDER_LIMIT`; where it matters also that the relay did not panic and that its thread
//! count comes back. The tools are in `tests/common/tls_attack.rs`.
//!
//! | test | attack |
//! | --- | --- |
//! | `one_record_trickled_a_byte_at_a_time_…` | one TLS record after the handshake, a byte every 300 ms |
//! | `close_notify_after_the_handshake_…` | close_notify once the handshake is over (the contrast to close_notify *in* it) |
//! | `tls_application_data_that_is_not_a_frame_…` | absurd frame length inside TLS, 4 MiB of random plaintext, broken and oversized records after joining |
//! | `a_tls_client_that_never_reads_…` | a joined client that never reads while the room floods it, but keeps talking |
//! | `a_tls_client_that_reads_late_gets_…` | a client that stops reading while lines for it fill its socket, then reads them all |
//! | `rst_and_close_notify_in_the_middle_of_an_upload_…` | RST, and close_notify mid-frame, during uploads, six times |
//! | `application_data_sent_with_the_clients_finished_…` | a client that sends its first frames (over 32 KiB) with its Finished |
//!
//! Run it with `cargo test --test tls_record_attacks -- --nocapture` (the `abuse:` lines are the
//! relay's memory for each attack).

mod common;

use common::attacker::{lo, Got};
use common::relay::RelayOptions;
use common::tls_attack::*;
use common::{connect_from, hello_as, receive_until};
use relaychat::client::Event;
use relaychat::frame::{encode_to_vec, ErrorCode, Frame};
use relaychat::wire::{FrameReader, Stream};
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

/// One TLS record trickled a byte at a time after the handshake. Each byte restarts the socket's
/// own read timeout, and a record is decrypted only once whole, so a relay that let the socket's
/// timeout alone bound a read would wait for the whole record, whenever it came (at this pace,
/// half a minute; at a byte a second, hours). The hello's deadline must hold all the same. (A
/// review found this; the trickled hello above sends whole one-byte records, which it misses.)
#[test]
fn one_record_trickled_a_byte_at_a_time_is_cut_at_the_hello_deadline() {
    let _one = one_at_a_time();
    let relay = RelayOptions::for_attacks().watched("tls-trickled-record");
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
    let mut relay = RelayOptions::for_attacks().watched("tls-close-notify-after-handshake");
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

/// A finished handshake, then application data that is not protocol: an absurd frame length
/// (before the hello), 4 MiB of random plaintext after joining, and after joining TLS records
/// that do not decrypt or are longer than TLS allows. Each ends only that connection, at once.
#[test]
fn tls_application_data_that_is_not_a_frame_ends_only_that_connection() {
    let _one = one_at_a_time();
    let mut relay = RelayOptions::for_attacks().watched("tls-bad-application-data");
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
    let mut relay = RelayOptions::for_attacks()
        .flag("--msg-rate", 0)
        .flag("--text-rate", 0)
        .flag("--max-queued-bytes", "64M")
        .flag("--max-queued-total", "256M")
        .watched("tls-never-reads");
    let baseline = idle_threads(&relay);
    let bob = connect(relay.addr, "bob");
    let carol = connect(relay.addr, "carol");
    let mut mallory = mallory_joins(small_window(lo(8), relay.addr), &bob);

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
    receive_until(
        bob.events(),
        Duration::from_secs(3).saturating_sub(sent_at.elapsed()),
        |event| match event {
            Event::Chat { from, text, .. } if from == "mallory" => {
                heard.push(text.clone());
                heard.len() == 5
            }
            Event::Left { name, .. } => name == "mallory",
            _ => false,
        },
    );
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

/// The hub writes a chat line into an idle client's socket itself (`server/hub/direct.rs`), and
/// over TLS the records it made and the socket did not take wait in the stream for the writer.
/// Mallory (a 4 KiB receive window) stops reading while carol's lines, one every 2 ms, fill her
/// socket, so the hub's writes go in part, then not at all, and the rest queue. When she reads again, every
/// line must be there, whole and in order: one record out of place would not even decrypt.
#[test]
fn a_tls_client_that_reads_late_gets_every_line_whole_and_in_order() {
    const LINES: usize = 150;
    let _one = one_at_a_time();
    let relay =
        RelayOptions::for_attacks().flag("--msg-rate", 0).flag("--text-rate", 0).watched("tls-reads-late");
    let bob = connect(relay.addr, "bob");
    let carol = connect(relay.addr, "carol");
    let mut mallory = mallory_joins(small_window(lo(9), relay.addr), &bob);
    let line = |n: usize| format!("line {n:04} {}", "y".repeat(2000));
    // At a typing pace, so the hub is idle for each line and writes it itself (in a burst it
    // leaves the lines to the writer).
    for n in 0..LINES {
        carol.send_text(&line(n)).expect("carol talks");
        thread::sleep(Duration::from_millis(2));
    }
    // Once bob has them all, mallory's socket (4 KiB window, 128 KiB unsent) has been full.
    for _ in 0..LINES {
        wait_event(
            &bob,
            "carol's lines",
            Duration::from_secs(10),
            |e| matches!(e, Event::Chat { from, .. } if from == "carol"),
        );
    }
    let mut next = 0;
    while next < LINES {
        match mallory.recv(Duration::from_secs(5)) {
            Got::Frame(Frame::Chat { from, text, .. }) if from == "carol" => {
                assert!(text == line(next), "line {next} arrived as {:?}…", &text[..text.len().min(20)]);
                next += 1;
            }
            Got::Frame(_) => {}
            other => panic!("mallory got {next} of {LINES} lines, then {other:?}{}", relay.context()),
        }
    }
    bob.close();
    carol.close();
    assert_no_panic(&relay);
}

/// Uploads cut off in the middle, six times: by a TCP reset (SO_LINGER 0), and by close_notify
/// and FIN in the middle of a chunk frame. The relay frees every connection (threads and file
/// descriptors back to before), tells bob nothing arrived, and goes on serving.
#[test]
fn rst_and_close_notify_in_the_middle_of_an_upload_free_the_connection() {
    let _one = one_at_a_time();
    let mut relay = RelayOptions::for_attacks().watched("tls-cut-uploads");
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
        let stored = matches!(&event, Event::NewFile(info) if info.sha256.is_some());
        assert!(!stored, "bob was offered a cut upload as stored: {event:?}");
    }
    let took = bystanders_chat(relay.addr, 1);
    assert!(took < BYSTANDER_LIMIT, "bystanders needed {took:?}");
    bob.close();
    assert_no_panic(&relay);
    relay.memory_report(64, Duration::from_secs(5));
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
    let mut relay = RelayOptions::for_attacks().flag("--text-rate", 0).watched("tls-pipelined-hello");
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

/// Mallory says hello over `tcp` (TLS) and is welcomed to the lobby, and bob sees her come.
fn mallory_joins(tcp: std::net::TcpStream, bob: &relaychat::client::Client) -> TlsConn {
    let mut mallory = TlsConn::handshake(tcp);
    mallory.send(&hello_as("mallory", "lobby", "", "")).expect("mallory says hello");
    assert!(matches!(mallory.recv(Duration::from_secs(5)), Got::Frame(Frame::Welcome { .. })));
    wait_event(
        bob,
        "mallory joining",
        Duration::from_secs(5),
        |e| matches!(e, Event::Joined { name, .. } if name == "mallory"),
    );
    mallory
}
