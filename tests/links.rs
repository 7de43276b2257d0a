//! Links that vanish, and clients that crash: the real `server` and `client` binaries on a private
//! network where a test can make packets stop (see `tests/common/netns.rs` for how).
//!
//! TCP notices a peer that closes; it does not notice a peer that *vanishes*. These tests make
//! one vanish and check that the heartbeat (docs/PROTOCOL.md, "Heartbeat") notices instead, and
//! that the people involved get back in: after a lost link, after a crash, from a second machine.
//!
//! | test | what happens | what must follow |
//! | --- | --- | --- |
//! | `a_vanished_client_…` | alice's packets stop (her port is cut) | the relay frees her name within its idle timeout; she gets back in |
//! | `a_vanished_relay_…` | the relay's packets stop for a few seconds (its port is cut) | the client notices within its idle timeout and rejoins when the link is back; a client with the default timeout rides it out |
//! | `twenty_crash_restart_…` | alice's client is killed (SIGKILL) and restarted, 20 times, the last ten with her link cut first | every restart gets in: the same machine takes its name over |
//! | `takeover_with_a_password` | alice logs in from a second machine with her password | the second is in, the first is told "logged in elsewhere" and stays out |
//! | `takeover_as_a_guest` | a guest's machine logs in again | it takes over; another machine is refused |
//! | `a_one_shot_send_…` | the relay is killed (SIGKILL) in the middle of `client send` | the send reconnects and finishes; the file arrives intact |
//! | `a_long_transfer_on_a_slow_link_…` | a 12 MiB file goes up and down a 16 Mbit/s link, with a 3 s idle timeout | neither side takes the busy link for dead |
//! | `an_interactive_send_on_a_slow_link_…` | the same upload with the interactive `/send` | it arrives, without a false "connection lost" |
//! | `an_interactive_send_cut_off_mid_file_…` | the relay's port is cut in the middle of an interactive `/send` | the client rejoins and resumes the upload; the file arrives |
//!
//! Each test runs in network and PID namespaces of its own, so it needs root (as in CI); elsewhere
//! it prints a `SKIP` line and passes. Detection times are printed as `figure: …` lines:
//!
//! ```sh
//! cargo test --test links -- --nocapture
//! ```
//!
//! Every wait has a time limit, and every loop a count, so a regression fails instead of hanging.

mod common;
// The relay, the clients and waiting on their output. (A test crate's root looks for modules
// beside it, in `tests/`, where cargo would take each file for a test of its own.)
#[path = "links/drive.rs"]
mod drive;

use std::thread;
use std::time::{Duration, Instant};

use common::netns::{self, Cut};
use common::proc::Proc;
use common::{exits_within, files_under, lines_until, random_file, sha256, wait_for_part, TempDir, WAIT};
use drive::{
    assert_running, bob_claims_his_name, client, connected_or_exit, expect_within, joined, lines_for,
    one_shot, relay_options, secs, BOB_PASSWORD, CLIENT,
};

/// The idle timeout of the tests that wait for one, in seconds: the smallest the client accepts.
/// A client pings every third of it (1 s) and the relay answers, so a working link is never silent
/// for 3 s in either direction, while a cut one is noticed quickly.
const IDLE: u64 = 3;

/// The client flag that goes with [`IDLE`]. Where the relay's own idle timeout is [`IDLE`], every
/// client needs it too: a client pinging only every 20 s (the default) would be cut as idle.
const CLIENT_IDLE: [&str; 2] = ["--idle-timeout", "3"];

/// The earliest a vanished peer may be noticed: the last frame before the cut can be up to one
/// ping interval (1 s) old, so the timeout runs out 2 to 3 s after the cut. Noticing sooner means
/// something crossed the cut (a FIN or a RST), and the test would not be testing the heartbeat.
const EARLIEST: Duration = Duration::from_millis(1500);

/// How late after its timeout a vanished peer may be noticed: a busy machine (two cores, shared
/// with builds) delays threads and processes by a second or two.
const SLACK: Duration = Duration::from_secs(3);

