//! The brake on password guessing: failed logins slow down later attempts, counted per address
//! *and* per account. Owned by the hub thread (no lock); the connection thread does the waiting.
//!
//! | count | what raises it | what clears it | wait it imposes |
//! | --- | --- | --- | --- |
//! | per address (IPv4, or IPv6 /64) | any failed login from there | nothing but time (10 quiet minutes) | after 3 failures: `base`, doubling, up to 30 s |
//! | per account | a failed login for that name | a login that proves the account (right password or its token) | after 3 failures: `base`, doubling, up to **2 s** |
//!
//! An attempt waits the longer of the two (on its own connection thread, see `login.rs`). Why
//! these rules:
//!
//! - A success never clears an *address's* count: otherwise a guesser would log in as a guest,
//!   or into an account of their own, between guesses, and the brake would never engage.
//! - Changing address escapes the address count, so each account has its own count too.
//! - But an account's brake is something anyone can pull, so it is capped at 2 s: the real user,
//!   from their own address, waits at most that long while someone guesses at their account; and
//!   a hello that carries the account's valid identity token skips the account's brake entirely.
//! - Guesses are also bounded in rate, whatever the counts, by the hash pool
//!   (`login/pool.rs`): at most a few dozen argon2 checks per second for the whole relay.
//!
//! Memory: entries are forgotten after 10 quiet minutes, and the maps are swept whenever they
//! double, so they hold at most the addresses and accounts that failed recently. Accounts are
//! only counted for names that are accounts, which are themselves capped per address per hour.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::server::login::Attempt;

/// Failures before attempts are slowed down.
pub(crate) const FREE_FAILURES: u32 = 3;
/// The longest wait the address brake imposes.
pub(crate) const MAX_ADDRESS_DELAY: Duration = Duration::from_secs(30);
/// The longest wait the account brake imposes: what the real user may be made to wait.
pub(crate) const MAX_ACCOUNT_DELAY: Duration = Duration::from_secs(2);
/// Quiet time after which failures are forgotten.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Entries a map may hold before its first sweep.
const FIRST_SWEEP: usize = 1024;

/// Failed logins, per address and per account.
pub(crate) struct Brake {
    /// The first wait; it doubles with each further failure.
    base: Duration,
    addresses: Counts<IpAddr>,
    accounts: Counts<String>,
    /// Never sent on; dropped with the hub. A connection thread that waits out a delay waits on a
    /// [`Brake::watch`] receiver, so the wait ends early when the hub goes (shutdown) instead of
    /// holding the relay up for as long as 30 s.
    _alive: Sender<()>,
    watch: Receiver<()>,
}

impl Brake {
    pub(crate) fn new(base: Duration) -> Brake {
        let (_alive, watch) = bounded(0);
        Brake { base, addresses: Counts::new(), accounts: Counts::new(), _alive, watch }
    }

    /// A receiver that is disconnected when the hub (and with it this brake) is gone.
    pub(crate) fn watch(&self) -> Receiver<()> {
        self.watch.clone()
    }

    /// How long an attempt from `address` (already cut to its counting key) must wait. `account`
    /// is the name when it is an account whose brake applies (not when a valid token was shown).
    pub(crate) fn delay(&mut self, address: IpAddr, account: Option<&str>, now: Instant) -> Duration {
        let by_address = delay_for(self.addresses.recent(&address, now), self.base, MAX_ADDRESS_DELAY);
        let by_account = match account {
            Some(name) => delay_for(self.accounts.recent(name, now), self.base, MAX_ACCOUNT_DELAY),
            None => Duration::ZERO,
        };
        by_address.max(by_account)
    }

    /// Records how a login from `address` for `name` ended.
    pub(crate) fn record(&mut self, address: IpAddr, name: &str, attempt: Attempt, now: Instant) {
        match attempt {
            Attempt::Failed { account } => {
                self.addresses.strike(address, now);
                if account {
                    self.accounts.strike(name.to_owned(), now);
                }
            }
            Attempt::Proved => self.accounts.clear(name),
            Attempt::Neutral => {}
        }
    }
}

/// The wait after `failures` recent failures: nothing for the first few, then doubling from
/// `base`, capped at `max`.
pub(crate) fn delay_for(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    base.saturating_mul(1 << doublings).min(max)
}

/// Recent failures per key: how many, and when the last one was.
struct Counts<K> {
    map: HashMap<K, (u32, Instant)>,
    /// Sweep out forgotten entries when the map reaches this size.
    sweep_at: usize,
}

