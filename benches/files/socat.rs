//! The baselines: socat moving the same file over loopback, plaintext and TLS, in both directions.
//!
//! socat is a byte relay with no protocol and no hashing: what "as fast as a relay can be" looks
//! like on this machine, measured in the same run as relaychat so both meet the same machine.
//! The two directions mirror relaychat's: *upload* has the listening side write the file (the
//! relay storing an upload), *download* has the listening side read it (the relay serving one).
//! socat runs with its defaults (8 KiB buffers); TLS is whatever OpenSSL negotiates with itself
//! (TLS 1.3, AES-256-GCM on this machine), with a certificate the benchmark makes.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Plaintext or TLS: which socat addresses to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wire {
    Plain,
    Tls,
}

/// Which way the bytes go, seen from the listening side (the "relay").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Way {
    /// The client sends the file, the listener writes it.
    Up,
    /// The listener sends the file, the client writes it.
    Down,
}

/// socat and the certificate it serves TLS with.
pub struct Socat {
    cert: PathBuf,
    key: PathBuf,
}

impl Socat {
    /// `None` (after a visible SKIP line) when socat is not installed.
    pub fn find(work: &Path) -> Option<Socat> {
        let found = Command::new("socat").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            println!("SKIP baseline socat: not installed");
            return None;
        }
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a test certificate");
        let (cert, key) = (work.join("socat-cert.pem"), work.join("socat-key.pem"));
        fs::write(&cert, made.cert.pem()).unwrap();
        fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Some(Socat { cert, key })
    }

    /// Seconds to move `source` into `target` through a socat listener and a socat client, and
    /// the CPU seconds both used.
    pub fn time(&self, wire: Wire, way: Way, source: &Path, target: &Path) -> (f64, f64) {
        let port = free_port();
        let listen = match wire {
            Wire::Plain => format!("TCP-LISTEN:{port},reuseaddr,bind=127.0.0.1"),
            Wire::Tls => format!(
                "OPENSSL-LISTEN:{port},reuseaddr,bind=127.0.0.1,cert={},key={},verify=0",
                self.cert.display(),
                self.key.display()
            ),
        };
        let connect = match wire {
            Wire::Plain => format!("TCP:127.0.0.1:{port}"),
            Wire::Tls => format!("OPENSSL:127.0.0.1:{port},verify=0"),
        };
        let read = format!("OPEN:{}", source.display());
        let write = format!("CREATE:{}", target.display());
        let (server_args, client_args) = match way {
            Way::Up => ([listen, write], [read, connect]),
            Way::Down => ([read, listen], [connect, write]),
        };
        let server = socat(&server_args);
        wait_listening(port);
        let started = Instant::now();
        let client = socat(&client_args);
        let (client_ok, client_cpu) = crate::wait_with_cpu(client);
        let (server_ok, server_cpu) = crate::wait_with_cpu(server);
        let secs = started.elapsed().as_secs_f64();
        assert!(client_ok && server_ok, "socat {wire:?} {way:?} failed");
        let size = fs::metadata(source).unwrap().len();
        assert_eq!(fs::metadata(target).map(|m| m.len()).unwrap_or(0), size, "socat copied everything");
        let _ = fs::remove_file(target);
        (secs, client_cpu + server_cpu)
    }
}

fn socat(args: &[String]) -> std::process::Child {
    Command::new("socat")
        .arg("-u")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start socat")
}

/// A port that was free a moment ago (socat binds it with `reuseaddr`).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Waits (at most 5 s) until something listens on 127.0.0.1:`port`, by reading /proc/net/tcp:
/// connecting to find out would use up socat's one accept.
fn wait_listening(port: u16) {
    let wanted = format!("0100007F:{port:04X}");
    for _ in 0..1000 {
        let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let listening = table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A")
        });
        if listening {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("socat did not start listening on port {port}");
}
