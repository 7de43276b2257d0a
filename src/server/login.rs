//! Who may join: the relay's access password, accounts, identity tokens and look-alike names.
//!
//! - **Access password** (`--access-password`): if the relay has one, every hello must carry it.
//! - **Accounts** keep a name for someone: offline messages and files wait only for accounts.
//!   A name is claimed in one of two ways:
//!   - with a **password**: the first login with a name and a password claims it; later logins
//!     need the same password. Only an argon2 hash is stored.
//!   - with an **identity token** and no password: the terminal client and the window keep a
//!     random secret in their config dir and send a token derived from it for each relay
//!     (`client/identity.rs`). The first such hello claims the name for that token: a
//!     *machine-bound* account, with no setup at all. Later hellos must carry the same token, or
//!     the password if one was set (a hello with a valid token and a password sets the first
//!     password; a password login binds its token too). Tokens are stored as SHA-256 only.
//!
//!   A hello with neither is a **guest**: allowed under a name nobody has claimed, for the
//!   session only. New accounts per address are capped per hour: names are a resource.
//! - **Look-alikes**: a name whose UTS #39 confusable skeleton equals that of a different
//!   account's or online name ("аlice" with a Cyrillic а, "Alice" next to "alice") is refused.
//! - **The brake** (`hub/brake.rs`) slows guessing, per address and per account.
//!
//! ## Threads
//!
//! [`authenticate`] runs on the connection's own thread. It asks the hub what is stored for the
//! name and how long the brake says to wait ([`ToHub::Account`]), waits, decides, and tells the
//! hub how it went ([`ToHub::LoginResult`]). argon2 runs on the hash pool (`login/pool.rs`), never
//! on the connection thread and never on the hub. The hub's side (look-ups, the brake, recording a
//! claim) is [`answer`] and [`record`]: quick, because SQLite look-ups by index are.

mod pool;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use sha2::{Digest, Sha256};

use super::accept::address_key;
use super::hub::brake::Brake;
use super::hub::ToHub;
use super::store::{DbFailed, Store};
use super::ServerConfig;
use crate::frame::ErrorCode;

pub(crate) use pool::HashPool;

/// Longest account password in a hello. argon2 takes any length; the bound keeps a hello (and
/// the hash queue, which holds passwords while they wait) small.
pub(crate) const MAX_PASSWORD: usize = 1024;
/// Longest access password in a hello.
pub(crate) const MAX_ACCESS: usize = 1024;
/// Longest identity token. Ours are 64 hex digits; room is left for other clients' formats.
pub(crate) const MAX_TOKEN: usize = 128;
/// Shortest identity token: a token is a secret, and a short one could be guessed.
pub(crate) const MIN_TOKEN: usize = 32;
/// Over how long new accounts per address are counted.
pub(crate) const ACCOUNT_WINDOW: Duration = Duration::from_secs(3600);

/// A refusal: the error code for the client and a sentence for the person.
pub(crate) type Refusal = (ErrorCode, String);
/// SHA-256 of an identity token: all the relay keeps of it.
pub(crate) type TokenHash = [u8; 32];

/// What a hello offers.
pub(crate) struct Credentials<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub access: &'a str,
    pub token: &'a str,
}

/// What a connection thread needs to check a hello.
pub(crate) struct Door<'a> {
    pub ip: IpAddr,
    pub required_access: Option<&'a str>,
    pub to_hub: &'a Sender<ToHub>,
    pub pool: &'a HashPool,
}

/// The connection thread's question to the hub (see [`ToHub::Account`]).
#[derive(Debug)]
pub(crate) struct AccountQuery {
    pub name: String,
    pub ip: IpAddr,
    pub token: Option<TokenHash>,
}

/// What the hub knows about a login before any password is checked.
#[derive(Debug)]
pub(crate) struct AccountAnswer {
    pub standing: Standing,
    /// How long this attempt must wait before it is checked (the brake).
    pub delay: Duration,
    /// Disconnected when the hub is gone: the wait ends early at shutdown.
    pub hub_alive: Receiver<()>,
}

