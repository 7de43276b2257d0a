//! The wire format: how a [`Frame`] becomes bytes and how bytes become a `Frame`.
//!
//! This module never touches a socket. It works on byte slices only, which is what makes it easy to
//! test (every frame is fed to the decoder split at every byte) and easy to reuse: the server, the
//! client, the benchmark and any future TLS transport all share the same codec. The thin I/O loop
//! around it lives in [`crate::wire`].
//!
//! ## Layout of one frame
//!
//! ```text
//! +----------------+--------+-------------------------+
//! | N: u32, BE     | kind   | payload (N - 1 bytes)   |
//! +----------------+--------+-------------------------+
//! ```
//!
//! `N` counts the kind byte and the payload. It must be between 1 and [`MAX_FRAME_LEN`]; the decoder
//! checks it as soon as the four length bytes have arrived, *before* it waits for (or anything
//! allocates) the rest. Inside a payload, integers are big-endian and every string is a `u32` byte
//! length followed by that many bytes of UTF-8. `docs/PROTOCOL.md` is the full specification.
//!
//! ## Why a length prefix?
//!
//! TCP is a byte stream, not a message stream: one `read` may return half a message or three of
//! them. The seed project assumed one `recv` = one message and broke as soon as a file was larger
//! than its 1024-byte buffer. A length prefix tells the reader exactly where each message ends, and
//! the kind byte means that nothing a user types can ever be mistaken for a command (the seed's
//! `#sendFile#` marker could be forged by typing it into the chat).

use std::fmt;

/// The protocol version carried in [`Frame::Hello`]. The server refuses any other version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest allowed `N` (kind byte + payload): 1 MiB.
///
/// A peer that announces more is broken or hostile; the decoder says [`FrameError::TooLarge`] without
/// buffering a single byte of the payload.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes taken by the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Every message that crosses the wire. `C→S` kinds are sent by clients, `S→C` kinds by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `0x01` C→S. The first frame of every connection: who I am and which room I want.
    Hello { version: u16, name: String, room: String },
    /// `0x02` C→S. A line of chat for everyone else in my room.
    Say { text: String },
    /// `0x03` C→S. Ask who is online in my room; answered with [`Frame::Online`].
    Who,
    /// `0x04` both ways. "I am leaving on purpose." The server sends it when it shuts down.
    Goodbye,
    /// `0x10` S→C. The hello was accepted; `name` and `room` are what the server registered.
    Welcome { name: String, room: String },
    /// `0x11` S→C. Something went wrong; `message` is meant for a human. Usually the server
    /// closes the connection right after.
    Error { code: ErrorCode, message: String },
    /// `0x12` S→C. Chat text from `from`, stamped by the server (milliseconds since the Unix epoch).
    Chat { from: String, sent_at_ms: u64, text: String },
    /// `0x13` S→C. `name` entered `room`.
    Joined { name: String, room: String },
    /// `0x14` S→C. `name` left `room`.
    Left { name: String, room: String },
    /// `0x15` S→C. Everyone online in `room`, sorted, including the receiver.
    Online { room: String, names: Vec<String> },
}

/// Why the server refused or ended a connection; carried in [`Frame::Error`].
///
/// Unknown codes decode as [`ErrorCode::Other`] so that an older client can still show the message
/// of a newer server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The hello carried a protocol version this server does not speak.
    VersionMismatch,
    /// Someone online already uses that name.
    NameTaken,
    /// The name breaks the naming rules (see [`crate::rules`]).
    BadName,
    /// The room name breaks the naming rules.
    BadRoom,
    /// The peer sent something that is not valid protocol (garbage, oversize, unknown kind...).
    Protocol,
    /// The peer did not read its messages fast enough and was dropped.
    TooSlow,
    /// The peer sent no hello in time.
    HelloTimeout,
    /// A text message broke the text rules (too long, empty).
    BadText,
    /// A code this build does not know.
    Other(u8),
}

impl ErrorCode {
    fn to_byte(self) -> u8 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::NameTaken => 2,
            ErrorCode::BadName => 3,
            ErrorCode::BadRoom => 4,
            ErrorCode::Protocol => 5,
            ErrorCode::TooSlow => 6,
            ErrorCode::HelloTimeout => 7,
            ErrorCode::BadText => 8,
            ErrorCode::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> ErrorCode {
        match b {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::NameTaken,
            3 => ErrorCode::BadName,
            4 => ErrorCode::BadRoom,
            5 => ErrorCode::Protocol,
            6 => ErrorCode::TooSlow,
            7 => ErrorCode::HelloTimeout,
            8 => ErrorCode::BadText,
            other => ErrorCode::Other(other),
        }
    }
}

