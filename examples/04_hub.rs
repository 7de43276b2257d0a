//! # Lesson 4: one hub, N clients
//!
//! Lesson 1's relay gave each pair of sockets two threads that wrote into each other. With N
//! people that breaks down: N threads writing into one socket interleave their frames, and who
//! keeps the list of who is here? The relay's answer, in miniature:
//!
//! ```text
//!  reader thread ─┐                               ┌─▶ queue (bounded) ─▶ writer thread ─▶ socket
//!  reader thread ─┼─▶ to_hub (bounded) ─▶ HUB ────┼─▶ queue (bounded) ─▶ writer thread ─▶ socket
//!  reader thread ─┘      one thread owns the map  └─▶ queue (bounded) ─▶ writer thread ─▶ socket
//! ```
//!
//! - Each connection has a **reader** (socket → frames → the hub) and a **writer** (its own queue
//!   → socket). Only the writer ever writes to its socket, so frames never interleave.
//! - One **hub** thread owns the map of who is here. Nobody else touches it: no locks.
//! - The hub never blocks on a client: it uses `try_send`. If one client's queue is full (it
//!   stopped reading), the hub drops that frame *for that client* and goes on serving everyone
//!   else. (Lesson 6 does better than dropping: a backlog and a time limit.)
//!
//! ```text
//! cargo run --example 04_hub -- --demo
//! ```
//!
//! The real thing is `src/server/hub/mod.rs` (rooms, accounts, files: the same shape, more arms).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use relaychat::frame::{encode_to_vec, Frame};
use relaychat::wire::FrameReader;

/// What the readers tell the hub.
enum ToHub {
    Joined { id: u64, name: String, queue: Sender<Vec<u8>> },
    Said { id: u64, text: String },
    Left { id: u64 },
}

/// The hub: the only owner of the map of clients. Runs until every reader is gone.
fn hub(events: Receiver<ToHub>) {
    let mut clients: HashMap<u64, (String, Sender<Vec<u8>>)> = HashMap::new();
    for event in events {
        match event {
            ToHub::Joined { id, name, queue } => {
                println!("hub: {name} joined ({} here now)", clients.len() + 1);
                clients.insert(id, (name, queue));
            }
            ToHub::Said { id, text } => {
                let from = clients.get(&id).map(|(name, _)| name.clone()).unwrap_or_default();
                let chat = Frame::Chat { id: 0, from, to: String::new(), sent_at_ms: 0, mark: 0, text };
                let Ok(bytes) = encode_to_vec(&chat) else { continue };
                for (other, (name, queue)) in &clients {
                    if *other == id {
                        continue;
                    }
                    // Never `send`: one client that stopped reading would freeze everyone.
                    match queue.try_send(bytes.clone()) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            println!("hub: {name} is not reading; dropped a line for them")
                        }
                        Err(TrySendError::Disconnected(_)) => {} // its writer ended; `Left` follows
                    }
                }
            }
            ToHub::Left { id } => {
                if let Some((name, _queue)) = clients.remove(&id) {
                    // Dropping the queue's sender is how the writer learns to finish.
                    println!("hub: {name} left");
                }
            }
        }
    }
}

/// One connection: say hello, start the writer, then read frames until the client goes.
fn serve(id: u64, stream: TcpStream, to_hub: Sender<ToHub>) -> std::io::Result<()> {
    let write_half = stream.try_clone()?;
    let mut reader = FrameReader::new(stream);
    let Ok(Some(Frame::Hello { name, .. })) = reader.read_frame() else { return Ok(()) };
    let (queue, from_hub) = bounded::<Vec<u8>>(16);
    let writer = thread::spawn(move || {
        let mut out = BufWriter::new(write_half);
        for bytes in from_hub {
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let _ = to_hub.send(ToHub::Joined { id, name, queue });
    while let Ok(Some(frame)) = reader.read_frame() {
        if let Frame::Say { text, .. } = frame {
            let _ = to_hub.send(ToHub::Said { id, text });
        }
    }
    let _ = to_hub.send(ToHub::Left { id });
    let _ = writer.join();
    Ok(())
}

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() != Some("--demo") {
        eprintln!("usage: 04_hub --demo   (a hub on 127.0.0.1 with three built-in clients)");
        return Ok(());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (to_hub, events) = bounded::<ToHub>(64);
    let hub_thread = thread::spawn(move || hub(events));
    let acceptor = thread::spawn(move || {
        let mut readers = Vec::new();
        for (id, stream) in listener.incoming().take(3).enumerate() {
            let to_hub = to_hub.clone();
            let stream = stream.expect("accept");
            readers.push(thread::spawn(move || serve(id as u64, stream, to_hub)));
        }
        readers // `to_hub` is dropped here: once the readers end, the hub ends too
    });

    // Three people: each says one line, and prints what it hears from the others.
    let people: Vec<_> = ["alice", "bob", "carol"]
        .iter()
        .map(|name| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(&encode_to_vec(&Frame::hello(name, "lobby")).unwrap()).unwrap();
            (name.to_string(), stream)
        })
        .collect();
    thread::sleep(Duration::from_millis(200)); // everyone has joined
    for (name, stream) in &people {
        let mut stream = stream;
        stream.write_all(&encode_to_vec(&Frame::say(&format!("hello from {name}"))).unwrap()).unwrap();
    }
    for (name, stream) in &people {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = FrameReader::new(stream.try_clone()?);
        for _ in 0..2 {
            if let Ok(Some(Frame::Chat { from, text, .. })) = reader.read_frame() {
                println!("{name} heard {from}: {text}");
            }
        }
    }
    drop(people); // everyone leaves: the readers see EOF
    for reader in acceptor.join().expect("acceptor") {
        let _ = reader.join();
    }
    hub_thread.join().expect("hub");
    println!("all threads joined");
    Ok(())
}
