//! # relaychat
//!
//! A chat relay over TCP and TLS, written with `std::net` and `std::thread` only: no async runtime.
//! Two people behind NATs both dial out to a relay; the relay passes their messages along. It is
//! a grown-up port of a student project, "501密聊", and a lesson in sockets and threads.
//!
//! ## Layout, in reading order
//!
//! 1. [`frame`]: the wire format. Pure functions from frames to bytes and back; no sockets. Start
//!    here: everything else moves these frames around.
//! 2. [`wire`]: the thin I/O loop around `frame` (read whole frames from any `Read`, write them to
//!    any `Write`), and the small [`wire::Stream`] trait that lets the same code run over TLS.
//!    [`tls`] is that TLS stream: one session shared by a reader and a writer thread, and the
//!    rule that keeps them from deadlocking.
//! 3. [`rules`]: what a valid name, room and message look like; shared by both ends.
//! 4. [`outbox`]: the loop inside every writer thread: two queues into one socket, chat first;
//!    file data can be a slice of a file that the kernel sends itself (`sendfile`).
//! 5. [`server`]: the relay. An accept thread, a reader and a writer thread per connection, and one
//!    hub thread that owns the rooms and the file store. Its docs draw the threads; `Server::run`
//!    documents shutdown. The relay faces the open internet, so every resource a stranger can make
//!    it hold has a bound, checked before the resource is taken: `server/accept.rs` (connections),
//!    `server/login.rs` (hellos, passwords, names), `server/throttle.rs` (request rates),
//!    `server/hub/meter.rs` (memory queued per client), `server/store/` (disk, uploads, what waits
//!    for whom). The README's "Limits" table lists them all. File bytes move on each connection's
//!    own threads (`server/transfer.rs`); a download may follow an upload that is still arriving
//!    (`server/arrival.rs`).
//! 6. [`client`]: the client library. Handshake, then a writer, a reader and an upload thread,
//!    reporting everything as [`client::Event`]s; [`client::Session`] is the connection that
//!    comes back after the link is lost, with one policy for both front ends. `client/identity.rs` keeps this machine's
//!    secret, from which each relay gets its own token; `client/trust.rs` decides whether to trust
//!    a relay's TLS key (a CA, or the pin kept from first contact, as SSH does).
//! 7. Helpers for files: [`filename`] (names from the network made safe), [`sha`] (hashing while
//!    streaming, and on resume), [`sink`] (writing a received file on its own thread).
//! 8. [`display`]: making untrusted text safe to print (escape sequences shown, not executed);
//!    [`clock`]: the one clock both ends stamp messages with.
//! 9. Appendix, [`tuning`]: the tricks that change speed or memory but never behaviour (polling
//!    a channel before sleeping, glibc's allocator settings), each with what it costs.
//! 10. [`cli`]: the two programs' command lines and main loops; `src/bin/*.rs` just call them.
//! 11. `gui_fltk` (cargo feature `gui`): the FLTK window, on top of the same client library.
//!
//! `docs/PROTOCOL.md` specifies the bytes; `docs/ARCHITECTURE.md` draws every thread and channel.
//! `examples/` holds numbered lessons that climb to this design, one idea each: the seed's
//! two-thread relay, framing, a minimal client, a hub with N clients, clean shutdown, the client
//! that stops reading, what a capture sees with and without TLS, the TLS threads' lock rule, and
//! (after the tuning appendix's lesson 9) how to wake thousands of writer threads cheaply, and
//! what an idle thread's stack costs (lesson 11). Read them in order before this tour.

pub mod cli;
pub mod client;
pub mod clock;
pub mod display;
pub mod filename;
pub mod frame;
#[cfg(feature = "gui")]
pub mod gui_fltk;
pub mod outbox;
pub mod rules;
pub mod server;
pub mod sha;
pub mod sink;
pub mod tls;
pub mod tuning;
pub mod wire;
