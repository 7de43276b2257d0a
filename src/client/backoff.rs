//! The one reconnect policy of both front ends: after a lost connection, try again at once, then
//! wait 250 ms, and twice as long after each failed attempt, at most 5 s.
//!
//! Short first waits bring a client back quickly after a blip (a relay restart takes about a
//! second); the cap keeps a client from hammering a relay that is down, while still noticing
//! within seconds when it is back. [`super::Session`] waits this way; how long it keeps trying
//! is the front end's decision ([`super::KeepTrying`]): the terminal client gives up after
//! `--reconnect-for` (a script must not hang), the window keeps trying while it is open.

use std::time::Duration;

/// The first wait.
pub const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest wait.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The waits between attempts to reconnect.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_PAUSE }
    }
}

impl Backoff {
    /// How long to wait before the next attempt; each call doubles the one after, up to
    /// `MAX_PAUSE` (5 s).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_PAUSE);
        pause
    }

    /// A connection succeeded: the next loss starts from the first wait again.
    pub fn reset(&mut self) {
        self.next = FIRST_PAUSE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut backoff = Backoff::default();
        let waits: Vec<u128> = (0..7).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), FIRST_PAUSE);
    }
}
