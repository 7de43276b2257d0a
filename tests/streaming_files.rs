//! Downloading a file while it arrives, through a real relay on loopback (docs/PROTOCOL.md,
//! "Downloading a file as it arrives").
//!
//! The sender here is a raw connection that sends its upload by hand, so each test decides when
//! the upload pauses, ends, lies about its hash or vanishes. The recipient is the real client
//! library, over TLS and in plaintext (where the relay sends the file's pieces with `sendfile`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{client_config, files_under, hello_as, random_file, receive_into, TempDir, TestServer};
use relaychat::client::{Client, Event, Security};
use relaychat::frame::{FileInfo, Frame};
use sha2::{Digest, Sha256};

/// How long a test waits for what must happen; a hang fails the test instead.
const BOUND: Duration = Duration::from_secs(15);

/// A sender that uploads by hand on a raw plaintext connection.
struct Sender {
    raw: common::Raw,
    upload_id: u64,
}

impl Sender {
    /// Logs in as `name` (an account, so its upload outlives its connection and can resume) and
    /// starts uploading `data` to `to` under `key`. The relay answers from `offset`.
    fn start(server: &TestServer, name: &str, to: &str, key: &str, size: usize) -> (Sender, u64) {
        let mut raw = common::Raw::connect(server.addr);
        raw.send(&hello_as(name, "lobby", "a password for the tests", ""));
        raw.recv_until("the welcome", |f| matches!(f, Frame::Welcome { .. }));
        let start =
            Frame::UploadStart { key: key.into(), name: "film.bin".into(), size: size as u64, to: to.into() };
        raw.send(&start);
        let Frame::UploadReady { upload_id, offset } = raw.recv_until("UploadReady", |f| {
            matches!(f, Frame::UploadReady { .. } | Frame::UploadFailed { .. })
        }) else {
            panic!("the upload was refused")
        };
        (Sender { raw, upload_id }, offset)
    }

    fn send(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(64 * 1024) {
            self.raw.send(&Frame::UploadChunk { upload_id: self.upload_id, data: piece.to_vec() });
        }
    }

    /// Ends the upload with `sha256` and returns the relay's answer.
    fn end(&mut self, sha256: [u8; 32]) -> Frame {
        self.raw.send(&Frame::UploadEnd { upload_id: self.upload_id, sha256 });
        self.raw.recv_until("the upload's verdict", |f| {
            matches!(f, Frame::UploadDone { .. } | Frame::UploadFailed { .. })
        })
    }
}

/// A recipient in the lobby: TLS, or plaintext (the relay's `sendfile` path).
fn recipient(server: &TestServer, name: &str, plaintext: bool) -> Client {
    let mut config = client_config(name, "lobby");
    if plaintext {
        config.security = Security::Plaintext;
    }
    let client = Client::connect_tcp(&server.addr.to_string(), &config).expect("recipient connects");
    wait_within(&client, "the online list", |e| matches!(e, Event::Online { .. }).then_some(()));
    client
}

/// The first event `pick` accepts within [`BOUND`], skipping others.
fn wait_within<T>(client: &Client, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        let event = client
            .events()
            .recv_deadline(deadline)
            .unwrap_or_else(|_| panic!("no {what} within {BOUND:?}: the download hangs"));
        if let Some(found) = pick(&event) {
            return found;
        }
        assert!(!matches!(event, Event::Disconnected(_)), "disconnected while waiting for {what}");
        assert!(!matches!(event, Event::Downloaded { .. }), "complete before {what}: {event:?}");
    }
}

/// The offer of a file that is still arriving.
fn arriving_offer(client: &Client) -> FileInfo {
    wait_within(client, "the arriving file's offer", |e| match e {
        Event::NewFile(info) if info.sha256.is_none() => Some(info.clone()),
        _ => None,
    })
}

