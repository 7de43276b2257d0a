//! Presence in big rooms: counted, not announced one by one.
//!
//! In a small room every member hears each arrival (`Joined`) and departure (`Left`), and a
//! newcomer gets the list of who is there (`Online`). That costs one frame per member per event,
//! so filling a room of *n* people costs n²/2 frames, plus n lists of up to n names: at 5,000
//! people, 12.5 million frames and 12.5 million names, and the room never settles.
//!
//! So a room with more than `big_room` people online (`--big-room`, default 100) is *big*, the
//! way IRC servers and chat services treat large channels:
//!
//! - arrivals and departures are only counted, and once a second (at most) every member gets one
//!   `Crowd{room, online, joined, left}` frame with the totals: n frames a second, not n per event;
//! - a newcomer gets a `Crowd` with the head count instead of the list; `Who` still lists everyone,
//!   a page at a time, and is charged like a file list (see `server/throttle.rs`);
//! - a big room becomes small again only when it shrinks to half of `big_room`, and then every
//!   member gets the list once. The gap between the two thresholds means that someone joining and
//!   leaving at the edge cannot make the relay send whole lists over and over: getting back to big
//!   takes `big_room / 2` arrivals, which pays for the lists.
//!
//! A big room is one entry in [`Crowds`]; the entry holds the counts since the last `Crowd` frame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{ConnId, Hub};
use crate::frame::Frame;

/// How often, at most, a big room's members hear its counts.
pub(super) const CROWD_TICK: Duration = Duration::from_secs(1);

/// The big rooms, and when their counts are next due.
#[derive(Default)]
pub(super) struct Crowds {
    tallies: HashMap<String, Tally>,
    /// When the counts gathered so far go out; `None` while nothing has changed.
    due: Option<Instant>,
}

/// Arrivals and departures in one big room since its last `Crowd` frame.
#[derive(Default)]
struct Tally {
    joined: u32,
    left: u32,
}

impl Crowds {
    /// When the hub must wake up to send counts, if it has any to send.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    fn changed(&mut self) {
        self.due.get_or_insert_with(|| Instant::now() + CROWD_TICK);
    }
}

impl Hub {
    /// `id` (named `name`) has just been added to `room`: tell the room, and tell the newcomer who
    /// is there. A room that grows past `big_room` becomes big here.
    pub(super) fn arrived(&mut self, id: ConnId, name: &str, room: &str) {
        self.routing.online_pages.remove(room); // the list changed
        let online = self.head_count(room);
        let crowds = &mut self.routing.crowds;
        if crowds.tallies.contains_key(room) || online > self.config.big_room {
            crowds.tallies.entry(room.to_owned()).or_default().joined += 1;
            crowds.changed();
            let count = Frame::Crowd { room: room.to_owned(), online: clamp(online), joined: 0, left: 0 };
            self.send_to(id, &count);
        } else {
            let joined = Frame::Joined { name: name.to_owned(), room: room.to_owned() };
            self.broadcast(room, Some(id), &joined);
            self.who(id);
        }
    }

    /// `name` has just been removed from `room`: tell the ones still there. A big room that has
    /// shrunk to half of `big_room` becomes small again, and everyone in it gets the list.
    pub(super) fn departed(&mut self, name: &str, room: &str) {
        self.routing.online_pages.remove(room); // the list changed
        let online = self.head_count(room);
        let Some(tally) = self.routing.crowds.tallies.get_mut(room) else {
            let left = Frame::Left { name: name.to_owned(), room: room.to_owned() };
            self.broadcast(room, None, &left);
            return;
        };
        if online > self.config.big_room / 2 {
            tally.left += 1;
            self.routing.crowds.changed();
            return;
        }
        self.routing.crowds.tallies.remove(room);
        let members: Vec<ConnId> =
            self.routing.rooms.get(room).map(|m| m.values().copied().collect()).unwrap_or_default();
        for member in members {
            self.who(member);
        }
    }

    /// Sends the counts of every big room where someone came or went, once they are due.
    pub(super) fn count_crowds(&mut self) {
        match self.routing.crowds.due {
            Some(due) if due <= Instant::now() => self.routing.crowds.due = None,
            _ => return,
        }
        let changed: Vec<(String, Tally)> = self
            .routing
            .crowds
            .tallies
            .iter_mut()
            .filter(|(_, t)| t.joined > 0 || t.left > 0)
            .map(|(room, t)| (room.clone(), std::mem::take(t)))
            .collect();
        for (room, Tally { joined, left }) in changed {
            let online = clamp(self.head_count(&room));
            self.broadcast(&room, None, &Frame::Crowd { room: room.clone(), online, joined, left });
        }
    }

    pub(super) fn head_count(&self, room: &str) -> usize {
        self.routing.rooms.get(room).map_or(0, |m| m.len())
    }
}

/// A count for the wire: no room holds four billion people, but the conversion must not panic.
fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