/// Lets a terminal client keep trying for 60 s after a lost link. (`Proc::spawn` sets 0, which
/// makes one immediate attempt and then gives up.)
const RECONNECT: (&str, &str) = ("RELAYCHAT_RECONNECT_FOR", "60");

// =============================================================================================
// The tests
// =============================================================================================

/// Alice's laptop lid closes: her client stops running and her link goes silent, without a FIN.
/// Only the relay's idle timeout can tell. It must free her name, so that alice, back on a new
/// connection, gets it again.
#[test]
fn a_vanished_client_is_freed_and_its_name_taken_back() {
    netns::isolated(|| {
        let relay = relay_options().flag("--idle-timeout", format!("{IDLE}s")).start();
        let mut bob = joined(&relay, "bob", &TempDir::new("bob-home").path, &CLIENT_IDLE, &[]);
        let alice_home = TempDir::new("alice-home");
        let alice = joined(&relay, "alice", &alice_home.path, &CLIENT_IDLE, &[]);
        let mut bob_saw = lines_until(&bob.stdout, "* alice joined lobby", WAIT)
            .unwrap_or_else(|seen| panic!("bob never saw alice join; saw {seen:#?}"));

        let cut = Cut::port(netns::source_port(alice.child.id(), relay.port()));
        let cut_at = Instant::now();
        // Frozen, her client cannot notice the dead link and reconnect (which would take her old
        // connection over, and the relay's timeout would go untested).
        // SAFETY: kill(2) on our own child's pid; SIGSTOP has no handler to run.
        unsafe { libc::kill(alice.child.id() as libc::pid_t, libc::SIGSTOP) };

        // The relay's log says when it gave up on her; bob's screen, when that reached the room.
        let noticed =
            expect_within(&relay.log, "relay", "silent past the idle timeout", cut_at, secs(IDLE) + SLACK);
        bob_saw.extend(
            lines_until(&bob.stdout, "* alice left lobby", secs(IDLE) + SLACK)
                .unwrap_or_else(|seen| panic!("bob never saw alice leave; saw {seen:#?}")),
        );
        let told = cut_at.elapsed();
        println!(
            "figure: relay noticed a vanished client after {:.1} s (bob saw her leave after {:.1} s)",
            noticed.as_secs_f64(),
            told.as_secs_f64()
        );
        assert!(
            noticed >= EARLIEST,
            "alice left after {noticed:?}: too soon for a timeout; did the cut leak?"
        );

        // Her old process is gone for good (Proc's drop kills it); the cut stays in place, so
        // nothing but the timeout can have freed the name.
        drop(alice);
        let mut alice = joined(&relay, "alice", &alice_home.path, &CLIENT_IDLE, &[]);
        alice.type_line("back on a new link");
        for needle in ["* alice joined lobby", "] alice: back on a new link"] {
            bob_saw.extend(
                lines_until(&bob.stdout, needle, WAIT)
                    .unwrap_or_else(|seen| panic!("bob never saw {needle:?}; saw {seen:#?}")),
            );
        }
        // Bob's link was never touched, so it never broke.
        assert!(!bob_saw.iter().any(|l| l.contains("connection lost")), "bob lost his link: {bob_saw:#?}");
        assert_running(&mut bob, "bob");
        cut.restore();
    });
}

