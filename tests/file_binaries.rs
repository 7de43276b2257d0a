//! Files end to end through the real binaries: one-shot `send` / `receive`, the interactive
//! `/send` and `/receive`, and resuming after a client is killed in the middle of a transfer.

mod common;

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::proc::Proc;
use common::relay::RelayOptions;
use common::{files_under, random_file, wait_for_part, TempDir};

const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// Runs a one-shot client command to the end; returns (success, stdout lines, stderr lines).
fn one_shot(args: &[&str], envs: &[(&str, &str)]) -> (bool, Vec<String>, Vec<String>) {
    let mut p = Proc::spawn(CLIENT, args, envs);
    drop(p.stdin.take());
    let ok = p.wait().success();
    thread::sleep(Duration::from_millis(20)); // let the line readers catch the last lines
    (ok, p.stdout.try_iter().collect(), p.stderr.try_iter().collect())
}

/// Bob's password: files wait on the relay only for names someone owns, so bob claims his.
const BOB: (&str, &str) = ("RELAYCHAT_PASSWORD", "bob's password");

/// Bob visits once, which makes "bob" an account that files can wait for.
fn bob_claims_his_name(addr: &str) {
    let empty = TempDir::new("first-visit");
    let (ok, _, err) = one_shot(
        &["receive", "--server", addr, "--name", "bob", "--downloads", empty.path.to_str().unwrap()],
        &[BOB],
    );
    assert!(ok, "{err:?}");
}

/// Re-runs a one-shot command until it no longer fails with "name taken" (the relay may need a
/// moment to notice that a killed client's connection is gone).
fn one_shot_after_kill(args: &[&str], envs: &[(&str, &str)]) -> (bool, Vec<String>, Vec<String>) {
    for _ in 0..50 {
        let result = one_shot(args, envs);
        if !result.2.iter().any(|l| l.contains("already taken")) {
            return result;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("the killed client's name was never released");
}

#[test]
fn one_shot_send_and_receive_meet_through_to() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let src = TempDir::new("src");
    let a = random_file(&src.path, "my report.pdf", 700_000, 1);
    let b = random_file(&src.path, "照片.jpg", 5, 2);
    let (a_str, b_str) = (a.to_str().unwrap(), b.to_str().unwrap());
    bob_claims_his_name(&addr);
    let (ok, out, err) =
        one_shot(&["--server", &addr, "--name", "alice", "send", a_str, b_str, "--to", "bob"], &[]);
    assert!(ok, "{err:?}");
    assert!(out.iter().any(|l| l.ends_with("] File sent complete: my report.pdf (683.6 KiB)")), "{out:?}");
    assert!(out.iter().any(|l| l.ends_with("] File sent complete: 照片.jpg (5 B)")), "{out:?}");

    let dl = TempDir::new("dl");
    let dl_str = dl.path.to_str().unwrap();
    // Connection flags after the subcommand this time.
    let (ok, out, err) =
        one_shot(&["receive", "--server", &addr, "--name", "bob", "--downloads", dl_str], &[BOB]);
    assert!(ok, "{err:?}");
    assert!(out.iter().any(|l| l.ends_with("[Download] File download complete: my report.pdf")), "{out:?}");
    assert!(out.iter().any(|l| l.ends_with("[Download] File download complete: 照片.jpg")), "{out:?}");
    assert_eq!(common::sha256(&dl.path.join("my report.pdf")), common::sha256(&a));
    assert_eq!(common::sha256(&dl.path.join("照片.jpg")), common::sha256(&b));

    let (ok, out, _) =
        one_shot(&["receive", "--server", &addr, "--name", "bob", "--downloads", dl_str], &[BOB]);
    assert!(ok);
    assert!(out.iter().any(|l| l.ends_with("] no files waiting")), "{out:?}");
}

#[test]
fn one_shot_failures_exit_non_zero() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let dir = TempDir::new("dir");
    let dir_str = dir.path.to_str().unwrap();
    let (ok, _, err) = one_shot(&["send", dir_str, "--to", "bob", "--server", &addr, "--name", "a"], &[]);
    assert!(!ok);
    assert!(err.iter().any(|l| l.starts_with("error: ") && l.contains("directory")), "{err:?}");
    let missing = dir.path.join("missing.txt");
    let (ok, _, err) =
        one_shot(&["send", missing.to_str().unwrap(), "--to", "b", "--server", &addr, "--name", "a"], &[]);
    assert!(!ok && err.iter().any(|l| l.starts_with("error: ")), "{err:?}");
    // Nobody else in the room and no --to.
    let file = random_file(&dir.path, "x.bin", 10, 3);
    let (ok, _, err) = one_shot(&["send", file.to_str().unwrap(), "--server", &addr, "--name", "a"], &[]);
    assert!(!ok && err.iter().any(|l| l.contains("nobody else is in lobby")), "{err:?}");
}

