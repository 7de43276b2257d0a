//! The one way the tests start the real `server` binary: [`RelayOptions`] says how, [`Relay`] is
//! the running process, killed (and its own data dir removed) on drop.
//!
//! Every test that runs the relay as a process wants the same few things, in different mixes:
//!
//! | option | default | who changes it |
//! | --- | --- | --- |
//! | [`RelayOptions::bind`] | `127.0.0.1:0` (a free port) | a restart on the port clients expect |
//! | [`RelayOptions::data_dir`] | a fresh temp dir, removed with the relay | a restart on the same records |
//! | [`RelayOptions::keys`] | the process's shared test keys, TLS only | raw-frame tests ([`Keys::SharedAndPlaintext`]), first-start tests ([`Keys::Own`]) |
//! | [`RelayOptions::flag`] | none | limits and timeouts under test |
//! | [`RelayOptions::env`] | none (`RELAYCHAT_*` from the caller's shell removed) | passwords given in the environment |
//! | [`RelayOptions::nofile`] | the inherited fd limit | fd exhaustion |
//! | [`RelayOptions::skip_unknown_flags`] | unknown flags fail the start | attacks that must still run on an older relay |
//! | [`RelayOptions::tail_only`] | every log line on [`Relay::log`] | floods, whose logs would fill the test's memory |
//!
//! Starting means waiting for the relay's `relay listening on ADDR` line (with a time limit), so
//! a test never races the relay's bind. The log (stderr) is read by a thread of our own from the
//! first line: a relay whose stderr pipe filled would block. (A relay in a test's private network
//! namespace, `tests/common/netns.rs`, is started the same way: the namespace is the whole test
//! process's, so its address is still `127.0.0.1`.)

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::{exits_within, expect_line, TempDir, WAIT};

/// The relay binary that cargo built for these tests.
pub const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// The line the relay logs once it accepts connections; its last word is the address.
const LISTENING: &str = "relay listening on ";

/// Lines of the relay's log kept for failure messages (see [`Relay::log_tail`]).
const TAIL_LINES: usize = 300;

/// Which TLS keys the relay uses, and whether it also speaks plaintext.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keys {
    /// The keys every relay of this test process shares ([`super::test_keys`]), TLS only.
    #[default]
    Shared,
    /// The shared keys, and plaintext too (`--allow-plaintext`): for tests that speak raw frames.
    SharedAndPlaintext,
    /// None given: the relay makes its own in its data dir, as on a first start in the wild.
    Own,
}

/// How to start a relay; see the module doc for each option and who uses it.
#[derive(Clone)]
pub struct RelayOptions {
    bind: String,
    data_dir: Option<PathBuf>,
    keys: Keys,
    flags: Vec<(String, String)>,
    envs: Vec<(String, String)>,
    nofile: Option<u64>,
    skip_unknown_flags: bool,
    tail_only: bool,
    start_within: Duration,
}

impl Default for RelayOptions {
    fn default() -> RelayOptions {
        RelayOptions {
            bind: "127.0.0.1:0".into(),
            data_dir: None,
            keys: Keys::Shared,
            flags: Vec::new(),
            envs: Vec::new(),
            nofile: None,
            skip_unknown_flags: false,
            tail_only: false,
            start_within: WAIT,
        }
    }
}

impl RelayOptions {
    /// A relay on a free loopback port, with a fresh data dir and the shared keys, TLS only.
    pub fn new() -> RelayOptions {
        RelayOptions::default()
    }

    /// What the attack tests (`abuse_*`, `tls_*_attacks`, `review_*`) use: plaintext too (the
    /// attacks speak raw frames; bystanders use TLS), flags this relay build lacks left out, only
    /// the log's tail kept, and 20 s to start (the machine may be busy with an earlier attack).
    pub fn for_attacks() -> RelayOptions {
        RelayOptions {
            keys: Keys::SharedAndPlaintext,
            skip_unknown_flags: true,
            tail_only: true,
            start_within: Duration::from_secs(20),
            ..RelayOptions::default()
        }
    }

    /// Listens on `addr` (`--bind`), e.g. the port an earlier relay had, to come back where
    /// clients expect it.
    pub fn bind(mut self, addr: impl ToString) -> RelayOptions {
        self.bind = addr.to_string();
        self
    }

