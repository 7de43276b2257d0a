//! A private network for one test, where links can be made to vanish (for `tests/links.rs`).
//!
//! A link that *vanishes* (Wi-Fi gone, a laptop lid closed, a NAT that forgot the mapping) sends no
//! FIN and no RST: packets simply stop arriving. Closing a socket cannot fake that, and doing it
//! to the machine's real network would hurt everyone else on it. So each test runs in network and
//! PID namespaces of its own (`unshare`), where the only interface is a loopback nobody else uses,
//! and drops packets there with `tc`:
//!
//! 1. [`isolated`] runs in the normal test process. It starts *the same test binary* again, under
//!    `unshare -n -p -f --kill-child --mount-proc`, filtered to this one test (`--exact NAME`), with
//!    `RELAYCHAT_NETNS=1` set. It waits (with a time limit), forwards the child's output and fails
//!    if the child failed. Where that is impossible (not root, no `unshare`/`ip`/`tc`/`ss`) it
//!    prints one `SKIP` line and passes.
//! 2. In the child, [`isolated`] sees the variable, checks that it really is in a fresh namespace
//!    (only `lo`, still down), brings `lo` up, and builds the cutting tools (below); then it runs
//!    the test.
//! 3. When the child's first process exits, the kernel kills everything left in its PID namespace,
//!    so no relay or client can outlive its test, even after a panic or a timeout. (Only the PID
//!    namespace needs the private `/proc` of `--mount-proc`: `ss -p` then shows the same pids that
//!    `Child::id` returns.)
//!
//! The tools on `lo`: an `htb` root whose default class `1:10` passes everything, and a class
//! `1:20` whose only queue is a `blackhole` (every packet put there is dropped, and the sender's
//! TCP is told it went out). A [`Cut`] adds `u32` filters that send one TCP port's packets, both
//! directions, to `1:20`; dropping the `Cut` deletes them and the link comes back. [`slow_link`]
//! lowers the rate of `1:10`. (`netem`, the usual tool for both, is not available on every kernel;
//! `htb` and a blackhole are.)
//!
//! The child also gets a temp dir of its own (`TMPDIR`): every process in a fresh PID namespace is
//! pid 1, and the shared helpers name their temp dirs after the pid.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use super::{exits_within, try_until, TempDir};

/// Set (to `1`) in the child that runs inside the namespace.
pub const INSIDE: &str = "RELAYCHAT_NETNS";

/// How long one test may take in its namespace before it is killed and fails.
const CHILD_LIMIT: Duration = Duration::from_secs(180);

/// The namespaces: network, PID (with its own `/proc`), and a kill of the test if `unshare` dies.
const UNSHARE: &[&str] = &["-n", "-p", "-f", "--kill-child", "--mount-proc", "--"];

/// Commands that make a fresh namespace's loopback usable and ready to cut (see the module doc).
/// The `quantum` only silences htb's warning that 10gbit makes its default quantum big.
const LINK_SETUP: &[&str] = &[
    "ip link set lo up",
    "tc qdisc add dev lo root handle 1: htb default 10",
    "tc class add dev lo parent 1: classid 1:10 htb rate 10gbit quantum 60000",
    "tc class add dev lo parent 1: classid 1:20 htb rate 10gbit quantum 60000",
    "tc qdisc add dev lo parent 1:20 handle 20: blackhole",
];

/// Runs `body` in a private network namespace. Call it from a `#[test]` function: outside the
/// namespace it starts the child that runs this same test inside and checks its result; without
/// the means to make a namespace it prints a `SKIP` line and returns.
pub fn isolated(body: impl FnOnce()) {
    let test = current_test();
    if std::env::var_os(INSIDE).is_some() {
        prepare_inside();
        body();
        return;
    }
    if let Some(why) = unavailable() {
        let krate = env!("CARGO_CRATE_NAME");
        println!("SKIP {krate}::{test}: needs root and unshare -n (not available here: {why})");
        return;
    }
    run_child(&test);
}

/// The running test's name: libtest runs each test on a thread named after it (its path in the
/// crate, which `--exact` matches). Checked again by [`run_child`], which fails unless the child
/// ran exactly one test.
fn current_test() -> String {
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if name != "main" => name.to_owned(),
        other => panic!("netns::isolated must run on a test's own thread, not {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Outside: starting the child
// ---------------------------------------------------------------------------------------------

/// Why no namespace can be made here, or `None`. Tried once per test process, by building the
/// tools in a throwaway namespace, so a kernel without `htb` or `blackhole` also skips.
fn unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root".into());
        }
        let script = format!("{} && ss -Htn >/dev/null", LINK_SETUP.join(" && "));
        match Command::new("unshare").args(UNSHARE).args(["sh", "-c", &script]).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "unshare/ip/tc/ss failed: {}",
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
            )),
            Err(e) => Some(format!("cannot run unshare: {e}")),
        }
    })
    .clone()
}