#[test]
fn interactive_send_and_receive_with_quoted_paths() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let src = TempDir::new("src");
    let file = random_file(&src.path, "a file with spaces.txt", 1234, 4);
    let dl = TempDir::new("dl");
    let mut alice = Proc::client(&addr, "alice", &[]);
    let mut bob = Proc::client(&addr, "bob", &["--downloads", dl.path.to_str().unwrap()]);
    alice.expect(&alice.stdout, "* bob joined lobby");

    alice.type_line(&format!("/send \"{}\"", file.display()));
    alice.expect(&alice.stdout, "] File sent complete: a file with spaces.txt (1.2 KiB)");
    bob.expect(&bob.stdout, "[Newfile] alice: a file with spaces.txt (1.2 KiB)");
    bob.type_line("/receive");
    bob.expect(&bob.stdout, "[Download] File download complete: a file with spaces.txt");
    bob.expect(&bob.stdout, "] received 1 file(s)");
    assert_eq!(common::sha256(&dl.path.join("a file with spaces.txt")), common::sha256(&file));

    alice.type_line(&format!("/send {}", src.path.display()));
    alice.expect(&alice.stderr, "is a directory");
    alice.type_line("/send \"unclosed");
    alice.expect(&alice.stderr, "check your quotes");

    // EOF right after /send: the upload still completes before the client exits.
    let second = random_file(&src.path, "last.bin", 3_000_000, 5);
    alice.type_line(&format!("/send --to bob {}", second.display()));
    drop(alice.stdin.take());
    assert!(alice.wait().success());
    alice.expect(&alice.stdout, "] File sent complete: last.bin");
    bob.expect(&bob.stdout, "[Newfile] alice: last.bin");
}

/// Kill the sender mid-upload; sending again continues from what the relay already has.
#[test]
fn an_upload_resumes_after_the_client_is_killed() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let relay_tmp: PathBuf = server.data_dir().join("tmp");
    let src = TempDir::new("src");
    let file = random_file(&src.path, "big.bin", 10 << 20, 6);
    let file_str = file.to_str().unwrap();
    bob_claims_his_name(&addr);
    let args = ["send", file_str, "--to", "bob", "--server", &addr, "--name", "alice"];

    let mut slow = Proc::spawn(CLIENT, &args, &[("RELAYCHAT_TEST_CHUNK_DELAY_MS", "20")]);
    wait_for_part(&relay_tmp, 1 << 20);
    slow.child.kill().unwrap(); // SIGKILL: no goodbye, no cleanup
    slow.wait();
    let kept = wait_for_part(&relay_tmp, 0); // the part as the killed upload left it
    assert!(kept < 10 << 20, "killed in the middle");

    let (ok, _, err) = one_shot_after_kill(&args, &[]);
    assert!(ok, "{err:?}");
    server.expect("resuming upload");

    let dl = TempDir::new("dl");
    let (ok, _, err) = one_shot(
        &["receive", "--server", &addr, "--name", "bob", "--downloads", dl.path.to_str().unwrap()],
        &[BOB],
    );
    assert!(ok, "{err:?}");
    assert_eq!(common::sha256(&dl.path.join("big.bin")), common::sha256(&file));
}

/// Kill the receiver mid-download; receiving again continues from its `.part` file.
#[test]
fn a_download_resumes_after_the_client_is_killed() {
    let server = RelayOptions::new().start();
    let addr = server.addr.to_string();
    let src = TempDir::new("src");
    let file = random_file(&src.path, "big.bin", 10 << 20, 7);
    bob_claims_his_name(&addr);
    let (ok, _, err) =
        one_shot(&["send", file.to_str().unwrap(), "--to", "bob", "--server", &addr, "--name", "alice"], &[]);
    assert!(ok, "{err:?}");

    let dl = TempDir::new("dl");
    let args = ["receive", "--server", &addr, "--name", "bob", "--downloads", dl.path.to_str().unwrap()];
    let mut slow = Proc::spawn(CLIENT, &args, &[("RELAYCHAT_TEST_CHUNK_DELAY_MS", "20"), BOB]);
    wait_for_part(&dl.path, 1 << 20);
    slow.child.kill().unwrap();
    slow.wait();
    assert!(!dl.path.join("big.bin").exists(), "not complete yet");

    let (ok, out, err) = one_shot_after_kill(&args, &[BOB]);
    assert!(ok, "{err:?}");
    assert!(out.iter().any(|l| l.ends_with("File download complete: big.bin")), "{out:?}");
    server.expect("resuming download");
    assert_eq!(common::sha256(&dl.path.join("big.bin")), common::sha256(&file));
    assert_eq!(files_under(&dl.path), vec![dl.path.join("big.bin")], "no part or sidecar left");
}
