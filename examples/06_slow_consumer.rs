//! # Lesson 6: the client that stops reading
//!
//! In lesson 4 the hub dropped a line for a client whose queue was full. The relay cannot drop
//! chat (people would miss lines), and it cannot wait either (one frozen laptop would freeze the
//! room). Its answer, shown here with one frozen client and one healthy one:
//!
//! - When a client's queue is full, the hub keeps the frame in that client's own **backlog**
//!   (in order), and retries on every turn of its loop, still never blocking.
//! - If the queue makes **no progress for a time limit** (here 500 ms; the relay's is 5 s), or
//!   the backlog grows past a byte limit, that client is cut: its queue and backlog are dropped,
//!   which frees the memory, and its socket is shut.
//! - Everyone else never notices.
//!
//! ```text
//! cargo run --example 06_slow_consumer -- --demo
//! ```
//!
//! The real thing: `retry_backlogs` and `cut_too_slow` in `src/server/hub/mod.rs`, and the
//! byte limits in `src/server/hub/meter.rs`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender, TrySendError};

const STALL_LIMIT: Duration = Duration::from_millis(500);

/// What the hub keeps per client.
struct Client {
    name: &'static str,
    queue: Sender<Vec<u8>>,
    backlog: VecDeque<Vec<u8>>,
    last_progress: Instant,
    socket: TcpStream,
}

impl Client {
    /// Queues a line without blocking: straight into the queue, or behind the backlog.
    fn push(&mut self, line: Vec<u8>) {
        if self.backlog.is_empty() {
            match self.queue.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(line)) | Err(TrySendError::Disconnected(line)) => {
                    self.backlog.push_back(line);
                    self.last_progress = Instant::now();
                }
            }
        } else {
            self.backlog.push_back(line);
        }
    }

    /// Moves what fits from the backlog into the queue. False when stuck past the limit.
    fn retry(&mut self) -> bool {
        while let Some(line) = self.backlog.pop_front() {
            match self.queue.try_send(line) {
                Ok(()) => self.last_progress = Instant::now(),
                Err(TrySendError::Full(line)) | Err(TrySendError::Disconnected(line)) => {
                    self.backlog.push_front(line);
                    break;
                }
            }
        }
        self.backlog.is_empty() || self.last_progress.elapsed() < STALL_LIMIT
    }
}

/// A client's writer thread: its queue into its socket.
fn writer(mut socket: TcpStream, from_hub: crossbeam_channel::Receiver<Vec<u8>>) {
    for line in from_hub {
        if socket.write_all(&line).is_err() {
            break;
        }
    }
}

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() != Some("--demo") {
        eprintln!("usage: 06_slow_consumer --demo");
        return Ok(());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let healthy_end = TcpStream::connect(addr)?;
    let frozen_end = TcpStream::connect(addr)?; // never reads: a laptop whose lid closed
                                                // Small kernel buffers, so that "not reading" shows within a second rather than after the
                                                // megabytes Linux would otherwise buffer on loopback.
    socket2::SockRef::from(&frozen_end).set_recv_buffer_size(32 * 1024)?;
    let mut clients = Vec::new();
    for name in ["healthy", "frozen"] {
        let (socket, _) = listener.accept()?;
        socket2::SockRef::from(&socket).set_send_buffer_size(32 * 1024)?;
        let (queue, from_hub) = bounded(8);
        let write_half = socket.try_clone()?;
        thread::spawn(move || writer(write_half, from_hub));
        clients.push(Client { name, queue, backlog: VecDeque::new(), last_progress: Instant::now(), socket });
    }
    // The healthy client reads everything and notes the longest gap between two lines.
    let reader = thread::spawn(move || {
        let (mut socket, mut buf) = (healthy_end, vec![0u8; 64 * 1024]);
        let (mut last, mut worst, mut bytes) = (Instant::now(), Duration::ZERO, 0usize);
        while let Ok(n) = socket.read(&mut buf) {
            if n == 0 {
                break;
            }
            worst = worst.max(last.elapsed());
            last = Instant::now();
            bytes += n;
        }
        (bytes, worst)
    });
    // The hub: one 1 KiB line for everyone every millisecond, for 1.5 s.
    let line = vec![b'x'; 1024];
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        for client in &mut clients {
            client.push(line.clone());
        }
        clients.retain_mut(|client| {
            let keep = client.retry();
            if !keep {
                println!(
                    "hub: {} made no progress for {STALL_LIMIT:?} ({} lines held back): cut after {:?}",
                    client.name,
                    client.backlog.len(),
                    started.elapsed()
                );
                let _ = client.socket.shutdown(Shutdown::Both); // its writer's write fails and ends
            }
            keep // dropping the client drops its queue and backlog: the memory comes back
        });
        thread::sleep(Duration::from_millis(1));
    }
    drop(clients); // the hub is done: the writers finish
    let (bytes, worst) = reader.join().expect("reader");
    println!("healthy client: got {} KiB; its longest wait between two lines was {worst:?}", bytes / 1024);
    drop(frozen_end);
    Ok(())
}
