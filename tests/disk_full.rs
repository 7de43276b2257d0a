//! A disk that fills up in the middle of an upload: the upload fails with a clear error, its
//! partial file is removed, and the relay and everyone else carry on.
//!
//! The relay's data dir is a tiny tmpfs that this test mounts itself, which needs root (CI runs as
//! root). Where mounting is not allowed the test says so and does nothing else.

mod common;

use std::fs;
use std::time::Duration;

use common::client_config;
use common::{random_file, wait_for, SmallDisk, TempDir, TestServer};
use relaychat::client::{Client, Event};
use relaychat::server::{ServerConfig, StoreLimits};

#[test]
fn a_disk_that_fills_mid_upload_fails_that_upload_only() {
    let Some(disk) = SmallDisk::mount("4m") else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = TempDir { path: disk.dir.path.join("relay") };
    fs::create_dir_all(&data.path).unwrap();
    let limits = StoreLimits { min_free: 0, ..StoreLimits::default() };
    let server = TestServer::start_in(ServerConfig { limits, ..ServerConfig::default() }, data);
    let bob = server.client("bob", "lobby");
    let mut config = client_config("alice", "lobby");
    config.chunk_delay = Some(Duration::from_millis(30)); // slow enough to fill the disk meanwhile
    let alice = Client::connect_tcp(&server.addr.to_string(), &config).unwrap();

    let src = TempDir::new("src");
    let file = random_file(&src.path, "big.bin", 3 << 20, 21); // fits the empty disk
    alice.send_file(&file, None).unwrap();
    wait_for(&alice, "the upload to start", |e| matches!(e, Event::Progress { .. }).then_some(()));
    // Someone else fills the disk while the upload is running.
    let _ = fs::write(disk.dir.path.join("filler"), vec![0u8; 4 << 20]);

    let reason = wait_for(&alice, "the upload to fail", |e| match e {
        Event::TransferFailed { reason, .. } => Some(reason.clone()),
        Event::Uploaded { .. } => panic!("the upload cannot have fitted"),
        _ => None,
    });
    assert!(reason.contains("disk is full"), "{reason}");
    let tmp = disk.dir.path.join("relay").join("tmp");
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the partial file was removed");

    // Everyone carries on.
    alice.send_text("still here").unwrap();
    let text = wait_for(&bob, "chat", |e| match e {
        Event::Chat { text, .. } => Some(text.clone()),
        _ => None,
    });
    assert_eq!(text, "still here");
    drop((alice, bob));
    drop(server);
}
