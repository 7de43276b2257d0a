//! Relay benchmark: one-way chat latency, burst throughput and the relay's peak memory, each next
//! to a baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench relay                 # default sizes, about 20 s
//! cargo bench --bench relay -- --quick      # smaller counts, a smoke run
//! ```
//!
//! - The relay is the real `server` binary, started on a free loopback port, so its peak RSS can
//!   be read from `/proc/PID/status` (VmHWM).
//! - Latency: two connections in one room play ping-pong with one message in flight; one-way
//!   latency is half of each round trip. The baseline plays the same frames over one direct TCP
//!   connection (no relay in between).
//! - Throughput: one connection sends a burst of small messages as fast as it can; we time until
//!   the other has read the last one. Same baseline.
//! - "raw" clients speak frames directly on the socket (what a benchmark of the relay should
//!   measure); the "library" row goes through `relaychat::client::Client`, whose send queue and
//!   reader thread add two thread hand-offs per direction.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{rss_kib, start_relay, UNLIMITED_RATES};
use relaychat::client::{Client, Event};
use relaychat::frame::{encode_to_vec, Frame};
use relaychat::wire::FrameReader;

struct Sizes {
    warmup: usize,
    round_trips: usize,
    burst: usize,
}

/// Latency is measured in this many interleaved rounds (direct, relay, relay without polling,
/// library...), and the samples of each kind are pooled: where the kernel happens to place threads
/// varies from run to run, and interleaving spreads that luck evenly over all kinds.
const ROUNDS: usize = 3;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes { warmup: 200, round_trips: 1_000, burst: 20_000 }
    } else {
        Sizes { warmup: 1_000, round_trips: 10_000, burst: 200_000 }
    };
    println!(
        "relaychat relay benchmark (loopback, {ROUNDS} rounds x {} round trips, burst of {})",
        sizes.round_trips, sizes.burst
    );

    let data = std::env::temp_dir().join(format!("relaychat-bench-relay-{}", std::process::id()));
    let (dir_a, dir_b) = (data.join("a"), data.join("b"));
    // The rate limits are off: a burst through the relay measures the relay, not the limits.
    // Raw-frame clients speak plaintext; the library clients use TLS.
    let unlimited = [&UNLIMITED_RATES[..], &["--allow-plaintext"]].concat();
    let (relay, addr) = start_relay(&[&["--data-dir", dir_a.to_str().unwrap()][..], &unlimited].concat());
    let (still, still_addr) =
        start_relay(&[&["--spin-us", "0", "--data-dir", dir_b.to_str().unwrap()][..], &unlimited].concat());
    let idle_kib = rss_kib(relay.0.id(), "VmRSS");

    let (mut direct, mut relayed, mut sleepy, mut library) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (a, b) = direct_pair();
        direct.extend(latency(a, b, &sizes));
        let (a, b) = relay_pair(&addr);
        relayed.extend(latency(a, b, &sizes));
        let (a, b) = relay_pair(&still_addr);
        sleepy.extend(latency(a, b, &sizes));
        library.extend(library_latency(&addr, &sizes));
    }
    let direct = percentiles(direct);

    let (a, b) = relay_pair(&addr);
    let relay_rate = throughput(a, b, sizes.burst);
    let (a, b) = direct_pair();
    let direct_rate = throughput(a, b, sizes.burst);

    let peak_kib = rss_kib(relay.0.id(), "VmHWM");
    drop(relay);
    drop(still);
    let _ = std::fs::remove_dir_all(&data);

    println!();
    println!("{:<40} {:>8} {:>8}", "one-way latency, one message in flight", "p50 µs", "p99 µs");
    print_lat("direct TCP (baseline)", &direct, None);
    print_lat("relay, raw frames", &percentiles(relayed), Some(&direct));
    print_lat("relay --spin-us 0, raw frames", &percentiles(sleepy), Some(&direct));
    print_lat("relay, library clients", &percentiles(library), Some(&direct));
    println!();
    println!("{:<40} {:>12}", "burst throughput, 32-byte messages", "msg/s");
    println!("{:<40} {:>12.0}", "direct TCP (baseline)", direct_rate);
    println!("{:<40} {:>12.0}   {:.2}x baseline", "relay", relay_rate, relay_rate / direct_rate);
    println!();
    println!("relay RSS: idle {idle_kib} KiB, peak {peak_kib} KiB (after all of the above)");
}

/// (p50, p99) one-way latency in microseconds.
type Lat = (f64, f64);