/// Whether a name is someone's.
#[derive(Debug)]
pub(crate) enum Standing {
    /// Nobody owns the name.
    Free {
        /// An account or online name this one looks like, if any: then it is refused.
        look_alike: Option<String>,
        /// Whether this address may still create an account this hour.
        may_create: bool,
    },
    /// The name is an account.
    Owned {
        /// Its password hash; `None` for a machine-bound account without a password.
        password_hash: Option<String>,
        /// The hello's token is one bound to this account.
        token_ok: bool,
    },
    /// The store could not be read. Refuse rather than let a name that may be an account in as
    /// a guest.
    Unknown,
}

/// Credentials to record for a name (see [`ToHub::Claim`]).
#[derive(Debug)]
pub(crate) struct Grant {
    pub name: String,
    pub ip: IpAddr,
    pub password_hash: Option<String>,
    pub token: Option<TokenHash>,
    /// True: create the account (it must still be free). False: the connection has proved it
    /// owns the account; add the password (if it has none) and bind the token.
    pub new: bool,
}

/// How recording a [`Grant`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimOutcome {
    Done,
    /// Someone claimed the name since the answer.
    Taken,
    /// A look-alike account or online name appeared since the answer.
    LooksLike(String),
    /// The address reached its hourly account cap since the answer.
    TooMany,
    /// The store failed.
    Failed,
}

/// How a login ended, for the brake (see `hub/brake.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Wrong credentials. `account`: the name is an account, so its count goes up too.
    Failed { account: bool },
    /// The hello proved it owns the account (password or token): that account's count is cleared.
    Proved,
    /// Nothing to learn: a guest, a new account, a refusal that is not a guess.
    Neutral,
}

/// The UTS #39 skeleton of a name, lowercased first: two names with the same skeleton look alike.
pub(crate) fn skeleton(name: &str) -> String {
    unicode_security::confusable_detection::skeleton(&name.to_lowercase()).collect()
}

/// SHA-256 of a token, as stored.
pub(crate) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks the lengths of a hello's secrets, before anything else is done with them.
pub(crate) fn check_lengths(password: &str, access: &str, token: &str) -> Result<(), Refusal> {
    let too_long =
        |what: &str, max: usize| (ErrorCode::FieldTooLong, format!("the {what} is longer than {max} bytes"));
    if password.len() > MAX_PASSWORD {
        return Err(too_long("password", MAX_PASSWORD));
    }
    if access.len() > MAX_ACCESS {
        return Err(too_long("access password", MAX_ACCESS));
    }
    if token.len() > MAX_TOKEN {
        return Err(too_long("identity token", MAX_TOKEN));
    }
    if !token.is_empty() && token.len() < MIN_TOKEN {
        return Err((ErrorCode::Protocol, format!("an identity token has at least {MIN_TOKEN} bytes")));
    }
    Ok(())
}

/// Checks a hello's credentials (on the connection thread). `Ok(true)`: let them in as the
/// account holder; `Ok(false)`: as a guest. (The hub still checks that the name is not online.)
pub(crate) fn authenticate(hello: &Credentials<'_>, door: &Door<'_>) -> Result<bool, Refusal> {
    let token = (!hello.token.is_empty()).then(|| token_hash(hello.token));
    let query = AccountQuery { name: hello.name.to_owned(), ip: door.ip, token };
    let answer: AccountAnswer = ask(door.to_hub, |reply| ToHub::Account { query, reply })?;
    if !answer.delay.is_zero() {
        log::info!("{}: too many failed logins; waiting {:?} before checking", door.ip, answer.delay);
        // Nothing is ever sent on it: this is a sleep that the hub's end cuts short.
        if answer.hub_alive.recv_timeout(answer.delay) != Err(RecvTimeoutError::Timeout) {
            return Err((ErrorCode::Protocol, "the relay is shutting down".into()));
        }
    }
    let (outcome, attempt) = decide(hello, token, answer.standing, door);
    let _ = door.to_hub.send(ToHub::LoginResult { ip: door.ip, name: hello.name.to_owned(), attempt });
    outcome
}

