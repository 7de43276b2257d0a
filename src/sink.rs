//! Writing a received file on its own thread, so the network thread never waits for the disk.
//!
//! Whoever receives a file (the relay for an upload, the client for a download) has two slow
//! jobs per chunk: take it off the socket (and hash it), and copy it into the file. On one thread
//! they add up; on two they overlap. A [`Sink`] owns the open file on a thread of its own and takes
//! chunks over a short bounded channel, so memory stays at a few chunks and a slow disk slows the
//! network thread down (the channel fills) instead of piling data up.
//!
//! This matters most on a virtual machine like this project's, where the first write to a page of
//! memory that the host has not backed yet is several times slower than the network copy.
//!
//! The relay's sinks also say how far they got ([`Sink::start_reporting`]): recipients may
//! download an upload while it arrives, and must never read past what is written.
//!
//! Errors are sticky: once a write fails, the thread stops and every later call reports failure;
//! [`Sink::finish`] returns the first error.

use std::fs::File;
use std::io::{self, Write};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Sender};

/// Chunks in flight between the network thread and the disk thread.
const DEPTH: usize = 4;

/// A file being written by its own thread.
pub struct Sink {
    to_disk: Option<Sender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<File>>>,
}

impl Sink {
    /// Starts the disk thread for `file` (already positioned where the next byte goes).
    pub fn start(file: File) -> io::Result<Sink> {
        Sink::start_reporting(file, 0, |_| {})
    }

    /// Like [`Sink::start`], and after each chunk is written, calls `report` on the disk thread
    /// with the file's length so far (`start`, the bytes already there, plus what it wrote).
    /// `report` must be quick: it runs between two writes.
    pub fn start_reporting(
        file: File,
        start: u64,
        report: impl Fn(u64) + Send + 'static,
    ) -> io::Result<Sink> {
        let (to_disk, chunks) = bounded::<Vec<u8>>(DEPTH);
        let thread = thread::Builder::new().name("disk".into()).spawn(move || {
            let mut file = file;
            let mut written = start;
            for chunk in chunks {
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                report(written);
            }
            Ok(file)
        })?;
        Ok(Sink { to_disk: Some(to_disk), thread: Some(thread) })
    }

    /// Hands a chunk to the disk thread; blocks while it has `DEPTH` chunks to write. Fails if
    /// the disk thread has stopped (call [`Sink::finish`] for its error).
    pub fn write(&self, chunk: Vec<u8>) -> io::Result<()> {
        let to_disk = self.to_disk.as_ref().ok_or_else(|| io::Error::other("the file is closed"))?;
        to_disk.send(chunk).map_err(|_| io::Error::other("the disk writer stopped"))
    }

    /// Waits until every chunk is written and returns the file, or the first write error.
    pub fn finish(mut self) -> io::Result<File> {
        self.to_disk.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the disk writer panicked")),
            None => Err(io::Error::other("the file is closed")),
        }
    }
}

impl Drop for Sink {
    /// Abandoning a sink still waits for its thread, so the file is closed when `drop` returns
    /// (the caller may delete or rename it right after).
    fn drop(&mut self) {
        self.to_disk.take();
        if let Some(thread) = self.thread.take() {
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
        let sink = Sink::start(File::create(&path).unwrap()).unwrap();
        for i in 0..100u8 {
            sink.write(vec![i; 1000]).unwrap();
        }
        sink.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 100_000);
        assert!(data.chunks(1000).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        let _ = std::fs::remove_file(&path);

        // A read-only file: the first write fails, and the error comes back from `finish`.
        let read_only = File::open("/dev/null").unwrap();
        let sink = Sink::start(read_only).unwrap();
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
