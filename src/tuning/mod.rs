//! The tuning corner: tricks that change how fast the relay and the client run, or how much
//! memory they keep, and never what they do.
//!
//! Read everything else first. Each trick here says what it costs and how it was measured, and
//! each can be left out without breaking anything:
//!
//! - [`spin`]: poll a channel briefly before sleeping on it. A hand-off to a sleeping thread
//!   costs a wake-up (about 25 µs on some VMs); polling can skip it, at the price of CPU time
//!   after every burst. **Off by default** (`--spin-us 0`): with many clients it made fan-out
//!   slower (2,000 clients in one room: p99 74 ms with polling, 52 ms without) and burns a core,
//!   and on this project's machine today it no longer wins even for a single pair. Lesson 9
//!   (`examples/09_spin_or_sleep.rs`) measures the trade on your machine.
//! - [`memory`]: glibc's allocator settings. The relay keeps few arenas and gives freed memory
//!   back (so an attack's memory does not stay), and the client keeps its 256 KiB chunk buffers
//!   for reuse (so a download does not fault fresh pages in for every chunk). Each binary's
//!   `main` calls the one it wants; the library never changes the allocator by itself.

pub mod memory;
pub mod spin;