fn decide(
    hello: &Credentials<'_>,
    token: Option<TokenHash>,
    standing: Standing,
    door: &Door<'_>,
) -> (Result<bool, Refusal>, Attempt) {
    if let Some(required) = door.required_access {
        if !same_secret(hello.access, required) {
            let why = "this relay needs its access password (--access-password)";
            return (Err((ErrorCode::AccessDenied, why.into())), Attempt::Failed { account: false });
        }
    }
    match standing {
        Standing::Unknown => {
            (Err((ErrorCode::Storage, "cannot read the accounts; try again later".into())), Attempt::Neutral)
        }
        Standing::Owned { password_hash, token_ok } => owned(hello, token, password_hash, token_ok, door),
        Standing::Free { look_alike: Some(other), .. } => {
            (Err(look_alike_refusal(hello.name, &other)), Attempt::Neutral)
        }
        Standing::Free { look_alike: None, may_create } => {
            (free(hello, token, may_create, door), Attempt::Neutral)
        }
    }
}

/// A hello for a name that is an account: the password decides if one was given (even with a
/// valid token: a person who typed a wrong password should hear so), else the token.
fn owned(
    hello: &Credentials<'_>,
    token: Option<TokenHash>,
    password_hash: Option<String>,
    token_ok: bool,
    door: &Door<'_>,
) -> (Result<bool, Refusal>, Attempt) {
    let name = hello.name;
    let failed =
        |message: String| (Err((ErrorCode::BadPassword, message)), Attempt::Failed { account: true });
    let busy = |e: pool::PoolError| (Err((ErrorCode::LoginBusy, e.to_string())), Attempt::Neutral);
    if !hello.password.is_empty() {
        match password_hash {
            Some(hash) => match door.pool.verify(hello.password, &hash) {
                Err(e) => return busy(e),
                Ok(false) => return failed(format!("wrong password for {name:?}")),
                Ok(true) => {
                    if let Some(token) = token.filter(|_| !token_ok) {
                        bind(door, name, None, Some(token));
                    }
                }
            },
            // The machine the account is bound to sets its first password: from now on the
            // password works from any machine.
            None if token_ok => match door.pool.hash(hello.password) {
                Err(e) => return busy(e),
                Ok(Err(e)) => return (Err((ErrorCode::Storage, e)), Attempt::Neutral),
                Ok(Ok(hash)) => {
                    bind(door, name, Some(hash), None);
                    log::info!("account {name:?} now has a password");
                }
            },
            None => {
                return failed(format!("the name {name:?} is bound to another machine and has no password"))
            }
        }
        return (Ok(true), Attempt::Proved);
    }
    if token_ok {
        return (Ok(true), Attempt::Proved);
    }
    match token {
        None => failed(format!("the name {name:?} has an account; give its --password")),
        Some(_) => failed(format!(
            "the name {name:?} has an account bound to another machine; give its --password, or copy that \
             machine's identity file"
        )),
    }
}

/// A hello for a name nobody owns: a password claims it, a token alone claims it for this
/// machine, neither is a guest.
fn free(
    hello: &Credentials<'_>,
    token: Option<TokenHash>,
    may_create: bool,
    door: &Door<'_>,
) -> Result<bool, Refusal> {
    let name = hello.name;
    let too_many = || {
        (
            ErrorCode::LoginBusy,
            "too many new accounts from your address in the last hour; try again later, or join as a guest \
             without a password"
                .to_string(),
        )
    };
    let new = |password_hash| Grant { name: name.to_owned(), ip: door.ip, password_hash, token, new: true };
    if !hello.password.is_empty() {
        if !may_create {
            return Err(too_many());
        }
        let hash = match door.pool.hash(hello.password) {
            Err(e) => return Err((ErrorCode::LoginBusy, e.to_string())),
            Ok(hash) => hash.map_err(|e| (ErrorCode::Storage, format!("cannot hash the password: {e}")))?,
        };
        return match claim(door, new(Some(hash)))? {
            ClaimOutcome::TooMany => Err(too_many()),
            outcome => claimed(name, outcome),
        };
    }
    if token.is_none() {
        return Ok(false); // a guest
    }
    // A machine-bound claim over the hourly cap still gets in, as a guest: the chat works, only
    // the name is not kept. (A password claim over the cap is refused instead: that person
    // expects their name to be protected.)
    if !may_create {
        log::info!("{}: {name} joins as a guest: this address created too many accounts this hour", door.ip);
        return Ok(false);
    }
    match claim(door, new(None))? {
        ClaimOutcome::TooMany => Ok(false),
        outcome => claimed(name, outcome),
    }
}