/// Runs this test binary again inside the namespaces, filtered to `test`; forwards its output
/// (to the harness's capture, so it shows with `--nocapture` or on failure) and fails with it.
fn run_child(test: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let tmp = TempDir::new("netns");
    let mut child = Command::new("unshare")
        .args(UNSHARE)
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .env("TMPDIR", &tmp.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    // Each pipe is drained on a thread of its own: a child that fills one pipe while we wait on
    // the other would block forever.
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = exits_within(&mut child, CHILD_LIMIT);
    if status.is_none() {
        // Killing `unshare` kills the test (--kill-child), whose PID namespace then dies whole.
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    print!("{out}");
    eprint!("{err}");
    let Some(status) = status else {
        panic!("{test} took over {CHILD_LIMIT:?} in its namespace and was killed (its output is above)");
    };
    assert!(status.success(), "{test} failed in its namespace ({status}); its output is above");
    // A filter that matched nothing would "pass" with zero tests run.
    assert!(
        out.contains("test result: ok. 1 passed"),
        "the namespace child did not run exactly one test named {test}"
    );
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

// ---------------------------------------------------------------------------------------------
// Inside: the namespace's loopback and its tools
// ---------------------------------------------------------------------------------------------

/// Refuses to touch a network that is not a fresh namespace's, then brings `lo` up and builds the
/// cutting tools. Fresh means: `lo` is the only interface and is still down (as the kernel makes
/// it), so the cuts can never reach a real interface or a loopback someone else uses.
fn prepare_inside() {
    let links = output("ip -o link show");
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(':').nth(1)).map(str::trim).collect();
    let fresh = names == ["lo"] && links.contains("<LOOPBACK>") && links.contains("state DOWN");
    assert!(fresh, "{INSIDE} is set but this is not a fresh network namespace: {links}");
    for command in LINK_SETUP {
        run(command);
    }
}

/// Runs a command line (words split on spaces) and fails the test if it fails.
fn run(command: &str) {
    output(command);
}

/// Runs a command line (words split on spaces); its stdout, or a failure of the test.
fn output(command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let out = Command::new(words[0]).args(&words[1..]).output().unwrap_or_else(|e| panic!("{command}: {e}"));
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the namespace's loopback a slow link: 16 Mbit/s (a common home uplink) for everything
/// that is not cut, with an Ethernet-sized MTU so the rate is applied packet by packet rather than
/// in 64 KiB lumps. Each direction of a connection crosses `lo` once, so each gets 16 Mbit/s.
pub fn slow_link() {
    run("ip link set lo mtu 1500");
    run("tc class change dev lo parent 1: classid 1:10 htb rate 16mbit ceil 16mbit quantum 60000");
}

/// One TCP port's traffic, both directions, sent into the blackhole until dropped (or
/// [`Cut::restore`]d). Cutting the relay's listening port vanishes the relay for everyone; cutting
/// one client's source port vanishes that client only.
pub struct Cut {
    port: u16,
    /// The filters' priority: each cut has its own, so it can delete exactly its own filters.
    prio: u32,
}

impl Cut {
    pub fn port(port: u16) -> Cut {
        static NEXT_PRIO: AtomicU32 = AtomicU32::new(1);
        let prio = NEXT_PRIO.fetch_add(1, Ordering::Relaxed);
        for side in ["sport", "dport"] {
            let filter = format!("prio {prio} u32 match ip {side} {port} 0xffff flowid 1:20");
            run(&format!("tc filter add dev lo parent 1: protocol ip {filter}"));
        }
        Cut { port, prio }
    }

    /// Brings the link back. (Dropping the cut does the same; this says so where it matters.)
    pub fn restore(self) {}
}

impl Drop for Cut {
    fn drop(&mut self) {
        // Not `run`: a failure here must not turn into a panic while a test is already unwinding.
        let prio = self.prio.to_string();
        let deleted = Command::new("tc")
            .args(["filter", "del", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", &prio])
            .status();
        if !deleted.is_ok_and(|s| s.success()) && !thread::panicking() {
            panic!("could not restore the link on port {}", self.port);
        }
    }
}

/// The local (source) port of process `pid`'s established TCP connection to port `peer_port`:
/// what to cut to vanish that one client. Found with `ss -tnp`, which lists each socket's owner.
pub fn source_port(pid: u32, peer_port: u16) -> u16 {
    let owner = format!("pid={pid},");
    // The client prints "connected" after its handshake, so the socket is there; looking again
    // for a second (what 50 tries 20 ms apart used to give) only covers a busy machine.
    let found = try_until(Duration::from_secs(1), || {
        let table = output("ss -Htnp state established");
        // With a state filter the columns are: Recv-Q Send-Q Local Peer Process.
        table.lines().filter(|l| l.contains(&owner)).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            (fields.len() >= 5 && port_of(fields[3]) == Some(peer_port)).then(|| port_of(fields[2])).flatten()
        })
    });
    found.unwrap_or_else(|| {
        panic!("process {pid} has no connection to port {peer_port}: {}", output("ss -tnp"))
    })
}
