//! # Lesson 7: what a packet capture sees, without TLS and with it
//!
//! The seed's author wrote that without encryption "a single packet capture shows what we are
//! chatting about". This lesson makes the capture itself: it starts a relay, puts a tiny
//! recording proxy in front of it (a man in the middle, played by us), and sends the same line
//! twice, once with `--plaintext` and once with TLS (the default). Then it prints what the
//! proxy saw.
//!
//! ```text
//! cargo run --example 07_watch_the_wire -- --demo
//! ```
//!
//! In plaintext the frame is right there: its length, its kind, the name and the text, byte for
//! byte as `docs/PROTOCOL.md` describes them. With TLS the proxy sees a handshake and then
//! records of noise. To watch the same with real tools, see the README ("Watching the wire"):
//! `tcpdump -i lo -A 'tcp port 21567'` or Wireshark on the loopback interface.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use relaychat::client::{Client, ClientConfig, Event, Security, Trust};
use relaychat::server::{Server, ServerConfig};

const LINE: &str = "meet me at the usual place";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() != Some("--demo") {
        eprintln!("usage: 07_watch_the_wire --demo   (starts its own relay on 127.0.0.1)");
        return Ok(());
    }
    // 1. A relay on a free loopback port, with a data dir of its own. It makes its TLS key on
    //    first start; `--allow-plaintext` (here: `allow_plaintext`) lets the lesson's first
    //    client in without TLS.
    let data_dir = std::env::temp_dir().join(format!("relaychat-lesson4-{}", std::process::id()));
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        allow_plaintext: true,
        ..ServerConfig::default()
    };
    let server = Server::bind(config)?;
    let relay = server.local_addr()?;
    let fingerprint = server.fingerprint().to_owned();
    let stop = server.shutdown_handle()?;
    let relay_thread = thread::spawn(move || server.run());
    println!("relay on {relay}, key fingerprint {fingerprint}");

    // 2. The man in the middle: accepts one connection at a time and copies both ways, keeping
    //    what the client sent.
    for (label, security) in [
        ("plaintext", Security::Plaintext),
        ("TLS", Security::Tls(Trust { fingerprint: Some(fingerprint.clone()), ..Trust::default() })),
    ] {
        let (proxy, captured) = record_one_connection(relay.to_string())?;
        let mut config = ClientConfig::new("alice", "lobby");
        config.security = security;
        let alice = Client::connect_tcp(&proxy, &config)?;
        // Wait for the online list, so the hello and welcome are behind us, then send the line.
        while !matches!(alice.events().recv_timeout(Duration::from_secs(5))?, Event::Online { .. }) {}
        alice.send_text(LINE)?;
        alice.close();
        thread::sleep(Duration::from_millis(200)); // let the proxy copy the last bytes
        let bytes = captured.lock().map_err(|_| "proxy panicked")?.clone();
        println!();
        println!("--- {label}: what alice sent, as the proxy saw it ({} bytes) ---", bytes.len());
        println!("{}", printable(&bytes));
        let readable = bytes.windows(LINE.len()).any(|w| w == LINE.as_bytes());
        println!(
            "the line {:?} is {}",
            LINE,
            if readable { "READABLE in the capture" } else { "not in the capture" }
        );
    }
    stop.shutdown();
    let _ = relay_thread.join();
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// Listens on a free port, forwards the first connection to `target`, and records what the
/// client sends. Returns the address to connect to and the recording.
fn record_one_connection(target: String) -> std::io::Result<(String, Arc<Mutex<Vec<u8>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let record = captured.clone();
    thread::spawn(move || -> std::io::Result<()> {
        let (mut client, _) = listener.accept()?;
        let mut relay = TcpStream::connect(target)?;
        // Relay → client, unrecorded, on a thread of its own.
        let (mut from_relay, mut to_client) = (relay.try_clone()?, client.try_clone()?);
        thread::spawn(move || std::io::copy(&mut from_relay, &mut to_client));
        // Client → relay, recorded.
        let mut buf = [0u8; 4096];
        loop {
            let n = client.read(&mut buf)?;
            if n == 0 {
                return relay.shutdown(std::net::Shutdown::Write);
            }
            record.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(&buf[..n]);
            relay.write_all(&buf[..n])?;
        }
    });
    Ok((addr, captured))
}

/// Bytes as a capture tool's ASCII column shows them: printable ASCII as is, the rest as `.`.
/// (Long captures are cut to their first 600 bytes.)
fn printable(bytes: &[u8]) -> String {
    let shown: String =
        bytes.iter().take(600).map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
    shown
        .as_bytes()
        .chunks(80)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
