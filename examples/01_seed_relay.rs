//! # Lesson 1: the seed's relay, in its pure form
//!
//! The original "501 chat" server accepted exactly two connections and started one thread per
//! direction: each thread reads from one socket and writes to the other. That is the whole idea of
//! a relay, and it fits in a few dozen lines. It also shows the design's limits, which the real
//! relay (`src/server.rs`) fixes:
//!
//! - a third person cannot join (there is no room for them);
//! - there are no message boundaries: bytes are copied as they come (fine for a pipe, useless for
//!   commands or files);
//! - when one side leaves, the other is simply cut off.
//!
//! Run it as a relay, then connect two terminals with `nc 127.0.0.1 21568`:
//!
//! ```text
//! cargo run --example 01_seed_relay -- 21568
//! ```
//!
//! Or let it demonstrate itself with two built-in clients on a free port:
//!
//! ```text
//! cargo run --example 01_seed_relay -- --demo
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

/// Pairs the first two connections and copies bytes both ways until either side closes.
fn relay_one_pair(listener: &TcpListener) -> io::Result<()> {
    let (a, a_addr) = listener.accept()?;
    println!("relay: user 1 is {a_addr}");
    let (b, b_addr) = listener.accept()?;
    println!("relay: user 2 is {b_addr}");

    // One thread per direction. Each owns a read handle to one socket and a write handle to the
    // other: `try_clone` gives a second handle to the same connection.
    let (mut a_read, mut b_write) = (a.try_clone()?, b.try_clone()?);
    let (mut b_read, mut a_write) = (b, a);
    let a_to_b = thread::spawn(move || forward(&mut a_read, &mut b_write));
    let b_to_a = thread::spawn(move || forward(&mut b_read, &mut a_write));
    // Join both: when one side closes, its thread shuts the other socket, which ends the other.
    let _ = a_to_b.join();
    let _ = b_to_a.join();
    println!("relay: both directions finished");
    Ok(())
}

/// Copies until EOF, then tells the other side we are done writing.
fn forward(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<u64> {
    let copied = io::copy(from, to);
    let _ = to.shutdown(Shutdown::Write);
    copied
}

fn main() -> io::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "21568".into());
    if arg == "--demo" {
        return demo();
    }
    let listener = TcpListener::bind(("0.0.0.0", arg.parse::<u16>().unwrap_or(21568)))?;
    println!("relay: listening on {}", listener.local_addr()?);
    relay_one_pair(&listener)
}

/// Starts the relay on a free loopback port and plays both users.
fn demo() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let relay = thread::spawn(move || relay_one_pair(&listener));

    let mut user1 = TcpStream::connect(addr)?;
    let user2 = TcpStream::connect(addr)?;
    user1.write_all("hello from user 1, 你好\n".as_bytes())?;
    user1.shutdown(Shutdown::Write)?; // user 1 is done talking

    let mut heard = String::new();
    BufReader::new(&user2).read_line(&mut heard)?;
    println!("user 2 heard: {}", heard.trim_end());
    user2.shutdown(Shutdown::Write)?;

    relay.join().expect("relay thread")?;
    Ok(())
}
