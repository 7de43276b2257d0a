//! The harness's own tests, and the seed corpus for the fuzz targets (written by an ignored test).

use super::*;
use crate::frame::{ErrorCode, FileInfo, MARK_HISTORY};
use sha2::{Digest, Sha256};

/// Client frame sequences that reach the relay's interesting paths: the `relay_frames` seeds.
fn relay_seeds() -> Vec<(&'static str, Vec<Frame>)> {
    let data = b"hello, file".to_vec();
    let sha256: [u8; 32] = Sha256::digest(&data).into();
    let upload = |to: &str| Frame::UploadStart {
        key: "k1".into(),
        name: "a.txt".into(),
        size: data.len() as u64,
        to: to.into(),
    };
    vec![
        ("say", vec![Frame::say("hi"), Frame::Goodbye]),
        ("say-receipt-dm", vec![Frame::Say { client_id: 7, to: "watcher".into(), text: "psst".into() }]),
        ("say-offline", vec![Frame::Say { client_id: 1, to: "nobody".into(), text: "later".into() }]),
        ("say-blank", vec![Frame::say(" ")]),
        ("who-seen-leave", vec![Frame::Who, Frame::Seen { message_id: 1 }, Frame::Leave]),
        (
            "upload-room-hash-filled-in",
            vec![
                upload(""),
                Frame::UploadChunk { upload_id: 1, data: data.clone() },
                Frame::UploadEnd { upload_id: 1, sha256: [0; 32] },
            ],
        ),
        (
            "upload-self-download",
            vec![
                upload(NAME),
                Frame::UploadChunk { upload_id: 1, data: data.clone() },
                Frame::UploadEnd { upload_id: 1, sha256 },
                Frame::ListFiles,
                Frame::Download { file_id: 1, offset: 0 },
                Frame::Download { file_id: 1, offset: 3 },
            ],
        ),
        ("received-earlier", vec![Frame::Received { file_id: 0x8000 }, Frame::ListFiles]),
        ("upload-bad-hash", vec![upload("watcher"), Frame::UploadEnd { upload_id: 1, sha256: [0; 32] }]),
        ("chunk-unknown", vec![Frame::UploadChunk { upload_id: 99, data: vec![1, 2, 3] }]),
        ("download-missing", vec![Frame::Download { file_id: 42, offset: 0 }, Frame::ListFiles]),
        ("download-earlier-goodbye", vec![Frame::Download { file_id: 0x8000, offset: 0 }, Frame::Goodbye]),
        ("server-frame", vec![Frame::Welcome { name: "x".into(), room: "y".into() }]),
        ("hello-again", vec![Frame::hello("other", "attic")]),
    ]
}

/// One frame of every kind, some with awkward contents: the `decode` seeds.
fn decode_seeds() -> Vec<Frame> {
    let info = FileInfo {
        file_id: 3,
        from: "alice".into(),
        name: "报告.pdf".into(),
        size: 42,
        sha256: Some([7; 32]),
    };
    let mut frames: Vec<Frame> = relay_seeds().into_iter().flat_map(|(_, frames)| frames).collect();
    frames.extend([
        Frame::Hello {
            version: crate::frame::PROTOCOL_VERSION,
            name: "bob".into(),
            room: "lobby".into(),
            password: "秘密".into(),
            access: "door".into(),
            token: "ab".repeat(32),
        },
        Frame::Error { code: ErrorCode::NameTaken, message: "taken".into() },
        Frame::Chat {
            id: 9,
            from: "bob".into(),
            to: String::new(),
            sent_at_ms: 1_700_000_000_000,
            mark: MARK_HISTORY,
            text: "你好 🎉".into(),
        },
        Frame::Joined { name: "bob".into(), room: "lobby".into() },
        Frame::Left { name: "bob".into(), room: "lobby".into() },
        Frame::Online { room: "lobby".into(), names: vec!["alice".into(), "bob".into()], more: true },
        Frame::Crowd { room: "lobby".into(), online: 5000, joined: 12, left: 3 },
        Frame::UploadReady { upload_id: 1, offset: 0 },
        Frame::UploadDone { upload_id: 1, file_id: 3 },
        Frame::UploadFailed { upload_id: 1, code: ErrorCode::QuotaExceeded, message: "no".into() },
        Frame::NewFile(info.clone()),
        Frame::FileList { files: vec![info.clone(), info], more: false },
        Frame::DownloadChunk { file_id: 3, data: vec![0, 255, 1] },
        Frame::DownloadEnd { file_id: 3, sha256: [7; 32] },
        Frame::DownloadFailed { file_id: 3, code: ErrorCode::NoSuchFile, message: "gone".into() },
        Frame::FileExpired { from: "alice".into(), name: "old.txt".into() },
        Frame::Sent { client_id: 7, message_id: 1 },
    ]);
    frames.dedup();
    frames
}

fn encoded(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| encode_to_vec(f).expect("a seed frame encodes")).collect()
}

#[test]
fn every_seed_and_some_garbage_leave_the_relay_serving() {
    let start = Instant::now();
    for (name, frames) in relay_seeds() {
        let reply = relay_frames(&encoded(&frames));
        // The id and hash rewriting must let uploads finish and downloads run, every time.
        let done = reply.iter().any(|f| matches!(f, Frame::UploadDone { .. }));
        assert_eq!(done, name.starts_with("upload-room") || name.starts_with("upload-self"), "{name}");
        let downloaded = reply.iter().any(|f| matches!(f, Frame::DownloadEnd { .. }));
        assert_eq!(downloaded, name == "upload-self-download", "{name}: {reply:?}");
    }
    relay_frames(b"");
    relay_frames(&[0, 0, 0, 0]);
    relay_frames(&[0xff; 9]);
    let mut cut = encoded(&[Frame::say("half")]);
    cut.pop();
    relay_frames(&cut);
    assert!(start.elapsed() < Duration::from_secs(5), "no input may wait for its deadline");
}

/// Writes the seed corpus under `fuzz/corpus/`. Run it after changing the seeds:
/// `cargo test --lib write_seed_corpus -- --ignored`
#[test]
#[ignore = "writes files into fuzz/corpus; run on purpose"]
fn write_seed_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: String, bytes: Vec<u8>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    };
    for (n, frame) in decode_seeds().iter().enumerate() {
        write(
            "decode",
            format!("seed-{n:02}-kind-{:02x}", frame.kind()),
            encoded(std::slice::from_ref(frame)),
        );
    }
    for (name, frames) in relay_seeds() {
        write("relay_frames", format!("seed-{name}"), encoded(&frames));
    }
}
