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
//! slows the flooder's own connections; the rest of the relay never waits for it.
//!
//! The buckets belong to an *address* (IPv4, or IPv6 /64), not to a connection: every connection
//! from one machine shares them ([`SharedThrottle`], handed out by the accept thread), so opening
//! more connections, or reconnecting, buys no more rate. This is the one piece of state that
//! several connection threads share, so it sits behind a `Mutex`; each holds it only to do the
//! arithmetic, never while sleeping.
//!
//! The accept thread also keeps one bucket per address for *new connections*: every connection
//! costs a hello, maybe a password check, and a join and a leave notice to a whole room.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one `ListFiles` or `Who` costs in requests (at the default 500 a second: 10 lists a second).
pub(crate) const LIST_COST: u64 = 50;

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

    /// The tokens the bucket holds now: what it held, plus the refill since, up to `burst`.
    fn available(&self) -> f64 {
        (self.tokens + self.last.elapsed().as_secs_f64() * self.rate).min(self.burst)
    }

    /// Brings `tokens` up to now.
    fn refill(&mut self) {
        self.tokens = self.available();
        self.last = Instant::now();
    }

    /// Takes `cost` tokens if the bucket holds them (true), or leaves it as it is (false): for a
    /// request that is refused rather than slowed down.
    pub(crate) fn try_take(&mut self, cost: u64) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill();
        if self.tokens >= cost as f64 {
            self.tokens -= cost as f64;
            true
        } else {
            false
        }
    }

    /// True when the bucket has refilled completely (an address that has been quiet long enough
    /// to be forgotten).
    pub(crate) fn is_full(&self) -> bool {
        self.rate == 0.0 || self.available() >= self.burst
    }

    /// Takes `cost` tokens and says how long to wait before acting (zero if they were there). A
    /// cost above `burst` is charged as `burst`, so a single large request still goes through.
    pub(crate) fn take(&mut self, cost: u64) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        self.refill();
        self.tokens -= (cost as f64).min(self.burst);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The buckets of one address, shared by its connections.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    messages: Bucket,
    text_bytes: Bucket,
    requests: Bucket,
    password_checks: Bucket,
}

/// The buckets shared by every connection from one address.
pub(crate) type SharedThrottle = Arc<Mutex<Throttle>>;

/// Runs `take` on the shared buckets and sleeps for the wait it returns (without holding the lock).
pub(crate) fn pace(shared: &SharedThrottle, take: impl FnOnce(&mut Throttle) -> Duration) {
    let wait = {
        // A poisoned lock only means another connection panicked mid-arithmetic: the numbers
        // are still numbers.
        let mut throttle = shared.lock().unwrap_or_else(|e| e.into_inner());
        take(&mut throttle)
    };
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
}

/// The rates, from [`crate::server::ServerConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub msg_rate: u32,
    pub msg_burst: u32,
    pub text_rate: u32,
    pub text_burst: u32,
    pub request_rate: u32,
    pub password_rate: u32,
}

impl Rates {
    pub(crate) fn from_config(config: &crate::server::ServerConfig) -> Rates {
        Rates {
            msg_rate: config.msg_rate,
            msg_burst: config.msg_burst,
            text_rate: config.text_rate,
            text_burst: config.text_burst,
            request_rate: config.request_rate,
            password_rate: config.password_rate,
        }
    }
}

impl Throttle {
    /// A fresh set of buckets for one address, shareable by its connections.
    pub(crate) fn shared(r: Rates) -> SharedThrottle {
        Arc::new(Mutex::new(Throttle::new(r)))
    }

    pub(crate) fn new(r: Rates) -> Throttle {
        Throttle {
            messages: Bucket::new(r.msg_rate, r.msg_burst),
            text_bytes: Bucket::new(r.text_rate, r.text_burst),
            requests: Bucket::new(r.request_rate, r.request_rate.saturating_mul(2)),
            password_checks: Bucket::new(r.password_rate, r.password_rate.saturating_mul(5)),
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

    /// Whether this address may start another password check now.
    pub(crate) fn password_check(&mut self) -> bool {
        self.password_checks.try_take(1)
    }

    /// The wait before a list may be made: the files waiting (a query and the encoding of up to
    /// `files_per_recipient` entries) or who is online (in a big room, thousands of names). Either
    /// costs the hub far more than a ping, so it is charged as [`LIST_COST`] requests.
    pub(crate) fn list(&mut self) -> Duration {
        self.requests.take(LIST_COST)
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
