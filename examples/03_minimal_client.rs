//! # Lesson 3: a minimal relaychat client that sends one message
//!
//! No threads, no library client: just a `TcpStream` and the frame codec, so every step of the
//! protocol is visible. Say hello, wait for the welcome, send one line, say goodbye.
//!
//! The lesson speaks frames in the clear, so the relay must allow plaintext (relays speak only TLS
//! unless told otherwise; lesson 4 shows why). Start a relay in one terminal and run this in
//! another:
//!
//! ```text
//! cargo run --release --bin server -- --allow-plaintext
//! cargo run --example 03_minimal_client -- 127.0.0.1:21567 alice "hello from lesson 3"
//! ```
//!
//! Anyone in the `lobby` room (for example `cargo run --bin client -- --name bob`) sees the line.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use relaychat::frame::{encode_to_vec, Frame};
use relaychat::wire::FrameReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:21567".into());
    let name = args.next().unwrap_or_else(|| "lesson3".into());
    let text = args.next().unwrap_or_else(|| "hello from lesson 3".into());

    // 1. Connect. TCP_NODELAY sends small frames at once instead of waiting to batch them.
    let mut stream = TcpStream::connect(&server)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?; // never hang on a silent server

    // 2. Hello: who we are and which room (as a guest: no account password). The server answers
    //    Welcome or Error.
    let hello = Frame::hello(&name, "lobby");
    stream.write_all(&encode_to_vec(&hello)?)?;
    let mut reader = FrameReader::new(stream.try_clone()?);
    match reader.read_frame()? {
        Some(Frame::Welcome { name, room }) => println!("welcome: we are {name} in {room}"),
        Some(Frame::Error { message, .. }) => return Err(format!("refused: {message}").into()),
        other => return Err(format!("unexpected answer: {other:?}").into()),
    }

    // 3. One message, then goodbye. Both are frames; the relay stamps the time and the sender.
    stream.write_all(&encode_to_vec(&Frame::say(&text))?)?;
    stream.write_all(&encode_to_vec(&Frame::Goodbye)?)?;
    println!("sent: {text}");

    // 4. Read until the relay closes: whatever it sent us (the online list) is printed.
    while let Some(frame) = reader.read_frame()? {
        println!("relay says: {frame:?}");
    }
    println!("closed");
    Ok(())
}