/// The relay's link vanishes for everyone, for a few seconds. Alice's client, with a short idle
/// timeout, must notice (TCP alone would not, on an idle link), keep trying, and be back when the
/// link is. The relay keeps its default 60 s idle timeout, so it still holds her old connection
/// when she is back: her rejoin takes it over. Bob keeps the default 60 s too, and the outage is
/// shorter than that: his TCP connection simply rides it out.
#[test]
fn a_vanished_relay_is_noticed_and_rejoined() {
    netns::isolated(|| {
        let relay = relay_options().start();
        let mut bob = joined(&relay, "bob", &TempDir::new("bob-home").path, &[], &[RECONNECT]);
        let mut alice = joined(&relay, "alice", &TempDir::new("alice-home").path, &CLIENT_IDLE, &[RECONNECT]);
        expect_within(&bob.stdout, "bob", "* alice joined lobby", Instant::now(), WAIT);

        let cut = Cut::port(relay.port());
        let cut_at = Instant::now();
        let noticed = expect_within(&alice.stdout, "alice", "* connection lost", cut_at, secs(IDLE) + SLACK);
        println!("figure: client noticed a vanished relay after {:.1} s", noticed.as_secs_f64());
        assert!(
            noticed >= EARLIEST,
            "alice gave up after {noticed:?}: too soon for a timeout; did the cut leak?"
        );

        cut.restore();
        let back_at = Instant::now();
        // A reconnect attempt may be waiting out its 5 s connect timeout when the link returns;
        // its SYN is retried within a few seconds, so 15 s is generous.
        let rejoined = expect_within(&alice.stdout, "alice", "* reconnected", back_at, secs(15));
        println!("figure: client rejoined {:.1} s after the link came back", rejoined.as_secs_f64());

        alice.type_line("did you miss me");
        let bob_saw = lines_until(&bob.stdout, "] alice: did you miss me", WAIT)
            .unwrap_or_else(|seen| panic!("bob never got alice's line after the outage; saw {seen:#?}"));
        assert!(
            !bob_saw.iter().any(|l| l.contains("connection lost")),
            "bob's idle link should have ridden out a {noticed:?} outage: {bob_saw:#?}"
        );
        assert_running(&mut alice, "alice");
        assert_running(&mut bob, "bob");
    });
}

/// A client killed outright leaves no goodbye, and its restart may reach the relay before the
/// relay has seen the old connection end. The restart comes from the same machine (the same
/// identity), so it must take its name over every time: 20 crashes in a row.
///
/// On loopback the kernel's FIN for a killed process usually beats the restart to the relay,
/// which would let the test pass without any takeover. So the last ten crashes are *hard* ones,
/// power cuts: the link is cut first, the relay never hears the close, and the old connection
/// is still there, for its whole 60 s idle timeout, when the restart says hello. The cut is
/// lifted once the restart is in, so the old connection's late FIN arrives too, and must not
/// throw the new one out. (Soft crashes first: a hard one left unresolved would hold the name
/// for the rest of the test.)
#[test]
fn twenty_crash_restart_cycles_all_get_back_in() {
    netns::isolated(|| {
        const CYCLES: usize = 20;
        let relay = relay_options().start();
        let home = TempDir::new("alice-home");
        let mut alice = joined(&relay, "alice", &home.path, &[], &[]);
        let mut refused = Vec::new();
        let mut slowest = Duration::ZERO;
        for cycle in 1..=CYCLES {
            // (A restart that was turned away has no connection left to cut, nor to crash.)
            let alive = alice.child.try_wait().expect("poll alice").is_none();
            let kind = match (alive, cycle > CYCLES / 2) {
                (false, _) => "after a restart that was turned away",
                (true, false) => "soft crash",
                (true, true) => "hard crash",
            };
            let cut =
                (kind == "hard crash").then(|| Cut::port(netns::source_port(alice.child.id(), relay.port())));
            // SIGKILL; a restart that was turned away has exited already, which `kill` ignores.
            let _ = alice.child.kill();
            alice.child.wait().expect("reap alice");
            alice = client(&relay, "alice", &home.path, &[], &[]);
            match connected_or_exit(&mut alice, &relay.addr.to_string(), "alice", WAIT) {
                Ok(took) => slowest = slowest.max(took),
                Err(why) => refused.push(format!("restart {cycle} ({kind}): {why}")),
            }
            drop(cut);
        }
        // The last restart survives the late FINs of the hard crashes before it.
        thread::sleep(Duration::from_millis(500));
        let still_in = refused.is_empty().then(|| alice.child.try_wait().expect("poll alice").is_none());
        println!(
            "figure: {CYCLES} crash-restarts (the last half hard), {} turned away, slowest rejoin {} ms",
            refused.len(),
            slowest.as_millis()
        );
        assert!(
            refused.is_empty(),
            "{} of {CYCLES} restarts did not get in:\n{}",
            refused.len(),
            refused.join("\n")
        );
        assert_eq!(still_in, Some(true), "the last alice was thrown out after getting in");
    });
}

