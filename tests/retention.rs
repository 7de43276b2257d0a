//! Retention is exact: a file or message older than `--retention` is never offered or delivered,
//! and the janitor deletes it within a tenth of the retention (at least every second).

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use relaychat::client::{Event, Mark};
use relaychat::server::ServerConfig;

#[test]
fn a_few_seconds_of_retention_are_kept_exactly() {
    let config = ServerConfig { retention: Duration::from_secs(2), ..ServerConfig::default() };
    let server = TestServer::start_with(config);
    server.account("bob", "pw", "lobby").close();
    let alice = server.client("alice", "lobby");
    let src = TempDir::new("src");
    let path = random_file(&src.path, "old.txt", 1000, 5);
    alice.send_file(&path, Some("bob")).unwrap();
    wait_uploaded(&alice, "old.txt");
    alice.send_direct("bob", "stale news").unwrap();
    alice.who().unwrap();
    wait_for(&alice, "the relay to take them", |e| matches!(e, Event::Online { .. }).then_some(()));
    thread::sleep(Duration::from_millis(2500));

    // Bob comes back after the retention, perhaps before the janitor's next look: no file
    // announced, no message delivered. The janitor (every second here) then deletes the bytes and
    // tells bob, who is online, that the file expired.
    let bob = server.account("bob", "pw", "lobby");
    bob.who().unwrap();
    loop {
        match next_event(&bob) {
            Event::NewFile(info) => panic!("{} was offered after it expired", info.name),
            Event::Chat { text, mark, .. } => panic!("{text:?} ({mark:?}) was delivered after it expired"),
            Event::Online { .. } => break,
            _ => {}
        }
    }
    wait_for(&bob, "the expiry notice", |e| match e {
        Event::FileExpired { name, .. } => (name == "old.txt").then_some(()),
        Event::NewFile(info) => panic!("{} was offered after it expired", info.name),
        _ => None,
    });
    let dl = TempDir::new("dl");
    let (paths, failures) = receive_into(&bob, &dl.path);
    assert!(paths.is_empty() && failures.is_empty());
    wait_until("the janitor deletes the bytes", WAIT, || {
        files_under(&server.data_dir.path.join("files")).is_empty().then_some(())
    });

    // Fresh things still arrive.
    alice.send_direct("bob", "fresh").unwrap();
    let (mark, text) = wait_for(&bob, "a fresh message", |e| match e {
        Event::Chat { mark, text, .. } => Some((*mark, text.clone())),
        _ => None,
    });
    assert_eq!((mark, text.as_str()), (Mark::Live, "fresh"));
}
