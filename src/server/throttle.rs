//! Token buckets: how fast one connection may send chat and requests.
//!
//! Every request costs the relay something (a database write for a message, a query for a file
//! list), so a single connection must not be able to ask for them as fast as its link allows. IRC
//! servers solved this long ago with a *token bucket*: a bucket holds up to `burst` tokens and
//! refills at `rate` tokens per second; each request takes its cost in tokens. Short bursts (a
//! pasted paragraph) go through at once; a sustained flood is slowed to `rate`.
//!
//! Here, when the bucket is empty, the connection's reader thread simply **waits** before handling
//! the frame. It reads nothing meanwhile, so the client's TCP window fills and its sender slows
//! down: nothing is refused, nothing is lost, and an honest client never notices. A flood only
//! slows the flooder's own connection; the rest of the relay never waits for it.

use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket refilling at `rate` per second, holding at most `burst`. `rate` 0 means no
    /// limit.
    pub(crate) fn new(rate: u32, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    /// Takes `cost` tokens and says how long to wait before acting (zero if they were there). A
    /// cost above `burst` is charged as `burst`, so a single large request still goes through.
    pub(crate) fn take(&mut self, cost: u64) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        self.tokens -= (cost as f64).min(self.burst);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The buckets of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    messages: Bucket,
    text_bytes: Bucket,
    requests: Bucket,
}

/// The rates, from [`crate::server::ServerConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub msg_rate: u32,
    pub msg_burst: u32,
    pub text_rate: u32,
    pub text_burst: u32,
    pub request_rate: u32,
}

impl Throttle {
    pub(crate) fn new(r: Rates) -> Throttle {
        Throttle {
            messages: Bucket::new(r.msg_rate, r.msg_burst),
            text_bytes: Bucket::new(r.text_rate, r.text_burst),
            requests: Bucket::new(r.request_rate, r.request_rate.saturating_mul(2)),
        }
    }

    /// The wait before a chat message of `bytes` bytes may be handled.
    pub(crate) fn message(&mut self, bytes: usize) -> Duration {
        self.messages.take(1).max(self.text_bytes.take(bytes as u64))
    }

    /// The wait before any other request may be handled.
    pub(crate) fn request(&mut self) -> Duration {
        self.requests.take(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut bucket = Bucket::new(10, 5);
        for _ in 0..5 {
            assert_eq!(bucket.take(1), Duration::ZERO);
        }
        let wait = bucket.take(1);
        assert!(wait > Duration::from_millis(80) && wait <= Duration::from_millis(100), "{wait:?}");
        let wait = bucket.take(1);
        assert!(wait > Duration::from_millis(180) && wait <= Duration::from_millis(200), "{wait:?}");
    }

    #[test]
    fn rate_zero_is_no_limit_and_big_costs_are_capped_at_the_burst() {
        let mut free = Bucket::new(0, 0);
        assert_eq!(free.take(u64::MAX), Duration::ZERO);
        let mut bytes = Bucket::new(1000, 2000);
        assert_eq!(bytes.take(1_000_000), Duration::ZERO, "a single large request fits the burst");
        let wait = bytes.take(1000);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
    }
}
