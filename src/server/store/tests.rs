//! Unit tests of the store: limits, ownership, resuming, guests, leftovers, old data dirs.
use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relaychat-store-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Whether `path` is gone within a few seconds: the store deletes on its remover thread, so a
/// file it dropped goes a moment later (`remover.rs`).
fn goes(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    !path.exists()
}

fn request<'a>(sender: &'a str, key: &'a str, size: u64) -> UploadRequest<'a> {
    UploadRequest {
        conn: 1,
        sender,
        key,
        name: "a.txt",
        size,
        recipients: ["bob".to_string()].into_iter().collect(),
        guests: BTreeSet::new(),
        addr: std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

#[test]
fn a_committed_file_survives_a_reopen_and_goes_when_received() {
    let dir = temp_dir("reopen");
    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    let plan = store.begin_upload(request("alice", "k", 3)).unwrap();
    fs::write(&plan.temp_path, b"abc").unwrap();
    let info = store.commit_upload(1, plan.upload_id, [7; 32]).unwrap();
    drop(store);

    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    assert_eq!(store.waiting_for("bob"), vec![info.clone()]);
    assert!(store.waiting_for("carol").is_empty());
    assert!(store.plan_download("carol", info.file_id, 0).is_err(), "only recipients may download");
    let plan = store.plan_download("bob", info.file_id, 0).unwrap();
    assert_eq!(fs::read(&plan.path).unwrap(), b"abc");
    store.mark_received("bob", info.file_id);
    assert!(goes(&plan.path), "deleted once the last recipient has it");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn limits_are_checked_before_anything_is_stored() {
    let dir = temp_dir("limits");
    let limits = StoreLimits { max_file_size: 100, quota: 150, min_free: 0, ..StoreLimits::default() };
    let mut store = Store::open(&dir, limits).unwrap();
    assert_eq!(store.begin_upload(request("alice", "big", 101)).unwrap_err().0, ErrorCode::FileTooLarge);
    store.begin_upload(request("alice", "one", 100)).unwrap();
    let second = UploadRequest { conn: 2, ..request("alice", "two", 51) };
    assert_eq!(store.begin_upload(second).unwrap_err().0, ErrorCode::QuotaExceeded);
    store.begin_upload(request("bob", "two", 51)).unwrap(); // quotas are per sender
    let full = StoreLimits { min_free: u64::MAX / 2, ..StoreLimits::default() };
    let mut store = Store::open(&temp_dir("full"), full).unwrap();
    assert_eq!(store.begin_upload(request("alice", "x", 1)).unwrap_err().0, ErrorCode::DiskFull);
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0, "refusals create no files");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(temp_dir("full"));
}

#[test]
fn the_same_key_resumes_and_a_changed_file_restarts() {
    let dir = temp_dir("resume");
    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    let first = store.begin_upload(request("alice", "k", 10)).unwrap();
    let other_conn = UploadRequest { conn: 2, ..request("alice", "k", 10) };
    assert_eq!(store.begin_upload(other_conn).unwrap_err().0, ErrorCode::Busy);
    store.release(1);
    let again = store.begin_upload(UploadRequest { conn: 2, ..request("alice", "k", 10) }).unwrap();
    assert_eq!(again.upload_id, first.upload_id);
    let changed = store.begin_upload(UploadRequest { conn: 2, ..request("alice", "k", 11) }).unwrap();
    assert_ne!(changed.upload_id, first.upload_id);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn only_the_sending_connection_can_end_an_upload() {
    let dir = temp_dir("owner");
    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    let plan = store.begin_upload(request("alice", "k", 3)).unwrap();
    fs::write(&plan.temp_path, b"abc").unwrap();
    assert!(!store.abort_own_upload(2, plan.upload_id, "test"), "another connection cannot abort it");
    assert_eq!(store.commit_upload(2, plan.upload_id, [1; 32]).unwrap_err().0, ErrorCode::BadTransfer);
    assert!(plan.temp_path.exists(), "and nothing changed");
    assert!(store.commit_upload(1, plan.upload_id, [1; 32]).is_ok());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unfinished_uploads_are_bounded_and_count_only_what_they_hold_once_idle() {
    let dir = temp_dir("partials");
    let limits = StoreLimits {
        quota: 1000,
        partials_per_user: 2,
        partial_ttl: Duration::from_millis(200),
        ..StoreLimits::default()
    };
    let mut store = Store::open(&dir, limits).unwrap();
    let first = store.begin_upload(request("alice", "a", 900)).unwrap();
    // While the first runs, its whole size is reserved against the quota.
    let busy = UploadRequest { conn: 2, ..request("alice", "b", 200) };
    assert_eq!(store.begin_upload(busy).unwrap_err().0, ErrorCode::QuotaExceeded);
    fs::write(&first.temp_path, [0u8; 10]).unwrap();
    store.release(1); // the connection went: only its 10 bytes count now
    store.check_partials();
    store.begin_upload(UploadRequest { conn: 2, ..request("alice", "b", 200) }).unwrap();
    let third = UploadRequest { conn: 3, ..request("alice", "c", 1) };
    assert_eq!(store.begin_upload(third).unwrap_err().0, ErrorCode::TooManyUploads);
    store.release(2);
    // Abandoned (nobody sending, no growth for the TTL): deleted.
    std::thread::sleep(Duration::from_millis(250));
    store.check_partials();
    assert!(goes(&first.temp_path));
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    store.begin_upload(UploadRequest { conn: 3, ..request("alice", "c", 1) }).unwrap();
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn files_for_a_guest_go_with_the_session_and_with_a_restart() {
    let dir = temp_dir("guests");
    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    let both: BTreeSet<String> = ["bob".to_string(), "gus".to_string()].into();
    let gus: BTreeSet<String> = ["gus".to_string()].into();
    let req = UploadRequest { recipients: both, guests: gus.clone(), ..request("alice", "k", 1) };
    let plan = store.begin_upload(req).unwrap();
    fs::write(&plan.temp_path, b"x").unwrap();
    let shared = store.commit_upload(1, plan.upload_id, [1; 32]).unwrap();
    let req = UploadRequest { recipients: gus.clone(), guests: gus, ..request("alice", "j", 1) };
    let plan = store.begin_upload(req).unwrap();
    fs::write(&plan.temp_path, b"y").unwrap();
    let only_gus = store.commit_upload(1, plan.upload_id, [2; 32]).unwrap();
    assert_eq!(store.files_waiting("gus"), 2);
    store.drop_guest("gus");
    assert_eq!(store.files_waiting("gus"), 0);
    assert_eq!(store.waiting_for("bob"), vec![shared.clone()], "bob still has his");
    assert!(goes(&store.bin_path(only_gus.file_id)), "nobody else waited: bytes deleted");
    assert!(store.bin_path(shared.file_id).exists());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn what_has_expired_is_never_offered_even_before_the_janitor_deletes_it() {
    let dir = temp_dir("retention");
    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    store.keep_for(Duration::from_millis(300));
    let plan = store.begin_upload(request("alice", "k", 1)).unwrap();
    fs::write(&plan.temp_path, b"x").unwrap();
    let info = store.commit_upload(1, plan.upload_id, [1; 32]).unwrap();
    assert_eq!(store.waiting_for("bob").len(), 1);
    assert!(store.plan_download("bob", info.file_id, 0).is_ok());
    std::thread::sleep(Duration::from_millis(400));
    // No `expire` has run: the bytes are still there, but nothing offers them.
    assert!(store.bin_path(info.file_id).exists());
    assert!(store.waiting_for("bob").is_empty(), "an expired file is not listed");
    assert_eq!(store.plan_download("bob", info.file_id, 0).unwrap_err().0, ErrorCode::NoSuchFile);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn leftovers_are_cleaned_on_open() {
    let dir = temp_dir("leftovers");
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::create_dir_all(dir.join("files")).unwrap();
    fs::write(dir.join("tmp/5.part"), b"half").unwrap();
    fs::write(dir.join("files/9.bin"), b"no record").unwrap();
    fs::write(dir.join("files/8.meta"), b"relaychat-file 1\nfrom=a\n").unwrap();
    let store = Store::open(&dir, StoreLimits::default()).unwrap();
    assert!(store.db.file_ids().unwrap().is_empty());
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(dir.join("files")).unwrap().count(), 0);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_older_data_dir_is_imported_with_its_ids() {
    let dir = temp_dir("legacy");
    fs::create_dir_all(dir.join("files")).unwrap();
    fs::write(dir.join("files/7.bin"), b"abc").unwrap();
    let meta = format!(
        "relaychat-file 1\nfrom=alice\nname=a.txt\nsize=3\nsha256={}\nto=bob\nto=carol\n",
        crate::sha::hex(&[5; 32])
    );
    fs::write(dir.join("files/7.meta"), meta).unwrap();
    let mut store = Store::open(&dir, StoreLimits::default()).unwrap();
    let waiting = store.waiting_for("bob");
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (waiting[0].file_id, waiting[0].name.as_str(), waiting[0].sha256),
        (7, "a.txt", Some([5; 32]))
    );
    assert_eq!(store.recipients(7), vec!["bob".to_string(), "carol".to_string()]);
    assert!(!dir.join("files/7.meta").exists(), "imported once, then removed");
    // New files never reuse an imported id.
    let plan = store.begin_upload(request("alice", "k", 1)).unwrap();
    fs::write(&plan.temp_path, b"x").unwrap();
    assert!(store.commit_upload(1, plan.upload_id, [0; 32]).unwrap().file_id > 7);
    let _ = fs::remove_dir_all(&dir);
}
