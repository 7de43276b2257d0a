//! Files through a real relay on loopback: chunked store-and-forward, SHA-256 checks, recipients,
//! hostile names, limits, corruption, and chat flowing during a transfer.

mod common;

use std::fs;
use std::time::Duration;

use common::client_config;
use common::{
    files_under, random_file, receive_into, wait_for, wait_until, wait_uploaded, TempDir, TestServer, WAIT,
};
use relaychat::client::{Client, ClientError, Event, DEFAULT_CHUNK};
use relaychat::frame::{ErrorCode, FileInfo, Frame};
use relaychat::server::{ServerConfig, StoreLimits};
use sha2::{Digest, Sha256};

/// File bytes on the relay (stored or in progress), not counting its database.
fn relay_bytes(server: &TestServer) -> Vec<std::path::PathBuf> {
    let dir = &server.data_dir.path;
    let mut all = files_under(&dir.join("files"));
    all.extend(files_under(&dir.join("tmp")));
    all
}

/// The next file offered as stored (with its hash); offers of files still arriving are skipped.
fn wait_new_file(client: &Client) -> relaychat::frame::FileInfo {
    wait_for(client, "a [Newfile] of a stored file", |e| match e {
        Event::NewFile(info) if info.sha256.is_some() => Some(info.clone()),
        _ => None,
    })
}

#[test]
fn every_size_arrives_intact() {
    let server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");
    let src = TempDir::new("src");
    let sizes = [0, 1, DEFAULT_CHUNK - 1, DEFAULT_CHUNK, DEFAULT_CHUNK + 1, 10 << 20];
    for (i, size) in sizes.into_iter().enumerate() {
        let path = random_file(&src.path, &format!("f{i}.bin"), size, i as u64 + 7);
        alice.send_file(&path, None).unwrap();
        assert_eq!(wait_uploaded(&alice, &format!("f{i}.bin")), size as u64);
        let info = wait_new_file(&bob);
        assert_eq!(
            (info.name.as_str(), info.size, info.from.as_str()),
            (format!("f{i}.bin").as_str(), size as u64, "alice")
        );
        assert_eq!(info.sha256, Some(common::sha256(&path)), "the relay reports the sender's hash");
    }
    let downloads = TempDir::new("dl");
    let (paths, failures) = receive_into(&bob, &downloads.path);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(paths.len(), sizes.len(), "several files in one receive");
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(path, &downloads.path.join(format!("f{i}.bin")));
        assert_eq!(common::sha256(path), common::sha256(&src.path.join(format!("f{i}.bin"))), "f{i}.bin");
    }
    wait_until("deleted from the relay once received", WAIT, || {
        relay_bytes(&server).is_empty().then_some(())
    });
    let leftovers: Vec<_> = files_under(&downloads.path).into_iter().filter(|p| !paths.contains(p)).collect();
    assert!(leftovers.is_empty(), "no .part files left: {leftovers:?}");
}

#[test]
fn two_recipients_each_get_it_and_it_stays_until_both_have() {
    let server = TestServer::start();
    let alice = server.client("alice", "501");
    let bob = server.client("bob", "501");
    let carol = server.client("carol", "501");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "报告 2024.pdf", 300_000, 1);
    alice.send_file(&path, None).unwrap();
    wait_uploaded(&alice, "报告 2024.pdf");
    assert_eq!(wait_new_file(&bob).name, "报告 2024.pdf", "Chinese names stay readable");
    wait_new_file(&carol);

    let bob_dl = TempDir::new("bob");
    let (paths, _) = receive_into(&bob, &bob_dl.path);
    assert_eq!(paths, vec![bob_dl.path.join("报告 2024.pdf")]);
    assert_eq!(common::sha256(&paths[0]), common::sha256(&path));
    let stored = |ext: &str| {
        files_under(&server.data_dir.path.join("files"))
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == ext))
    };
    assert!(stored("bin"), "kept for carol");

    let carol_dl = TempDir::new("carol");
    let (paths, _) = receive_into(&carol, &carol_dl.path);
    assert_eq!(common::sha256(&paths[0]), common::sha256(&path));
    wait_until("deleted after the last recipient", WAIT, || {
        files_under(&server.data_dir.path.join("files")).is_empty().then_some(())
    });
}