impl<K: Hash + Eq> Counts<K> {
    fn new() -> Counts<K> {
        Counts { map: HashMap::new(), sweep_at: FIRST_SWEEP }
    }

    fn recent<Q>(&mut self, key: &Q, now: Instant) -> u32
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.get(key) {
            Some(&(count, last)) if now.saturating_duration_since(last) < FORGET_AFTER => count,
            Some(_) => {
                self.map.remove(key);
                0
            }
            None => 0,
        }
    }

    fn strike(&mut self, key: K, now: Instant) {
        let count = self.recent(&key, now);
        self.map.insert(key, (count.saturating_add(1), now));
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, &mut (_, last)| now.saturating_duration_since(last) < FORGET_AFTER);
            // Amortised: the next sweep waits until the map has doubled again.
            self.sweep_at = (self.map.len() * 2).max(FIRST_SWEEP);
        }
    }

    fn clear<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn fail(brake: &mut Brake, from: IpAddr, name: &str, now: Instant, times: u32) {
        for _ in 0..times {
            brake.record(from, name, Attempt::Failed { account: true }, now);
        }
    }

    #[test]
    fn delays_start_after_the_free_failures_and_are_capped() {
        assert_eq!(delay_for(0, BASE, MAX_ADDRESS_DELAY), Duration::ZERO);
        assert_eq!(delay_for(FREE_FAILURES - 1, BASE, MAX_ADDRESS_DELAY), Duration::ZERO);
        assert_eq!(delay_for(FREE_FAILURES, BASE, MAX_ADDRESS_DELAY), BASE);
        assert_eq!(delay_for(FREE_FAILURES + 2, BASE, MAX_ADDRESS_DELAY), 4 * BASE);
        assert_eq!(delay_for(1000, BASE, MAX_ADDRESS_DELAY), MAX_ADDRESS_DELAY);
        assert_eq!(delay_for(1000, BASE, MAX_ACCOUNT_DELAY), MAX_ACCOUNT_DELAY);
    }

    #[test]
    fn an_unrelated_success_resets_nothing() {
        let mut brake = Brake::new(BASE);
        let now = Instant::now();
        fail(&mut brake, ip(1), "alice", now, 6);
        let before = brake.delay(ip(1), Some("alice"), now);
        assert_eq!(before, 8 * BASE);
        // A guest login, or a login into the attacker's own account, from the same address.
        brake.record(ip(1), "guest", Attempt::Neutral, now);
        brake.record(ip(1), "mallory", Attempt::Proved, now);
        assert_eq!(brake.delay(ip(1), Some("alice"), now), before);
        assert_eq!(brake.delay(ip(1), None, now), before, "the address alone is still braked");
    }

    #[test]
    fn the_real_user_waits_at_most_two_seconds_and_not_at_all_with_a_token() {
        let mut brake = Brake::new(BASE);
        let now = Instant::now();
        // Guesses at alice from many addresses, a few each.
        for attacker in 10..60 {
            fail(&mut brake, ip(attacker), "alice", now, 2);
        }
        assert_eq!(brake.delay(ip(99), Some("alice"), now), MAX_ACCOUNT_DELAY, "alice's own address");
        assert_eq!(brake.delay(ip(99), None, now), Duration::ZERO, "with her token: no account brake");
        assert_eq!(brake.delay(ip(99), Some("bob"), now), Duration::ZERO, "other accounts are untouched");
        // Her success clears the account's count, not the attackers' addresses.
        brake.record(ip(99), "alice", Attempt::Proved, now);
        assert_eq!(brake.delay(ip(99), Some("alice"), now), Duration::ZERO);
        fail(&mut brake, ip(10), "alice", now, 1);
        assert_eq!(brake.delay(ip(10), None, now), BASE, "the address still remembers");
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_while_and_swept() {
        let mut brake = Brake::new(BASE);
        let start = Instant::now();
        fail(&mut brake, ip(1), "alice", start, 5);
        let later = start + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(brake.delay(ip(1), Some("alice"), later), Duration::ZERO);
        for n in 0..(FIRST_SWEEP as u32 * 3) {
            let from = IpAddr::from(n.to_be_bytes());
            brake.record(from, "x", Attempt::Failed { account: false }, start + FORGET_AFTER * (n / 1000));
        }
        assert!(
            brake.addresses.map.len() < FIRST_SWEEP * 2,
            "old entries were swept: {}",
            brake.addresses.map.len()
        );
    }
}
