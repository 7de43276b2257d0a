//! The one clock both ends read: milliseconds since the Unix epoch (UTC), the unit of the
//! protocol's timestamps (`Chat::sent_at_ms`) and of the relay's records. The relay stamps and
//! expires with it; the front ends turn it into local time (`display::clock`).

/// Milliseconds since the Unix epoch, now. A clock set before 1970 reads 0.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