#[test]
fn to_an_offline_user_waits_for_their_next_login() {
    let server = TestServer::start();
    // A file waits only for a name someone owns: dave has an account, made on an earlier visit.
    server.account("dave", "dave's password", "elsewhere").close();
    let alice = server.client("alice", "lobby");
    let bystander = server.client("bystander", "lobby");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "for-dave.txt", 5_000, 2);
    alice.send_file(&path, Some("dave")).unwrap();
    wait_uploaded(&alice, "for-dave.txt");
    alice.send_text("after the file").unwrap();
    assert_eq!(next_chat_skipping_files(&bystander), "after the file", "only dave is told about it");

    let dave = server.account("dave", "dave's password", "elsewhere");
    assert_eq!(wait_new_file(&dave).name, "for-dave.txt", "announced at login");
    let dl = TempDir::new("dave");
    let (paths, _) = receive_into(&dave, &dl.path);
    assert_eq!(common::sha256(&paths[0]), common::sha256(&path));
}

fn next_chat_skipping_files(client: &Client) -> String {
    wait_for(client, "chat", |e| match e {
        Event::Chat { text, .. } => Some(text.clone()),
        Event::NewFile(info) => panic!("unexpected [Newfile] {}", info.name),
        _ => None,
    })
}

#[test]
fn receive_with_nothing_waiting_and_a_second_receive_while_busy() {
    let server = TestServer::start();
    let bob = server.client("bob", "lobby");
    let dl = TempDir::new("dl");
    let (paths, failures) = receive_into(&bob, &dl.path);
    assert!(paths.is_empty() && failures.is_empty());

    // A receive that has something to download, so it is surely still going when the second
    // one is asked for. (With nothing waiting, the relay's empty list could come back first when
    // this thread was descheduled for a moment, and the second receive would rightly start: CI
    // saw that once.)
    let alice = server.client("alice", "lobby");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "big.bin", 16 * 1024 * 1024, 3);
    alice.send_file(&path, Some("bob")).unwrap();
    wait_uploaded(&alice, "big.bin");
    wait_new_file(&bob);
    bob.receive_all(&dl.path).unwrap();
    assert!(matches!(bob.receive_all(&dl.path), Err(ClientError::Busy)));
    wait_for(&bob, "the end of the receive", |e| matches!(e, Event::ReceiveFinished { .. }).then_some(()));
    assert_eq!(common::sha256(&dl.path.join("big.bin")), common::sha256(&path), "the first receive went on");
}

#[test]
fn existing_names_get_numbered_and_nothing_is_overwritten() {
    let server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");
    let dl = TempDir::new("dl");
    fs::write(dl.path.join("notes.txt"), b"bob's own notes").unwrap();
    let src = TempDir::new("src");
    let path = random_file(&src.path, "notes.txt", 1000, 3);
    for _ in 0..2 {
        alice.send_file(&path, None).unwrap();
        wait_uploaded(&alice, "notes.txt");
    }
    let (paths, _) = receive_into(&bob, &dl.path);
    assert_eq!(paths, vec![dl.path.join("notes (1).txt"), dl.path.join("notes (2).txt")]);
    assert_eq!(fs::read(dl.path.join("notes.txt")).unwrap(), b"bob's own notes");
}

