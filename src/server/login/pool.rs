//! The hash pool: a fixed number of threads that compute every argon2 hash, fed by a short
//! bounded queue.
//!
//! argon2 is slow and big on purpose (about 19 MiB and tens of milliseconds per hash with the
//! default parameters): that is what makes guessing passwords expensive. Run on each
//! connection's own thread, 150 simultaneous password logins would hold 150 × 19 MiB at once and
//! starve every other thread of CPU. Here at most `threads` hashes run at once, at most `queue`
//! wait, and a login that finds the queue full is told `LoginBusy` at once: it costs the relay
//! nothing but a short answer. Logins without a password (guests, identity tokens) never come
//! here, so they get in whatever the queue holds.
//!
//! Who owns what: the `Server` creates the pool and holds one [`HashPool`] (a sender); each
//! connection thread holds a clone while it checks its hello. The worker threads own the
//! receiving end and end when every sender is gone: `Server::run` drops its own after the
//! connection threads are joined, then joins the workers.

use std::fmt;
use std::io;
use std::thread::{self, JoinHandle};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// One piece of work for a hash thread, with where to send the answer.
enum Job {
    /// Hash a new password (a first login, or a first password for a machine-bound account).
    Hash { password: String, reply: Sender<Result<String, String>> },
    /// Check a password against a stored PHC string.
    Verify { password: String, hash: String, reply: Sender<bool> },
}

/// Why the pool did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// The queue is full: too many password checks right now.
    Busy,
    /// The pool has stopped (the relay is shutting down).
    Gone,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Busy => {
                f.write_str("too many logins are being checked right now; try again in a moment")
            }
            PoolError::Gone => f.write_str("the relay is shutting down"),
        }
    }
}

/// A handle on the hash pool: cheap to clone, one per connection thread that needs it.
#[derive(Clone)]
pub(crate) struct HashPool {
    jobs: Sender<Job>,
}

impl HashPool {
    /// Starts `threads` hash threads (at least one) behind a queue of `queue` jobs.
    pub(crate) fn start(threads: usize, queue: usize) -> io::Result<(HashPool, Vec<JoinHandle<()>>)> {
        // Bounded: the queue is the bound on waiting password checks (and on the passwords held
        // in memory while they wait, at most 1 KiB each).
        let (jobs, work) = bounded::<Job>(queue);
        let handles = (0..threads.max(1))
            .map(|i| {
                let work = work.clone();
                thread::Builder::new().name(format!("hash-{i}")).spawn(move || run_worker(work))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok((HashPool { jobs }, handles))
    }

    /// An argon2id hash of `password` in PHC string form. `Err(Ok(reason))` when hashing itself
    /// failed (the OS gave no randomness for the salt).
    pub(crate) fn hash(&self, password: &str) -> Result<Result<String, String>, PoolError> {
        let (reply, answer) = bounded(1);
        self.submit(Job::Hash { password: password.to_owned(), reply })?;
        answer.recv().map_err(|_| PoolError::Gone)
    }

    /// Whether `password` matches the stored `hash`.
    pub(crate) fn verify(&self, password: &str, hash: &str) -> Result<bool, PoolError> {
        let (reply, answer) = bounded(1);
        self.submit(Job::Verify { password: password.to_owned(), hash: hash.to_owned(), reply })?;
        answer.recv().map_err(|_| PoolError::Gone)
    }

    /// Queues a job without ever waiting for room: a full queue is an answer, not a wait.
    fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PoolError::Busy,
            TrySendError::Disconnected(_) => PoolError::Gone,
        })
    }
}

/// A hash thread: takes jobs until every [`HashPool`] is dropped. A caller that gave up (its
/// connection closed) simply does not read the answer.
fn run_worker(work: Receiver<Job>) {
    for job in work {
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(hash_password(&password).map_err(|e| e.to_string()));
            }
            Job::Verify { password, hash, reply } => {
                let _ = reply.send(verify(&password, &hash));
            }
        }
    }
}

/// An argon2id hash in PHC string form (algorithm, parameters, salt and hash in one string).
pub(crate) fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Checks a password against a PHC string. A string that does not parse matches nothing.
pub(crate) fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
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
    fn the_pool_answers_and_a_full_queue_is_busy_at_once() {
        let (pool, threads) = HashPool::start(1, 1).unwrap();
        let hash = pool.hash("pw").unwrap().unwrap();
        assert_eq!(pool.verify("pw", &hash), Ok(true));
        assert_eq!(pool.verify("nope", &hash), Ok(false));
        // Submit without waiting: one job runs, one waits, and the next is refused at once.
        let mut busy = false;
        let started = std::time::Instant::now();
        while !busy && started.elapsed() < std::time::Duration::from_secs(5) {
            let (reply, _answer) = bounded(1);
            busy = pool.submit(Job::Verify { password: "x".into(), hash: hash.clone(), reply })
                == Err(PoolError::Busy);
        }
        assert!(busy, "a full queue says busy instead of waiting");
        drop(pool); // the workers finish what is queued and end
        for t in threads {
            t.join().unwrap();
        }
    }
}
