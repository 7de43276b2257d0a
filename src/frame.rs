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

mod chunk;
mod code;
mod error;
mod fields;

pub use chunk::{chunk_frame, chunk_header, chunk_parts, CHUNK_HEADER, MAX_CHUNK_DATA};
pub use code::ErrorCode;
pub use error::FrameError;
use fields::{put_bytes, put_file_info, put_str, put_u32, Fields};

/// The protocol version carried in [`Frame::Hello`]. The server refuses any other version.
pub const PROTOCOL_VERSION: u16 = 6;

/// The relay's port unless told otherwise: the seed project's, kept.
pub const DEFAULT_PORT: u16 = 21567;

/// Default data bytes per chunk the reference ends read from a file: 256 KiB. Large enough that
/// per-chunk costs (a system call, a channel hand-off, a header) vanish next to the copy itself.
/// (Writers send it as pieces of at most 64 KiB, so chat never waits long behind one: see
/// `crate::outbox`.) Chosen by measuring 64, 128 and 256 KiB with `cargo bench --bench files --
/// --sweep`; see the README. Both ends use it, so it lives here, beside the protocol, and a
/// client-only build needs nothing from `server`.
pub const DEFAULT_CHUNK: usize = 256 * 1024;

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
    /// `0x01` C→S. The first frame of every connection: who I am, which room I want, my account
    /// password (empty: none), the relay's access password (empty if it has none) and this
    /// machine's identity token for this relay (empty: none; see docs/PROTOCOL.md, "Identity").
    Hello { version: u16, name: String, room: String, password: String, access: String, token: String },
    /// `0x02` C→S. A line of chat: for everyone else in my room (`to` empty) or for one user.
    /// A non-zero `client_id` asks for a [`Frame::Sent`] receipt once the relay has stored the
    /// message, and makes a resend with the same id harmless.
    Say { client_id: u64, to: String, text: String },
    /// `0x03` C→S. Ask who is online in my room; answered with [`Frame::Online`].
    Who,
    /// `0x04` both ways. "I am leaving on purpose." The server sends it when it shuts down.
    Goodbye,
    /// `0x10` S→C. The hello was accepted; `name` and `room` are what the server registered.
    Welcome { name: String, room: String },
    /// `0x11` S→C. Something went wrong; `message` is meant for a human. Usually the server
    /// closes the connection right after.
    Error { code: ErrorCode, message: String },
    /// `0x12` S→C. Message `id` from `from`, stamped by the server (milliseconds since the Unix
    /// epoch). `to` is empty for the room, or the receiver's name for a direct message. `mark` says
    /// how it comes: [`MARK_LIVE`], [`MARK_OFFLINE`] (sent while you were away) or [`MARK_HISTORY`].
    Chat { id: u64, from: String, to: String, sent_at_ms: u64, mark: u8, text: String },
    /// `0x13` S→C. `name` entered `room`.
    Joined { name: String, room: String },
    /// `0x14` S→C. `name` left `room`.
    Left { name: String, room: String },
    /// `0x15` S→C. Everyone online in `room`, sorted, including the receiver. A long list comes
    /// in several frames: every one but the last has `more` set.
    Online { room: String, names: Vec<String>, more: bool },
    /// `0x21` S→C. Presence in a big room, where single joins and leaves are not announced (that
    /// would cost every member one frame per arrival: quadratic in the room's size). `online` is
    /// how many are in `room` now; `joined` and `left` count the arrivals and departures since
    /// the last count. Sent on joining a big room (instead of the online list) and then at most
    /// once a second while people come and go. See docs/PROTOCOL.md, "Big rooms".
    Crowd { room: String, online: u32, joined: u32, left: u32 },

    // ---- Files (store-and-forward). See docs/PROTOCOL.md for the whole conversation. ----
    /// `0x05` C→S. Start or resume an upload of `size` bytes. `key` is the client's name for this
    /// transfer, stable across reconnects, so the relay can resume it. `to` is a user name, or empty
    /// for everyone else in the sender's room.
    UploadStart { key: String, name: String, size: u64, to: String },
    /// `0x06` C→S. The next bytes of an upload.
    UploadChunk { upload_id: u64, data: Vec<u8> },
    /// `0x07` C→S. All bytes sent; `sha256` is the whole file's hash.
    UploadEnd { upload_id: u64, sha256: [u8; 32] },
    /// `0x08` C→S. Ask for the files waiting for me; answered with [`Frame::FileList`].
    ListFiles,
    /// `0x09` C→S. Send me file `file_id` from byte `offset` on.
    Download { file_id: u64, offset: u64 },
    /// `0x0a` C→S. I have file `file_id`, verified; the relay may forget it for me.
    Received { file_id: u64 },
    /// `0x16` S→C. Upload accepted: send bytes from `offset` on (non-zero when resuming).
    UploadReady { upload_id: u64, offset: u64 },
    /// `0x17` S→C. The relay stored the upload and its size and hash matched.
    UploadDone { upload_id: u64, file_id: u64 },
    /// `0x18` S→C. The upload failed; nothing of it is kept unless `code` allows a resume.
    UploadFailed { upload_id: u64, code: ErrorCode, message: String },
    /// `0x19` S→C. A file is waiting for you, or (with no `sha256` yet) is arriving on the relay
    /// right now and can be downloaded as it arrives.
    NewFile(FileInfo),
    /// `0x1a` S→C. Every file waiting for you, oldest first. A long list comes in several frames:
    /// every one but the last has `more` set.
    FileList { files: Vec<FileInfo>, more: bool },
    /// `0x1b` S→C. The next bytes of a download.
    DownloadChunk { file_id: u64, data: Vec<u8> },
    /// `0x1c` S→C. All bytes of the download were sent, and `sha256` is the hash the relay
    /// verified for the whole file: the receiver checks its own hash of the bytes against it.
    DownloadEnd { file_id: u64, sha256: [u8; 32] },
    /// `0x1d` S→C. The download cannot be served.
    DownloadFailed { file_id: u64, code: ErrorCode, message: String },
    /// `0x1e` S→C. A file that waited for you expired (`--retention`) before you received it.
    FileExpired { from: String, name: String },
    /// `0x0b` C→S. Leave my room for good: no more offline messages from it.
    Leave,
    /// `0x0c` C→S. I have the offline messages up to `message_id`; stop keeping them for me.
    Seen { message_id: u64 },
    /// `0x1f` S→C. The message with this `client_id` is stored as `message_id`.
    Sent { client_id: u64, message_id: u64 },
    /// `0x0d` C→S. "I am still here": a client sends it when it has sent nothing for a while, so
    /// that an idle connection is never silent for long (see docs/PROTOCOL.md, "Heartbeat").
    Ping,
    /// `0x20` S→C. The answer to a [`Frame::Ping`]: the relay is still here.
    Pong,
}

