//! What can be wrong with bytes that claim to be a frame.

use std::fmt;

/// Why bytes could not be decoded (or a frame could not be encoded).
///
/// "Not enough bytes yet" is *not* an error: [`decode`](super::decode) returns `Ok(None)` for it, because on a
/// stream it is the normal state between two reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix was 0: a frame needs at least its kind byte.
    Empty,
    /// The length prefix (or an encoded frame) exceeds [`MAX_FRAME_LEN`](super::MAX_FRAME_LEN).
    TooLarge { len: usize, max: usize },
    /// The kind byte names no frame.
    UnknownKind(u8),
    /// A field claims more bytes than the frame holds.
    Truncated { kind: u8 },
    /// The fields ended before the frame did.
    TrailingBytes { kind: u8, extra: usize },
    /// A string field is not valid UTF-8.
    BadUtf8 { kind: u8 },
    /// A yes/no field holds something other than 0 or 1.
    BadFlag { kind: u8, value: u8 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => write!(f, "empty frame (length 0)"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            FrameError::Truncated { kind } => {
                write!(f, "frame kind 0x{kind:02x}: a field runs past the end of the frame")
            }
            FrameError::TrailingBytes { kind, extra } => {
                write!(f, "frame kind 0x{kind:02x}: {extra} unexpected bytes after the last field")
            }
            FrameError::BadFlag { kind, value } => {
                write!(f, "frame kind 0x{kind:02x}: a yes/no field holds {value}, not 0 or 1")
            }
            FrameError::BadUtf8 { kind } => {
                write!(f, "frame kind 0x{kind:02x}: a text field is not valid UTF-8")
            }
        }
    }
}

impl std::error::Error for FrameError {}
