//! Deleting files on a thread of its own, so that the hub never waits for the disk.
//!
//! Unlinking a big file is not quick: the file system frees every extent and the kernel drops
//! every cached page of it (deleting a 1 GiB file took the hub 5–13% of its time in
//! `block_invalidate_folio`, in the files benchmark's profile). The hub owns the store, and while
//! it waits, every room's chat waits. So the store hands each path to delete to this thread
//! instead.
//!
//! - **Bounded**: the queue holds [`QUEUE`] paths. If it is full (thousands of files expiring at
//!   once), the store deletes that one itself: slower for the hub, but nothing is ever left
//!   behind and memory stays bounded.
//! - **Shutdown**: dropping the [`Remover`] (with the store, when the hub ends) closes the queue;
//!   the thread deletes what is still queued and ends, and the drop joins it. A crash in between
//!   leaves bytes that no database row claims, which the next start deletes (`Store::open`).
//! - **Order does not matter**: every path queued belongs to a row that is already gone or an
//!   upload that is already forgotten, and no new file or upload ever gets an old one's name.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Sender, TrySendError};

/// Paths the queue holds before the store deletes files itself.
pub(crate) const QUEUE: usize = 1024;

/// The deleting thread and its queue.
pub(crate) struct Remover {
    queue: Option<Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl Remover {
    pub(crate) fn start() -> io::Result<Remover> {
        let (queue, paths) = bounded::<PathBuf>(QUEUE);
        let thread = thread::Builder::new().name("remover".into()).spawn(move || {
            for path in paths {
                delete(&path);
            }
        })?;
        Ok(Remover { queue: Some(queue), thread: Some(thread) })
    }

    /// Deletes `path` soon, on the remover's thread (now, on this one, if its queue is full).
    pub(crate) fn remove(&self, path: PathBuf) {
        let Some(queue) = &self.queue else { return delete(&path) };
        match queue.try_send(path) {
            Ok(()) => {}
            Err(TrySendError::Full(path) | TrySendError::Disconnected(path)) => delete(&path),
        }
    }
}

/// A file that is already gone is fine; any other failure is logged (the next start's sweep
/// deletes the bytes if no row claims them).
fn delete(path: &std::path::Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("store: cannot delete {}: {e}", path.display()),
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.queue.take(); // the thread's loop ends once the queue is empty
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_files_are_deleted_and_dropping_waits_for_them() {
        let dir = std::env::temp_dir().join(format!("relaychat-remover-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let paths: Vec<PathBuf> = (0..QUEUE + 10).map(|i| dir.join(format!("{i}.bin"))).collect();
        for path in &paths {
            fs::write(path, b"x").unwrap();
        }
        let remover = Remover::start().unwrap();
        for path in &paths {
            remover.remove(path.clone()); // more than the queue holds: the rest inline
        }
        remover.remove(dir.join("never-existed.bin"));
        drop(remover);
        assert!(paths.iter().all(|p| !p.exists()), "every file is gone once the remover is dropped");
        fs::remove_dir(&dir).unwrap();
    }
}
