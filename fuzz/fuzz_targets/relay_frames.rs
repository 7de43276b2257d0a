//! Fuzz target `relay_frames`: arbitrary bytes from a client that has said a valid hello, handled
//! as the relay handles a connection (frame reader, session, hub, store, writer), in memory.
//!
//! The work is done by `relaychat::server::fuzzing::relay_frames`, whose docs say what it covers
//! and what it leaves out. It panics if the relay panics, writes anything but whole valid frames,
//! or no longer serves a fresh client afterwards; a hang shows up as a libFuzzer timeout.
//!
//! Run: `cargo fuzz run relay_frames` from the repository root (see the README, "Fuzzing").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relaychat::server::fuzzing::relay_frames(data);
});
