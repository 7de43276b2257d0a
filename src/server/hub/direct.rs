//! The hub writing a small frame into a client's socket itself, when that client's writer
//! thread has nothing to do: one thread wake-up fewer on the way of every chat line.
//!
//! ## Why
//!
//! A line from alice to bob passes alice's reader thread, the hub, and bob's writer thread. Each
//! hand-off wakes a sleeping thread, and each wake-up costs microseconds even when it lands on
//! the same core, more when it has to wake another (`benches/latency.rs`; the numbers are in
//! README, "Performance"). With few recipients, the hub can do the writer's job itself: it
//! already has the encoded frame, and a small frame into an idle socket is one system call.
//! The writer stays asleep. It is the relay's side of what the client does for its caller
//! (`client/direct.rs`), with the same turn (see [`crate::outbox`], "Taking turns with the
//! senders").
//!
//! ## The hub never waits for a client
//!
//! That rule (see the module docs of `mod.rs`) still holds, so everything here is "now or not
//! at all", and "not" is the ordinary queue:
//!
//! - the writer's turn is *tried* (`try_lock`): a writer busy with this client, even blocked on
//!   its full socket, means the frame is queued as before;
//! - only when its queues are empty (a file on its way is left to the writer) and no backlog is
//!   held for it, so the frame cannot overtake anything;
//! - the socket is offered the frame without waiting ([`WriteNow`]: `send` with
//!   `MSG_DONTWAIT`); what it does not take at once is queued for the writer while the turn is
//!   still held, so it goes next, before anything queued after it ([`Written::Part`]), or stays
//!   in the TLS stream for the writer to send first ([`Written::Held`]);
//! - only for frames going to at most [`MAX_FANOUT`] clients and of at most [`MAX_BYTES`]: a
//!   line for a big room is handed to the writers, who write (and encrypt) it in parallel, as
//!   before, instead of the hub doing thousands of system calls one after another;
//! - only while no other event waits for the hub: in a burst the writers do it, in parallel
//!   with the hub and many frames per system call. (Without this rule a burst of small
//!   messages went through at half the rate, `cargo bench --bench relay`: the hub spent its
//!   time in `send`, one frame at a time, while the writers slept.)
//!
//! A client that stops reading therefore costs the hub one `send` that takes nothing, once:
//! after that its queue or backlog is not empty, and everything goes the old way, where the
//! slow-client limits apply as before.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use super::meter::Outgoing;
use super::{Bytes, Meter};
use crate::outbox::{Bulk, ToWriter};
use crate::wire::{WriteNow, Written};

/// The most clients a frame may go to for the hub to write it itself.
pub(crate) const MAX_FANOUT: usize = 4;
/// The largest frame the hub writes itself (a chat line of the longest allowed text fits).
pub(crate) const MAX_BYTES: usize = 16 * 1024;

/// The hub's own way into one client's socket (see the module docs). Made by the connection
/// thread with the writer thread, which takes the same `turn` around its writes.
pub(crate) struct Direct {
    pub(crate) turn: Arc<Mutex<()>>,
    pub(crate) out: Box<dyn WriteNow>,
    /// The writer's bulk queue, only to see whether a file is on its way.
    pub(crate) bulk: Receiver<Bulk>,
}

impl Direct {
    /// Writes `bytes` now if the client's writer is idle; false when the caller must queue them
    /// instead. True also when the socket failed: the connection is over, and its reader or
    /// writer reports it.
    pub(super) fn try_write(
        &mut self,
        bytes: &Bytes,
        queue: &ToWriter<Outgoing>,
        meter: &Arc<Meter>,
    ) -> bool {
        if bytes.len() > MAX_BYTES {
            return false;
        }
        // `try_lock`, never `lock`: a writer holding the turn may be blocked on this very socket.
        let Ok(_turn) = self.turn.try_lock() else { return false };
        if !queue.is_empty() || !self.bulk.is_empty() {
            return false;
        }
        match self.out.write_now(bytes) {
            Ok(Written::All) => {}
            // The turn is still ours, so the rest is the next thing the writer writes.
            Ok(Written::Part(sent)) => {
                let _ = queue.try_send(Outgoing::new(bytes[sent..].into(), meter, 1));
            }
            // An empty frame only wakes the writer: its flush sends what the stream kept.
            Ok(Written::Held) => {
                let _ = queue.try_send(Outgoing::new(Bytes::from(&[][..]), meter, 1));
            }
            Err(e) => log::debug!("direct write failed: {e}"),
        }
        true
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use crossbeam_channel::bounded;

    use super::*;
    use crate::wire::Socket;

    /// A client that stops reading: the hub's writes never wait, what the socket did not take
    /// goes first through the queue, and the client, reading again, gets every byte in order.
    #[test]
    fn a_full_socket_never_holds_the_hub_and_nothing_is_lost_or_reordered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        // Small buffers, so the socket fills after a few frames.
        socket2::SockRef::from(&sender).set_send_buffer_size(4096).unwrap();
        socket2::SockRef::from(&receiver).set_recv_buffer_size(4096).unwrap();
        let socket = Socket::new(sender);
        let (bulk_in, bulk) = bounded::<Bulk>(1);
        let mut direct = Direct { turn: Arc::default(), out: Box::new(socket.clone()), bulk };
        let (to_client, from_hub) = bounded::<Outgoing>(64);
        let queue = ToWriter::new(to_client, std::thread::current());
        let meter = Meter::new(Arc::new(AtomicUsize::new(0)));

        // The hub's side: write itself while it can, queue once it cannot.
        let mut sent = Vec::new();
        let mut direct_writes = 0;
        for n in 0u32.. {
            let frame: Bytes = format!("{n:06}:").repeat(100).into_bytes().into();
            sent.extend_from_slice(&frame);
            let started = Instant::now();
            if direct.try_write(&frame, &queue, &meter) {
                direct_writes += 1;
            } else {
                queue.try_send(Outgoing::new(frame, &meter, 1)).unwrap();
            }
            assert!(started.elapsed() < Duration::from_millis(100), "the hub waited for the socket");
            if from_hub.len() >= 8 {
                break;
            }
        }
        assert!(direct_writes > 0, "an idle writer's frames went straight into the socket");
        // A file on its way (the bulk queue) is left to the writer, too.
        bulk_in.send(Bulk::Frame(Vec::new())).unwrap();
        assert!(!direct.try_write(&Bytes::from(&b"x"[..]), &queue, &meter));

        // The writer's side: it takes the turn and writes what was queued, in order.
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).unwrap();
            got
        });
        {
            let _turn = direct.turn.lock().unwrap();
            let mut out = socket.clone();
            for item in from_hub.try_iter() {
                out.write_all(crate::outbox::UrgentItem::frame(&item).unwrap()).unwrap();
            }
        }
        drop(direct);
        socket.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(reading.join().unwrap() == sent, "every byte arrived, in order");
    }
}
