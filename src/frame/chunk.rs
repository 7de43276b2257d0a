//! The fast path for file bytes: building chunk frames around data that is already in place.
//!
//! A general `encode` would copy every chunk's data into a fresh buffer. File data is the bulk of
//! what crosses the wire, so senders instead read the file straight into a buffer that leaves room
//! for the header, and fill the header in afterwards. The bytes are identical either way.

use super::{FrameError, LEN_PREFIX, MAX_FRAME_LEN};

/// Bytes in front of a chunk's data: length prefix, kind, id, data length.
pub const CHUNK_HEADER: usize = LEN_PREFIX + 1 + 8 + 4;

/// The largest data a chunk frame can carry.
pub const MAX_CHUNK_DATA: usize = MAX_FRAME_LEN - (CHUNK_HEADER - LEN_PREFIX);

/// Fills in the header of a chunk frame whose data already sits in `buf[CHUNK_HEADER..]`.
///
/// This is the fast path for file bytes: the sender reads the file straight into the buffer after
/// the header space, calls this, and writes the buffer. The bytes are identical to
/// `encode(&Frame::UploadChunk { .. })` (or `DownloadChunk` with [`DOWNLOAD_CHUNK`]), without a copy.
pub fn chunk_frame(buf: &mut [u8], kind: u8, id: u64) -> Result<(), FrameError> {
    let data_len = buf.len().checked_sub(CHUNK_HEADER).ok_or(FrameError::Truncated { kind })?;
    if data_len > MAX_CHUNK_DATA {
        return Err(FrameError::TooLarge { len: data_len + CHUNK_HEADER - LEN_PREFIX, max: MAX_FRAME_LEN });
    }
    let n = (buf.len() - LEN_PREFIX) as u32; // <= MAX_FRAME_LEN, checked above
    buf[..4].copy_from_slice(&n.to_be_bytes());
    buf[4] = kind;
    buf[5..13].copy_from_slice(&id.to_be_bytes());
    buf[13..17].copy_from_slice(&(data_len as u32).to_be_bytes());
    Ok(())
}