#[test]
fn a_directory_or_a_missing_path_is_refused_before_anything_is_sent() {
    let server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let dir = TempDir::new("dir");
    match alice.send_file(&dir.path, None) {
        Err(ClientError::BadPath { reason, .. }) => assert!(reason.contains("directory"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(alice.send_file(&dir.path.join("nope"), None), Err(ClientError::BadPath { .. })));
    assert!(matches!(alice.send_file(&dir.path, Some("bad name")), Err(ClientError::Rule(_))));
}

#[test]
fn an_empty_room_without_to_is_a_clear_error() {
    let server = TestServer::start();
    let alice = server.client("alice", "alone");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "x.bin", 10, 4);
    alice.send_file(&path, None).unwrap();
    let reason = failure(&alice);
    assert!(reason.contains("nobody else is in alone"), "{reason}");
}

fn failure(client: &Client) -> String {
    wait_for(client, "a failure", |e| match e {
        Event::TransferFailed { reason, .. } => Some(reason.clone()),
        Event::Uploaded { name, .. } => panic!("{name} was accepted"),
        _ => None,
    })
}

/// A raw client uploads a file under each hostile name. The relay stores only numbered files,
/// announces cleaned names, and the receiving client writes only cleaned names inside its
/// downloads dir.
#[test]
fn hostile_names_never_escape_and_are_shown_clean() {
    let server = TestServer::start();
    let bob = server.client("bob", "lobby");
    let mut evil = server.raw_joined("evil", "lobby");
    let names = [
        "../../x",
        "/etc/passwd",
        "C:\\x",
        "a\\..\\..\\b",
        "con.txt",
        "evil\nname.txt",
        "\u{1b}[31mred.txt",
        &"n".repeat(300),
        "",
        ".",
        "..",
        "nul\0byte",
        ".bashrc",
        "what?<>|*\":.txt",
        "txt.\u{202e}exe.jpg",
        "zero\u{200b}width",
        "LPT1",
        "dir/",
        "  spaced  ",
        "\u{9b}2Jcsi",
        "报告.pdf",
        "../报告.pdf",
    ];
    for (i, raw_name) in names.iter().enumerate() {
        let data = format!("file {i}").into_bytes();
        evil.send(&Frame::UploadStart {
            key: format!("k{i}"),
            name: raw_name.to_string(),
            size: data.len() as u64,
            to: String::new(),
        });
        let Frame::UploadReady { upload_id, offset: 0 } = evil.recv() else { panic!("upload {i} refused") };
        evil.send(&Frame::UploadChunk { upload_id, data: data.clone() });
        evil.send(&Frame::UploadEnd { upload_id, sha256: Sha256::digest(&data).into() });
        loop {
            match evil.recv() {
                Frame::UploadDone { .. } => break,
                Frame::UploadFailed { message, .. } => panic!("{raw_name:?}: {message}"),
                _ => {}
            }
        }
        let shown = wait_new_file(&bob).name;
        assert_eq!(shown, relaychat::filename::clean(raw_name), "{raw_name:?}");
        assert!(!shown.contains(['/', '\\', '\n', '\u{1b}', '\0']), "{shown:?}");
    }
    // On the relay: only numbered files under its data dir.
    for path in files_under(&server.data_dir.path) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with("relay.db") && path.parent() == Some(server.data_dir.path.as_path()) {
            continue; // the database
        }
        assert!(path.parent() == Some(server.data_dir.path.join("files").as_path()), "{path:?}");
        assert!(name.ends_with(".bin"), "{name}");
        assert!(name.split('.').next().unwrap().parse::<u64>().is_ok(), "{name}");
    }
    let outside = std::env::temp_dir();
    let dl = TempDir::new("dl");
    let (paths, failures) = receive_into(&bob, &dl.path);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(paths.len(), names.len());
    for path in &paths {
        assert_eq!(path.parent().unwrap(), dl.path, "{path:?} is inside the downloads dir");
        assert!(path.file_name().unwrap().len() <= 220);
    }
    assert!(!outside.join("x").exists() && !dl.path.parent().unwrap().join("x").exists());
    assert_eq!(fs::read(dl.path.join("x")).unwrap(), b"file 0");
}