fn claimed(name: &str, outcome: ClaimOutcome) -> Result<bool, Refusal> {
    match outcome {
        ClaimOutcome::Done => {
            log::info!("account {name:?} claimed");
            Ok(true)
        }
        ClaimOutcome::Taken => {
            Err((ErrorCode::BadPassword, format!("the name {name:?} was just claimed by someone else")))
        }
        ClaimOutcome::LooksLike(other) => Err(look_alike_refusal(name, &other)),
        ClaimOutcome::TooMany | ClaimOutcome::Failed => {
            Err((ErrorCode::Storage, "cannot record the account; try again later".into()))
        }
    }
}

fn look_alike_refusal(name: &str, other: &str) -> Refusal {
    (ErrorCode::NameConfusable, format!("the name {name:?} looks too much like {other:?}; choose another"))
}

/// Asks the hub to record a claim and waits for the answer.
fn claim(door: &Door<'_>, grant: Grant) -> Result<ClaimOutcome, Refusal> {
    ask(door.to_hub, |reply| ToHub::Claim { grant, reply })
}

/// Adds credentials to an account this connection proved it owns. Best effort: the login
/// succeeds even if they cannot be stored.
fn bind(door: &Door<'_>, name: &str, password_hash: Option<String>, token: Option<TokenHash>) {
    let grant = Grant { name: name.to_owned(), ip: door.ip, password_hash, token, new: false };
    if let Ok(outcome) = claim(door, grant) {
        if outcome != ClaimOutcome::Done {
            log::warn!("{}: cannot add credentials to account {name:?}: {outcome:?}", door.ip);
        }
    }
}

