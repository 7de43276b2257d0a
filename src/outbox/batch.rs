//! The relay's writer threads' buffer ([`Batched`]): a burst of small frames leaves in few system
//! calls, as with a `BufWriter`, and the memory it grew for the burst goes once the burst is over.
//!
//! Why not `BufWriter`: its buffer is allocated once at its full size and kept for the whole
//! connection. The relay had one of 64 KiB per connection; untouched it cost little, but a single
//! long chat line (up to 64 KiB) copied through it made those pages resident for good. An
//! attacker who says one long line to a big room so added ~60 KiB to every connection in it,
//! more than an idle TLS connection costs in all (README, "Limits":
//! `tests/review_recent_attacks.rs` measures it). Here the buffer grows only as far as a burst
//! needs, and at the first flush after a quiet second ([`Bursts`]) it is let go, as the frame
//! reader's and the TLS stream's buffers are.

use std::fs::File;
use std::io::{self, IoSlice, Write};

use super::FileWrite;
use crate::wire::{Bursts, Stream};

/// Frames are gathered until this many bytes are waiting; a write at least this big goes
/// straight to the stream (after what was waiting), as `BufWriter::with_capacity(BATCH)` did.
const BATCH: usize = 64 * 1024;
/// A buffer this small is kept between bursts: a few chat lines' worth, so a quiet chat
/// connection does not allocate for every line.
const KEPT: usize = 4 * 1024;

/// A write buffer in front of a stream: see the module docs.
pub(crate) struct Batched<S> {
    inner: S,
    buf: Vec<u8>,
    /// When a flush last sent more than [`KEPT`] bytes.
    bursts: Bursts,
}

impl<S: Write> Batched<S> {
    pub(crate) fn new(inner: S) -> Batched<S> {
        Batched { inner, buf: Vec::new(), bursts: Bursts::new() }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Sends what is waiting (without flushing the stream itself).
    fn send_waiting(&mut self) -> io::Result<()> {
        if self.buf.len() > KEPT {
            self.bursts.seen();
        }
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl<S: Write> Write for Batched<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > BATCH {
            self.send_waiting()?;
        }
        if data.len() >= BATCH {
            return self.inner.write(data);
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    /// A chunk piece's header and data leave in one `writev` (see `outbox`, "Chat never waits
    /// behind file data"): a piece is bigger than [`BATCH`], so it is never copied here.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.buf.len() + total > BATCH {
            self.send_waiting()?;
        }
        if total >= BATCH {
            return self.inner.write_vectored(bufs);
        }
        bufs.iter().for_each(|b| self.buf.extend_from_slice(b));
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_waiting()?;
        if self.buf.capacity() > KEPT && self.bursts.over() {
            self.buf = Vec::new(); // the burst is over: see the module docs
        }
        self.inner.flush()
    }
}

/// What is waiting goes first, then the stream sends the header and the slice its own way
/// ([`Stream::write_file_slice`]: `sendfile` on plain TCP).
impl<S: Stream> FileWrite for Batched<S> {
    fn write_file_slice(&mut self, header: &[u8], file: &File, offset: u64, len: usize) -> io::Result<()> {
        self.flush()?;
        self.inner.write_file_slice(header, file, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small frames are gathered into one write; a burst's buffer is let go at the first flush
    /// after a quiet second; nothing is lost or reordered on the way.
    #[test]
    fn a_burst_is_gathered_and_its_buffer_goes_after_a_quiet_second() {
        let mut out = Batched::new(Vec::new());
        let mut sent = Vec::new();
        for n in 0..100u8 {
            out.write_all(&[n; 300]).unwrap();
            sent.extend_from_slice(&[n; 300]);
        }
        assert!(out.get_ref().len() < sent.len(), "the small frames waited to be sent together");
        out.flush().unwrap();
        assert!(out.buf.capacity() > KEPT, "the burst's buffer is kept while bursts may follow");

        std::thread::sleep(crate::wire::QUIET_AFTER + std::time::Duration::from_millis(100));
        out.write_all(b"hi").unwrap();
        sent.extend_from_slice(b"hi");
        out.flush().unwrap();
        assert!(out.buf.capacity() <= KEPT, "still {} bytes after a quiet second", out.buf.capacity());

        let big = vec![7u8; BATCH + 17];
        out.write_all(&[1, 2, 3]).unwrap();
        super::super::write_all_vectored(&mut out, &mut [IoSlice::new(&big[..17]), IoSlice::new(&big[17..])])
            .unwrap();
        out.flush().unwrap();
        sent.extend_from_slice(&[1, 2, 3]);
        sent.extend_from_slice(&big);
        assert!(out.buf.capacity() <= KEPT, "a piece bigger than a batch went straight through");
        assert!(out.get_ref() == &sent, "every byte, in order");
    }
}