#[test]
fn a_corrupted_upload_is_detected_and_discarded() {
    let server = TestServer::start();
    let _bob = server.client("bob", "lobby");
    let mut config = client_config("alice", "lobby");
    config.corrupt_upload_chunk = Some(1);
    let alice = Client::connect_tcp(&server.addr.to_string(), &config).unwrap();
    let src = TempDir::new("src");
    let path = random_file(&src.path, "big.bin", 3 * DEFAULT_CHUNK, 5);
    alice.send_file(&path, None).unwrap();
    let reason = failure(&alice);
    assert!(reason.contains("SHA-256"), "{reason}");
    // The relay's remover thread deletes the partial file, maybe just after the refusal arrived.
    wait_until("nothing kept", WAIT, || relay_bytes(&server).is_empty().then_some(()));
}

#[test]
fn a_corrupted_download_is_detected_discarded_and_can_be_fetched_again() {
    let server =
        TestServer::start_with(ServerConfig { corrupt_download_chunk: Some(0), ..ServerConfig::default() });
    let alice = server.client("alice", "lobby");
    let bob = server.account("bob", "pw", "lobby");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "doc.bin", 100_000, 6);
    alice.send_file(&path, None).unwrap();
    wait_uploaded(&alice, "doc.bin");
    let dl = TempDir::new("dl");
    let (paths, failures) = receive_into(&bob, &dl.path);
    assert!(paths.is_empty());
    assert_eq!(failures.len(), 1);
    assert!(failures[0].contains("SHA-256"), "{failures:?}");
    assert!(files_under(&dl.path).is_empty(), "the bad part was removed");
    drop((alice, bob));

    // The file is still on the relay; a relay without the fault serves it intact (and this also
    // shows that stored files survive a restart).
    let data = server.stop_and_keep_data();
    let server = TestServer::start_in(ServerConfig::default(), data);
    let bob = server.account("bob", "pw", "lobby");
    let (paths, failures) = receive_into(&bob, &dl.path);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(common::sha256(&paths[0]), common::sha256(&path));
}

