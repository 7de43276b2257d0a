//! The tuning corner: tricks that change how fast the relay and the client run, or how much
//! memory they keep, and never what they do.
//!
//! Read everything else first. Each trick here says what it costs and how it was measured, and
//! each can be left out without breaking anything:
//!
//! - [`spin`]: poll a channel briefly before sleeping on it. A hand-off to a sleeping thread
//!   costs a wake-up (about 25 µs on some VMs); polling can skip it, at the price of CPU time
//!   after every burst. On by default for 100 µs: through the library a message took 50 µs at
//!   the median with it and 70 µs without (`cargo bench --bench relay`, run E). Its cost shows
//!   at scale: with 2,000 clients in one room it made fan-out slower (p99 74 ms, against 52 ms
//!   with `--spin-us 0`) and burned a core. Lesson 9 (`examples/09_spin_or_sleep.rs`) measures
//!   the trade on your machine.
//! - [`memory`]: glibc's allocator settings. The relay keeps few arenas and gives freed memory
//!   back (so an attack's memory does not stay), and the client keeps its 256 KiB chunk buffers
//!   for reuse (so a download does not fault fresh pages in for every chunk). Each binary's
//!   `main` calls the one it wants; the library never changes the allocator by itself. The relay
//!   also turns off glibc's per-thread caches of freed blocks and gives back the stack pages a
//!   connection's TLS handshake touched once: together with smaller buffers, an idle TLS
//!   connection went from 83 to 48 KiB (lesson 11 shows the stack part on your machine).

pub mod memory;
pub mod spin;
