//! The loop inside every writer thread: two queues into one socket, urgent first.
//!
//! A connection carries two kinds of traffic. *Urgent* frames are small and someone is waiting for
//! them: chat, join notices, acknowledgements. *Bulk* frames are file chunks, up to 256 KiB each.
//! If both shared one FIFO queue, a line of chat typed during a 1 GiB download would wait behind
//! every chunk already queued. So each writer drains two bounded queues and always looks at the
//! urgent one first: a chat frame waits for at most the one chunk being written.
//!
//! The bulk queue is short (a few chunks), which is also what keeps memory flat during a transfer:
//! whoever produces chunks blocks until the socket has taken the previous ones.
//!
//! The loop ends when the urgent queue's senders are all gone and it is empty (the relay's hub
//! says "finish up" by dropping its sender), or when an *empty* buffer arrives on it (the client
//! says it that way, because its reader thread holds a sender too). No frame is ever empty: it has
//! at least its 4-byte length. A bulk queue whose senders are gone is simply ignored from then on.

use std::io::{self, Write};
use std::time::Duration;

use crossbeam_channel::{never, Receiver, Select, TryRecvError};

use crate::spin;

/// One thing to write.
enum Item<U> {
    Urgent(U),
    Bulk(Vec<u8>),
}

enum Polled<U> {
    Item(Item<U>),
    Empty,
    Finished,
}

/// Writes from both queues until the urgent queue is closed and drained. Flushes `out` whenever
/// both queues are momentarily empty (so a burst becomes few system calls, and a lone frame
/// still leaves at once) and before returning.
pub fn pump<W: Write, U: AsRef<[u8]>>(
    out: &mut W,
    urgent: &Receiver<U>,
    bulk: Receiver<Vec<u8>>,
    spin: Duration,
) -> io::Result<()> {
    pump_with_heartbeat(out, urgent, bulk, spin, None)
}

/// What a writer says when it has had nothing to say for a while: `frame` (an encoded Ping)
/// after `every` without writing anything. This is how a client keeps an idle connection from
/// looking dead to the relay, and to the NATs on the way (see docs/PROTOCOL.md, "Heartbeat").
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub every: Duration,
    pub frame: Vec<u8>,
}

