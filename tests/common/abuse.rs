//! The abuse tests' shared checks (`tests/abuse_uploads.rs`, `abuse_messages.rs`,
//! `abuse_logins.rs`): every flag, code and limit they assume from the design, one test at a
//! time with soft checks (`ABUSE_SOFT=1`), and the checks each attack ends with: the relay is
//! alive, its memory came back down, bystanders' chat stayed fast, and a file still goes through.
//!
//! The relay under attack is a [`WatchedRelay`] (`tests/common/watched.rs`); the attackers'
//! connections are [`Raw`] (`tests/common/attacker.rs`).

use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use relaychat::client::{Client, Event};
use relaychat::frame::{ErrorCode, Frame};
use relaychat::rules::MAX_TEXT_BYTES;

use super::attacker::{lo, Answer, Raw};
use super::hello_as;
use super::latency::LatencyReport;
use super::watched::WatchedRelay;
use super::{client_config, TempDir};

// =============================================================================================
// Every name and number the abuse tests assume from the design (/work/briefs/design8.md), in one
// place. If the relay spells a flag differently or picks another code, change it here.
// A flag that the relay binary does not list in `--help` is left out (the test says so), so the
// tests also run against a relay without the feature and fails on the attack itself.
// =============================================================================================

/// Connections from one IP address (design default `max_per_address` = 16).
pub const FLAG_MAX_PER_ADDRESS: &str = "--max-per-address";
/// Messages waiting per recipient (design `max_pending_messages`, default 10 000).
pub const FLAG_MAX_PENDING: &str = "--max-pending-messages";
/// Files waiting per recipient (design `max_waiting_files`, default 1 000).
pub const FLAG_MAX_WAITING_FILES: &str = "--files-per-recipient";
/// Per-connection token buckets (design `msg_rate` 20/s burst 100, `byte_rate` 256 KiB/s burst
/// 2 MiB; 0 turns one off). Tests of the other bounds turn them off so the flood gets through.
pub const FLAG_MSG_RATE: &str = "--msg-rate";
pub const FLAG_BYTE_RATE: &str = "--text-rate";
/// Flags that exist today.
pub const FLAG_MAX_FILE_SIZE: &str = "--max-file-size";
pub const FLAG_QUOTA: &str = "--quota";
pub const FLAG_MIN_FREE: &str = "--min-free";

/// The design's defaults that the tests rely on (no flag passed).
pub const PER_ADDRESS: usize = 16;
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
pub const MSG_RATE: f64 = 20.0;
pub const MSG_BURST: f64 = 100.0;
pub const BYTE_RATE: f64 = 256.0 * 1024.0;
pub const BYTE_BURST: f64 = 2.0 * 1024.0 * 1024.0;
/// Uploads one connection may hold (1 active + at most 4 partial per account, with slack).
pub const UPLOADS_HELD_PER_CONNECTION: usize = 8;
/// Failed logins that are free before the brake starts (per address and per account).
pub const FREE_FAILURES: usize = 3;

/// The values this file passes with the flags above.
pub const PENDING_CAP: usize = 200;
pub const WAITING_FILES_CAP: usize = 40;

/// The error code each refusal must carry.
pub const CODE_FIELD_TOO_LONG: ErrorCode = ErrorCode::FieldTooLong;
pub const CODE_TOO_MANY_UPLOADS: ErrorCode = ErrorCode::TooManyUploads;
pub const CODE_UNKNOWN_RECIPIENT: ErrorCode = ErrorCode::UnknownRecipient;
pub const CODE_CONFUSABLE: ErrorCode = ErrorCode::NameConfusable;
pub const CODE_RECIPIENT_FULL: ErrorCode = ErrorCode::RecipientFull;
pub const CODE_NOT_STORED: ErrorCode = ErrorCode::NotStored;
pub const CODE_BAD_MESSAGE_ID: ErrorCode = ErrorCode::BadMessageId;
pub const CODE_RELAY_FULL: ErrorCode = ErrorCode::RelayFull;

/// The targets.
pub const RSS_UNDER_ATTACK_MIB: u64 = 256;
pub const RSS_AFTER_MIB: u64 = 64;
pub const RSS_SETTLE: Duration = Duration::from_secs(10);
pub const CHAT_P99: Duration = Duration::from_millis(100);
/// "A login works within a few seconds" (the design caps the account brake at 2 s).
pub const LOGIN_LIMIT: Duration = Duration::from_secs(5);
/// A guest login while passwords are being hashed.
pub const GUEST_LOGIN_LIMIT: Duration = Duration::from_secs(3);