/// [`Frame::Chat`] marks.
pub const MARK_LIVE: u8 = 0;
/// Sent while the receiver was offline, delivered at its next login.
pub const MARK_OFFLINE: u8 = 1;
/// Part of the room's recent history, shown on joining.
pub const MARK_HISTORY: u8 = 2;

/// A file stored on the relay, as shown to its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The relay's number for the file.
    pub file_id: u64,
    /// Who sent it.
    pub from: String,
    /// Its name, already cleaned by the relay (clean it again before using it: see
    /// [`crate::filename::clean`]).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, or `None` while the file is still *arriving*: its sender is uploading it
    /// right now, and the relay has not verified it yet. An arriving file can be downloaded; its
    /// hash comes in the download's [`Frame::DownloadEnd`].
    pub sha256: Option<[u8; 32]>,
}

// Kind bytes. Client-to-server kinds start at 0x01, server-to-client kinds at 0x10, so a capture
// is easy to read; later features take the next free numbers.
const HELLO: u8 = 0x01;
const SAY: u8 = 0x02;
const WHO: u8 = 0x03;
const GOODBYE: u8 = 0x04;
const UPLOAD_START: u8 = 0x05;
/// Kind byte of [`Frame::UploadChunk`]; see [`chunk_frame`].
pub const UPLOAD_CHUNK: u8 = 0x06;
const UPLOAD_END: u8 = 0x07;
const LIST_FILES: u8 = 0x08;
const DOWNLOAD: u8 = 0x09;
const RECEIVED: u8 = 0x0a;
const LEAVE: u8 = 0x0b;
const SEEN: u8 = 0x0c;
const PING: u8 = 0x0d;
const WELCOME: u8 = 0x10;
const ERROR: u8 = 0x11;
const CHAT: u8 = 0x12;
const JOINED: u8 = 0x13;
const LEFT: u8 = 0x14;
const ONLINE: u8 = 0x15;
const UPLOAD_READY: u8 = 0x16;
const UPLOAD_DONE: u8 = 0x17;
const UPLOAD_FAILED: u8 = 0x18;
const NEW_FILE: u8 = 0x19;
const FILE_LIST: u8 = 0x1a;
/// Kind byte of [`Frame::DownloadChunk`]; see [`chunk_frame`].
pub const DOWNLOAD_CHUNK: u8 = 0x1b;
const DOWNLOAD_END: u8 = 0x1c;
const DOWNLOAD_FAILED: u8 = 0x1d;
const FILE_EXPIRED: u8 = 0x1e;
const SENT: u8 = 0x1f;
const PONG: u8 = 0x20;
const CROWD: u8 = 0x21;

