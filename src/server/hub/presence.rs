//! Who is here: joining (and taking a name over from a stale connection), leaving, and the
//! online list. How a room hears about it is `crowd.rs`'s job (one by one, or counted). One of the hub's jobs, in a file of its own; the state is the hub's (`mod.rs`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::meter::{Meter, Outgoing};
use super::{encode, paged, Bytes, Conn, Hub, Joining, Peer, NAMES_PER_FRAME};
use super::{ConnId, TokenHash};
use crate::frame::{ErrorCode, Frame};
use crate::outbox::ToWriter;
use crate::wire::Closer;

impl Hub {
    /// A TCP connection was accepted: known, not joined yet.
    pub(super) fn connected(&mut self, id: ConnId, addr: SocketAddr, closer: Closer) {
        self.routing.conns.insert(id, Conn { addr, closer, peer: None });
    }

    /// The client broke the protocol after joining: tell it why, then it leaves.
    pub(super) fn fail(&mut self, id: ConnId, code: ErrorCode, message: String) {
        self.send_to(id, &Frame::Error { code, message: message.clone() });
        self.leave(id, &message);
    }

    /// The connection thread ended: forget the connection, and free its uploads for resuming.
    pub(super) fn closed(&mut self, id: ConnId) {
        self.leave(id, "connection closed");
        self.routing.conns.remove(&id);
        self.records.store.release(id);
    }

    pub(super) fn join(&mut self, id: ConnId, joining: Joining, to_client: ToWriter<Outgoing>) {
        let Joining { name, room, account, token, direct } = joining;
        let Some(addr) = self.routing.conns.get(&id).map(|c| c.addr) else {
            return;
        };
        if let Some(&old) = self.routing.names.get(&name) {
            if self.may_take_over(old, account, token) {
                self.take_over(old, addr);
            }
        }
        if self.routing.names.contains_key(&name) {
            log::info!("{addr}: refused: name {name:?} is taken");
            let message = format!("the name {name:?} is already taken; choose another with --name");
            return self.turn_away(to_client, ErrorCode::NameTaken, message);
        }
        // The login checked for look-alikes already, but in an earlier turn of this loop: two
        // look-alikes can pass that check at the same time (a braked login waits seconds between
        // the check and this join). Here, in the same turn as the insert, nobody can slip in.
        let skeleton = super::login::skeleton(&name);
        if let Some(other) = self.routing.look_alikes.get(&skeleton).filter(|other| **other != name) {
            log::info!("{addr}: refused: name {name:?} looks like {other:?}, who is online");
            let message = format!("the name {name:?} looks too much like {other:?}; choose another");
            return self.turn_away(to_client, ErrorCode::NameConfusable, message);
        }
        let Some(conn) = self.routing.conns.get_mut(&id) else {
            return;
        };
        conn.peer = Some(Peer {
            name: name.clone(),
            skeleton: skeleton.clone(),
            room: room.clone(),
            account,
            token,
            to_client,
            direct,
            backlog: VecDeque::new(),
            meter: Meter::new(self.routing.queued_total.clone()),
            last_progress: Instant::now(),
            catching_up: None,
            receipts: VecDeque::new(),
        });
        self.send_to(id, &Frame::Welcome { name: name.clone(), room: room.clone() });
        log::info!("{addr}: {name} joined {room}");
        self.routing.names.insert(name.clone(), id);
        self.routing.look_alikes.insert(skeleton, name.clone());
        self.routing.rooms.entry(room.clone()).or_default().insert(name.clone(), id);
        self.arrived(id, &name, &room);
        for info in self.records.store.waiting_for(&name) {
            self.send_to(id, &Frame::NewFile(info));
        }
        for info in self.records.store.arriving_for(&name) {
            self.send_to(id, &Frame::NewFile(info));
        }
        self.tell_expired(id, &name);
        self.catch_up(id, &name, &room, account);
    }

    /// Refuses a hello at the last step: queue the error and drop the sender right away, so the
    /// writer writes the error, sees its queue closed, and ends the connection.
    fn turn_away(&mut self, to_client: ToWriter<Outgoing>, code: ErrorCode, message: String) {
        let meter = Meter::new(self.routing.queued_total.clone());
        let error = encode(&Frame::Error { code, message });
        let _ = to_client.try_send(Outgoing::new(error, &meter, 1));
    }

