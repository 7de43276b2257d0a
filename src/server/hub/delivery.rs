//! Getting frames to clients without ever blocking: the per-client queues, the backlogs of
//! clients whose queue is full, and cutting the ones that stay stuck (see the module docs of
//! `mod.rs`, "A slow client never stalls the hub").

use std::time::Instant;

use crossbeam_channel::TrySendError;

use super::meter::Outgoing;
use super::{encode, Bytes, ConnId, Hub};
use crate::frame::Frame;
use crate::wire::Closer;

impl Hub {
    /// Sends one frame to everyone in `room` except `skip`.
    pub(super) fn broadcast(&mut self, room: &str, skip: Option<ConnId>, frame: &Frame) {
        let Some(members) = self.routing.rooms.get(room) else {
            return;
        };
        let bytes = encode(frame);
        let targets: Vec<ConnId> = members.values().copied().filter(|&m| Some(m) != skip).collect();
        let fanout = targets.len();
        for target in targets {
            self.push(target, bytes.clone(), fanout);
        }
    }

    pub(super) fn send_to(&mut self, id: ConnId, frame: &Frame) {
        self.push(id, encode(frame), 1);
    }

    /// Queues bytes for one client without ever blocking (see the module docs). `fanout` is how
    /// many clients share these bytes (for the relay-wide count; see [`meter`]).
    pub(super) fn push(&mut self, id: ConnId, bytes: Bytes, fanout: usize) {
        let (max_client, max_total) = (self.config.max_queued_bytes, self.config.max_queued_total);
        // Nothing else waiting for the hub, few recipients, an idle writer: the hub writes it
        // itself (see `direct.rs`).
        let hub_idle = self.events.is_empty();
        let Some(peer) = self.peer_mut(id) else {
            return;
        };
        if hub_idle && fanout <= super::direct::MAX_FANOUT && peer.backlog.is_empty() {
            if let Some(direct) = peer.direct.as_mut() {
                if direct.try_write(&bytes, &peer.to_client, &peer.meter) {
                    return;
                }
            }
        }
        let item = Outgoing::new(bytes, &peer.meter, fanout);
        let over_total = peer.meter.total_bytes() > max_total;
        if !peer.backlog.is_empty() {
            peer.backlog.push_back(item);
        } else {
            match peer.to_client.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    peer.backlog.push_back(item);
                    peer.last_progress = Instant::now();
                    self.routing.backlogged.insert(id);
                }
                // The writer has ended (socket error); the connection thread will report `Closed`.
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        let Some(peer) = self.peer(id) else { return };
        let held = peer.meter.client_bytes();
        if held > max_client {
            self.routing.too_slow.push((id, format!("{held} bytes queued (the limit is {max_client})")));
        } else if over_total && !peer.backlog.is_empty() {
            self.routing.too_slow.push((
                id,
                format!("{held} bytes held back while the relay holds too much for slow clients"),
            ));
        }
    }

    pub(super) fn any_backlog(&self) -> bool {
        !self.routing.backlogged.is_empty()
    }

    /// Moves held-back frames into queues that have room, and disconnects clients that stayed
    /// stuck for too long or hold too much.
    pub(super) fn retry_backlogs(&mut self) {
        let stall_limit = self.config.stall_limit;
        let conns = &mut self.routing.conns;
        let too_slow = &mut self.routing.too_slow;
        let mut moved = false;
        self.routing.backlogged.retain(|id| {
            let Some(peer) = conns.get_mut(id).and_then(|c| c.peer.as_mut()) else {
                return false; // gone: nothing left to send
            };
            while let Some(item) = peer.backlog.pop_front() {
                match peer.to_client.try_send(item) {
                    Ok(()) => {
                        peer.last_progress = Instant::now();
                        moved = true;
                    }
                    Err(TrySendError::Full(item)) | Err(TrySendError::Disconnected(item)) => {
                        peer.backlog.push_front(item);
                        break;
                    }
                }
            }
            if peer.backlog.is_empty() {
                // Drained: give its room back, or every client that once had a burst (a join
                // with history does) would keep it for the rest of its connection.
                peer.backlog = Default::default();
                return false;
            }
            let stalled = peer.last_progress.elapsed();
            if stalled > stall_limit {
                too_slow.push((*id, format!("no progress for {:.1} s", stalled.as_secs_f64())));
            }
            true
        });
        self.routing.backlog_moving = moved;
        self.cut_too_slow();
    }

    /// Disconnects the clients found too slow during this turn. Their queued frames are dropped
    /// with their queues, which gives the memory back.
    pub(super) fn cut_too_slow(&mut self) {
        for (id, why) in std::mem::take(&mut self.routing.too_slow) {
            let Some(conn) = self.routing.conns.get(&id) else { continue };
            if conn.peer.is_none() {
                continue; // already cut this turn
            }
            self.leave(id, &format!("too slow: {why}"));
            // Its queue is full, so an error frame could not get through; just cut the socket.
            if let Some(conn) = self.routing.conns.get(&id) {
                conn.closer.close();
            }
        }
    }

    /// Shutdown step 2: queue a goodbye for every joined client, then drop every queue sender.
    pub(super) fn say_goodbye_to_all(self) -> Vec<Closer> {
        let bye = encode(&Frame::Goodbye);
        let mut closers = Vec::with_capacity(self.routing.conns.len());
        for (_, conn) in self.routing.conns {
            match conn.peer {
                // Best effort: a client whose queue is full gets cut at the end of the grace time.
                Some(peer) => {
                    let _ = peer.to_client.try_send(Outgoing::new(bye.clone(), &peer.meter, 1));
                }
                // Still in the hello phase: nothing to say goodbye to, cut it now.
                None => conn.closer.close(),
            }
            closers.push(conn.closer);
        }
        closers
    }
}
