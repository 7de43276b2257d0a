//! # Lesson 2: a frame round trip, with no sockets at all
//!
//! Lesson 1's relay copied bytes as they came: fine for a pipe, useless as soon as a program must
//! know where one message ends and the next begins (a command, a file name, a file). TCP
//! delivers a stream of bytes, not messages. This lesson shows how relaychat draws message
//! boundaries on that stream: a 4-byte length, a kind byte, then the payload. Because the codec in
//! `src/frame.rs` works on plain byte slices, we can watch it work without any network.
//!
//! Run it:
//!
//! ```text
//! cargo run --example 02_frame_round_trip
//! ```
//!
//! Things to notice:
//! 1. The same text can never be mistaken for a command: the kind byte says what a frame is.
//! 2. Half a frame is not an error, just "need more bytes" (`Ok(None)`).
//! 3. A length above the limit is refused after reading only four bytes.

use relaychat::frame::{decode, encode, Frame, FrameError};

fn main() {
    // 1. Encode two frames back to back into one buffer, as they would travel on a socket.
    let hello = Frame::hello("alice", "lobby");
    let say = Frame::say("#sendFile#/etc/passwd 你好");
    let mut wire = Vec::new();
    encode(&hello, &mut wire).expect("small frames always encode");
    encode(&say, &mut wire).expect("small frames always encode");
    println!("{} bytes on the wire:", wire.len());
    for chunk in wire.chunks(16) {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        println!("  {}", hex.join(" "));
    }

    // 2. Decode them again, one at a time. `used` says how far to advance.
    let mut at = 0;
    while let Some((frame, used)) = decode(&wire[at..]).expect("valid bytes") {
        println!("decoded {used:>2} bytes -> {frame:?}");
        at += used;
    }
    println!("the text that looks like the seed's #sendFile# command is just text: the kind byte decides");

    // 3. Feed the first frame one byte at a time, as a slow network would.
    let first_len = wire.len() - relaychat::frame::encode_to_vec(&say).unwrap().len();
    let mut partial_results = 0;
    for cut in 0..first_len {
        if decode(&wire[..cut]).unwrap().is_none() {
            partial_results += 1;
        }
    }
    println!("{partial_results} of {first_len} prefixes said \"need more bytes\"; none was an error");

    // 4. A hostile length prefix: 4 GiB announced, refused before anything is allocated.
    match decode(&[0xff, 0xff, 0xff, 0xff]) {
        Err(FrameError::TooLarge { len, max }) => println!("refused a {len}-byte frame (limit {max})"),
        other => println!("unexpected: {other:?}"),
    }
}