/// Bytes in the `.part` files of `dir`.
fn part_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Waits until the recipient's part holds `at_least` bytes: the download is following the upload.
fn wait_for_part(dir: &Path, at_least: u64) {
    let deadline = Instant::now() + BOUND;
    while part_bytes(dir) < at_least {
        assert!(
            Instant::now() < deadline,
            "the download did not follow the upload ({} bytes)",
            part_bytes(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the end of a receive: the one file's path, or the failure's reason.
fn receive_result(client: &Client) -> Result<PathBuf, String> {
    let result = wait_within(client, "the download's end", |e| match e {
        Event::Downloaded { path, .. } => Some(Ok(path.clone())),
        Event::TransferFailed { reason, .. } => Some(Err(reason.clone())),
        _ => None,
    });
    wait_within(client, "the end of the receive", |e| {
        matches!(e, Event::ReceiveFinished { .. }).then_some(())
    });
    result
}

/// A relay, a sender that has started uploading `size` random bytes to bob, and bob, offered the
/// arriving file and receiving it into `dl`.
struct Scene {
    server: TestServer,
    bob: Client,
    alice: Sender,
    data: Vec<u8>,
    dl: TempDir,
}

impl Scene {
    fn start(plaintext: bool, size: usize, seed: u64) -> Scene {
        let server = TestServer::start();
        let bob = recipient(&server, "bob", plaintext);
        let src = TempDir::new("src");
        let data = fs::read(random_file(&src.path, "film.bin", size, seed)).unwrap();
        let (alice, _) = Sender::start(&server, "alice", "bob", "k", data.len());
        let offer = arriving_offer(&bob);
        assert_eq!((offer.size, offer.from.as_str()), (data.len() as u64, "alice"));
        let dl = TempDir::new("dl");
        bob.receive_all(&dl.path).unwrap();
        Scene { server, bob, alice, data, dl }
    }
}

#[test]
fn a_file_is_downloaded_while_it_arrives_and_kept_only_once_verified() {
    for plaintext in [false, true] {
        let Scene { server, bob, mut alice, data, dl } = Scene::start(plaintext, 3 << 20, 11);
        let half = data.len() / 2;
        alice.send(&data[..half]);
        wait_for_part(&dl.path, half as u64);
        // Every byte the sender sent is there, and still nothing is complete: not before the
        // relay has verified the upload.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(part_bytes(&dl.path), half as u64, "never past what the sender sent");
        assert!(bob.events().try_iter().all(|e| !matches!(e, Event::Downloaded { .. })), "complete too soon");

        alice.send(&data[half..]);
        assert!(matches!(alice.end(Sha256::digest(&data).into()), Frame::UploadDone { .. }));
        let path = receive_result(&bob).expect("downloaded");
        assert!(fs::read(&path).unwrap() == data, "the exact bytes (plaintext: {plaintext})");
        assert_eq!(files_under(&dl.path), vec![path], "no part or sidecar left");
        // The recipient sent its receipt, so the relay forgets the file.
        common::wait::wait_until("the relay to delete the received file", common::WAIT, || {
            files_under(&server.data_dir.path.join("files")).is_empty().then_some(())
        });
    }
}

#[test]
fn an_upload_with_a_bad_hash_fails_the_download_and_leaves_nothing() {
    for plaintext in [false, true] {
        let Scene { server: _relay, bob, mut alice, data, dl } = Scene::start(plaintext, 1 << 20, 12);
        alice.send(&data);
        wait_for_part(&dl.path, data.len() as u64);
        assert!(matches!(alice.end([0xee; 32]), Frame::UploadFailed { .. }), "the relay refuses the lie");
        let reason = receive_result(&bob).expect_err("the download must fail");
        assert!(reason.contains("the sender's upload failed"), "{reason}");
        assert!(files_under(&dl.path).is_empty(), "no file, no part: {:?}", files_under(&dl.path));
    }
}

#[test]
fn the_sender_vanishing_ends_the_download_and_it_resumes_when_the_upload_does() {
    let Scene { server, bob, mut alice, data, dl } = Scene::start(false, 2 << 20, 13);
    let third = data.len() / 3;
    alice.send(&data[..third]);
    wait_for_part(&dl.path, third as u64);

    let cut = Instant::now();
    let _ = alice.raw.reader.get_ref().shutdown(std::net::Shutdown::Both);
    drop(alice);
    let reason = receive_result(&bob).expect_err("the download must stop");
    assert!(reason.contains("the sender's upload stopped"), "{reason}");
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "noticed at once, not after a stall: {:?}",
        cut.elapsed()
    );
    assert_eq!(part_bytes(&dl.path), third as u64, "the good bytes are kept for a resume");

    // Alice comes back and resumes; bob is offered the file again and continues from his part.
    let (mut alice, offset) = Sender::start(&server, "alice", "bob", "k", data.len());
    assert_eq!(offset, third as u64, "the relay kept alice's bytes");
    arriving_offer(&bob);
    bob.receive_all(&dl.path).unwrap();
    alice.send(&data[third..]);
    assert!(matches!(alice.end(Sha256::digest(&data).into()), Frame::UploadDone { .. }));
    let path = receive_result(&bob).expect("downloaded after the resume");
    assert!(fs::read(&path).unwrap() == data, "the exact bytes, across the interruption");
    assert_eq!(files_under(&dl.path), vec![path], "no part or sidecar left");
}

#[test]
fn a_sender_that_stalls_holds_the_download_only_for_the_stall_limit() {
    let limits =
        relaychat::server::StoreLimits { upload_stall: Duration::from_secs(2), ..Default::default() };
    let server = TestServer::start_with(relaychat::server::ServerConfig { limits, ..Default::default() });
    let bob = recipient(&server, "bob", false);
    let (mut alice, _) = Sender::start(&server, "alice", "bob", "k", 1 << 20);
    arriving_offer(&bob);
    let dl = TempDir::new("dl");
    bob.receive_all(&dl.path).unwrap();
    alice.send(&[7; 1000]);
    let started = Instant::now();
    // Alice's connection stays up (her raw socket is open) but sends nothing more.
    let reason = receive_result(&bob).expect_err("the download must give up");
    assert!(reason.contains("stalled"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(6), "after the stall limit: {:?}", started.elapsed());
    drop(alice);
}

#[test]
fn a_recipient_that_never_reads_does_not_slow_the_sender() {
    let server = TestServer::start();
    let src = TempDir::new("src");
    let size = 32 << 20;
    let path = random_file(&src.path, "big.bin", size, 14);
    let alice = common::TestServer::account(&server, "alice", "a password for the tests", "lobby");
    server.account("bob", "bob's password", "elsewhere").close();

    // The same upload with nobody downloading: the baseline, in this run.
    let started = Instant::now();
    alice.send_file(&path, Some("bob")).unwrap();
    common::wait_uploaded(&alice, "big.bin");
    let alone = started.elapsed();
    let (paths, _) =
        receive_into(&server.account("bob", "bob's password", "elsewhere"), &TempDir::new("dl").path);
    assert_eq!(paths.len(), 1);

    // Bob asks for the file as it arrives and then never reads a byte.
    let mut bob = common::Raw::connect(server.addr);
    bob.send(&hello_as("bob", "elsewhere", "bob's password", ""));
    bob.recv_until("the welcome", |f| matches!(f, Frame::Welcome { .. }));
    let touched = src.path.join("big2.bin");
    fs::copy(&path, &touched).unwrap(); // another file (another key), the same bytes
    let started = Instant::now();
    alice.send_file(&touched, Some("bob")).unwrap();
    let Frame::NewFile(offer) = bob.recv_until("the offer", |f| matches!(f, Frame::NewFile(_))) else {
        unreachable!()
    };
    bob.send(&Frame::Download { file_id: offer.file_id, offset: 0 });
    common::wait_uploaded(&alice, "big2.bin");
    let stuck = started.elapsed();
    assert!(
        stuck < alone * 3 + Duration::from_secs(2),
        "the upload took {stuck:?} with a recipient that does not read, {alone:?} alone"
    );
    drop(bob);
}