#[test]
fn limits_refuse_before_storing_and_everyone_carries_on() {
    let limits = StoreLimits {
        max_file_size: 1 << 20,
        quota: (1 << 20) + 1000,
        min_free: 0,
        ..StoreLimits::default()
    };
    let server = TestServer::start_with(ServerConfig { limits, ..ServerConfig::default() });
    let alice = server.client("alice", "lobby");
    let bob = server.client("bob", "lobby");
    let src = TempDir::new("src");

    let too_big = random_file(&src.path, "too-big.bin", (1 << 20) + 1, 7);
    alice.send_file(&too_big, None).unwrap();
    assert!(failure(&alice).contains("accepts at most"));

    let fits = random_file(&src.path, "fits.bin", 1 << 20, 8);
    alice.send_file(&fits, None).unwrap();
    wait_uploaded(&alice, "fits.bin");
    let over_quota = random_file(&src.path, "quota.bin", 2000, 9);
    alice.send_file(&over_quota, None).unwrap();
    assert!(failure(&alice).contains("quota"));

    // The remover thread deletes them, maybe just after the refusal arrived.
    wait_until("no partial files", WAIT, || {
        files_under(&server.data_dir.path.join("tmp")).is_empty().then_some(())
    });
    alice.send_text("still here").unwrap();
    let text = wait_for(&bob, "chat", |e| match e {
        Event::Chat { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(text, "still here");

    let full = StoreLimits { min_free: u64::MAX / 4, ..StoreLimits::default() };
    let server = TestServer::start_with(ServerConfig { limits: full, ..ServerConfig::default() });
    let alice = server.client("alice", "lobby");
    let _bob = server.client("bob", "lobby");
    alice.send_file(&fits, None).unwrap();
    assert!(failure(&alice).contains("disk is too full"));
    wait_until("nothing kept", WAIT, || relay_bytes(&server).is_empty().then_some(()));
}

/// A text sent while a large download is running reaches the downloader before the download
/// ends: chat frames overtake queued file chunks.
#[test]
fn chat_overtakes_a_download_in_progress() {
    let server = TestServer::start();
    let alice = server.client("alice", "lobby");
    let mut config = client_config("bob", "lobby");
    config.chunk_delay = Some(Duration::from_millis(5)); // ~40 chunks: a download of ~0.2 s at least
    let bob = Client::connect_tcp(&server.addr.to_string(), &config).unwrap();
    let src = TempDir::new("src");
    let path = random_file(&src.path, "movie.bin", 40 * DEFAULT_CHUNK, 10);
    alice.send_file(&path, None).unwrap();
    wait_uploaded(&alice, "movie.bin");
    let dl = TempDir::new("dl");
    bob.receive_all(&dl.path).unwrap();
    wait_for(&bob, "download progress", |e| matches!(e, Event::Progress { .. }).then_some(()));
    alice.send_text("during the download").unwrap();
    let first = wait_for(&bob, "chat or the end of the download", |e| match e {
        Event::Chat { text, .. } => Some(format!("chat: {text}")),
        Event::Downloaded { .. } => Some("downloaded".to_string()),
        _ => None,
    });
    assert_eq!(first, "chat: during the download");
    wait_for(&bob, "the download", |e| matches!(e, Event::Downloaded { .. }).then_some(()));
    assert_eq!(common::sha256(&dl.path.join("movie.bin")), common::sha256(&path));
}

#[test]
fn hostile_transfer_frames_get_errors_not_crashes() {
    let server = TestServer::start();
    let bob = server.client("bob", "lobby");
    let mut evil = server.raw_joined("evil", "lobby");
    // A chunk for an upload that does not exist, a download of a file that is not ours, an
    // offset past the end, a receipt for nothing.
    evil.send(&Frame::UploadChunk { upload_id: 999, data: vec![1, 2, 3] });
    assert!(matches!(evil.recv(), Frame::UploadFailed { code: ErrorCode::BadTransfer, .. }));
    evil.send(&Frame::Download { file_id: 12345, offset: 0 });
    assert!(matches!(evil.recv(), Frame::DownloadFailed { code: ErrorCode::NoSuchFile, .. }));
    evil.send(&Frame::Received { file_id: 12345 });
    // More bytes than announced.
    evil.send(&Frame::UploadStart { key: "k".into(), name: "a".into(), size: 2, to: "bob".into() });
    let Frame::UploadReady { upload_id, .. } = evil.recv() else { panic!() };
    evil.send(&Frame::UploadChunk { upload_id, data: vec![0; 3] });
    assert!(matches!(evil.recv(), Frame::UploadFailed { code: ErrorCode::BadTransfer, .. }));
    // Ends without all bytes.
    evil.send(&Frame::UploadStart { key: "k2".into(), name: "b".into(), size: 10, to: "bob".into() });
    let Frame::UploadReady { upload_id, .. } = evil.recv() else { panic!() };
    evil.send(&Frame::UploadEnd { upload_id, sha256: [0; 32] });
    assert!(matches!(evil.recv(), Frame::UploadFailed { code: ErrorCode::HashMismatch, .. }));
    // The hub hands the partial file to the remover thread and tells the client at once (often
    // straight into its socket, `hub/direct.rs`), so the file may outlive the answer briefly.
    wait_until("the failed uploads' partial files to be deleted", WAIT, || {
        files_under(&server.data_dir.path.join("tmp")).is_empty().then_some(())
    });
    evil.send(&Frame::say("still connected"));
    let chat = wait_for(&bob, "chat", |e| match e {
        Event::Chat { from, text, .. } => Some((from.clone(), text.clone())),
        _ => None,
    });
    assert_eq!(chat, ("evil".into(), "still connected".into()));
}

/// A file older than the retention period is deleted by the janitor, and a recipient who never
/// got it is told so, by name, at their next login.
#[test]
fn expired_files_are_deleted_and_their_recipients_told() {
    let config = ServerConfig {
        retention: Duration::from_millis(500),
        expiry_check: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(config);
    server.account("dave", "pw", "lobby").close();
    let alice = server.client("alice", "lobby");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "old news.txt", 2000, 14);
    alice.send_file(&path, Some("dave")).unwrap();
    wait_uploaded(&alice, "old news.txt");
    wait_until("the janitor deletes the file", WAIT, || relay_bytes(&server).is_empty().then_some(()));

    let dave = server.account("dave", "pw", "lobby");
    let (from, name) = wait_for(&dave, "the expiry notice", |e| match e {
        Event::FileExpired { from, name } => Some((from.clone(), name.clone())),
        Event::NewFile(info) => panic!("{} should have expired", info.name),
        _ => None,
    });
    assert_eq!((from.as_str(), name.as_str()), ("alice", "old news.txt"));
    let dl = TempDir::new("dl");
    let (paths, failures) = receive_into(&dave, &dl.path);
    assert!(paths.is_empty() && failures.is_empty(), "nothing left to receive");
    drop(dave);
    // The notice is delivered once.
    let dave = server.account("dave", "pw", "lobby");
    dave.who().unwrap();
    let next = wait_for(&dave, "the online list", |e| match e {
        Event::FileExpired { .. } => Some(false),
        Event::Online { .. } => Some(true),
        _ => None,
    });
    assert!(next, "the expiry notice came a second time");
}

/// Reads one download from a raw (plaintext) connection: its chunks' data, until DownloadEnd.
fn raw_download(raw: &mut common::Raw, file_id: u64, offset: u64) -> (Vec<u8>, usize) {
    raw.send(&Frame::Download { file_id, offset });
    let (mut data, mut chunks) = (Vec::new(), 0);
    loop {
        match raw.recv() {
            Frame::DownloadChunk { file_id: id, data: piece } if id == file_id => {
                assert!(!piece.is_empty() && piece.len() <= 64 * 1024, "paced pieces of at most 64 KiB");
                data.extend_from_slice(&piece);
                chunks += 1;
            }
            Frame::DownloadEnd { file_id: id, .. } if id == file_id => return (data, chunks),
            Frame::Chat { .. } | Frame::Joined { .. } | Frame::Left { .. } | Frame::Online { .. } => {}
            other => panic!("unexpected frame during a download: {other:?}"),
        }
    }
}

#[test]
fn a_plaintext_download_is_sent_from_the_file_and_resumes_from_any_offset() {
    // A plaintext connection gets its chunks by sendfile (the writer sends slices of the stored
    // file); the frames must be the same as the copying path's (--no-sendfile), from any offset.
    for sendfile in [true, false] {
        plaintext_download_from_offsets(ServerConfig { sendfile, ..ServerConfig::default() });
    }
}

fn plaintext_download_from_offsets(config: ServerConfig) {
    let server = TestServer::start_with(config);
    let mut bob = server.raw_joined("bob", "lobby");
    let alice = server.client("alice", "lobby");
    let src = TempDir::new("src");
    let size = 3 * DEFAULT_CHUNK + 12_345;
    let path = random_file(&src.path, "slices.bin", size, 42);
    let whole = fs::read(&path).unwrap();
    alice.send_file(&path, Some("bob")).unwrap();
    wait_uploaded(&alice, "slices.bin");
    let info = loop {
        // The offer while it arrived comes first; the stored file's follows.
        if let Frame::NewFile(info @ FileInfo { sha256: Some(_), .. }) = bob.recv() {
            break info;
        }
    };
    let (data, chunks) = raw_download(&mut bob, info.file_id, 0);
    assert_eq!(data.len(), size);
    assert!(data == whole, "the bytes from offset 0");
    assert!(chunks >= size / (64 * 1024), "sent in pieces, with room for chat between them");
    for offset in [1, 65_535, DEFAULT_CHUNK as u64 + 7, size as u64 - 1, size as u64] {
        let (data, _) = raw_download(&mut bob, info.file_id, offset);
        assert!(data == whole[offset as usize..], "the bytes from offset {offset}");
    }
    bob.send(&Frame::Goodbye);
}