/// Why bytes could not be decoded (or a frame could not be encoded).
///
/// "Not enough bytes yet" is *not* an error: [`decode`] returns `Ok(None)` for it, because on a
/// stream it is the normal state between two reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix was 0: a frame needs at least its kind byte.
    Empty,
    /// The length prefix (or an encoded frame) exceeds [`MAX_FRAME_LEN`].
    TooLarge { len: usize, max: usize },
    /// The kind byte names no frame.
    UnknownKind(u8),
    /// A field claims more bytes than the frame holds.
    Truncated { kind: u8 },
    /// The fields ended before the frame did.
    TrailingBytes { kind: u8, extra: usize },
    /// A string field is not valid UTF-8.
    BadUtf8 { kind: u8 },
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
            FrameError::BadUtf8 { kind } => {
                write!(f, "frame kind 0x{kind:02x}: a text field is not valid UTF-8")
            }
        }
    }
}

impl std::error::Error for FrameError {}

// Kind bytes. Client-to-server kinds start at 0x01, server-to-client kinds at 0x10, so a capture
// is easy to read; later features take the next free numbers.
const HELLO: u8 = 0x01;
const SAY: u8 = 0x02;
const WHO: u8 = 0x03;
const GOODBYE: u8 = 0x04;
const WELCOME: u8 = 0x10;
const ERROR: u8 = 0x11;
const CHAT: u8 = 0x12;
const JOINED: u8 = 0x13;
const LEFT: u8 = 0x14;
const ONLINE: u8 = 0x15;

impl Frame {
    /// The kind byte this frame is sent with.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => HELLO,
            Frame::Say { .. } => SAY,
            Frame::Who => WHO,
            Frame::Goodbye => GOODBYE,
            Frame::Welcome { .. } => WELCOME,
            Frame::Error { .. } => ERROR,
            Frame::Chat { .. } => CHAT,
            Frame::Joined { .. } => JOINED,
            Frame::Left { .. } => LEFT,
            Frame::Online { .. } => ONLINE,
        }
    }
}

/// Appends the encoding of `frame` to `out`.
///
/// Fails with [`FrameError::TooLarge`] (leaving `out` as it was) when the frame would exceed
/// [`MAX_FRAME_LEN`], so that a sender can never produce bytes its peer must reject.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    // Reserve the length prefix now and fill it in once the body's size is known.
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(frame.kind());
    match frame {
        Frame::Hello { version, name, room } => {
            out.extend_from_slice(&version.to_be_bytes());
            put_str(out, name);
            put_str(out, room);
        }
        Frame::Say { text } => put_str(out, text),
        Frame::Who | Frame::Goodbye => {}
        Frame::Welcome { name, room } | Frame::Joined { name, room } | Frame::Left { name, room } => {
            put_str(out, name);
            put_str(out, room);
        }
        Frame::Error { code, message } => {
            out.push(code.to_byte());
            put_str(out, message);
        }
        Frame::Chat { from, sent_at_ms, text } => {
            put_str(out, from);
            out.extend_from_slice(&sent_at_ms.to_be_bytes());
            put_str(out, text);
        }
        Frame::Online { room, names } => {
            put_str(out, room);
            put_u32(out, names.len());
            for name in names {
                put_str(out, name);
            }
        }
    }
    let len = out.len() - start - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    // `len <= MAX_FRAME_LEN` was just checked, so it fits in a u32.
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Convenience wrapper around [`encode`] that returns a fresh buffer.
pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode(frame, &mut out)?;
    Ok(out)
}

