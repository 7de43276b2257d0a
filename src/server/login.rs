//! Who may join: the relay's access password, and accounts.
//!
//! - **Access password** (`--access-password`): if the relay has one, every hello must carry it.
//! - **Accounts**: the first login with a name *and a password* claims the name; later logins
//!   with that name must give the same password. Only an argon2 hash is stored. A login without a
//!   password is a guest: allowed under a name nobody has claimed, refused under a claimed one.
//! - **Slowing down guessing**: the hub counts failed logins per IP address. From the fourth
//!   failure on, each attempt from that address waits (1 s, 2 s, 4 s, … up to 30 s) before its
//!   password is even checked; ten quiet minutes forget the count.
//!
//! Hashing is deliberately slow (that is what makes guessing expensive), so it runs here, on the
//! connection's own thread. The hub only looks hashes up and records claims, which are quick.

use std::net::IpAddr;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use crossbeam_channel::{bounded, Sender};
use sha2::{Digest, Sha256};

use super::hub::ToHub;
use crate::frame::ErrorCode;

/// Failures from one address before attempts are slowed down.
pub(crate) const FREE_FAILURES: u32 = 3;
/// The longest wait imposed on one attempt.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30);
/// Quiet time after which an address's failures are forgotten.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What the hub knows about a login attempt before the password is checked.
#[derive(Debug)]
pub(crate) struct AccountAnswer {
    /// The stored hash, if the name is claimed.
    pub hash: Option<String>,
    /// How long this address must wait before its attempt is checked.
    pub delay: Duration,
}

/// The delay for an address with `failures` recent failures: nothing for the first few, then
/// doubling from `base`, capped.
pub(crate) fn delay_for(failures: u32, base: Duration) -> Duration {
    if failures < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    base.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Checks a hello's credentials. `Ok(true)`: let them in as the account holder; `Ok(false)`: as
/// a guest. (The hub still checks that the name is not online already.)
pub(crate) fn authenticate(
    name: &str,
    password: &str,
    access: &str,
    ip: IpAddr,
    required_access: Option<&str>,
    to_hub: &Sender<ToHub>,
) -> Result<bool, (ErrorCode, String)> {
    let gone = || (ErrorCode::Protocol, "the relay is shutting down".to_string());
    let (reply, answer) = bounded(1);
    to_hub.send(ToHub::Account { name: name.to_owned(), ip, reply }).map_err(|_| gone())?;
    let answer: AccountAnswer = answer.recv().map_err(|_| gone())?;
    if !answer.delay.is_zero() {
        log::info!("{ip}: too many failed logins; waiting {:?} before checking", answer.delay);
        std::thread::sleep(answer.delay);
    }
    let outcome = check(name, password, access, required_access, answer.hash.as_deref(), to_hub);
    let _ = to_hub.send(ToHub::LoginResult { ip, ok: outcome.is_ok() });
    outcome
}

fn check(
    name: &str,
    password: &str,
    access: &str,
    required_access: Option<&str>,
    stored: Option<&str>,
    to_hub: &Sender<ToHub>,
) -> Result<bool, (ErrorCode, String)> {
    if let Some(required) = required_access {
        if !same_secret(access, required) {
            return Err((
                ErrorCode::AccessDenied,
                "this relay needs its access password (--access-password)".into(),
            ));
        }
    }
    match (stored, password.is_empty()) {
        (Some(hash), _) if verify(password, hash) => Ok(true),
        (Some(_), true) => {
            Err((ErrorCode::BadPassword, format!("the name {name:?} has an account; give its --password")))
        }
        (Some(_), false) => Err((ErrorCode::BadPassword, format!("wrong password for {name:?}"))),
        (None, true) => Ok(false), // a guest under an unclaimed name
        (None, false) => claim(name, password, to_hub).map(|()| true),
    }
}

/// First login with a password: hash it and record the account. If someone else claimed the
/// name in the meantime, the hub says so and this login fails.
fn claim(name: &str, password: &str, to_hub: &Sender<ToHub>) -> Result<(), (ErrorCode, String)> {
    let hash = hash_password(password)
        .map_err(|e| (ErrorCode::Storage, format!("cannot hash the password: {e}")))?;
    let (reply, answer) = bounded(1);
    let gone = || (ErrorCode::Protocol, "the relay is shutting down".to_string());
    to_hub.send(ToHub::Claim { name: name.to_owned(), hash, reply }).map_err(|_| gone())?;
    match answer.recv().map_err(|_| gone())? {
        true => {
            log::info!("account {name:?} claimed");
            Ok(())
        }
        false => Err((ErrorCode::BadPassword, format!("the name {name:?} was just claimed by someone else"))),
    }
}

/// An argon2id hash in PHC string form (algorithm, parameters, salt and hash in one string).
pub(crate) fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Compares two secrets in time that does not depend on where they differ: both are hashed first,
/// and the hashes compared byte by byte without stopping early.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash_password("秘密").unwrap();
        let b = hash_password("秘密").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a fresh salt every time");
        assert!(verify("秘密", &a) && verify("秘密", &b));
        assert!(!verify("secret", &a));
        assert!(!verify("秘密", "not a hash"));
    }

    #[test]
    fn delays_start_after_the_free_failures_and_are_capped() {
        let base = Duration::from_secs(1);
        assert_eq!(delay_for(0, base), Duration::ZERO);
        assert_eq!(delay_for(FREE_FAILURES - 1, base), Duration::ZERO);
        assert_eq!(delay_for(FREE_FAILURES, base), Duration::from_secs(1));
        assert_eq!(delay_for(FREE_FAILURES + 2, base), Duration::from_secs(4));
        assert_eq!(delay_for(1000, base), MAX_DELAY);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("door", "door"));
        assert!(!same_secret("door", "Door"));
        assert!(!same_secret("", "door"));
    }
}
