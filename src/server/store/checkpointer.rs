//! Checkpointing the database on a thread of its own, so that the hub does not wait for `fsync`.
//!
//! In WAL mode a commit is an append to `relay.db-wal`. Now and then a *checkpoint* copies the
//! log's pages back into `relay.db` and `fsync`s both files, so that the log can start over.
//! SQLite's default runs it inside the commit that takes the log past 1000 pages, on the thread
//! that committed: the hub. That commit waited 1–2 ms for the disk every few hundred messages,
//! and every room's chat waited with it: the relay benchmark's p99 was 1.5 ms against a p50 of
//! 37 µs.
//!
//! - **Who**: this thread, with a connection of its own to the same file. WAL lets a checkpoint
//!   run beside the hub's reads and writes (a *passive* checkpoint waits for no lock and holds
//!   none the hub's commits need), so the hub goes on while the disk works.
//! - **When**: every commit of the hub's connection rings a doorbell: a channel that holds one
//!   ring, so ringing never blocks and a hundred rings while the thread is busy are one. The
//!   thread then lets commits gather for [`GATHER`] and runs one passive checkpoint. A ring that
//!   comes meanwhile stays in the channel and brings the next round. (SQLite rings just *before*
//!   a commit's pages reach the log. The ring that starts a round is 100 ms older than its
//!   checkpoint; any later ring, such as that of a commit the checkpoint may have just missed,
//!   brings another round.)
//! - **Idle**: an idle relay commits almost nothing. The janitor's expiry check is a commit (it
//!   deletes nothing, but it is a transaction), so each check costs one wake-up and a checkpoint
//!   with nothing to copy; otherwise this thread sleeps.
//! - **Bound**: a passive checkpoint copies what the log holds when it starts; commits made
//!   meanwhile stay in the log, and the log starts over only once a checkpoint has caught up with
//!   every commit. A hub that never pauses (a benchmark's burst) does not let that happen, so the
//!   hub's connection keeps SQLite's own checkpoint as a backstop, at [`HUB_BACKSTOP_PAGES`]
//!   (16 MiB of log). By then this thread has copied nearly all of it; the hub's share is the
//!   tail and the `fsync`s. If this thread is checkpointing just then, the hub's attempt gives up
//!   at once and the next commit tries again, so the log can pass the backstop by what the hub
//!   writes meanwhile (18 MiB at most in the relay benchmark's burst).
//! - **Shutdown**: dropping the [`Checkpointer`] (the store does, before its own connection
//!   closes) drops the stop channel's sender, which ends the thread's wait at once, gathering
//!   included; the thread closes its connection and the drop joins it. Whichever connection
//!   closes last folds the log into the file and deletes it; here that is the hub's.
//!
//! A crash of the process loses nothing either way: with `synchronous=NORMAL` a commit is in the
//! log when the hub answers, and the next start replays the log, checkpointed or not. (A power
//! cut can lose the last commits that no checkpoint has synced yet: with this thread, those of
//! the last 100 ms or so, where SQLite's default left up to 1000 pages of them.)

use std::io;
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use super::db_error;

/// How long commits gather after a ring before the checkpoint runs. At most ten checkpoints
/// (each two `fsync`s) a second, however busy the hub.
pub(crate) const GATHER: Duration = Duration::from_millis(100);

/// Log pages (4 KiB each) past which a commit on the hub's connection checkpoints by itself: the
/// backstop that bounds the log when this thread cannot catch up (see the module docs).
pub(crate) const HUB_BACKSTOP_PAGES: u32 = 4096;

/// The size the log file goes back to after a burst (SQLite's `journal_size_limit`). A log that
/// grew during a burst would otherwise keep its size on disk for good, and the store counts that
/// size as spent (`Store::free_space`); SQLite truncates it at the first commit after the log
/// starts over.
pub(crate) const LOG_KEPT_BYTES: i64 = 4 << 20;