/// Where attackers connect from; victims and bystanders use 127.0.0.1.
pub const ATTACKER: u8 = 66;

// =============================================================================================
// Shared checks
// =============================================================================================

/// One test at a time (see the module docs), and the soft checks of `ABUSE_SOFT=1`.
///
/// With `ABUSE_SOFT=1` in the environment, a failed [`check!`] prints `abuse: CHECK FAILED: …` and
/// the test goes on, so one run shows every failure of every test (the test still fails when it
/// ends). Without it, a failed check panics at once like `assert!`.
pub struct TestGuard {
    _serial: MutexGuard<'static, ()>,
}

pub fn begin() -> TestGuard {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next one goes on.
    let serial = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    SOFT_FAILURES.with(|f| f.borrow_mut().clear());
    TestGuard { _serial: serial }
}

impl Drop for TestGuard {
    fn drop(&mut self) {
        let failed = SOFT_FAILURES.with(|f| std::mem::take(&mut *f.borrow_mut()));
        if !failed.is_empty() && !thread::panicking() {
            panic!("{} check(s) failed:\n{}", failed.len(), failed.join("\n"));
        }
    }
}

thread_local! {
    static SOFT_FAILURES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub fn check_failed(message: String) {
    if std::env::var_os("ABUSE_SOFT").is_some_and(|v| v == "1") {
        println!("abuse: CHECK FAILED: {message}");
        SOFT_FAILURES.with(|f| f.borrow_mut().push(message));
    } else {
        panic!("{message}");
    }
}

/// `assert!` that can be made soft (see [`begin`]).
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            $crate::common::abuse::check_failed(format!($($arg)+));
        }
    };
}
#[allow(unused_imports)] // each abuse test file checks softly or not
pub(crate) use check;

/// Fails the test if the relay process is gone (crashed, or killed by the memory watchdog).
pub fn assert_alive(relay: &mut WatchedRelay, class: &str) {
    if !relay.alive() {
        let why = match relay.killed_at_mib() {
            Some(at) => format!("killed by the test's watchdog at {at:.0} MiB of RSS: memory is unbounded"),
            None => "it exited".to_string(),
        };
        panic!("{class}: the relay did not survive the attack ({why}){}", relay.context());
    }
}

/// Prints the RSS line and checks both memory targets. Call it after the attacker has left.
pub fn assert_memory(relay: &mut WatchedRelay, class: &str) {
    let (peak, after) = relay.memory_report(RSS_AFTER_MIB, RSS_SETTLE);
    check!(
        relay.killed_at_mib().is_none() && peak < RSS_UNDER_ATTACK_MIB as f64,
        "{class}: the relay's RSS reached {peak:.0} MiB under attack (limit {RSS_UNDER_ATTACK_MIB} MiB){}",
        relay.context()
    );
    check!(
        after < RSS_AFTER_MIB as f64,
        "{class}: the relay's RSS is still {after:.0} MiB {} s after the attacker left (limit {RSS_AFTER_MIB} MiB)",
        RSS_SETTLE.as_secs()
    );
}

/// Bystanders' chat: p99 under 100 ms, nothing lost, every receipt. With `strict` false (tests
/// that turn the per-sender rate limits off so the flood gets through) the p99 is only printed:
/// the latency target assumes the relay's default limits.
pub fn assert_latency(report: &LatencyReport, class: &str, strict: bool) {
    let p99 = report.p99();
    println!(
        "abuse: {class}: bystander chat p99 {:.1} ms over {} messages ({} lost, {} without receipt)",
        p99.as_secs_f64() * 1000.0,
        report.samples.len(),
        report.lost,
        report.missing_receipts
    );
    check!(report.broke.is_none(), "{class}: bystanders' chat broke: {:?}", report.broke);
    check!(report.lost == 0, "{class}: {} of the bystanders' messages never arrived", report.lost);
    check!(!strict || p99 < CHAT_P99, "{class}: bystanders' chat p99 was {p99:?} (limit {CHAT_P99:?})");
    check!(
        report.missing_receipts == 0,
        "{class}: {} bystander messages got no receipt",
        report.missing_receipts
    );
}

