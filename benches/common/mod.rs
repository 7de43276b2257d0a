//! What both benchmarks need: the real relay binary as a child process, and its memory.

#![allow(dead_code)] // each benchmark uses a different subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;

/// The relay process; killed on drop, so a failing benchmark never leaves it running.
pub struct Relay(pub Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The relay flags that lift every per-address rate: a benchmark measures the relay, not the
/// limits (which slow one sender on purpose). One list for every benchmark, so none of them can
/// miss a limit the relay gains (the text rate was missed once, and held the burst to ~12 700
/// messages a second).
pub const UNLIMITED_RATES: [&str; 8] =
    ["--msg-rate", "0", "--text-rate", "0", "--request-rate", "0", "--connect-rate", "0"];

/// Starts the `server` binary on a free loopback port with `args` added; returns it and its
/// address. Its log is drained on a thread (so it never blocks on a full pipe), and anything
/// above INFO is shown.
pub fn start_relay(args: &[&str]) -> (Relay, String) {
    start_relay_binary(std::path::Path::new(env!("CARGO_BIN_EXE_server")), args)
}

/// [`start_relay`] with another build's `server` binary (the files benchmark's `--before`).
///
/// With `RELAYCHAT_BENCH_WRAP=PROGRAM` in the environment the relay runs as `PROGRAM server
/// ARGS...`: under `heaptrack` (who holds the heap), or through a script that runs another build
/// instead (`exec /elsewhere/server "$@"` after a `shift`), for a before/after in any benchmark.
pub fn start_relay_binary(binary: &std::path::Path, args: &[&str]) -> (Relay, String) {
    let mut command = match std::env::var_os("RELAYCHAT_BENCH_WRAP") {
        Some(wrapper) => {
            let mut wrapped = Command::new(wrapper);
            wrapped.arg(binary);
            wrapped
        }
        None => Command::new(binary),
    };
    let mut child = command
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server binary");
    let stderr = child.stderr.take().expect("piped stderr");
    let relay = Relay(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server printed its address").expect("readable log");
        if let Some(at) = line.find("relay listening on ") {
            break line[at + "relay listening on ".len()..].trim().to_owned();
        }
    };
    thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if !line.contains(" INFO ") {
                eprintln!("relay log: {line}");
            }
        }
    });
    (relay, addr)
}

/// A library client's configuration for a benchmark's relay: TLS (the default path, and what is
/// measured), trusting whatever key the loopback relay shows (nothing is pinned or kept: there is
/// nobody in the middle of a benchmark).
pub fn bench_config(name: &str, room: &str) -> relaychat::client::ClientConfig {
    use relaychat::client::{FirstContact, Security, Trust};
    let trust = Trust { first_contact: FirstContact::Accept, ..Trust::default() };
    relaychat::client::ClientConfig {
        security: Security::Tls(trust),
        ..relaychat::client::ClientConfig::new(name, room)
    }
}

/// A field of /proc/PID/status in KiB: `VmRSS` (now) or `VmHWM` (peak).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
