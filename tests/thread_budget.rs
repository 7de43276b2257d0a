//! How many threads one connection really runs, against what the relay's connection cap budgets
//! (`accept::thread_cap`). In a test binary of its own: it counts this process's threads by name,
//! and other tests' relays running beside it would be counted too.

mod common;

use common::TestServer;
use relaychat::frame::Frame;
use relaychat::server::ServerConfig;

/// The threads of this process, by name (`comm`, cut to 15 bytes by the kernel).
fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            names.push(comm.trim().to_owned());
        }
    }
    names
}

/// Found by the review: the cap budgeted 3 threads per connection ("its reader, its writer, and
/// one for a download"), but a connection that has downloaded once (its download thread lives
/// until the connection ends) and is receiving an upload also runs the upload's disk thread
/// (`sink.rs`): 4. The cap now budgets 4, and this test holds the code to it.
#[test]
fn one_connection_runs_at_most_the_four_threads_the_cap_budgets() {
    use sha2::Digest;
    let server = TestServer::start_with(ServerConfig { max_per_address: 100, ..ServerConfig::default() });
    let mut a = server.raw_joined("fa", "files");
    let mut b = server.raw_joined("fb", "files");
    // b sends a small file to a.
    b.send(&Frame::UploadStart { key: "k1".into(), name: "f.txt".into(), size: 5, to: "fa".into() });
    let Frame::UploadReady { upload_id, .. } =
        b.recv_until("UploadReady", |f| matches!(f, Frame::UploadReady { .. }))
    else {
        unreachable!()
    };
    b.send(&Frame::UploadChunk { upload_id, data: b"hello".to_vec() });
    b.send(&Frame::UploadEnd { upload_id, sha256: sha2::Sha256::digest(b"hello").into() });
    b.recv_until("UploadDone", |f| matches!(f, Frame::UploadDone { .. }));
    let Frame::NewFile(info) = a.recv_until("NewFile", |f| matches!(f, Frame::NewFile(_))) else {
        unreachable!()
    };
    // a downloads it: its connection starts a download thread, kept until the connection ends.
    a.send(&Frame::Download { file_id: info.file_id, offset: 0 });
    a.recv_until("DownloadEnd", |f| matches!(f, Frame::DownloadEnd { .. }));
    // a starts an upload of its own and sends part of it: a disk thread writes it.
    a.send(&Frame::UploadStart { key: "k2".into(), name: "g.bin".into(), size: 1 << 20, to: "fb".into() });
    let Frame::UploadReady { upload_id, .. } =
        a.recv_until("UploadReady", |f| matches!(f, Frame::UploadReady { .. }))
    else {
        unreachable!()
    };
    a.send(&Frame::UploadChunk { upload_id, data: vec![7; 1000] });
    a.send(&Frame::Ping);
    a.recv_until("Pong", |f| matches!(f, Frame::Pong));

    let names = thread_names();
    let downloading: Vec<&String> = names.iter().filter(|n| n.contains("-downloa")).collect();
    assert_eq!(downloading.len(), 1, "{names:?}");
    let id = downloading[0].trim_start_matches("conn-").split('-').next().unwrap().to_owned();
    let of_a =
        names.iter().filter(|n| **n == format!("conn-{id}") || n.starts_with(&format!("conn-{id}-"))).count();
    let disks = names.iter().filter(|n| *n == "disk").count();
    // `accept::THREADS_PER_CONNECTION`: what `thread_cap` budgets per connection (it was 3).
    assert!(
        of_a + disks <= 4,
        "connection {id} runs {of_a} threads plus {disks} disk thread(s), over the 4 that thread_cap \
         budgets: {names:?}"
    );
}
