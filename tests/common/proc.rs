//! Running the real `server` and `client` binaries from tests, with their output lines arriving on
//! channels so a test can wait for a line without hanging forever.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};

use super::{TempDir, WAIT};

/// A running binary with its output lines arriving on channels.
pub struct Proc {
    pub child: Child,
    /// The relay's data dir, removed when the process is gone.
    pub data_dir: Option<TempDir>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
}

impl Proc {
    pub fn spawn(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env_remove("RELAYCHAT_SERVER").env_remove("RELAYCHAT_NAME").env_remove("RELAYCHAT_BIND");
        // A client built with the `gui` feature opens a window when it sees a display; these tests
        // drive the terminal contract, so they hide the display.
        cmd.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY");
        // A terminal client whose relay goes away tries once more at once, then exits, unless a
        // test asks it to keep trying.
        cmd.env("RELAYCHAT_RECONNECT_FOR", "0");
        // Clients keep an identity secret in their config dir: never the real home's. Every
        // client of one test process shares one (they play "this machine"); a test that wants a
        // second machine passes its own RELAYCHAT_CONFIG_DIR in `envs`.
        cmd.env("RELAYCHAT_CONFIG_DIR", test_config_dir()).env("XDG_CONFIG_HOME", test_config_dir());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start binary");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        Proc { child, data_dir: None, stdin, stdout, stderr }
    }

    /// The relay binary on a free loopback port, with the shared test keys (see
    /// [`super::test_keys`]), TLS only.
    pub fn server() -> (Proc, String) {
        let data_dir = TempDir::new("bin");
        let dir = data_dir.path.to_string_lossy().into_owned();
        let mut args = vec!["--bind".to_string(), "127.0.0.1:0".into(), "--data-dir".into(), dir];
        args.extend(super::tls_flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Proc::spawn(env!("CARGO_BIN_EXE_server"), &args, &[]);
        server.data_dir = Some(data_dir);
        let line = server.expect(&server.stderr, "relay listening on ");
        let addr = line.rsplit(' ').next().unwrap().to_owned();
        (server, addr)
    }

    pub fn client(addr: &str, name: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["--server", addr, "--name", name];
        args.extend_from_slice(extra);
        let client = Proc::spawn(env!("CARGO_BIN_EXE_client"), &args, &[]);
        client.expect(&client.stdout, &format!("* connected to {addr} as {name} in "));
        client
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a line containing `needle` on `stream`; fails after [`WAIT`].
    pub fn expect(&self, stream: &Receiver<String>, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Ok(line) = stream.recv_deadline(deadline) {
            if line.contains(needle) {
                return line;
            }
            seen.push(line);
        }
        panic!("no line containing {needle:?}; saw {seen:#?}");
    }

    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The config dir the binaries of this test process use, under the system temp dir.
pub fn test_config_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("relaychat-test-{}-config", std::process::id()))
}
