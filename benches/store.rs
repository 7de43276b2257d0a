//! Stored-message benchmark: what writing every message to SQLite costs, measured on disk and, in
//! the same run, with the database in memory (a RAM file system, /dev/shm) as the baseline.
//!
//! ```text
//! cargo bench --bench store
//! cargo bench --bench store -- --quick
//! ```
//!
//! For each relay (the real `server` binary):
//! - durable messages per second: 50 library clients in one room each send their messages as fast
//!   as they can, and the clock stops at the last `Sent` receipt (a receipt means "committed");
//! - offline delivery: 1,000 messages are sent while a member is away; then the time from that
//!   member's login to the 1,000th message arriving;
//! - memory: the relay's RSS with 1,000 accounts (and room members) on record, idle.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{rss_kib, start_relay, UNLIMITED_RATES};
use relaychat::client::{Client, Event, Mark};

struct Figures {
    durable_per_sec: f64,
    offline_login_ms: f64,
    rss_1000_users_kib: u64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let per_client = if quick { 40 } else { 200 };
    let disk = std::env::temp_dir().join(format!("relaychat-bench-store-{}", std::process::id()));
    let shm = Path::new("/dev/shm").join(format!("relaychat-bench-store-{}", std::process::id()));
    println!(
        "relaychat stored-message benchmark (50 clients x {per_client} messages, 1,000 offline, 1,000 users)"
    );
    let on_disk = measure(&disk, per_client);
    let in_memory = shm.parent().filter(|p| p.exists()).map(|_| measure(&shm, per_client));
    let _ = std::fs::remove_dir_all(&disk);
    let _ = std::fs::remove_dir_all(&shm);

    println!();
    println!("{:<48} {:>14} {:>14}", "", "disk", "memory (shm)");
    let mem = |f: fn(&Figures) -> String| in_memory.as_ref().map_or("n/a".to_string(), f);
    println!(
        "{:<48} {:>14} {:>14}",
        "durable messages/s (50 clients, receipts)",
        format!("{:.0}", on_disk.durable_per_sec),
        mem(|f| format!("{:.0}", f.durable_per_sec))
    );
    println!(
        "{:<48} {:>14} {:>14}",
        "login to 1,000th offline message (ms)",
        format!("{:.1}", on_disk.offline_login_ms),
        mem(|f| format!("{:.1}", f.offline_login_ms))
    );
    println!(
        "{:<48} {:>14} {:>14}",
        "relay RSS with 1,000 users on record (KiB)",
        on_disk.rss_1000_users_kib,
        mem(|f| f.rss_1000_users_kib.to_string())
    );
}

fn measure(dir: &Path, per_client: usize) -> Figures {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.to_str().unwrap();
    // 50 clients come from one address: past the per-address connection cap (16), lifted too.
    let flags = [&["--data-dir", data, "--max-per-address", "64"][..], &UNLIMITED_RATES].concat();
    let (relay, addr) = start_relay(&flags);
    let durable_per_sec = durable_rate(&addr, per_client);
    let offline_login_ms = offline_login(&addr);
    drop(relay);
    add_users(&dir.join("relay.db"), 1000);
    let (relay, _) = start_relay(&flags);
    thread::sleep(Duration::from_millis(300));
    let rss_1000_users_kib = rss_kib(relay.0.id(), "VmRSS");
    drop(relay);
    Figures { durable_per_sec, offline_login_ms, rss_1000_users_kib }
}

fn join(addr: &str, name: &str, room: &str, password: &str) -> Client {
    let mut config = common::bench_config(name, room);
    config.receipts = true;
    config.password = password.into();
    let client = Client::connect_tcp(addr, &config).expect("joins");
    assert!(matches!(client.events().recv().unwrap(), Event::Online { .. }));
    client
}

/// 50 clients flood one room; messages per second until the last receipt.
fn durable_rate(addr: &str, per_client: usize) -> f64 {
    let clients: Vec<Client> = (0..50).map(|i| join(addr, &format!("flood{i}"), "flood", "")).collect();
    let started = Instant::now();
    thread::scope(|s| {
        for client in &clients {
            s.spawn(move || {
                for n in 0..per_client {
                    client.send_with_id(n as u64 + 1, "", "a message of about forty bytes, stored").unwrap();
                }
                let mut receipts = 0;
                while receipts < per_client {
                    match client.events().recv_timeout(Duration::from_secs(60)).expect("receipts keep coming")
                    {
                        Event::Sent { .. } => receipts += 1,
                        Event::Disconnected(why) => panic!("{why}"),
                        _ => {}
                    }
                }
            });
        }
    });
    let rate = (50 * per_client) as f64 / started.elapsed().as_secs_f64();
    for client in clients {
        client.close();
    }
    rate
}

/// A member misses 1,000 messages; milliseconds from its login to the last of them.
fn offline_login(addr: &str) -> f64 {
    join(addr, "away", "offline", "pw").close(); // claims the name and the membership
    let sender = join(addr, "talker", "offline", "");
    for n in 0..1000u64 {
        sender.send_with_id(n + 1, "", "said while you were away").unwrap();
    }
    let mut receipts = 0;
    while receipts < 1000 {
        if let Event::Sent { .. } = sender.events().recv_timeout(Duration::from_secs(60)).unwrap() {
            receipts += 1;
        }
    }
    let started = Instant::now();
    let away = join(addr, "away", "offline", "pw");
    let mut got = 0;
    while got < 1000 {
        if let Event::Chat { mark: Mark::Offline, .. } =
            away.events().recv_timeout(Duration::from_secs(60)).unwrap()
        {
            got += 1;
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    away.close();
    sender.close();
    ms
}

/// Puts `count` accounts, each a member of a room, straight into the relay's database (with a
/// placeholder hash: hashing 1,000 real passwords would only measure argon2).
fn add_users(db: &Path, count: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..count {
        let name = format!("user{i}");
        conn.execute(
            "INSERT OR IGNORE INTO accounts (name, password_hash, created_ms) VALUES (?1, '$argon2id$placeholder', 0)",
            [&name],
        )
        .unwrap();
        conn.execute("INSERT OR IGNORE INTO members (room, name) VALUES ('lobby', ?1)", [&name]).unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
}
