//! The field codec under every frame: how numbers, strings, lists and file entries are written,
//! and a cursor that reads them back, checking every length before it trusts it.

use super::{FileInfo, FrameError};

pub(super) fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Strings and lists longer than u32::MAX cannot fit in a frame anyway; saturating keeps the
    // arithmetic honest and the final size check in `encode` rejects the frame.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

pub(super) fn put_file_info(out: &mut Vec<u8>, info: &FileInfo) {
    out.extend_from_slice(&info.file_id.to_be_bytes());
    put_str(out, &info.from);
    put_str(out, &info.name);
    out.extend_from_slice(&info.size.to_be_bytes());
    // A flag says whether the hash follows: an arriving file has none yet.
    match &info.sha256 {
        Some(sha256) => {
            out.push(1);
            out.extend_from_slice(sha256);
        }
        None => out.push(0),
    }
}

/// A cursor over one payload. Every read checks the remaining length first, so malformed input
/// becomes [`FrameError::Truncated`] instead of a panic.
pub(super) struct Fields<'a> {
    pub(super) kind: u8,
    pub(super) rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if n > self.rest.len() {
            return Err(FrameError::Truncated { kind: self.kind });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(super) fn array<const K: usize>(&mut self) -> Result<[u8; K], FrameError> {
        let mut a = [0; K];
        a.copy_from_slice(self.take(K)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    /// A boolean byte: 0 or 1, anything else is refused.
    pub(super) fn flag(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(FrameError::BadFlag { kind: self.kind, value }),
        }
    }

    pub(super) fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub(super) fn file_info(&mut self) -> Result<FileInfo, FrameError> {
        Ok(FileInfo {
            file_id: self.u64()?,
            from: self.string()?,
            name: self.string()?,
            size: self.u64()?,
            sha256: if self.flag()? { Some(self.array()?) } else { None },
        })
    }

    pub(super) fn string(&mut self) -> Result<String, FrameError> {
        let bytes = self.bytes()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(FrameError::BadUtf8 { kind: self.kind }),
        }
    }

    pub(super) fn finish(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes { kind: self.kind, extra: self.rest.len() })
        }
    }
}