/// Alice logs in from a second machine with her password while the first is still connected
/// (a laptop left on at home). The second takes over at once; the first is told why and exits
/// instead of reconnecting, which would throw the second out again, and so on forever.
#[test]
fn takeover_with_a_password() {
    netns::isolated(|| {
        let relay = relay_options().start();
        let mut bob = joined(&relay, "bob", &TempDir::new("bob-home").path, &[], &[]);
        let password = ["--password", "alice's password"];
        // Both alices would reconnect after a lost link: the first must leave because it was told
        // to, not because it gave up.
        let mut first = joined(&relay, "alice", &TempDir::new("alice-home").path, &password, &[RECONNECT]);
        expect_within(&bob.stdout, "bob", "* alice joined lobby", Instant::now(), WAIT);

        let second_home = TempDir::new("alice-laptop");
        let second_started = Instant::now();
        let mut second = joined(&relay, "alice", &second_home.path, &password, &[RECONNECT]);
        let told =
            expect_within(&first.stderr, "the first alice", "logged in elsewhere", second_started, WAIT);
        let status =
            exits_within(&mut first.child, secs(5)).expect("the first alice exits after the takeover");
        assert!(!status.success(), "the first alice exited 0 after being taken over ({status})");
        println!(
            "figure: a password takeover reached the old client {:.2} s after the new one started",
            told.as_secs_f64()
        );

        // For a while nothing more happens: the first stays out (it never reconnected), the
        // second stays in, and bob saw alice leave and come back at most once.
        let bob_saw = lines_for(&bob.stdout, secs(3));
        assert_running(&mut second, "the second alice");
        let first_out: Vec<String> = first.stdout.try_iter().collect();
        assert!(
            !first_out.iter().any(|l| l.contains("reconnecting")),
            "the first alice tried to reconnect: {first_out:?}"
        );
        let count = |needle: &str| bob_saw.iter().filter(|l| l.contains(needle)).count();
        assert!(count("* alice left") <= 1 && count("* alice joined") <= 1, "alice flapped: {bob_saw:#?}");

        second.type_line("it's me, on my laptop");
        expect_within(&bob.stdout, "bob", "] alice: it's me, on my laptop", Instant::now(), WAIT);
        assert_running(&mut bob, "bob");
    });
}

/// A guest (no account: this relay creates none) is known only by its machine's token. The same
/// machine takes its name over like an account holder would; any other machine is refused.
#[test]
fn takeover_as_a_guest() {
    netns::isolated(|| {
        let relay = relay_options().flag("--accounts-per-hour", 0).start();
        let home = TempDir::new("guest-home");
        let mut first = joined(&relay, "alice", &home.path, &[], &[RECONNECT]);

        let mut second = joined(&relay, "alice", &home.path, &[], &[RECONNECT]);
        expect_within(&first.stderr, "the first alice", "logged in elsewhere", Instant::now(), WAIT);
        let status =
            exits_within(&mut first.child, secs(5)).expect("the first alice exits after the takeover");
        assert!(!status.success(), "the first alice exited 0 after being taken over ({status})");

        let mut stranger = client(&relay, "alice", &TempDir::new("another-machine").path, &[], &[]);
        let why = connected_or_exit(&mut stranger, &relay.addr.to_string(), "alice", WAIT)
            .expect_err("a guest's name must be refused to another machine");
        assert!(why.contains("taken"), "the other machine was refused, but not as name taken: {why}");
        assert_running(&mut second, "the second alice");
        assert!(
            !second.stdout.try_iter().any(|l| l.contains("connection lost")),
            "the refused stranger disturbed the guest it was refused for"
        );
    });
}

