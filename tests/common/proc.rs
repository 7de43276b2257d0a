//! Running the real `client` binary (and any other one-shot command, such as `server
//! --fingerprint`) from tests, with its output lines arriving on channels so a test can wait for a
//! line without hanging forever. The relay itself is started by `tests/common/relay.rs`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;

use crossbeam_channel::{unbounded, Receiver};

use super::{exits_within, expect_line, WAIT};

/// A running binary with its output lines arriving on channels.
pub struct Proc {
    pub child: Child,
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
        Proc { child, stdin, stdout, stderr }
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
        expect_line(stream, "the process", needle, WAIT)
    }

    /// Waits for the process to exit; fails after [`WAIT`].
    pub fn wait(&mut self) -> ExitStatus {
        exits_within(&mut self.child, WAIT)
            .unwrap_or_else(|| panic!("the process did not exit within {WAIT:?}"))
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
