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
/// `encode(&Frame::UploadChunk { .. })` (or `DownloadChunk` with [`DOWNLOAD_CHUNK`](super::DOWNLOAD_CHUNK)), without a copy.
pub fn chunk_frame(buf: &mut [u8], kind: u8, id: u64) -> Result<(), FrameError> {
    let data_len = buf.len().checked_sub(CHUNK_HEADER).ok_or(FrameError::Truncated { kind })?;
    buf[..CHUNK_HEADER].copy_from_slice(&chunk_header(kind, id, data_len)?);
    Ok(())
}

/// The parts of an encoded chunk frame (`UploadChunk` or `DownloadChunk`): its kind, its
/// transfer id and its data. `None` when `bytes` is not exactly one well-formed chunk frame.
///
/// A writer uses this to send one big chunk as several smaller ones, with chat in between (see
/// `crate::outbox`): chunks carry no offset, so the receiver cannot tell the difference.
pub fn chunk_parts(bytes: &[u8]) -> Option<(u8, u64, &[u8])> {
    let header = bytes.get(..CHUNK_HEADER)?;
    let kind = header[4];
    if kind != super::UPLOAD_CHUNK && kind != super::DOWNLOAD_CHUNK {
        return None;
    }
    let frame_len = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
    let data_len = u32::from_be_bytes(header[13..17].try_into().ok()?) as usize;
    let id = u64::from_be_bytes(header[5..13].try_into().ok()?);
    let whole = bytes.len() == LEN_PREFIX + frame_len && bytes.len() == CHUNK_HEADER + data_len;
    whole.then(|| (kind, id, &bytes[CHUNK_HEADER..]))
}

/// The header of a chunk frame of `kind` for transfer `id` carrying `data_len` bytes (at most
/// [`MAX_CHUNK_DATA`]): the bytes to write just before the data.
pub fn chunk_header(kind: u8, id: u64, data_len: usize) -> Result<[u8; CHUNK_HEADER], FrameError> {
    if data_len > MAX_CHUNK_DATA {
        return Err(FrameError::TooLarge { len: data_len + CHUNK_HEADER - LEN_PREFIX, max: MAX_FRAME_LEN });
    }
    let mut header = [0u8; CHUNK_HEADER];
    header[..4].copy_from_slice(&((CHUNK_HEADER - LEN_PREFIX + data_len) as u32).to_be_bytes());
    header[4] = kind;
    header[5..13].copy_from_slice(&id.to_be_bytes());
    header[13..17].copy_from_slice(&(data_len as u32).to_be_bytes());
    Ok(header)
}