/// Sends the hub a question built around a reply channel, and waits for the answer.
fn ask<T>(to_hub: &Sender<ToHub>, question: impl FnOnce(Sender<T>) -> ToHub) -> Result<T, Refusal> {
    let gone = || (ErrorCode::Protocol, "the relay is shutting down".to_string());
    let (reply, answer) = bounded(1);
    to_hub.send(question(reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())
}

// ---- The hub's side: quick look-ups, run on the hub thread. ----

/// Answers [`ToHub::Account`]: what is stored for the name, and the brake's delay for this
/// attempt. A valid token skips the account's brake (the real user on their own machine is never
/// slowed by someone guessing their password); the address's brake applies to every attempt.
pub(crate) fn answer(
    store: &Store,
    brake: &mut Brake,
    online: &HashMap<String, String>,
    config: &ServerConfig,
    query: AccountQuery,
) -> AccountAnswer {
    let standing = match store.account(&query.name) {
        Err(DbFailed) => Standing::Unknown,
        Ok(Some(account)) => Standing::Owned {
            token_ok: query.token.is_some_and(|t| account.tokens.iter().any(|stored| same_hash(stored, &t))),
            password_hash: account.password_hash,
        },
        Ok(None) => match (look_alike(store, online, &query.name), may_create(store, query.ip, config)) {
            (Ok(look_alike), Ok(may_create)) => Standing::Free { look_alike, may_create },
            _ => Standing::Unknown,
        },
    };
    let braked_account = match &standing {
        Standing::Owned { token_ok: false, .. } => Some(query.name.as_str()),
        _ => None,
    };
    let delay = brake.delay(address_key(query.ip), braked_account, Instant::now());
    AccountAnswer { standing, delay, hub_alive: brake.watch() }
}

/// Answers [`ToHub::Claim`]. A new account is checked again here, on the hub thread, where no
/// other login can slip in between the check and the insert.
pub(crate) fn record(
    store: &mut Store,
    online: &HashMap<String, String>,
    config: &ServerConfig,
    grant: Grant,
) -> ClaimOutcome {
    if !grant.new {
        return match store.bind_credentials(&grant) {
            Ok(()) => ClaimOutcome::Done,
            Err(DbFailed) => ClaimOutcome::Failed,
        };
    }
    let checks = (
        store.account(&grant.name),
        look_alike(store, online, &grant.name),
        may_create(store, grant.ip, config),
    );
    match checks {
        (Ok(Some(_)), _, _) => ClaimOutcome::Taken,
        (Ok(None), Ok(Some(other)), _) => ClaimOutcome::LooksLike(other),
        (Ok(None), Ok(None), Ok(false)) => ClaimOutcome::TooMany,
        (Ok(None), Ok(None), Ok(true)) => {
            match store.create_account(&grant, &skeleton(&grant.name), &origin(grant.ip)) {
                Ok(true) => ClaimOutcome::Done,
                Ok(false) => ClaimOutcome::Taken,
                Err(DbFailed) => ClaimOutcome::Failed,
            }
        }
        _ => ClaimOutcome::Failed,
    }
}

/// An account or online name, other than `name` itself, that looks like it. `online` maps the
/// skeleton of every online name to the name (kept by the hub as people join and leave), so this
/// is two look-ups, not a scan: with 5,000 people online, computing 5,000 skeletons for every
/// login made filling a room quadratic.
fn look_alike(
    store: &Store,
    online: &HashMap<String, String>,
    name: &str,
) -> Result<Option<String>, DbFailed> {
    let skeleton = skeleton(name);
    if let Some(account) = store.look_alike(name, &skeleton)? {
        return Ok(Some(account));
    }
    Ok(online.get(&skeleton).filter(|other| other.as_str() != name).cloned())
}

/// Whether `ip` may create another account now.
fn may_create(store: &Store, ip: IpAddr, config: &ServerConfig) -> Result<bool, DbFailed> {
    let since = crate::clock::now_ms().saturating_sub(ACCOUNT_WINDOW.as_millis() as u64);
    Ok(store.accounts_created_since(&origin(ip), since)? < config.accounts_per_address_per_hour)
}

/// How an address is recorded as an account's origin: its counting key (`accept.rs`), as text.
fn origin(ip: IpAddr) -> String {
    address_key(ip).to_string()
}

/// Compares two secrets in time that does not depend on where they differ: both are hashed first,
/// and the hashes compared byte by byte without stopping early.
fn same_secret(given: &str, expected: &str) -> bool {
    same_hash(&Sha256::digest(given.as_bytes()).into(), &Sha256::digest(expected.as_bytes()).into())
}

/// Compares two hashes without stopping at the first difference.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("door", "door"));
        assert!(!same_secret("door", "Door"));
        assert!(!same_secret("", "door"));
    }

    #[test]
    fn look_alike_names_share_a_skeleton() {
        assert_eq!(skeleton("alice"), skeleton("\u{0430}lice"), "Cyrillic а");
        assert_eq!(skeleton("Alice"), skeleton("alice"), "case");
        assert_eq!(skeleton("paypal"), skeleton("pаypаl"));
        assert_ne!(skeleton("alice"), skeleton("alicia"));
        assert_ne!(skeleton("bob"), skeleton("rob"));
    }

    #[test]
    fn hello_secrets_are_bounded() {
        let token = "t".repeat(64);
        assert_eq!(check_lengths("", "", ""), Ok(()));
        assert_eq!(check_lengths(&"p".repeat(MAX_PASSWORD), &"a".repeat(MAX_ACCESS), &token), Ok(()));
        let code = |r: Result<(), Refusal>| r.map_err(|(code, _)| code);
        assert_eq!(code(check_lengths(&"p".repeat(MAX_PASSWORD + 1), "", "")), Err(ErrorCode::FieldTooLong));
        assert_eq!(code(check_lengths("", &"a".repeat(MAX_ACCESS + 1), "")), Err(ErrorCode::FieldTooLong));
        assert_eq!(code(check_lengths("", "", &"t".repeat(MAX_TOKEN + 1))), Err(ErrorCode::FieldTooLong));
        assert_eq!(code(check_lengths("", "", "short")), Err(ErrorCode::Protocol));
    }

    #[test]
    fn tokens_are_kept_as_sha256() {
        let t = token_hash("x");
        assert_eq!(t[..4], [0x2d, 0x71, 0x16, 0x42], "SHA-256 of \"x\"");
        assert!(same_hash(&t, &token_hash("x")));
        assert!(!same_hash(&t, &token_hash("y")));
    }
}