fn print_lat(label: &str, lat: &Lat, base: Option<&Lat>) {
    match base {
        None => println!("{:<40} {:>8.1} {:>8.1}", label, lat.0, lat.1),
        Some(b) => println!(
            "{:<40} {:>8.1} {:>8.1}   p50 {:.2}x, p99 {:.2}x baseline",
            label,
            lat.0,
            lat.1,
            lat.0 / b.0,
            lat.1 / b.1
        ),
    }
}

/// A framed connection for the raw measurements.
struct Conn {
    out: TcpStream,
    reader: FrameReader<TcpStream>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { out: stream.try_clone().unwrap(), reader: FrameReader::new(stream) }
    }
    fn send(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).unwrap();
    }
    fn recv(&mut self) -> Frame {
        self.reader.read_frame().unwrap().expect("a frame")
    }
}

/// Joins `room` as `name`. Each pair gets a room of its own, so that nobody starts with history.
fn join_raw(addr: &str, name: &str, room: &str) -> Conn {
    let mut conn = Conn::new(TcpStream::connect(addr).unwrap());
    let hello = Frame::hello(name, room);
    conn.send(&encode_to_vec(&hello).unwrap());
    assert!(matches!(conn.recv(), Frame::Welcome { .. }));
    assert!(matches!(conn.recv(), Frame::Online { .. }));
    conn
}

fn relay_pair(addr: &str) -> (Conn, Conn) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let room = format!("bench{n}");
    let mut a = join_raw(addr, &format!("a{n}"), &room);
    let b = join_raw(addr, &format!("b{n}"), &room);
    assert!(matches!(a.recv(), Frame::Joined { .. }));
    (a, b)
}

fn direct_pair() -> (Conn, Conn) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    (Conn::new(a), Conn::new(b))
}

fn percentiles(mut one_way_ns: Vec<u64>) -> Lat {
    one_way_ns.sort_unstable();
    let at = |p: f64| one_way_ns[((one_way_ns.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

/// Ping-pong with one message in flight. The echo side answers every frame it reads with the same
/// bytes, so the relay case and the direct case move identical frames.
fn latency(mut a: Conn, mut b: Conn, sizes: &Sizes) -> Vec<u64> {
    let ping = encode_to_vec(&Frame::say("ping ping ping ping")).unwrap();
    let total = sizes.warmup + sizes.round_trips;
    let echo_bytes = ping.clone();
    let echo = thread::spawn(move || {
        for _ in 0..total {
            b.recv();
            b.send(&echo_bytes);
        }
    });
    let mut samples = Vec::with_capacity(sizes.round_trips);
    for i in 0..total {
        let t = Instant::now();
        a.send(&ping);
        a.recv();
        if i >= sizes.warmup {
            samples.push(t.elapsed().as_nanos() as u64 / 2);
        }
    }
    echo.join().unwrap();
    samples
}

fn library_latency(addr: &str, sizes: &Sizes) -> Vec<u64> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let room = format!("benchlib{n}");
    let join = |name: &str| {
        let config = common::bench_config(name, room.as_str());
        let client = Client::connect_tcp(addr, &config).unwrap();
        assert!(matches!(client.events().recv().unwrap(), Event::Online { .. }));
        client
    };
    let a = join(&format!("liba{n}"));
    let b = join(&format!("libb{n}"));
    assert!(matches!(a.events().recv().unwrap(), Event::Joined { .. }));
    let total = sizes.warmup + sizes.round_trips;
    let echo = thread::spawn(move || {
        for _ in 0..total {
            b.events().recv().unwrap();
            b.send_text("pong pong pong pong").unwrap();
        }
        b.close();
    });
    let mut samples = Vec::with_capacity(sizes.round_trips);
    for i in 0..total {
        let t = Instant::now();
        a.send_text("ping ping ping ping").unwrap();
        a.events().recv().unwrap();
        if i >= sizes.warmup {
            samples.push(t.elapsed().as_nanos() as u64 / 2);
        }
    }
    echo.join().unwrap();
    a.close();
    samples
}

/// Messages per second from `a` to `b`, sent as fast as `a` can write.
fn throughput(mut a: Conn, mut b: Conn, count: usize) -> f64 {
    let msg = encode_to_vec(&Frame::say("a burst message of 32 bytes....")).unwrap();
    let started = Instant::now();
    let sender = thread::spawn(move || {
        // Batch 64 frames per write, as a buffered writer would.
        let batch: Vec<u8> = msg.iter().copied().cycle().take(msg.len() * 64).collect();
        for _ in 0..count / 64 {
            a.send(&batch);
        }
        a
    });
    for _ in 0..(count / 64) * 64 {
        b.recv();
    }
    let elapsed = started.elapsed();
    drop(sender.join().unwrap());
    ((count / 64) * 64) as f64 / elapsed.as_secs_f64()
}
