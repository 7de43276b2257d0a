//! The client library's reconnecting `Session`, against a real relay that restarts: what both
//! front ends rely on when the link goes away. Nothing typed is lost (even in the moment between
//! the link dying and the reconnect), nothing is stored twice, and a session does not come back
//! after the relay ended it in a way that coming back would repeat.

mod common;

use std::time::Duration;

use common::{client_config, next_event, wait_for, TestServer};
use relaychat::client::ClientError;
use relaychat::client::{DialError, Disconnect, Event, KeepTrying, Mark, Session};
use relaychat::frame::ErrorCode;
use relaychat::server::ServerConfig;

/// Waits for the session's connection to end, skipping other events, and returns why.
fn wait_lost(session: &mut Session) -> Disconnect {
    loop {
        let event = session.events().recv_timeout(common::WAIT).expect("the connection ends in time");
        if let Event::Disconnected(why) = event {
            return why;
        }
        session.fresh(&event);
    }
}

fn sleep_through(pause: Duration, _: &relaychat::client::ClientError) -> bool {
    std::thread::sleep(pause);
    true
}

#[test]
fn a_line_sent_while_the_link_is_down_arrives_once_after_the_reconnect() {
    let relay = TestServer::start();
    let addr = relay.addr.to_string();
    let keep = KeepTrying::For(Duration::from_secs(20));
    let mut ann = Session::connect(&addr, client_config("ann", "lobby"), keep).expect("ann connects");
    assert!(matches!(next_event(ann.client()), Event::Online { .. }));
    ann.send("", "before the restart").unwrap();
    // The receipt comes (and the session takes note of it, as every event goes through
    // `fresh`), so this line is not sent again after the reconnect.
    loop {
        let event = ann.events().recv_timeout(common::WAIT).expect("the receipt comes in time");
        ann.fresh(&event);
        if let Event::Sent { .. } = event {
            break;
        }
    }

    let relay = relay.restart();
    let bob = relay.client("bob", "lobby");
    let why = wait_lost(&mut ann);
    // The old connection is gone: this line has nowhere to go yet, and must not be lost.
    ann.send("", "typed while the relay was away").expect("kept for the next connection");
    let resumed = ann.reconnect(&why, sleep_through).expect("ann reconnects");
    assert_eq!(resumed.messages, 1, "only the line without a receipt is sent again");

    let (from, text) = wait_for(&bob, "ann's line", |e| match e {
        Event::Chat { from, text, mark: Mark::Live, .. } if from == "ann" => {
            Some((from.clone(), text.clone()))
        }
        _ => None,
    });
    assert_eq!((from.as_str(), text.as_str()), ("ann", "typed while the relay was away"));
    // Exactly once: nothing more from ann, live (a duplicate, or the old line sent again,
    // would show here; bob saw the old line as the room's history on joining).
    let more = bob.events().recv_timeout(Duration::from_millis(500));
    assert!(
        !matches!(&more, Ok(Event::Chat { from, mark: Mark::Live, .. }) if from == "ann"),
        "a second line from ann: {more:?}"
    );
    ann.close();
}

#[test]
fn a_session_gives_up_when_the_relay_stays_away_and_never_comes_back_after_a_takeover() {
    let relay = TestServer::start();
    let addr = relay.addr.to_string();
    let keep = KeepTrying::For(Duration::from_millis(700));
    let mut ann = Session::connect(&addr, client_config("ann", "lobby"), keep).expect("ann connects");

    // LoggedInElsewhere: coming back would take the name from the other login, in a loop.
    let taken = Disconnect::ServerError { code: ErrorCode::LoggedInElsewhere, message: "elsewhere".into() };
    assert!(matches!(ann.reconnect(&taken, sleep_through), Err(DialError::Ended(_))));

    drop(relay); // stopped for good
    let why = wait_lost(&mut ann);
    let started = std::time::Instant::now();
    match ann.reconnect(&why, sleep_through) {
        Err(DialError::GaveUp { lost: Some(lost), .. }) => assert_eq!(lost, why),
        other => panic!("expected to give up, got {:?}", other.err()),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(5), "gave up after {took:?}");
}

#[test]
fn a_relay_that_refuses_the_reconnect_ends_the_session_with_its_reason() {
    let relay = TestServer::start();
    let addr = relay.addr.to_string();
    let keep = KeepTrying::For(Duration::from_secs(20));
    let mut ann = Session::connect(&addr, client_config("ann", "lobby"), keep).expect("ann connects");
    assert!(matches!(next_event(ann.client()), Event::Online { .. }));

    // The relay comes back private, and ann has no access password: trying again cannot help,
    // so the session must stop at the first refusal instead of retrying for 20 s.
    let private = ServerConfig { access_password: Some("members only".into()), ..Default::default() };
    let _relay = relay.restart_as(private, || {});
    let why = wait_lost(&mut ann);
    let started = std::time::Instant::now();
    match ann.reconnect(&why, sleep_through) {
        Err(DialError::Refused(ClientError::Refused { code, .. })) => {
            assert_eq!(code, ErrorCode::AccessDenied)
        }
        other => panic!("expected the relay's refusal, got {:?}", other.err()),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}", started.elapsed());
}