/// Reads the length prefix at the start of `buf`, if all four bytes are there, and checks it.
///
/// Returns the total size of the frame *including* the prefix. The reader uses this to know how
/// many bytes to wait for; the check against [`MAX_FRAME_LEN`] happens here, before anyone buffers
/// the payload.
pub fn frame_size(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut len_bytes = [0; LEN_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    Ok(Some(LEN_PREFIX + len))
}

/// Decodes one frame from the start of `buf`.
///
/// - `Ok(Some((frame, used)))`: a whole frame was there; it took `used` bytes of `buf`.
/// - `Ok(None)`: `buf` holds only part of a frame; read more bytes and call again.
/// - `Err(..)`: the bytes can never become a valid frame; the connection should be dropped.
///
/// This is the two-step approach: first check that a whole frame is buffered (cheap), then parse it.
///
/// ```
/// use relaychat::frame::{decode, encode_to_vec, Frame};
///
/// let bytes = encode_to_vec(&Frame::Say { text: "你好".into() }).unwrap();
/// // Half a frame is not an error: the caller reads more and tries again.
/// assert_eq!(decode(&bytes[..5]), Ok(None));
/// // The whole frame decodes, and says how many bytes it used.
/// assert_eq!(decode(&bytes), Ok(Some((Frame::Say { text: "你好".into() }, bytes.len()))));
/// ```
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(size) = frame_size(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(LEN_PREFIX..size) else {
        return Ok(None);
    };
    let frame = parse_body(body)?;
    Ok(Some((frame, size)))
}

/// Parses kind + payload. `body` is never empty: [`frame_size`] rejects `N == 0`.
fn parse_body(body: &[u8]) -> Result<Frame, FrameError> {
    let (&kind, payload) = body.split_first().ok_or(FrameError::Empty)?;
    let mut f = Fields { kind, rest: payload };
    let frame = match kind {
        HELLO => Frame::Hello { version: f.u16()?, name: f.string()?, room: f.string()? },
        SAY => Frame::Say { text: f.string()? },
        WHO => Frame::Who,
        GOODBYE => Frame::Goodbye,
        WELCOME => Frame::Welcome { name: f.string()?, room: f.string()? },
        ERROR => Frame::Error { code: ErrorCode::from_byte(f.u8()?), message: f.string()? },
        CHAT => Frame::Chat { from: f.string()?, sent_at_ms: f.u64()?, text: f.string()? },
        JOINED => Frame::Joined { name: f.string()?, room: f.string()? },
        LEFT => Frame::Left { name: f.string()?, room: f.string()? },
        ONLINE => {
            let room = f.string()?;
            let count = f.u32()?;
            // No `Vec::with_capacity(count)`: `count` came from the network. Each name needs at
            // least its 4-byte length, so a lying count fails with `Truncated` long before the
            // vector could grow large.
            let mut names = Vec::new();
            for _ in 0..count {
                names.push(f.string()?);
            }
            Frame::Online { room, names }
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    f.finish()?;
    Ok(frame)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Strings and lists longer than u32::MAX cannot fit in a frame anyway; saturating keeps the
    // arithmetic honest and the final size check in `encode` rejects the frame.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over one payload. Every read checks the remaining length first, so malformed input
/// becomes [`FrameError::Truncated`] instead of a panic.
struct Fields<'a> {
    kind: u8,
    rest: &'a [u8],
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

    fn array<const K: usize>(&mut self) -> Result<[u8; K], FrameError> {
        let mut a = [0; K];
        a.copy_from_slice(self.take(K)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(FrameError::BadUtf8 { kind: self.kind }),
        }
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes { kind: self.kind, extra: self.rest.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every kind, with awkward contents: empty strings, Chinese, emoji, newlines.
    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello { version: PROTOCOL_VERSION, name: "alice".into(), room: "lobby".into() },
            Frame::Hello { version: 0xffff, name: String::new(), room: String::new() },
            Frame::Say { text: "你好，世界 🎉".into() },
            Frame::Say { text: "line one\nline two".into() },
            Frame::Say { text: String::new() },
            Frame::Who,
            Frame::Goodbye,
            Frame::Welcome { name: "张伟".into(), room: "501".into() },
            Frame::Error { code: ErrorCode::NameTaken, message: "name taken".into() },
            Frame::Error { code: ErrorCode::Other(200), message: "from the future".into() },
            Frame::Chat { from: "bob".into(), sent_at_ms: 1_700_000_000_123, text: "hi".into() },
            Frame::Joined { name: "bob".into(), room: "lobby".into() },
            Frame::Left { name: "bob".into(), room: "lobby".into() },
            Frame::Online { room: "lobby".into(), names: vec![] },
            Frame::Online { room: "lobby".into(), names: vec!["alice".into(), "bob".into()] },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let bytes = encode_to_vec(&frame).unwrap();
            assert_eq!(decode(&bytes).unwrap(), Some((frame.clone(), bytes.len())), "{frame:?}");
        }
    }

    #[test]
    fn every_frame_split_at_every_byte_needs_more_then_decodes() {
        for frame in samples() {
            let bytes = encode_to_vec(&frame).unwrap();
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]).unwrap(), None, "{frame:?} cut at {cut}");
            }
            assert_eq!(decode(&bytes).unwrap().unwrap().0, frame);
        }
    }

    #[test]
    fn back_to_back_frames_decode_one_at_a_time() {
        let mut stream = Vec::new();
        for frame in samples() {
            encode(&frame, &mut stream).unwrap();
        }
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = decode(&stream[at..]).unwrap() {
            got.push(frame);
            at += used;
        }
        assert_eq!(at, stream.len());
        assert_eq!(got, samples());
    }

    /// Table-driven error cases: raw bytes in, the exact error out.
    macro_rules! rejects {
        ($($name:ident: $bytes:expr => $err:expr;)*) => {$(
            #[test]
            fn $name() {
                let bytes: Vec<u8> = $bytes;
                assert_eq!(decode(&bytes), Err($err));
            }
        )*};
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    rejects! {
        rejects_zero_length: vec![0, 0, 0, 0] => FrameError::Empty;
        rejects_oversize_prefix_with_no_payload: vec![0x00, 0x10, 0x00, 0x01]
            => FrameError::TooLarge { len: MAX_FRAME_LEN + 1, max: MAX_FRAME_LEN };
        rejects_huge_prefix: vec![0xff, 0xff, 0xff, 0xff]
            => FrameError::TooLarge { len: u32::MAX as usize, max: MAX_FRAME_LEN };
        rejects_unknown_kind: framed(&[0x7f]) => FrameError::UnknownKind(0x7f);
        rejects_bad_utf8: framed(&[SAY, 0, 0, 0, 2, 0xc3, 0x28]) => FrameError::BadUtf8 { kind: SAY };
        rejects_string_longer_than_frame: framed(&[SAY, 0, 0, 0, 9, b'h', b'i'])
            => FrameError::Truncated { kind: SAY };
        rejects_missing_field: framed(&[HELLO, 0]) => FrameError::Truncated { kind: HELLO };
        rejects_trailing_bytes: framed(&[WHO, 1, 2]) => FrameError::TrailingBytes { kind: WHO, extra: 2 };
        rejects_lying_list_count: framed(&[ONLINE, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
            => FrameError::Truncated { kind: ONLINE };
    }

    #[test]
    fn largest_allowed_frame_is_accepted_and_one_more_byte_is_not() {
        // kind (1) + string length (4) + text = MAX_FRAME_LEN
        let text = "x".repeat(MAX_FRAME_LEN - 5);
        let bytes = encode_to_vec(&Frame::Say { text: text.clone() }).unwrap();
        assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME_LEN);
        assert_eq!(decode(&bytes).unwrap().unwrap().0, Frame::Say { text });

        let mut out = vec![9, 9];
        let too_big = Frame::Say { text: "x".repeat(MAX_FRAME_LEN - 4) };
        assert_eq!(
            encode(&too_big, &mut out),
            Err(FrameError::TooLarge { len: MAX_FRAME_LEN + 1, max: MAX_FRAME_LEN })
        );
        assert_eq!(out, vec![9, 9], "a failed encode leaves the buffer as it was");
    }

    /// A tiny deterministic PRNG (xorshift64*) so the garbage test needs no extra crate and every
    /// failure can be replayed from its seed.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_garbage_never_panics_and_valid_results_re_encode() {
        let mut rng = XorShift(0x501_501_501);
        let mut buf = Vec::new();
        let mut decoded = 0;
        for _ in 0..200_000 {
            buf.clear();
            let len = (rng.next() % 48) as usize;
            for _ in 0..len {
                buf.push(rng.next() as u8);
            }
            // Bias half of the cases toward a plausible header so the payload parser gets
            // exercised, not just the length check.
            if len >= 5 && rng.next().is_multiple_of(2) {
                buf[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
                buf[4] = [HELLO, SAY, WHO, ERROR, CHAT, ONLINE][(rng.next() % 6) as usize];
            }
            if let Ok(Some((frame, used))) = decode(&buf) {
                decoded += 1;
                assert_eq!(encode_to_vec(&frame).unwrap(), buf[..used].to_vec());
            }
        }
        assert!(decoded > 0, "the biased cases should produce some valid frames");
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            FrameError::TooLarge { len: 5, max: 4 }.to_string(),
            "frame of 5 bytes exceeds the limit of 4 bytes"
        );
        assert_eq!(FrameError::UnknownKind(0x7f).to_string(), "unknown frame kind 0x7f");
    }
}
