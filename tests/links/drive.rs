//! Driving the real binaries for `tests/links.rs`: a relay, terminal and one-shot clients, and
//! waits on their output lines, every one with a time limit (a regression fails, never hangs).

use std::path::Path;
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::common::proc::Proc;
use crate::common::{files_under, TempDir, WAIT};

pub const SERVER: &str = env!("CARGO_BIN_EXE_server");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_client");

// =============================================================================================
// The relay
// =============================================================================================

/// A `server` binary with a data dir, killed on drop (by [`Proc`]).
pub struct Relay {
    pub proc: Proc,
    /// `127.0.0.1:PORT`, as clients are given it.
    pub addr: String,
    pub port: u16,
    /// Its own data dir, if it was not given one.
    _data: Option<TempDir>,
}

impl Relay {
    /// A relay on a free port with a fresh data dir and `flags`.
    pub fn start(flags: &[&str]) -> Relay {
        let data = TempDir::new("relay");
        let relay = Relay::start_in(&data.path, "127.0.0.1:0", flags);
        Relay { _data: Some(data), ..relay }
    }

    /// A relay on `bind` (a fixed port, to come back where clients expect it) and `data_dir`.
    pub fn start_in(data_dir: &Path, bind: &str, flags: &[&str]) -> Relay {
        let dir = data_dir.to_str().expect("a UTF-8 temp path");
        let mut args = vec!["--bind", bind, "--data-dir", dir];
        args.extend_from_slice(flags);
        // The tests read its `info` log (the listening line, idle closes), whatever RUST_LOG says.
        let proc = Proc::spawn(SERVER, &args, &[("RUST_LOG", "info")]);
        let line = proc.expect(&proc.stderr, "relay listening on ");
        let addr = line.rsplit(' ').next().expect("an address at the end").to_owned();
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the address");
        Relay { proc, addr, port, _data: None }
    }
}

// =============================================================================================
// Clients
// =============================================================================================

/// Bob's password: files wait on the relay only for names someone owns.
pub const BOB_PASSWORD: (&str, &str) = ("RELAYCHAT_PASSWORD", "bob's password");

/// A terminal client of `relay` as `name` on the machine whose identity lives in `home`, with
/// extra `args` and `envs`; not waited for.
pub fn client(relay: &Relay, name: &str, home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut all = vec!["--server", relay.addr.as_str(), "--name", name];
    all.extend_from_slice(args);
    let home = home.to_str().expect("a UTF-8 temp path");
    let mut env = vec![("RELAYCHAT_CONFIG_DIR", home)];
    env.extend_from_slice(envs);
    Proc::spawn(CLIENT, &all, &env)
}

/// [`client`], once it has printed that it is connected (the test fails if it does not).
pub fn joined(relay: &Relay, name: &str, home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut proc = client(relay, name, home, args, envs);
    if let Err(why) = connected_or_exit(&mut proc, &relay.addr, name, WAIT) {
        panic!("{name} did not get in: {why}");
    }
    proc
}

/// Bob visits once with his password, which makes "bob" an account that files can wait for.
pub fn bob_claims_his_name(relay: &Relay) {
    let mut bob = client(relay, "bob", &TempDir::new("bob-home").path, &[], &[BOB_PASSWORD]);
    if let Err(why) = connected_or_exit(&mut bob, &relay.addr, "bob", WAIT) {
        panic!("bob could not claim his name: {why}");
    }
    drop(bob.stdin.take()); // end of input: the client quits
    let status = exits_within(&mut bob, WAIT).expect("bob quits at the end of his input");
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
    let status = exits_within(&mut proc, within);
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
    while start.elapsed() < within {
        if let Ok(line) = proc.stdout.recv_timeout(Duration::from_millis(50)) {
            if line.contains(&needle) {
                return Ok(start.elapsed());
            }
            seen.push(line);
        } else if let Some(status) = proc.child.try_wait().expect("poll the client") {
            thread::sleep(Duration::from_millis(50)); // let the line readers catch the last lines
            seen.extend(proc.stdout.try_iter());
            let err: Vec<String> = proc.stderr.try_iter().collect();
            return Err(format!("exited ({status}); stderr {err:?}, stdout {seen:?}"));
        }
    }
    Err(format!("no connected line within {within:?}; stdout {seen:?}"))
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
    let deadline = since + limit;
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_deadline(deadline) {
        if line.contains(needle) {
            return since.elapsed();
        }
        seen.push(line);
    }
    panic!("{who}: no {needle:?} within {limit:?}; saw {seen:#?}");
}

/// Every line on `lines` up to and including the first one containing `needle`, or (after
/// `within`) the lines seen instead.
pub fn lines_until(
    lines: &Receiver<String>,
    needle: &str,
    within: Duration,
) -> Result<Vec<String>, Vec<String>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_deadline(deadline) {
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return Ok(seen);
        }
    }
    Err(seen)
}

/// Every line that arrives on `lines` during `period`.
pub fn lines_for(lines: &Receiver<String>, period: Duration) -> Vec<String> {
    let deadline = Instant::now() + period;
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_deadline(deadline) {
        seen.push(line);
    }
    seen
}

/// The exit status, if `proc` exits within `within`.
pub fn exits_within(proc: &mut Proc, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proc.child.try_wait().expect("poll the process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn assert_running(proc: &mut Proc, who: &str) {
    if let Some(status) = proc.child.try_wait().expect("poll the process") {
        let err: Vec<String> = proc.stderr.try_iter().collect();
        panic!("{who} exited ({status}) but should still be connected; stderr {err:?}");
    }
}

/// Waits until an upload's `.part` file under `dir` holds at least `min` bytes; its size then.
pub fn wait_for_part(dir: &Path, min: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let size = files_under(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "part"))
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .max();
        if let Some(size) = size.filter(|&n| n >= min) {
            return size;
        }
        assert!(Instant::now() < deadline, "no upload of {min} bytes appeared under {}", dir.display());
        thread::sleep(Duration::from_millis(2));
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
