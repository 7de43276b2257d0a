//! docs/PROTOCOL.md must describe every frame kind and every error code the code knows: in a
//! teaching repo the docs are the content, and a kind or code added without its row would rot
//! the spec that other implementations are written from.

use relaychat::frame::{decode, encode_to_vec, ErrorCode, FileInfo, Frame};

fn protocol_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md")
}

/// One frame of every kind, and its name as the spec's table writes it. The `match` has no
/// wildcard, so a new variant does not compile until it is added here (and then to the spec).
fn every_kind() -> Vec<(Frame, &'static str)> {
    let info = FileInfo { file_id: 1, from: "a".into(), name: "f".into(), size: 1, sha256: Some([0; 32]) };
    let frames = vec![
        Frame::hello("a", "r"),
        Frame::say("hi"),
        Frame::Who,
        Frame::Goodbye,
        Frame::Welcome { name: "a".into(), room: "r".into() },
        Frame::Error { code: ErrorCode::Protocol, message: "m".into() },
        Frame::Chat { id: 1, from: "a".into(), to: String::new(), sent_at_ms: 0, mark: 0, text: "t".into() },
        Frame::Joined { name: "a".into(), room: "r".into() },
        Frame::Left { name: "a".into(), room: "r".into() },
        Frame::Online { room: "r".into(), names: vec![], more: false },
        Frame::Crowd { room: "r".into(), online: 1, joined: 1, left: 0 },
        Frame::UploadStart { key: "k".into(), name: "f".into(), size: 1, to: String::new() },
        Frame::UploadChunk { upload_id: 1, data: vec![1] },
        Frame::UploadEnd { upload_id: 1, sha256: [0; 32] },
        Frame::ListFiles,
        Frame::Download { file_id: 1, offset: 0 },
        Frame::Received { file_id: 1 },
        Frame::UploadReady { upload_id: 1, offset: 0 },
        Frame::UploadDone { upload_id: 1, file_id: 1 },
        Frame::UploadFailed { upload_id: 1, code: ErrorCode::Storage, message: "m".into() },
        Frame::NewFile(info.clone()),
        Frame::FileList { files: vec![info], more: false },
        Frame::DownloadChunk { file_id: 1, data: vec![1] },
        Frame::DownloadEnd { file_id: 1, sha256: [0; 32] },
        Frame::DownloadFailed { file_id: 1, code: ErrorCode::Storage, message: "m".into() },
        Frame::FileExpired { from: "a".into(), name: "f".into() },
        Frame::Leave,
        Frame::Seen { message_id: 1 },
        Frame::Ping,
        Frame::Pong,
        Frame::Sent { client_id: 1, message_id: 1 },
    ];
    frames
        .into_iter()
        .map(|frame| {
            let name = match &frame {
                Frame::Hello { .. } => "Hello",
                Frame::Say { .. } => "Say",
                Frame::Who => "Who",
                Frame::Goodbye => "Goodbye",
                Frame::Welcome { .. } => "Welcome",
                Frame::Error { .. } => "Error",
                Frame::Chat { .. } => "Chat",
                Frame::Joined { .. } => "Joined",
                Frame::Left { .. } => "Left",
                Frame::Online { .. } => "Online",
                Frame::Crowd { .. } => "Crowd",
                Frame::UploadStart { .. } => "UploadStart",
                Frame::UploadChunk { .. } => "UploadChunk",
                Frame::UploadEnd { .. } => "UploadEnd",
                Frame::ListFiles => "ListFiles",
                Frame::Download { .. } => "Download",
                Frame::Received { .. } => "Received",
                Frame::UploadReady { .. } => "UploadReady",
                Frame::UploadDone { .. } => "UploadDone",
                Frame::UploadFailed { .. } => "UploadFailed",
                Frame::NewFile(_) => "NewFile",
                Frame::FileList { .. } => "FileList",
                Frame::DownloadChunk { .. } => "DownloadChunk",
                Frame::DownloadEnd { .. } => "DownloadEnd",
                Frame::DownloadFailed { .. } => "DownloadFailed",
                Frame::FileExpired { .. } => "FileExpired",
                Frame::Leave => "Leave",
                Frame::Seen { .. } => "Seen",
                Frame::Ping => "Ping",
                Frame::Pong => "Pong",
                Frame::Sent { .. } => "Sent",
            };
            (frame, name)
        })
        .collect()
}

#[test]
fn every_frame_kind_has_its_row_in_the_spec() {
    let doc = protocol_doc();
    let kinds = every_kind();
    let mut bytes: Vec<u8> = kinds.iter().map(|(frame, _)| frame.kind()).collect();
    bytes.sort_unstable();
    bytes.dedup();
    assert_eq!(bytes.len(), kinds.len(), "two variants share a kind byte");
    for (frame, name) in kinds {
        // Each example round-trips, so the table describes frames that really decode.
        let encoded = encode_to_vec(&frame).unwrap();
        assert_eq!(decode(&encoded).unwrap().map(|(f, _)| f), Some(frame.clone()), "{name} round trip");
        let row = format!("| 0x{:02x} | {name} ", frame.kind());
        assert!(doc.contains(&row), "docs/PROTOCOL.md has no row `{row}`");
    }
}

#[test]
fn every_error_code_has_its_row_in_the_spec() {
    let doc = protocol_doc();
    let mut known = 0;
    for byte in 0..=u8::MAX {
        // The decoder maps a byte to the code it knows, or to `Other` when it knows none.
        let frame = Frame::Error { code: ErrorCode::Other(byte), message: String::new() };
        let encoded = encode_to_vec(&frame).unwrap();
        let Some((Frame::Error { code, .. }, _)) = decode(&encoded).unwrap() else {
            panic!("an error frame")
        };
        if matches!(code, ErrorCode::Other(_)) {
            continue;
        }
        known += 1;
        let name = format!("{code:?}");
        let row = doc
            .lines()
            .find(|line| line.starts_with(&format!("| {byte} ")))
            .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no row for error code {byte} ({name})"));
        assert!(row.contains(&name), "the row for code {byte} does not name {name}: {row}");
        // What an Error frame with this code does to the connection, as both ends decide it
        // (`ErrorCode::closes_connection`), must be what the row says. Codes that only ever
        // travel in UploadFailed / DownloadFailed (the connection stays) say so instead.
        if !row.contains("UploadFailed / DownloadFailed") {
            let closes = if code.closes_connection() { "closed" } else { "kept open" };
            assert!(row.contains(closes), "the row for {name} must say the connection is {closes}: {row}");
        }
    }
    assert!(known >= 30, "only {known} codes known: the walk is broken");
}