/// `client send` from a script: the relay dies (SIGKILL) in the middle of the upload and comes
/// back on the same port and data dir. The send must reconnect and finish on its own, exit 0,
/// and bob must get exactly the bytes that were sent.
#[test]
fn a_one_shot_send_survives_a_relay_restart() {
    netns::isolated(|| {
        let data = TempDir::new("relay-data");
        let mut relay = relay_options().data_dir(&data.path).start();
        let addr = relay.addr.to_string();
        bob_claims_his_name(&relay);
        let files = TempDir::new("to-send");
        let path = random_file(&files.path, "photos.tar", 2 * 1024 * 1024, 7);
        let sent_sha = sha256(&path);

        let mut send = Proc::spawn(
            CLIENT,
            &["send", path.to_str().unwrap(), "--to", "bob", "--server", &addr, "--name", "alice"],
            &[("RELAYCHAT_TEST_CHUNK_DELAY_MS", "50"), ("RELAYCHAT_RECONNECT_FOR", "30")],
        );
        drop(send.stdin.take());
        let part = wait_for_part(&data.path.join("tmp"), 256 * 1024);
        assert!(send.child.try_wait().unwrap().is_none(), "the send ended before the relay could be killed");
        relay.kill();
        println!("the relay was killed with {part} bytes of the upload on its disk");

        let _relay = relay_options().bind(relay.addr).data_dir(&data.path).start();
        let back_at = Instant::now();
        let status = exits_within(&mut send.child, secs(40)).expect("the send finishes after the restart");
        thread::sleep(Duration::from_millis(50)); // let the line readers catch the last lines
        let (out, err): (Vec<String>, Vec<String>) =
            (send.stdout.try_iter().collect(), send.stderr.try_iter().collect());
        assert!(status.success(), "the send failed after the restart ({status}): {out:#?} {err:#?}");
        // It finished because it got back in, not because it had finished before the kill.
        assert!(out.iter().any(|l| l.contains("* reconnected")), "the send never reconnected: {out:#?}");
        println!(
            "figure: the send finished {:.1} s after the relay came back",
            back_at.elapsed().as_secs_f64()
        );

        let downloads = TempDir::new("bob-downloads");
        let dir = downloads.path.to_str().unwrap();
        one_shot(&["receive", "--server", &addr, "--name", "bob", "--downloads", dir], &[BOB_PASSWORD], WAIT);
        let got = files_under(&downloads.path);
        assert_eq!(got.len(), 1, "bob should get exactly one file: {got:?}");
        assert!(sha256(&got[0]) == sent_sha, "bob's copy differs from the file sent");
    });
}

/// On a slow link a file takes longer to send than the idle timeout, and the link is alive all
/// along: it must not be taken for dead. While a client uploads, the relay has nothing to say
/// until the upload is done, so the client must keep pinging while busy to hear a Pong; while it
/// downloads, the chunks themselves are the sign of life. Both one-shot commands use a 3 s idle
/// timeout on a 16 Mbit/s link and a 12 MiB file (over 6 s each way), and must finish without
/// ever losing the connection.
#[test]
fn a_long_transfer_on_a_slow_link_is_not_taken_for_a_dead_link() {
    netns::isolated(|| {
        netns::slow_link();
        let relay = relay_options().flag("--idle-timeout", format!("{IDLE}s")).start();
        let addr = relay.addr.to_string();
        bob_claims_his_name(&relay);
        let files = TempDir::new("to-send");
        let path = random_file(&files.path, "holiday.mp4", 12 * 1024 * 1024, 11);

        let started = Instant::now();
        let args = ["send", path.to_str().unwrap(), "--to", "bob", "--server", &addr, "--name", "alice"];
        let (out, err) = one_shot(&[&args[..], &CLIENT_IDLE[..]].concat(), &[], secs(60));
        let took = started.elapsed();
        println!("figure: 12 MiB went up a 16 Mbit/s link in {:.1} s", took.as_secs_f64());
        assert!(
            !out.iter().any(|l| l.contains("connection lost")),
            "the upload lost its (working) connection: {out:#?} {err:#?}"
        );
        assert!(took > secs(IDLE), "the upload took {took:?}: the link was not slow enough to test anything");

        let downloads = TempDir::new("bob-downloads");
        let started = Instant::now();
        let args =
            ["receive", "--server", &addr, "--name", "bob", "--downloads", downloads.path.to_str().unwrap()];
        let (out, err) = one_shot(&[&args[..], &CLIENT_IDLE[..]].concat(), &[BOB_PASSWORD], secs(60));
        println!("figure: and came down in {:.1} s", started.elapsed().as_secs_f64());
        assert!(
            !out.iter().any(|l| l.contains("connection lost")),
            "the download lost its (working) connection: {out:#?} {err:#?}"
        );
        let got = files_under(&downloads.path);
        assert_eq!(got.len(), 1, "bob should get exactly one file: {got:?}");
        assert!(sha256(&got[0]) == sha256(&path), "bob's copy differs from the file sent");
    });
}