    /// Uses `dir` (which must exist, and is not removed) as the data dir.
    pub fn data_dir(mut self, dir: &Path) -> RelayOptions {
        self.data_dir = Some(dir.to_owned());
        self
    }

    pub fn keys(mut self, keys: Keys) -> RelayOptions {
        self.keys = keys;
        self
    }

    /// `--name value`.
    pub fn flag(mut self, name: &str, value: impl ToString) -> RelayOptions {
        self.flags.push((name.to_owned(), value.to_string()));
        self
    }

    /// An environment variable for the relay.
    pub fn env(mut self, name: &str, value: &str) -> RelayOptions {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts the relay with `RLIMIT_NOFILE` soft and hard limits of `n`.
    pub fn nofile(mut self, n: u64) -> RelayOptions {
        self.nofile = Some(n);
        self
    }

    /// Leaves out (and lists in [`Relay::missing_flags`]) flags this relay build has no such
    /// option for, so an attack test fails on the attack rather than on clap.
    pub fn skip_unknown_flags(mut self) -> RelayOptions {
        self.skip_unknown_flags = true;
        self
    }

    /// Keeps only the last lines of the log (for [`Relay::log_tail`]); nothing arrives on
    /// [`Relay::log`].
    pub fn tail_only(mut self) -> RelayOptions {
        self.tail_only = true;
        self
    }

    /// Starts the relay and waits for it to listen; fails the test, with the relay's log, if it
    /// does not.
    pub fn start(self) -> Relay {
        self.try_start().unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts the relay and waits for it to listen; why not (with its log), if it exits first
    /// (its port still taken, say) or stays silent too long.
    pub fn try_start(self) -> Result<Relay, String> {
        let data_dir = match &self.data_dir {
            Some(path) => DataDir::Given(path.clone()),
            None => DataDir::Own(TempDir::new("relay")),
        };
        let (args, missing_flags) = self.args(data_dir.path());
        if !missing_flags.is_empty() {
            println!("relay: this build has no {}; running without", missing_flags.join(", "));
        }
        let mut child = self.command(&args).spawn().expect("start the relay binary");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (to_test, log) = unbounded();
        let (listening_tx, listening) = crossbeam_channel::bounded(1);
        let stderr = child.stderr.take().expect("piped stderr");
        let forward = (!self.tail_only).then_some(to_test);
        let ring = tail.clone();
        thread::spawn(move || read_log(stderr, &ring, forward, &listening_tx));
        let addr = match listening.recv_timeout(self.start_within) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100)); // the log reader's last lines
                let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
                return Err(format!("the relay did not start with {args:?}; its log:\n{}", tail.join("\n")));
            }
        };
        Ok(Relay { child, addr, log, tail, data_dir, missing_flags, options: self })
    }

    /// The command line: bind, data dir, keys, then the flags (those this build knows, if asked).
    fn args(&self, data_dir: &Path) -> (Vec<String>, Vec<String>) {
        let mut args =
            vec!["--bind".into(), self.bind.clone(), "--data-dir".into(), data_dir.display().to_string()];
        if self.keys != Keys::Own {
            args.extend(super::tls_flags());
        }
        if self.keys == Keys::SharedAndPlaintext {
            args.push("--allow-plaintext".into());
        }
        let mut missing = Vec::new();
        for (name, value) in &self.flags {
            if self.skip_unknown_flags && !known_flags().contains(name) {
                missing.push(name.clone());
            } else {
                args.extend([name.clone(), value.clone()]);
            }
        }
        (args, missing)
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(SERVER);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // Settings from the shell running the tests must not change the relay under test.
        for var in ["RELAYCHAT_BIND", "RELAYCHAT_DATA_DIR", "RELAYCHAT_ACCESS_PASSWORD"] {
            cmd.env_remove(var);
        }
        // The tests read its `info` log (the listening line, resumes, idle closes), whatever
        // RUST_LOG says.
        cmd.env("RUST_LOG", "info");
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(n) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }
}