/// [`pump`], and a heartbeat frame whenever nothing was written for `heartbeat.every`.
pub fn pump_with_heartbeat<W: Write, U: AsRef<[u8]>>(
    out: &mut W,
    urgent: &Receiver<U>,
    bulk: Receiver<Vec<u8>>,
    spin: Duration,
    heartbeat: Option<&Heartbeat>,
) -> io::Result<()> {
    let mut bulk = bulk;
    loop {
        let item = match poll(urgent, &mut bulk) {
            Polled::Item(item) => item,
            Polled::Finished => break,
            Polled::Empty => {
                out.flush()?;
                match wait(urgent, &mut bulk, spin, heartbeat) {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        match item {
            Item::Urgent(bytes) => out.write_all(bytes.as_ref())?,
            Item::Bulk(bytes) => out.write_all(&bytes)?,
        }
    }
    out.flush()
}

/// One look at both queues, urgent first.
fn poll<U: AsRef<[u8]>>(urgent: &Receiver<U>, bulk: &mut Receiver<Vec<u8>>) -> Polled<U> {
    match urgent.try_recv() {
        Ok(bytes) if bytes.as_ref().is_empty() => return Polled::Finished,
        Ok(bytes) => return Polled::Item(Item::Urgent(bytes)),
        Err(TryRecvError::Disconnected) => return Polled::Finished,
        Err(TryRecvError::Empty) => {}
    }
    match bulk.try_recv() {
        Ok(bytes) => Polled::Item(Item::Bulk(bytes)),
        Err(TryRecvError::Disconnected) => {
            *bulk = never();
            Polled::Empty
        }
        Err(TryRecvError::Empty) => Polled::Empty,
    }
}

/// Waits for the next item: polls for `spin` (see [`crate::spin`]), then sleeps on both queues.
/// `None` means the urgent queue is closed and empty.
fn wait<U: AsRef<[u8]>>(
    urgent: &Receiver<U>,
    bulk: &mut Receiver<Vec<u8>>,
    spin: Duration,
    heartbeat: Option<&Heartbeat>,
) -> Option<Item<U>> {
    let polled = spin::poll_for(spin, || match poll(urgent, bulk) {
        Polled::Item(item) => Some(Some(item)),
        Polled::Finished => Some(None),
        Polled::Empty => None,
    });
    if let Some(result) = polled {
        return result;
    }
    loop {
        // Sleep until either queue has something (or closes), then take from them in order,
        // urgent first. `select!` would *take* from whichever queue it happened to pick when both
        // were ready, at random, and a file chunk could then overtake a chat frame queued before
        // it (the fuzzer found a relay's welcome overtaken by an upload answer this way).
        let mut ready = Select::new();
        ready.recv(urgent);
        ready.recv(bulk);
        match heartbeat {
            None => {
                ready.ready();
            }
            Some(beat) => {
                if ready.ready_timeout(beat.every).is_err() {
                    return Some(Item::Bulk(beat.frame.clone())); // quiet for too long: say so
                }
            }
        }
        match poll(urgent, bulk) {
            Polled::Item(item) => return Some(item),
            Polled::Finished => return None,
            Polled::Empty => {} // a closed bulk queue was swapped for `never()`; wait again
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn a_quiet_writer_sends_its_heartbeat_and_a_busy_one_does_not() {
        let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
        let (_to_bulk, bulk) = bounded::<Vec<u8>>(8);
        let beat = Heartbeat { every: Duration::from_millis(50), frame: b"P".to_vec() };
        let writer = std::thread::spawn(move || {
            let mut out = Vec::new();
            pump_with_heartbeat(&mut out, &urgent, bulk, Duration::ZERO, Some(&beat)).unwrap();
            out
        });
        for _ in 0..10 {
            to_urgent.send(b"x".to_vec()).unwrap();
            std::thread::sleep(Duration::from_millis(10)); // busier than the heartbeat
        }
        std::thread::sleep(Duration::from_millis(130)); // quiet: two or so heartbeats
        drop(to_urgent);
        let out = writer.join().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("xxxxxxxxxx"), "no heartbeat while busy: {text}");
        let beats = text.matches('P').count();
        assert!((1..=3).contains(&beats), "heartbeats while quiet: {text}");
    }

    #[test]
    fn urgent_frames_overtake_queued_bulk_frames() {
        let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
        let (to_bulk, bulk) = bounded::<Vec<u8>>(8);
        for _ in 0..3 {
            to_bulk.send(b"B".to_vec()).unwrap();
        }
        to_urgent.send(b"U".to_vec()).unwrap();
        drop(to_urgent);
        drop(to_bulk);
        let mut out = Vec::new();
        pump(&mut out, &urgent, bulk, Duration::ZERO).unwrap();
        // The urgent queue closing ends the loop: bulk frames still queued are not written.
        assert_eq!(out, b"U");
    }

    #[test]
    fn an_empty_buffer_finishes_even_with_senders_alive() {
        let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
        let (_to_bulk, bulk) = bounded::<Vec<u8>>(8);
        to_urgent.send(b"last".to_vec()).unwrap();
        to_urgent.send(Vec::new()).unwrap();
        to_urgent.send(b"never".to_vec()).unwrap();
        let mut out = Vec::new();
        pump(&mut out, &urgent, bulk, Duration::ZERO).unwrap();
        assert_eq!(out, b"last");
    }

    #[test]
    fn bulk_frames_flow_while_urgent_is_open_and_a_closed_bulk_queue_is_harmless() {
        let (to_urgent, urgent) = bounded::<Vec<u8>>(8);
        let (to_bulk, bulk) = bounded::<Vec<u8>>(8);
        let writer = std::thread::spawn(move || {
            let mut out = Vec::new();
            pump(&mut out, &urgent, bulk, Duration::from_micros(50)).unwrap();
            out
        });
        to_bulk.send(b"1".to_vec()).unwrap();
        to_bulk.send(b"2".to_vec()).unwrap();
        drop(to_bulk);
        std::thread::sleep(Duration::from_millis(20));
        to_urgent.send(b"3".to_vec()).unwrap();
        drop(to_urgent);
        assert_eq!(writer.join().unwrap(), b"123");
    }
}