    /// Whether a hello for a name that is online may take it over from connection `old`. The
    /// person must prove they are the one holding it: an account holder by the account's
    /// password or machine token (checked in `login.rs` before the hello got here), a guest by
    /// the same identity token it joined with (its resume secret: only the same machine and OS
    /// account has it). A guest never takes an account holder's name, nor the other way round.
    ///
    /// This is what gives a user their name back at once after a crash, a dead Wi-Fi or a
    /// client killed with `kill -9`: the relay may not have noticed yet that the old connection
    /// is gone (a vanished link takes up to `--idle-timeout` to notice), and the new login must
    /// not lose a race against that.
    pub(super) fn may_take_over(&self, old: ConnId, account: bool, token: Option<TokenHash>) -> bool {
        let Some(peer) = self.peer(old) else { return false };
        match (peer.account, account) {
            (true, true) => true,
            (false, false) => token.is_some() && peer.token == token,
            _ => false,
        }
    }

    /// Ends connection `old`'s session because its name was taken over from `by`. The old client
    /// hears why (LoggedInElsewhere, which its client must not answer by reconnecting, or the
    /// two would take the name from each other in a loop), and its uploads are released at once
    /// so the new connection can resume them.
    pub(super) fn take_over(&mut self, old: ConnId, by: SocketAddr) {
        let message = format!("you logged in elsewhere (from {}); this connection is closed", by.ip());
        self.send_to(old, &Frame::Error { code: ErrorCode::LoggedInElsewhere, message });
        self.records.store.release(old);
        self.depart(old, &format!("logged in elsewhere, from {by}"), true);
    }

    /// Sends `id` the online list of its room, a page at a time. The pages are encoded once and
    /// kept until someone comes or goes (`crowd.rs` forgets them then): in a big room a list is
    /// thousands of names, and a stranger asking for it ten times a second must cost pointers,
    /// not a fresh encoding each time.
    pub(super) fn who(&mut self, id: ConnId) {
        let Some(peer) = self.peer(id) else { return };
        let room = peer.room.clone();
        let pages = match self.routing.online_pages.get(&room) {
            Some(pages) => pages.clone(),
            None => {
                let names: Vec<String> =
                    self.routing.rooms.get(&room).map(|m| m.keys().cloned().collect()).unwrap_or_default();
                let pages: Vec<Bytes> = paged(names, NAMES_PER_FRAME)
                    .into_iter()
                    .map(|(names, more)| encode(&Frame::Online { room: room.clone(), names, more }))
                    .collect();
                self.routing.online_pages.insert(room.clone(), pages.clone());
                pages
            }
        };
        // Shared by whoever asks: charged to the relay-wide count like a broadcast to the room.
        let sharing = self.head_count(&room);
        for page in pages {
            self.push(id, page, sharing);
        }
    }

    /// Removes a joined client from its room and tells the room. Dropping the peer drops the
    /// queue's sender, which is how the writer thread learns to finish and close the socket.
    pub(super) fn leave(&mut self, id: ConnId, why: &str) {
        self.depart(id, why, false)
    }

    /// [`Hub::leave`], and `taken_over` says the same person carries on under the same name on
    /// another connection: then a guest's files and uploads stay for the new session.
    pub(super) fn depart(&mut self, id: ConnId, why: &str, taken_over: bool) {
        let Some(conn) = self.routing.conns.get_mut(&id) else {
            return;
        };
        let Some(peer) = conn.peer.take() else { return };
        log::info!("{}: {} left {} ({why})", conn.addr, peer.name, peer.room);
        self.routing.names.remove(&peer.name);
        if self.routing.look_alikes.get(&peer.skeleton) == Some(&peer.name) {
            self.routing.look_alikes.remove(&peer.skeleton);
        }
        self.records.catching_up.remove(&id);
        if !peer.account && !taken_over {
            // Nothing waits for a guest after its session: the name is nobody's.
            self.records.store.drop_guest(&peer.name);
        }
        // What the hub remembers about a name or a room lives only while someone online needs
        // it (it is read back from the store when needed again): strangers make up names and
        // rooms, and the hub must not keep one entry for each forever.
        self.records.highest_client_id.remove(&peer.name);
        if let Some(members) = self.routing.rooms.get_mut(&peer.room) {
            members.remove(&peer.name);
            if members.is_empty() {
                self.routing.rooms.remove(&peer.room);
                self.records.members.remove(&peer.room);
            }
        }
        self.departed(&peer.name, &peer.room);
    }
}
