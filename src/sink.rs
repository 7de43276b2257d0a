//! Receiving a file: hashing it and writing it on threads of their own, so the network thread
//! only takes bytes off the socket.
//!
//! Whoever receives a file (the relay for an upload, the client for a download) has three slow
//! jobs per chunk: take it off the socket (and decrypt it), hash it (SHA-256, about 1.8 GB/s on
//! one core here), and copy it into the file. On one thread they add up; as a pipeline of three
//! threads they overlap, and a machine with two cores uses both:
//!
//! ```text
//!  network thread ──chunks, bounded(3)──▶ hash thread ──chunks, bounded(3)──▶ disk thread ──▶ file
//!  (owns the socket)                      (owns the hasher)                   (owns the file)
//! ```
//!
//! Each channel is bounded and short, so memory stays at a few chunks and a slow disk slows the
//! network thread down (the channels fill) instead of piling data up. Each chunk is handed on,
//! never copied: the hash thread passes the same buffer to the disk thread.
//!
//! This matters most on a virtual machine like this project's, where the first write to a page of
//! memory that the host has not backed yet is several times slower than the network copy.
//!
//! Errors are sticky: once a write fails, the disk thread stops, the hash thread finds its
//! channel closed and stops too, and every later call reports failure; [`Sink::finish`] returns
//! the first error.

use std::fs::File;
use std::io::{self, Write};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest, Sha256};

/// Chunks waiting in each of the two channels.
const DEPTH: usize = 3;

/// A file being hashed and written by threads of its own.
pub struct Sink {
    to_hasher: Option<Sender<Vec<u8>>>,
    hasher: Option<JoinHandle<Option<Sha256>>>,
    disk: Option<JoinHandle<io::Result<()>>>,
}

impl Sink {
    /// Starts the hash and disk threads for `file` (already positioned where the next byte goes).
    /// `hasher` has seen every byte before that position (see [`crate::sha::hash_prefix`]).
    pub fn start(file: File, hasher: Sha256) -> io::Result<Sink> {
        let (to_disk, for_disk) = bounded::<Vec<u8>>(DEPTH);
        let disk = thread::Builder::new().name("disk".into()).spawn(move || write_all(file, for_disk))?;
        let (to_hasher, for_hasher) = bounded::<Vec<u8>>(DEPTH);
        let hashing =
            thread::Builder::new().name("hash".into()).spawn(move || hash_all(hasher, for_hasher, to_disk));
        // If the hash thread cannot start, dropping its closure closes the disk thread's channel.
        let hasher = match hashing {
            Ok(handle) => handle,
            Err(e) => {
                let _ = disk.join();
                return Err(e);
            }
        };
        Ok(Sink { to_hasher: Some(to_hasher), hasher: Some(hasher), disk: Some(disk) })
    }

    /// Hands a chunk on; blocks while the threads have a few chunks to do. Fails if they have
    /// stopped (call [`Sink::finish`] for the error).
    pub fn write(&self, chunk: Vec<u8>) -> io::Result<()> {
        let to_hasher = self.to_hasher.as_ref().ok_or_else(|| io::Error::other("the file is closed"))?;
        to_hasher.send(chunk).map_err(|_| io::Error::other("the disk writer stopped"))
    }

    /// Waits until every chunk is hashed and written; returns the SHA-256 of the whole file, or
    /// the first write error. The file is closed when this returns.
    pub fn finish(mut self) -> io::Result<[u8; 32]> {
        self.to_hasher.take();
        let hashed = self.hasher.take().map(JoinHandle::join);
        let written = self.disk.take().map(JoinHandle::join);
        match (hashed, written) {
            (_, Some(Ok(Err(e)))) => Err(e),
            (Some(Ok(Some(hasher))), Some(Ok(Ok(())))) => Ok(hasher.finalize().into()),
            (Some(Err(_)), _) | (_, Some(Err(_))) => Err(io::Error::other("a file thread panicked")),
            _ => Err(io::Error::other("the disk writer stopped")),
        }
    }
}

/// The hash thread: hashes each chunk and passes the same buffer on. Returns the hasher when its
/// channel closes, or `None` when the disk thread stopped first (its error is the one to report).
fn hash_all(mut hasher: Sha256, chunks: Receiver<Vec<u8>>, to_disk: Sender<Vec<u8>>) -> Option<Sha256> {
    for chunk in chunks {
        hasher.update(&chunk);
        to_disk.send(chunk).ok()?;
    }
    Some(hasher)
}

/// The disk thread: writes each chunk in order; stops at the first error.
fn write_all(mut file: File, chunks: Receiver<Vec<u8>>) -> io::Result<()> {
    for chunk in chunks {
        file.write_all(&chunk)?;
    }
    Ok(())
}

impl Drop for Sink {
    /// Abandoning a sink still waits for its threads, so the file is closed when `drop` returns
    /// (the caller may delete or rename it right after).
    fn drop(&mut self) {
        self.to_hasher.take();
        if let Some(thread) = self.hasher.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.disk.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_arrive_in_order_and_errors_surface() {
        let path = std::env::temp_dir().join(format!("relaychat-sink-{}", std::process::id()));
        let sink = Sink::start(File::create(&path).unwrap(), Sha256::new()).unwrap();
        for i in 0..100u8 {
            sink.write(vec![i; 1000]).unwrap();
        }
        let hash = sink.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&data)), "the hash of what was written");
        assert_eq!(data.len(), 100_000);
        assert!(data.chunks(1000).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        let _ = std::fs::remove_file(&path);

        // A read-only file: the first write fails, and the error comes back from `finish`.
        let read_only = File::open("/dev/null").unwrap();
        let sink = Sink::start(read_only, Sha256::new()).unwrap();
        let mut failed_early = false;
        for _ in 0..20 {
            if sink.write(vec![1; 10]).is_err() {
                failed_early = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(failed_early, "later writes see that the disk thread stopped");
        assert!(sink.finish().is_err());
    }
}
