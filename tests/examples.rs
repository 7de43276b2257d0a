//! Runs the numbered lessons in `examples/` that work headless, so they cannot rot.
//! `cargo test` builds every example; this finds the binaries next to the test executable.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{next_chat, TestServer};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} not built: run the whole `cargo test`, which builds every example, or `cargo build --examples` first", path.display());
    path
}

fn run(name: &str, args: &[&str]) -> String {
    let Output { status, stdout, stderr } = Command::new(example(name)).args(args).output().unwrap();
    assert!(status.success(), "{name} failed: {}", String::from_utf8_lossy(&stderr));
    String::from_utf8(stdout).unwrap()
}

#[test]
fn lesson_02_round_trips_frames() {
    let out = run("02_frame_round_trip", &[]);
    assert!(out.contains("decoded"), "{out}");
    assert!(out.contains("none was an error"), "{out}");
    assert!(out.contains("refused a 4294967295-byte frame"), "{out}");
}

#[test]
fn lesson_01_seed_relay_demo_forwards_a_line() {
    let out = run("01_seed_relay", &["--demo"]);
    assert!(out.contains("user 2 heard: hello from user 1, 你好"), "{out}");
    assert!(out.contains("both directions finished"), "{out}");
}

#[test]
fn lesson_03_minimal_client_reaches_a_real_relay() {
    let server = TestServer::start();
    let bob = server.client("bob", "lobby");
    let out = run("03_minimal_client", &[&server.addr.to_string(), "lesson3", "hi from the lesson"]);
    assert!(out.contains("welcome: we are lesson3 in lobby"), "{out}");
    assert!(out.contains("closed"), "{out}");
    let _joined = common::next_event(&bob);
    assert_eq!(next_chat(&bob), ("lesson3".into(), "hi from the lesson".into()));
}

#[test]
fn lesson_07_shows_the_line_in_plaintext_and_not_with_tls() {
    let out = run("07_watch_the_wire", &["--demo"]);
    let (plain, tls) = out.split_once("--- TLS").expect("both captures are printed");
    assert!(plain.contains("is READABLE in the capture"), "{out}");
    assert!(tls.contains("is not in the capture"), "{out}");
}

#[test]
fn lesson_04_hub_passes_every_line_to_everyone_else() {
    let out = run("04_hub", &["--demo"]);
    for (listener, speaker) in [("alice", "bob"), ("alice", "carol"), ("bob", "alice"), ("carol", "bob")] {
        assert!(out.contains(&format!("{listener} heard {speaker}: hello from {speaker}")), "{out}");
    }
    assert!(out.contains("all threads joined"), "{out}");
}

#[test]
fn lesson_05_shutdown_cuts_only_the_stubborn_client_and_joins_everything() {
    let out = run("05_clean_shutdown", &["--demo"]);
    assert!(out.contains("1 connection(s) cut"), "{out}");
    assert!(out.contains("step 5: every thread joined"), "{out}");
}

#[test]
fn lesson_06_cuts_the_frozen_client_and_the_healthy_one_never_waits() {
    let out = run("06_slow_consumer", &["--demo"]);
    assert!(out.contains("hub: frozen made no progress"), "{out}");
    assert!(!out.contains("hub: healthy"), "the healthy client was cut: {out}");
}

#[test]
fn lesson_08_shows_the_deadlock_and_the_rule_that_avoids_it() {
    let out = run("08_tls_threads", &["--demo"]);
    assert!(out.contains("lock held across the write: DEADLOCK"), "{out}");
    assert!(out.contains("lock only to encrypt: moved 32 MiB"), "{out}");
}

#[test]
fn lesson_09_measures_both_ways_of_waiting() {
    let out = run("09_spin_or_sleep", &["--demo"]);
    assert!(out.contains("sleep at once: one hand-off p50"), "{out}");
    assert!(out.contains("poll 100 µs first: one hand-off p50"), "{out}");
}

#[test]
fn lesson_10_wakes_thousands_of_threads_both_ways() {
    let out = run("10_wake_thousands", &["--demo"]);
    assert!(
        out.contains("crossbeam recv: 2000 threads woken for one message each: all had it after"),
        "{out}"
    );
    assert!(
        out.contains("park + unpark: 2000 threads woken for one message each: all had it after"),
        "{out}"
    );
}

#[test]
fn lesson_11_a_waiting_thread_costs_less_once_it_gave_its_deep_pages_back() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return; // only glibc on Linux gives pages back (elsewhere the lesson measures no change)
    }
    let out = run("11_stack_pages", &["--demo"]);
    let per_thread = |label: &str| -> f64 {
        let line = out.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no '{label}' in {out}"));
        line.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("no figure in {line}"))
    };
    let (kept, given_back) = (per_thread("keeping the pages"), per_thread("giving them back"));
    // Each thread touched 64 KiB once: keeping them costs at least most of that, and giving
    // them back leaves a few pages (the thread's own data and its shallow frames).
    assert!(kept > 48.0 && given_back < kept - 32.0, "{out}");
}
