//! Driving the real binaries for `tests/links.rs`: how its relays are started, terminal and
//! one-shot clients, and waits on their output lines, every one with a time limit (a regression
//! fails, never hangs).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::common::proc::Proc;
use crate::common::relay::{Keys, Relay, RelayOptions};
use crate::common::{exits_within, expect_line, receive_until, try_until, TempDir, WAIT};

pub const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// The relay as these tests run it: with keys of its own, made in its data dir on first start, as
/// a relay in the wild has them (each client machine, a home dir of its own, pins it on first
/// contact). Its address is `127.0.0.1` inside the test's private network namespace.
pub fn relay_options() -> RelayOptions {
    RelayOptions::new().keys(Keys::Own)
}

// =============================================================================================
// Clients
// =============================================================================================

/// Bob's password: files wait on the relay only for names someone owns.
pub const BOB_PASSWORD: (&str, &str) = ("RELAYCHAT_PASSWORD", "bob's password");

/// A terminal client of `relay` as `name` on the machine whose identity lives in `home`, with
/// extra `args` and `envs`; not waited for.
pub fn client(relay: &Relay, name: &str, home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let addr = relay.addr.to_string();
    let mut all = vec!["--server", addr.as_str(), "--name", name];
    all.extend_from_slice(args);
    let home = home.to_str().expect("a UTF-8 temp path");
    let mut env = vec![("RELAYCHAT_CONFIG_DIR", home)];
    env.extend_from_slice(envs);
    Proc::spawn(CLIENT, &all, &env)
}

/// [`client`], once it has printed that it is connected (the test fails if it does not).
pub fn joined(relay: &Relay, name: &str, home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut proc = client(relay, name, home, args, envs);
    if let Err(why) = connected_or_exit(&mut proc, &relay.addr.to_string(), name, WAIT) {
        panic!("{name} did not get in: {why}");
    }
    proc
}

/// Bob visits once with his password, which makes "bob" an account that files can wait for.
pub fn bob_claims_his_name(relay: &Relay) {
    let mut bob = client(relay, "bob", &TempDir::new("bob-home").path, &[], &[BOB_PASSWORD]);
    if let Err(why) = connected_or_exit(&mut bob, &relay.addr.to_string(), "bob", WAIT) {
        panic!("bob could not claim his name: {why}");
    }
    drop(bob.stdin.take()); // end of input: the client quits
    let status = exits_within(&mut bob.child, WAIT).expect("bob quits at the end of his input");
    assert!(status.success(), "bob's first visit ended with {status}");
}

/// Runs a one-shot client command (`send`, `receive`) with `envs` to its end, which must be a
/// success within `within`; returns its stdout and stderr lines. It may reconnect (for up to 30 s)
/// as a script's command would; whether it had to is in its output.
pub fn one_shot(args: &[&str], envs: &[(&str, &str)], within: Duration) -> (Vec<String>, Vec<String>) {
    let mut env = vec![("RELAYCHAT_RECONNECT_FOR", "30")];
    env.extend_from_slice(envs);
    let mut proc = Proc::spawn(CLIENT, args, &env);
    drop(proc.stdin.take());
    let status = exits_within(&mut proc.child, within);
    thread::sleep(Duration::from_millis(50)); // let the line readers catch the last lines
    let (out, err): (Vec<String>, Vec<String>) =
        (proc.stdout.try_iter().collect(), proc.stderr.try_iter().collect());
    match status {
        Some(status) if status.success() => (out, err),
        Some(status) => panic!("client {} failed ({status}): {out:#?} {err:#?}", args[0]),
        None => panic!("client {} did not finish within {within:?}: {out:#?} {err:#?}", args[0]),
    }
}

/// Waits for `proc`'s "connected" line: how long it took, or (if it exited or timed out) why,
/// with what it printed.
pub fn connected_or_exit(
    proc: &mut Proc,
    addr: &str,
    name: &str,
    within: Duration,
) -> Result<Duration, String> {
    let needle = format!("* connected to {addr} as {name} in ");
    let start = Instant::now();
    let mut seen = Vec::new();
    let outcome = try_until(within, || {
        for line in proc.stdout.try_iter() {
            if line.contains(&needle) {
                return Some(Ok(start.elapsed()));
            }
            seen.push(line);
        }
        let status = proc.child.try_wait().expect("poll the client")?;
        thread::sleep(Duration::from_millis(50)); // let the line readers catch the last lines
        seen.extend(proc.stdout.try_iter());
        let err: Vec<String> = proc.stderr.try_iter().collect();
        Some(Err(format!("exited ({status}); stderr {err:?}, stdout {seen:?}")))
    });
    outcome.unwrap_or_else(|| Err(format!("no connected line within {within:?}; stdout {seen:?}")))
}

// =============================================================================================
// Waiting, with limits
// =============================================================================================

/// Waits for a line containing `needle` on `lines` (from `who`) until `limit` after `since`;
/// returns the time from `since` to the line. Fails the test, with the lines seen, otherwise.
pub fn expect_within(
    lines: &Receiver<String>,
    who: &str,
    needle: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    expect_line(lines, who, needle, limit.saturating_sub(since.elapsed()));
    since.elapsed()
}

/// Every line that arrives on `lines` during `period`.
pub fn lines_for(lines: &Receiver<String>, period: Duration) -> Vec<String> {
    receive_until(lines, period, |_| false).0
}

pub fn assert_running(proc: &mut Proc, who: &str) {
    if let Some(status) = proc.child.try_wait().expect("poll the process") {
        let err: Vec<String> = proc.stderr.try_iter().collect();
        panic!("{who} exited ({status}) but should still be connected; stderr {err:?}");
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