/// The victim's errand: a guest uploads a `size`-byte file to another guest, who receives it.
pub fn assert_file_round_trip(relay: &WatchedRelay, class: &str, tag: &str, size: usize) {
    let addr = relay.addr.to_string();
    let room = format!("v{tag}");
    let join = |name: String| {
        Client::connect_tcp(&addr, &client_config(&name, &room))
            .unwrap_or_else(|e| panic!("{class}: the victim {name} cannot join: {e}{}", relay.context()))
    };
    let (sender_name, receiver_name) = (format!("alice{tag}"), format!("carol{tag}"));
    let sender = join(sender_name);
    let receiver = join(receiver_name.clone());
    let src = TempDir::new("abuse-src");
    let file = super::random_file(&src.path, "report.bin", size, size as u64 ^ 0x5eed);
    sender.send_file(&file, Some(&receiver_name)).unwrap();
    let uploaded = super::wait_for(&sender, "the victim's upload", |e| match e {
        Event::Uploaded { name, .. } if name == "report.bin" => Some(Ok(())),
        Event::TransferFailed { name, reason, .. } if name == "report.bin" => Some(Err(reason.clone())),
        _ => None,
    });
    if let Err(reason) = uploaded {
        panic!("{class}: the victim's upload of {size} bytes failed: {reason}{}", relay.context());
    }
    let dst = TempDir::new("abuse-dst");
    let (paths, failures) = super::receive_into(&receiver, &dst.path);
    assert!(failures.is_empty(), "{class}: the victim's Receive failed: {failures:?}{}", relay.context());
    assert!(paths.len() == 1, "{class}: the victim received {paths:?}");
    assert!(
        std::fs::read(&paths[0]).unwrap() == std::fs::read(&file).unwrap(),
        "{class}: the victim's file changed"
    );
    sender.close();
    receiver.close();
}

/// True if `text` holds a number of five digits or more (a byte count, say).
pub fn has_big_number(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit()).any(|run| run.len() >= 5)
}

/// An attacker's guest connection, `mallory<n>` in `room`. Retries for a few seconds while the
/// relay is still counting the attacker's previous connection (RelayFull) or name (NameTaken).
pub fn attacker(relay: &WatchedRelay, n: &mut usize, room: &str) -> Raw {
    *n += 1;
    let name = format!("mallory{n}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Raw::join_with(
            lo(ATTACKER),
            relay.addr,
            &hello_as(&name, room, "", ""),
            Duration::from_secs(10),
        ) {
            Ok(raw) => return raw,
            Err(Answer::Refused(ErrorCode::RelayFull | ErrorCode::NameTaken, _))
                if Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(50))
            }
            Err(answer) => panic!("the attacker {name} cannot join: {answer:?}{}", relay.context()),
        }
    }
}

/// Claims account `name` with `password` (one hello), then leaves.
pub fn claim_account(relay: &WatchedRelay, name: &str, room: &str, password: &str) {
    let mut raw =
        Raw::join_with(lo(1), relay.addr, &hello_as(name, room, password, ""), Duration::from_secs(10))
            .unwrap_or_else(|a| panic!("{name} cannot claim an account: {a:?}{}", relay.context()));
    let _ = raw.send(&Frame::Goodbye);
    raw.closed_within(Duration::from_secs(2));
}

/// A chat text of the largest allowed size.
pub fn big_text() -> String {
    "x".repeat(MAX_TEXT_BYTES)
}

/// What an `UploadStart` got.
pub enum StartAnswer {
    Ready,
    /// `UploadFailed`: refused, the connection stays.
    Failed(ErrorCode, String),
    /// `Error`: refused, the relay ends the connection.
    Ended(ErrorCode, String),
    Nothing,
}

pub fn start_upload(raw: &mut Raw, key: String, name: String, size: u64, to: String) -> StartAnswer {
    if raw.send(&Frame::UploadStart { key, name, size, to }).is_err() {
        return StartAnswer::Nothing;
    }
    raw.recv_until(Duration::from_secs(10), |f| match f {
        Frame::UploadReady { .. } => Some(StartAnswer::Ready),
        Frame::UploadFailed { code, message, .. } => Some(StartAnswer::Failed(*code, message.clone())),
        Frame::Error { code, message } => Some(StartAnswer::Ended(*code, message.clone())),
        _ => None,
    })
    .unwrap_or(StartAnswer::Nothing)
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
