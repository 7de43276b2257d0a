//! Fuzz target `decode`: arbitrary bytes into [`relaychat::frame::decode`].
//!
//! The bytes are read as a stream of frames, one after another, the way a connection's reader
//! sees them. For every frame that decodes, it checks that
//!
//! - [`frame_size`] announced exactly the bytes `decode` used, within [`MAX_FRAME_LEN`];
//! - encoding the frame gives back exactly those bytes, and decoding them gives the same frame
//!   (for file chunks, the `chunk_frame` fast path gives the same bytes too);
//!
//! and where decoding stops, that `frame_size` agrees on why (not enough bytes, or the same
//! error), and that [`FrameReader`], the I/O loop around the codec, reads the same frames and stops
//! the same way. Any panic, in the codec or in these checks, is a finding.
//!
//! Run: `cargo fuzz run decode` from the repository root (see the README, "Fuzzing").
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaychat::frame::{
    chunk_frame, decode, encode_to_vec, frame_size, Frame, FrameError, CHUNK_HEADER, DOWNLOAD_CHUNK,
    LEN_PREFIX, MAX_FRAME_LEN, UPLOAD_CHUNK,
};
use relaychat::wire::{FrameReader, ReadError};

/// How decoding the bytes ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Every byte was used by whole frames.
    Clean,
    /// An unfinished frame of this many bytes was left.
    Partial(usize),
    /// The bytes can never become a frame.
    Bad(FrameError),
}

fuzz_target!(|data: &[u8]| {
    let (frames, end) = decode_all(data);
    check_reader_agrees(data, &frames, &end);
});

fn decode_all(data: &[u8]) -> (Vec<Frame>, End) {
    let mut frames = Vec::new();
    let mut rest = data;
    loop {
        let size = frame_size(rest);
        match decode(rest) {
            Ok(Some((frame, used))) => {
                assert_eq!(size, Ok(Some(used)), "frame_size disagrees with decode");
                assert!(used > LEN_PREFIX && used - LEN_PREFIX <= MAX_FRAME_LEN, "{used} bytes used");
                check_round_trip(&frame, &rest[..used]);
                frames.push(frame);
                rest = &rest[used..];
            }
            Ok(None) => {
                match size {
                    Ok(None) => assert!(rest.len() < LEN_PREFIX),
                    Ok(Some(n)) => assert!(n > rest.len() && n <= LEN_PREFIX + MAX_FRAME_LEN),
                    Err(e) => panic!("decode wants more bytes but frame_size says {e:?}"),
                }
                let end = if rest.is_empty() { End::Clean } else { End::Partial(rest.len()) };
                return (frames, end);
            }
            Err(e) => {
                match &size {
                    Err(size_error) => assert_eq!(&e, size_error),
                    Ok(Some(n)) => assert!(*n <= rest.len(), "a body error before the body was there"),
                    Ok(None) => panic!("decode failed on {} bytes, fewer than a prefix", rest.len()),
                }
                assert!(!e.to_string().is_empty());
                return (frames, End::Bad(e));
            }
        }
    }
}

fn check_round_trip(frame: &Frame, bytes: &[u8]) {
    let encoded = match encode_to_vec(frame) {
        Ok(encoded) => encoded,
        Err(e) => panic!("a decoded frame does not re-encode: {e}"),
    };
    assert_eq!(encoded, bytes, "re-encoding changed the bytes");
    assert_eq!(decode(&encoded), Ok(Some((frame.clone(), encoded.len()))));
    let (kind, id, data) = match frame {
        Frame::UploadChunk { upload_id, data } => (UPLOAD_CHUNK, *upload_id, data),
        Frame::DownloadChunk { file_id, data } => (DOWNLOAD_CHUNK, *file_id, data),
        _ => return,
    };
    let mut fast = vec![0; CHUNK_HEADER];
    fast.extend_from_slice(data);
    assert_eq!(chunk_frame(&mut fast, kind, id), Ok(()));
    assert_eq!(fast, bytes, "chunk_frame and encode disagree");
}

/// The reader on top of the codec must see the same frames and end the same way.
fn check_reader_agrees(data: &[u8], frames: &[Frame], end: &End) {
    let mut reader = FrameReader::new(data);
    for want in frames {
        match reader.read_frame() {
            Ok(Some(got)) => assert_eq!(&got, want),
            other => panic!("FrameReader gave {other:?}, decode gave {want:?}"),
        }
    }
    match (reader.read_frame(), end) {
        (Ok(None), End::Clean) => {}
        (Err(ReadError::TruncatedAtEof { have }), End::Partial(left)) => assert_eq!(have, *left),
        (Err(ReadError::Frame(e)), End::Bad(want)) => assert_eq!(&e, want),
        (got, want) => panic!("FrameReader ended with {got:?}, decode with {want:?}"),
    }
}