/// The same for the interactive client's `/send`, with bob online: the file must reach him and
/// alice's busy link must never be taken for dead: a false alarm would cost a reconnect in the
/// middle of the file.
#[test]
fn an_interactive_send_on_a_slow_link_arrives() {
    netns::isolated(|| {
        netns::slow_link();
        let relay = relay_options().start();
        let bob = joined(&relay, "bob", &TempDir::new("bob-home").path, &[], &[]);
        let mut alice = joined(&relay, "alice", &TempDir::new("alice-home").path, &CLIENT_IDLE, &[RECONNECT]);
        let files = TempDir::new("to-send");
        let path = random_file(&files.path, "holiday.mp4", 12 * 1024 * 1024, 13);

        let started = Instant::now();
        alice.type_line(&format!("/send --to bob {}", path.display()));
        // Over 6 s of transfer at 16 Mbit/s; 25 s leaves room for a busy machine.
        let alice_saw = lines_until(&alice.stdout, "File sent complete: holiday.mp4", secs(25))
            .unwrap_or_else(|seen| panic!("alice's upload never finished; she saw {seen:#?}"));
        println!(
            "figure: an interactive /send of 12 MiB took {:.1} s at 16 Mbit/s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            !alice_saw.iter().any(|l| l.contains("connection lost")),
            "alice's busy link was taken for dead: {alice_saw:#?}"
        );
        expect_within(&bob.stdout, "bob", "[Newfile] alice: holiday.mp4", Instant::now(), WAIT);
    });
}

/// Alice's link vanishes in the middle of an interactive `/send`. Her client reconnects and
/// resumes the upload (the relay kept the bytes it had): the file must still reach bob, and not
/// be lost in silence or failed.
#[test]
fn an_interactive_send_cut_off_mid_file_is_resumed() {
    netns::isolated(|| {
        let data = TempDir::new("relay-data");
        let relay = relay_options().data_dir(&data.path).start();
        let bob = joined(&relay, "bob", &TempDir::new("bob-home").path, &[], &[]);
        let slow = ("RELAYCHAT_TEST_CHUNK_DELAY_MS", "300");
        let mut alice =
            joined(&relay, "alice", &TempDir::new("alice-home").path, &CLIENT_IDLE, &[RECONNECT, slow]);
        let files = TempDir::new("to-send");
        let path = random_file(&files.path, "thesis.pdf", 4 * 1024 * 1024, 17);

        alice.type_line(&format!("/send --to bob {}", path.display()));
        wait_for_part(&data.path.join("tmp"), 256 * 1024);
        let cut = Cut::port(relay.port());
        expect_within(&alice.stdout, "alice", "* connection lost", Instant::now(), secs(IDLE) + SLACK);
        cut.restore();
        expect_within(&alice.stdout, "alice", "* reconnected", Instant::now(), secs(15));

        // Bob must be told of the file; alice must not be told it failed.
        let back = Instant::now();
        let deadline = back + secs(30);
        let (mut bob_saw, mut alice_said) = (Vec::new(), Vec::new());
        loop {
            crossbeam_channel::select! {
                recv(bob.stdout) -> line => {
                    let line = line.expect("bob's output is open");
                    let arrived = line.contains("[Newfile] alice: thesis.pdf");
                    bob_saw.push(line);
                    if arrived { break; }
                }
                recv(alice.stderr) -> line => {
                    let line = line.expect("alice's output is open");
                    assert!(!line.contains("upload of thesis.pdf failed"), "failed instead of resumed: {line}");
                    alice_said.push(line);
                }
                default(deadline.saturating_duration_since(Instant::now())) => {
                    panic!("the file never arrived: bob saw {bob_saw:#?}, alice said {alice_said:#?}")
                }
            }
        }
        println!(
            "figure: an interactive /send cut off mid-file was resumed and arrived {:.1} s after the reconnect",
            back.elapsed().as_secs_f64()
        );
    });
}