impl Frame {
    /// A hello of this protocol version, as a guest of a relay without an access password.
    pub fn hello(name: &str, room: &str) -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            name: name.to_owned(),
            room: room.to_owned(),
            password: String::new(),
            access: String::new(),
            token: String::new(),
        }
    }

    /// Chat text for the room, with no receipt asked for (what a minimal client sends).
    pub fn say(text: &str) -> Frame {
        Frame::Say { client_id: 0, to: String::new(), text: text.to_owned() }
    }

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
            Frame::Crowd { .. } => CROWD,
            Frame::UploadStart { .. } => UPLOAD_START,
            Frame::UploadChunk { .. } => UPLOAD_CHUNK,
            Frame::UploadEnd { .. } => UPLOAD_END,
            Frame::ListFiles => LIST_FILES,
            Frame::Download { .. } => DOWNLOAD,
            Frame::Received { .. } => RECEIVED,
            Frame::UploadReady { .. } => UPLOAD_READY,
            Frame::UploadDone { .. } => UPLOAD_DONE,
            Frame::UploadFailed { .. } => UPLOAD_FAILED,
            Frame::NewFile(_) => NEW_FILE,
            Frame::FileList { .. } => FILE_LIST,
            Frame::DownloadChunk { .. } => DOWNLOAD_CHUNK,
            Frame::DownloadEnd { .. } => DOWNLOAD_END,
            Frame::DownloadFailed { .. } => DOWNLOAD_FAILED,
            Frame::FileExpired { .. } => FILE_EXPIRED,
            Frame::Leave => LEAVE,
            Frame::Seen { .. } => SEEN,
            Frame::Ping => PING,
            Frame::Pong => PONG,
            Frame::Sent { .. } => SENT,
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
        Frame::Hello { version, name, room, password, access, token } => {
            out.extend_from_slice(&version.to_be_bytes());
            put_str(out, name);
            put_str(out, room);
            put_str(out, password);
            put_str(out, access);
            put_str(out, token);
        }
        Frame::Say { client_id, to, text } => {
            out.extend_from_slice(&client_id.to_be_bytes());
            put_str(out, to);
            put_str(out, text);
        }
        Frame::Who | Frame::Goodbye | Frame::ListFiles | Frame::Leave | Frame::Ping | Frame::Pong => {}
        Frame::Seen { message_id } => out.extend_from_slice(&message_id.to_be_bytes()),
        Frame::Sent { client_id, message_id } => {
            out.extend_from_slice(&client_id.to_be_bytes());
            out.extend_from_slice(&message_id.to_be_bytes());
        }
        Frame::FileExpired { from: name, name: room }
        | Frame::Welcome { name, room }
        | Frame::Joined { name, room }
        | Frame::Left { name, room } => {
            put_str(out, name);
            put_str(out, room);
        }
        Frame::Error { code, message } => {
            out.push(code.to_byte());
            put_str(out, message);
        }
        Frame::Chat { id, from, to, sent_at_ms, mark, text } => {
            out.extend_from_slice(&id.to_be_bytes());
            put_str(out, from);
            put_str(out, to);
            out.extend_from_slice(&sent_at_ms.to_be_bytes());
            out.push(*mark);
            put_str(out, text);
        }
        Frame::Online { room, names, more } => {
            put_str(out, room);
            put_u32(out, names.len());
            for name in names {
                put_str(out, name);
            }
            out.push(u8::from(*more));
        }
        Frame::Crowd { room, online, joined, left } => {
            put_str(out, room);
            for count in [online, joined, left] {
                out.extend_from_slice(&count.to_be_bytes());
            }
        }
        Frame::UploadStart { key, name, size, to } => {
            put_str(out, key);
            put_str(out, name);
            out.extend_from_slice(&size.to_be_bytes());
            put_str(out, to);
        }
        Frame::UploadChunk { upload_id: id, data } | Frame::DownloadChunk { file_id: id, data } => {
            out.extend_from_slice(&id.to_be_bytes());
            put_bytes(out, data);
        }
        Frame::UploadEnd { upload_id, sha256 } => {
            out.extend_from_slice(&upload_id.to_be_bytes());
            out.extend_from_slice(sha256);
        }
        Frame::Download { file_id: a, offset: b }
        | Frame::UploadReady { upload_id: a, offset: b }
        | Frame::UploadDone { upload_id: a, file_id: b } => {
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&b.to_be_bytes());
        }
        Frame::Received { file_id } => out.extend_from_slice(&file_id.to_be_bytes()),
        Frame::DownloadEnd { file_id, sha256 } => {
            out.extend_from_slice(&file_id.to_be_bytes());
            out.extend_from_slice(sha256);
        }
        Frame::UploadFailed { upload_id: id, code, message }
        | Frame::DownloadFailed { file_id: id, code, message } => {
            out.extend_from_slice(&id.to_be_bytes());
            out.push(code.to_byte());
            put_str(out, message);
        }
        Frame::NewFile(info) => put_file_info(out, info),
        Frame::FileList { files, more } => {
            put_u32(out, files.len());
            for info in files {
                put_file_info(out, info);
            }
            out.push(u8::from(*more));
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
/// let bytes = encode_to_vec(&Frame::say("你好")).unwrap();
/// // Half a frame is not an error: the caller reads more and tries again.
/// assert_eq!(decode(&bytes[..5]), Ok(None));
/// // The whole frame decodes, and says how many bytes it used.
/// assert_eq!(decode(&bytes), Ok(Some((Frame::say("你好"), bytes.len()))));
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
        HELLO => Frame::Hello {
            version: f.u16()?,
            name: f.string()?,
            room: f.string()?,
            password: f.string()?,
            access: f.string()?,
            token: f.string()?,
        },
        SAY => Frame::Say { client_id: f.u64()?, to: f.string()?, text: f.string()? },
        WHO => Frame::Who,
        GOODBYE => Frame::Goodbye,
        WELCOME => Frame::Welcome { name: f.string()?, room: f.string()? },
        ERROR => Frame::Error { code: ErrorCode::from_byte(f.u8()?), message: f.string()? },
        CHAT => Frame::Chat {
            id: f.u64()?,
            from: f.string()?,
            to: f.string()?,
            sent_at_ms: f.u64()?,
            mark: f.u8()?,
            text: f.string()?,
        },
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
            Frame::Online { room, names, more: f.flag()? }
        }
        CROWD => Frame::Crowd { room: f.string()?, online: f.u32()?, joined: f.u32()?, left: f.u32()? },
        UPLOAD_START => {
            Frame::UploadStart { key: f.string()?, name: f.string()?, size: f.u64()?, to: f.string()? }
        }
        UPLOAD_CHUNK => Frame::UploadChunk { upload_id: f.u64()?, data: f.bytes()?.to_vec() },
        UPLOAD_END => Frame::UploadEnd { upload_id: f.u64()?, sha256: f.array()? },
        LIST_FILES => Frame::ListFiles,
        DOWNLOAD => Frame::Download { file_id: f.u64()?, offset: f.u64()? },
        RECEIVED => Frame::Received { file_id: f.u64()? },
        UPLOAD_READY => Frame::UploadReady { upload_id: f.u64()?, offset: f.u64()? },
        UPLOAD_DONE => Frame::UploadDone { upload_id: f.u64()?, file_id: f.u64()? },
        UPLOAD_FAILED => Frame::UploadFailed {
            upload_id: f.u64()?,
            code: ErrorCode::from_byte(f.u8()?),
            message: f.string()?,
        },
        NEW_FILE => Frame::NewFile(f.file_info()?),
        FILE_LIST => {
            let count = f.u32()?;
            let mut files = Vec::new(); // no with_capacity: `count` is untrusted (see ONLINE)
            for _ in 0..count {
                files.push(f.file_info()?);
            }
            Frame::FileList { files, more: f.flag()? }
        }
        DOWNLOAD_CHUNK => Frame::DownloadChunk { file_id: f.u64()?, data: f.bytes()?.to_vec() },
        DOWNLOAD_END => Frame::DownloadEnd { file_id: f.u64()?, sha256: f.array()? },
        DOWNLOAD_FAILED => Frame::DownloadFailed {
            file_id: f.u64()?,
            code: ErrorCode::from_byte(f.u8()?),
            message: f.string()?,
        },
        FILE_EXPIRED => Frame::FileExpired { from: f.string()?, name: f.string()? },
        LEAVE => Frame::Leave,
        SEEN => Frame::Seen { message_id: f.u64()? },
        PING => Frame::Ping,
        PONG => Frame::Pong,
        SENT => Frame::Sent { client_id: f.u64()?, message_id: f.u64()? },
        other => return Err(FrameError::UnknownKind(other)),
    };
    f.finish()?;
    Ok(frame)
}

#[cfg(test)]
mod tests;
