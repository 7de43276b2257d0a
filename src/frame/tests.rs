//! Unit tests for the codec: round trips, every split point, table-driven rejects, garbage.

use super::*;

/// One of every kind, with awkward contents: empty strings, Chinese, emoji, newlines.
fn samples() -> Vec<Frame> {
    vec![
        Frame::hello("alice", "lobby"),
        Frame::Hello {
            version: 0xffff,
            name: String::new(),
            room: String::new(),
            password: "秘密 pass".into(),
            access: "door".into(),
            token: "0123abcd".into(),
        },
        Frame::say("你好，世界 🎉"),
        Frame::Say { client_id: 77, to: "bob".into(), text: "line one\nline two".into() },
        Frame::say(""),
        Frame::Leave,
        Frame::Ping,
        Frame::Pong,
        Frame::Seen { message_id: 5 },
        Frame::Sent { client_id: 77, message_id: 5 },
        Frame::Who,
        Frame::Goodbye,
        Frame::Welcome { name: "张伟".into(), room: "501".into() },
        Frame::Error { code: ErrorCode::NameTaken, message: "name taken".into() },
        Frame::Error { code: ErrorCode::Other(200), message: "from the future".into() },
        Frame::Chat {
            id: 9,
            from: "bob".into(),
            to: String::new(),
            sent_at_ms: 1_700_000_000_123,
            mark: MARK_OFFLINE,
            text: "hi".into(),
        },
        Frame::Joined { name: "bob".into(), room: "lobby".into() },
        Frame::Left { name: "bob".into(), room: "lobby".into() },
        Frame::Online { room: "lobby".into(), names: vec![], more: false },
        Frame::Online { room: "lobby".into(), names: vec!["alice".into(), "bob".into()], more: true },
        Frame::Crowd { room: "lobby".into(), online: 5000, joined: 12, left: u32::MAX },
        Frame::UploadStart { key: "k1".into(), name: "报告.pdf".into(), size: 1 << 40, to: String::new() },
        Frame::UploadChunk { upload_id: 7, data: vec![0, 1, 2, 255] },
        Frame::UploadChunk { upload_id: 7, data: vec![] },
        Frame::UploadEnd { upload_id: 7, sha256: [0xab; 32] },
        Frame::ListFiles,
        Frame::Download { file_id: 3, offset: 12345 },
        Frame::Received { file_id: 3 },
        Frame::UploadReady { upload_id: 7, offset: 0 },
        Frame::UploadDone { upload_id: 7, file_id: 3 },
        Frame::UploadFailed { upload_id: 7, code: ErrorCode::QuotaExceeded, message: "over quota".into() },
        Frame::NewFile(info(3)),
        Frame::NewFile(FileInfo { sha256: None, ..info(4) }),
        Frame::FileList { files: vec![], more: false },
        Frame::FileList { files: vec![info(1), FileInfo { sha256: None, ..info(2) }], more: true },
        Frame::DownloadChunk { file_id: 3, data: vec![9; 100] },
        Frame::DownloadEnd { file_id: 3, sha256: [3; 32] },
        Frame::DownloadFailed { file_id: 3, code: ErrorCode::NoSuchFile, message: "gone".into() },
        Frame::FileExpired { from: "alice".into(), name: "旧.txt".into() },
    ]
}

fn info(file_id: u64) -> FileInfo {
    FileInfo {
        file_id,
        from: "alice".into(),
        name: "a b.txt".into(),
        size: 42,
        sha256: Some([file_id as u8; 32]),
    }
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
    rejects_bad_utf8: framed(&[SAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0xc3, 0x28])
        => FrameError::BadUtf8 { kind: SAY };
    rejects_string_longer_than_frame: framed(&[SAY, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, b'h', b'i'])
        => FrameError::Truncated { kind: SAY };
    rejects_missing_field: framed(&[HELLO, 0]) => FrameError::Truncated { kind: HELLO };
    rejects_trailing_bytes: framed(&[WHO, 1, 2]) => FrameError::TrailingBytes { kind: WHO, extra: 2 };
    rejects_lying_list_count: framed(&[ONLINE, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        => FrameError::Truncated { kind: ONLINE };
}

#[test]
fn chunk_frame_matches_the_general_encoder() {
    let data = b"some file bytes".to_vec();
    for (kind, frame) in [
        (UPLOAD_CHUNK, Frame::UploadChunk { upload_id: 99, data: data.clone() }),
        (DOWNLOAD_CHUNK, Frame::DownloadChunk { file_id: 99, data: data.clone() }),
    ] {
        let mut buf = vec![0; CHUNK_HEADER];
        buf.extend_from_slice(&data);
        chunk_frame(&mut buf, kind, 99).unwrap();
        assert_eq!(buf, encode_to_vec(&frame).unwrap());
    }
    let mut too_big = vec![0; CHUNK_HEADER + MAX_CHUNK_DATA + 1];
    assert!(matches!(chunk_frame(&mut too_big, UPLOAD_CHUNK, 1), Err(FrameError::TooLarge { .. })));
    let mut full = vec![0; CHUNK_HEADER + MAX_CHUNK_DATA];
    chunk_frame(&mut full, UPLOAD_CHUNK, 1).unwrap();
    assert!(decode(&full).unwrap().is_some(), "the largest chunk is a valid frame");
}

#[test]
fn a_chunk_cut_into_pieces_decodes_as_the_same_bytes() {
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let whole = encode_to_vec(&Frame::DownloadChunk { file_id: 7, data: data.clone() }).unwrap();
    let (kind, id, parts) = chunk_parts(&whole).unwrap();
    assert_eq!((kind, id, parts), (DOWNLOAD_CHUNK, 7, &data[..]));
    // Three pieces, each its own frame: the data joins up to the original.
    let mut stream = Vec::new();
    for piece in parts.chunks(400) {
        stream.extend_from_slice(&chunk_header(kind, id, piece.len()).unwrap());
        stream.extend_from_slice(piece);
    }
    let (mut joined, mut rest) = (Vec::new(), &stream[..]);
    while let Some((frame, used)) = decode(rest).unwrap() {
        match frame {
            Frame::DownloadChunk { file_id: 7, data } => joined.extend(data),
            other => panic!("{other:?}"),
        }
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(joined, data);
    // Anything but one whole chunk frame is not taken apart.
    assert_eq!(chunk_parts(&whole[..whole.len() - 1]), None, "cut short");
    assert_eq!(chunk_parts(&encode_to_vec(&Frame::say("hi")).unwrap()), None, "not a chunk");
    let mut two = whole.clone();
    two.extend_from_slice(&whole);
    assert_eq!(chunk_parts(&two), None, "two frames");
}

#[test]
fn largest_allowed_frame_is_accepted_and_one_more_byte_is_not() {
    // kind (1) + client id (8) + empty `to` (4) + text length (4) + text = MAX_FRAME_LEN
    let text = "x".repeat(MAX_FRAME_LEN - 17);
    let bytes = encode_to_vec(&Frame::say(&text)).unwrap();
    assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME_LEN);
    assert_eq!(decode(&bytes).unwrap().unwrap().0, Frame::say(&text));

    let mut out = vec![9, 9];
    let too_big = Frame::say(&"x".repeat(MAX_FRAME_LEN - 16));
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
            buf[4] =
                [HELLO, SAY, WHO, ERROR, CHAT, ONLINE, UPLOAD_START, UPLOAD_END, FILE_LIST, DOWNLOAD_FAILED]
                    [(rng.next() % 10) as usize];
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