/// The log reader's thread: keeps the tail, forwards each line (unless tail only) and reports the
/// listening address once. Ends when the relay closes its stderr (it exited).
fn read_log(
    stderr: impl io::Read,
    tail: &Mutex<VecDeque<String>>,
    forward: Option<Sender<String>>,
    listening: &Sender<SocketAddr>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        if let Some(at) = line.find(LISTENING) {
            let addr = line[at + LISTENING.len()..].trim().parse().expect("the relay logs its address");
            let _ = listening.try_send(addr);
        }
        {
            let mut tail = tail.lock().unwrap();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        if let Some(to_test) = &forward {
            // The test may have dropped its relay (and receiver) already; keep draining the pipe.
            let _ = to_test.send(line);
        }
    }
}

/// The flags this build of the relay accepts: the first word of each option line of `--help`.
fn known_flags() -> &'static Vec<String> {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let out = Command::new(SERVER).arg("--help").output().expect("run server --help");
        let help = String::from_utf8_lossy(&out.stdout);
        help.lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let line = match line.split_once(", ") {
                    Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                    _ => line,
                };
                let first = line.split_whitespace().next()?;
                first.starts_with("--").then(|| first.trim_end_matches(',').to_owned())
            })
            .collect()
    })
}

/// The relay's data dir: its own (removed with it) or one the test gave it.
enum DataDir {
    Own(TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Own(dir) => &dir.path,
            DataDir::Given(path) => path,
        }
    }
}

/// A running `server` binary. Killed, and its own data dir removed, on drop.
pub struct Relay {
    pub child: Child,
    /// Where it listens, from its log.
    pub addr: SocketAddr,
    /// Every line of its log, from the first (empty with [`RelayOptions::tail_only`]).
    pub log: Receiver<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
    data_dir: DataDir,
    /// Flags the options asked for that this relay build does not have (see
    /// [`RelayOptions::skip_unknown_flags`]).
    pub missing_flags: Vec<String>,
    options: RelayOptions,
}

impl Relay {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Hands the relay's own data dir to the test, which then outlives this relay (for another
    /// relay to start on).
    pub fn take_data_dir(&mut self) -> TempDir {
        let path = self.data_dir.path().to_owned();
        match std::mem::replace(&mut self.data_dir, DataDir::Given(path)) {
            DataDir::Own(dir) => dir,
            DataDir::Given(path) => panic!("the relay's data dir {} is not its own", path.display()),
        }
    }

    /// Waits for a log line containing `needle`; fails after [`WAIT`], listing the lines seen.
    pub fn expect(&self, needle: &str) -> String {
        expect_line(&self.log, "the relay", needle, WAIT)
    }

    /// Sends SIGTERM: the relay says goodbye to its clients and exits.
    pub fn terminate(&self) {
        // SAFETY: the pid is our own child, not yet waited for.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
    }

    /// SIGKILL: no goodbye, no flush, no cleanup; reaped at once.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("reap the relay");
    }

    /// Waits for the relay to exit; fails after [`WAIT`].
    pub fn wait(&mut self) -> ExitStatus {
        exits_within(&mut self.child, WAIT)
            .unwrap_or_else(|| panic!("the relay did not exit within {WAIT:?}"))
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        self.terminate();
        if exits_within(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Stops this relay ([`Relay::stop`]) and starts a new one in its place, with the same
    /// options and data dir (on a new port, unless the options bind a fixed one).
    pub fn restart(&mut self) {
        self.stop();
        let mut next = self.options.clone().data_dir(self.data_dir()).start();
        // The new relay takes over the data dir as the old one held it (its own, or given), and
        // the options as given; the old relay, dropped here, then removes nothing.
        std::mem::swap(&mut next.data_dir, &mut self.data_dir);
        next.options = self.options.clone();
        *self = next;
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Open file descriptors of the relay process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Threads of the relay process (0 once it is gone).
    pub fn thread_count(&self) -> usize {
        threads_of(self.pid())
    }

    /// The last `n` lines of the relay's log.
    pub fn log_tail(&self, n: usize) -> String {
        let tail = self.tail.lock().unwrap();
        let skip = tail.len().saturating_sub(n);
        tail.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Threads of process `pid`, from `/proc/<pid>/status` (0 once it is gone).
pub fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}