/// The checkpointing thread and the two ways to reach it.
pub(crate) struct Checkpointer {
    doorbell: Sender<()>,
    /// Never sent on: dropping it is the stop signal (a closed channel wakes every waiter).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` (already created and migrated by the
    /// hub's) and starts the thread.
    pub(crate) fn start(path: &Path) -> io::Result<Checkpointer> {
        let conn = Connection::open(path).map_err(db_error)?;
        // Its own page cache stays small: a checkpoint copies pages from the log to the file
        // through one page-sized buffer, not through the cache.
        conn.pragma_update(None, "cache_size", -64).map_err(db_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db_error)?;
        let (doorbell, rings) = bounded(1);
        let (stop, stopped) = bounded(0);
        let thread =
            thread::Builder::new().name("checkpointer".into()).spawn(move || run(conn, rings, stopped))?;
        Ok(Checkpointer { doorbell, stop: Some(stop), thread: Some(thread) })
    }

    /// What the hub's connection calls at each commit: rings, or finds a ring already waiting.
    pub(crate) fn ringer(&self) -> impl FnMut() + Send + 'static {
        let doorbell = self.doorbell.clone();
        move || {
            let _ = doorbell.try_send(());
        }
    }
}

/// The thread: wait for a ring, let commits gather, checkpoint, and again. Returns when
/// `stopped` is closed, at whatever point it is waiting.
fn run(conn: Connection, rings: Receiver<()>, stopped: Receiver<()>) {
    loop {
        select! {
            recv(rings) -> _ => {}
            recv(stopped) -> _ => return,
        }
        // Gathering is a wait on the stop channel: nothing is ever sent on it, so it either
        // times out (gathered) or finds the channel closed (stop).
        if stopped.recv_timeout(GATHER) != Err(RecvTimeoutError::Timeout) {
            return;
        }
        checkpoint(&conn);
    }
}

/// One passive checkpoint. It cannot fail for want of a lock (it waits for none: if another
/// checkpoint is running it copies nothing, and the next round does); anything else is logged,
/// and the next ring tries again.
fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match result {
        Ok((busy, log, copied)) => {
            log::debug!("store: checkpoint copied {copied} of {log} log pages (busy: {busy})")
        }
        Err(e) => log::warn!("store: checkpoint failed: {e}"),
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take(); // closes the stop channel: the thread's wait ends at once
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::db::Db;
    use std::time::Instant;

    /// The hub's commits reach `relay.db` itself (not just the log) soon after, although the
    /// hub's connection alone would not checkpoint before [`HUB_BACKSTOP_PAGES`]; and once both
    /// connections are closed, in the store's order, the log is folded in and gone.
    #[test]
    fn commits_are_checkpointed_by_the_thread_and_the_log_goes_at_the_end() {
        let dir = std::env::temp_dir().join(format!("relaychat-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.db");
        let db = Db::open(&path).unwrap();
        let checkpointer = Checkpointer::start(&path).unwrap();
        db.on_commit(checkpointer.ringer());
        let before = std::fs::metadata(&path).unwrap().len();

        // 300 commits of 2 KiB each: about 150 pages, far below the hub's backstop.
        db.conn.execute("CREATE TABLE filler (bytes BLOB)", []).unwrap();
        for _ in 0..300 {
            db.conn.execute("INSERT INTO filler VALUES (zeroblob(2048))", []).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let grown = loop {
            let len = std::fs::metadata(&path).unwrap().len();
            if len >= before + 600 * 1024 || Instant::now() > deadline {
                break len;
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert!(grown >= before + 600 * 1024, "relay.db stayed at {grown} bytes (was {before})");

        drop(checkpointer);
        drop(db);
        assert!(!dir.join("relay.db-wal").exists(), "the log outlived the store");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Dropping the checkpointer ends its thread at once, even in the middle of gathering, and
    /// while the hub's connection (holding the doorbell) lives on: shutdown never waits for the
    /// gathering to run out, and never hangs on a ring that nobody takes.
    #[test]
    fn dropping_it_stops_the_thread_at_once_even_while_it_gathers() {
        let dir = std::env::temp_dir().join(format!("relaychat-ckpt-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.db");
        let db = Db::open(&path).unwrap();
        for round in 0..5 {
            let checkpointer = Checkpointer::start(&path).unwrap();
            let mut ring = checkpointer.ringer();
            db.on_commit(checkpointer.ringer());
            ring();
            thread::sleep(Duration::from_millis(10)); // the thread is gathering now
            ring(); // and the bell is full again, as under a busy hub
            let dropping = Instant::now();
            drop(checkpointer);
            let took = dropping.elapsed();
            assert!(took < GATHER, "round {round}: the drop took {took:?}");
        }
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
