//! The one reconnecting session of both front ends: a [`Client`] that comes back after the link
//! is lost, with what it must catch up on, under one policy.
//!
//! A [`Client`] is one connection: when the link drops, it is over. What a person expects of a
//! chat program is more: it comes back by itself, nothing they typed is lost, nothing is shown
//! twice, a file being sent goes on from where it stopped. That is this type. The terminal client
//! (`cli/client/`) and the window (`gui_fltk/link.rs`) both drive one, so they cannot drift apart:
//!
//! - **One policy for when to try again** ([`retry_may_help`], [`Disconnect::may_reconnect`]):
//!   a link that broke, or a relay that was full, busy or restarting, is worth another try; a
//!   refusal that would only be repeated is not (a wrong password, a name taken over by a login
//!   elsewhere, a relay key that changed).
//! - **One pace** ([`Backoff`]): at once, then 250 ms, doubling to 5 s.
//! - **How long to keep trying** is the one thing each front end chooses ([`KeepTrying`]): a script
//!   must not hang, so the terminal client gives up after a minute; a window stays open and keeps
//!   trying while it does.
//! - **One source of message ids** and one [`CatchUp`]: messages without a receipt are sent again
//!   under their ids, files without a verdict are queued again (the relay resumes them), a
//!   receive that was going on is asked for again, and history already shown is not shown twice.
//!
//! Waiting between attempts is the caller's: [`Session::dial`] and [`Session::reconnect`] hand
//! each pause to a function that sleeps (and may do other things meanwhile, as the window answers
//! its buttons), and that can call the attempts off by returning false.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{Backoff, CatchUp, Client, ClientConfig, ClientError, Disconnect, Event};

/// How long to keep trying to reach the relay after the link was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepTrying {
    /// Until it works, or until the caller's pause function calls it off (the window).
    Forever,
    /// For this long after the loss, then give up (the terminal client: a minute by default).
    /// Zero makes one attempt.
    For(Duration),
}

/// Why a session could not be (re)connected.
#[derive(Debug)]
pub enum DialError {
    /// The relay refused us, or we refused it, in a way that trying again would only repeat:
    /// a wrong password, a bad name, an untrusted or changed key ([`ClientError::Trust`]).
    Refused(ClientError),
    /// The relay ended the session in a way that reconnecting would repeat
    /// ([`Disconnect::may_reconnect`] is false): for example, the name was taken over by a login
    /// elsewhere, which coming back would take from in turn, in a loop.
    Ended(Disconnect),
    /// [`KeepTrying::For`] ran out; `last` is why the last attempt failed (boxed: it is big, and
    /// an error should be cheap to pass around), `lost` why the connection before it ended.
    GaveUp { lost: Option<Disconnect>, last: Box<ClientError> },
    /// The pause function returned false (the window closed while it waited).
    Cancelled,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused(e) => write!(f, "{e}"),
            DialError::Ended(why) => write!(f, "{why}"),
            DialError::GaveUp { lost: Some(why), last } => write!(f, "{why}; could not reconnect: {last}"),
            DialError::GaveUp { lost: None, last } => write!(f, "{last}"),
            DialError::Cancelled => write!(f, "cancelled"),
        }
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DialError::Refused(e) => Some(e),
            DialError::GaveUp { last, .. } => Some(last.as_ref()),
            DialError::Ended(_) | DialError::Cancelled => None,
        }
    }
}

/// What a reconnect picked up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Messages sent again (they had no receipt yet; the relay stores each only once).
    pub messages: usize,
    /// Files queued again (the relay resumes each where it stopped).
    pub uploads: usize,
    /// A receive was going on and was asked for again.
    pub receiving: bool,
}

/// Whether a failed attempt to connect is worth repeating later: the relay could not be reached,
/// the handshake broke, or the relay was full or busy. Not a refusal that would be repeated (a
/// password, a name, a key we do not trust), nor a mistake of ours (a name that breaks the rules).
pub fn retry_may_help(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } | ClientError::Handshake(_) | ClientError::Tls(_) => true,
        ClientError::Refused { code, .. } => code.retry_may_help(),
        ClientError::Rule(_)
        | ClientError::Trust(_)
        | ClientError::BadPath { .. }
        | ClientError::Busy
        | ClientError::Disconnected
        | ClientError::Encode(_) => false,
    }
}

/// A connection to the relay that reconnects, with what it must catch up on. See the module docs.
pub struct Session {
    server: String,
    config: ClientConfig,
    keep_trying: KeepTrying,
    client: Client,
    catch_up: CatchUp,
    /// Where a receive that is going on puts files (asked for again after a reconnect).
    receiving: Option<PathBuf>,
}

impl Session {
    /// Connects once, now. `keep_trying` is for later, when the link is lost. Receipts are
    /// turned on: the session needs them to know which messages to send again.
    ///
    /// For a first connection that fails fast, as a script wants (a typo in the address is an
    /// error at once, not after a minute of retries).
    pub fn connect(
        server: &str,
        config: ClientConfig,
        keep_trying: KeepTrying,
    ) -> Result<Session, ClientError> {
        let config = ClientConfig { receipts: true, ..config };
        let client = Client::connect_tcp(server, &config)?;
        Ok(Session::around(server, config, keep_trying, client))
    }

    /// Connects, trying again as the policy says (see the module docs) until it works; each wait
    /// goes through `pause` (see [`Session::reconnect`]). For a program that stays open, as the
    /// window does: a relay that is down when it starts is waited for.
    pub fn dial(
        server: &str,
        config: ClientConfig,
        keep_trying: KeepTrying,
        pause: impl FnMut(Duration, &ClientError) -> bool,
    ) -> Result<Session, DialError> {
        let config = ClientConfig { receipts: true, ..config };
        let client = attempts(server, &config, keep_trying, None, pause)?;
        Ok(Session::around(server, config, keep_trying, client))
    }

    fn around(server: &str, config: ClientConfig, keep_trying: KeepTrying, client: Client) -> Session {
        Session {
            server: server.to_owned(),
            config,
            keep_trying,
            client,
            catch_up: CatchUp::default(),
            receiving: None,
        }
    }

    /// After the link was lost for `why` (the [`Event::Disconnected`] the client reported):
    /// connects again and carries on with what the lost connection left unfinished.
    ///
    /// Tries at once, then waits as [`Backoff`] says, for as long as [`KeepTrying`] allows. Each
    /// wait is `pause(how_long, why_the_last_attempt_failed)`: the function sleeps (the window
    /// answers its buttons meanwhile) and returns false to call the attempts off.
    pub fn reconnect(
        &mut self,
        why: &Disconnect,
        pause: impl FnMut(Duration, &ClientError) -> bool,
    ) -> Result<Resumed, DialError> {
        if !why.may_reconnect() {
            return Err(DialError::Ended(why.clone()));
        }
        let client = attempts(&self.server, &self.config, self.keep_trying, Some(why), pause)?;
        // The old client's threads have ended with its connection; dropping it joins them.
        drop(std::mem::replace(&mut self.client, client));
        let mut resumed = Resumed { messages: 0, uploads: 0, receiving: false };
        // A failure here means the new connection is already gone: its own Disconnected event
        // follows, and the next reconnect sends all of it again.
        if let Ok((messages, uploads)) = self.catch_up.resend(&self.client) {
            resumed.messages = messages;
            resumed.uploads = uploads;
        }
        if let Some(dir) = &self.receiving {
            // A half-downloaded file resumes from its `.part`.
            resumed.receiving = self.client.receive_all(dir).is_ok();
        }
        Ok(resumed)
    }

    /// The connection of the moment. It changes at every reconnect: keep no references to it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where the session connects.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The current connection's events (see [`Client::events`]). Pass each to
    /// [`Session::fresh`] before showing it.
    pub fn events(&self) -> &Receiver<Event> {
        self.client.events()
    }

    /// Sends text (to the room if `to` is empty) and keeps it until the relay's receipt comes.
    /// Sent while the connection is already gone, it goes out on the next one.
    pub fn send(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        self.catch_up.send(&self.client, to, text)
    }

    /// Queues a file for upload (see [`Client::send_file`]) and keeps it until its verdict comes
    /// (queued again on the next connection if this one is gone).
    pub fn send_file(&mut self, path: &Path, to: Option<&str>) -> Result<(), ClientError> {
        self.catch_up.send_file(&self.client, path, to)
    }

    /// Downloads everything waiting into `dir` (see [`Client::receive_all`]); asked for again
    /// after a reconnect until [`Event::ReceiveFinished`] arrives. Asked while the connection is
    /// already gone, it is asked on the next one.
    pub fn receive_all(&mut self, dir: &Path) -> Result<(), ClientError> {
        match self.client.receive_all(dir) {
            Ok(()) | Err(ClientError::Disconnected) => {}
            Err(e) => return Err(e),
        }
        self.receiving = Some(dir.to_owned());
        Ok(())
    }

    /// Takes note of an event; false when it should not be shown (a receipt, or history that
    /// was shown before a reconnect). Every event of [`Session::events`] goes through here.
    pub fn fresh(&mut self, event: &Event) -> bool {
        if let Event::ReceiveFinished { .. } = event {
            self.receiving = None;
        }
        self.catch_up.fresh(event)
    }

    /// Files queued and not yet stored or refused.
    pub fn uploads_pending(&self) -> usize {
        self.catch_up.uploads_pending()
    }

    /// Nothing started through this session is still going on: no file without a verdict, no
    /// receive that has not finished.
    pub fn is_idle(&self) -> bool {
        self.catch_up.uploads_pending() == 0 && self.receiving.is_none()
    }

    /// Leaves cleanly (see [`Client::close`]).
    pub fn close(self) {
        self.client.close();
    }

    /// Leaves the room for good (see [`Client::leave_room`]).
    pub fn leave_room(self) {
        self.client.leave_room();
    }
}

/// Connects, trying again while it may help and `keep_trying` allows. `lost` is why the last
/// connection ended, if this is a reconnect (it goes into the error when we give up).
fn attempts(
    server: &str,
    config: &ClientConfig,
    keep_trying: KeepTrying,
    lost: Option<&Disconnect>,
    mut pause: impl FnMut(Duration, &ClientError) -> bool,
) -> Result<Client, DialError> {
    let started = Instant::now();
    let mut backoff = Backoff::default();
    loop {
        let error = match Client::connect_tcp(server, config) {
            Ok(client) => return Ok(client),
            Err(e) if !retry_may_help(&e) => return Err(DialError::Refused(e)),
            Err(e) => e,
        };
        let wait = backoff.next_pause();
        let wait = match keep_trying {
            KeepTrying::Forever => wait,
            KeepTrying::For(limit) => match limit.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => wait.min(left),
                _ => return Err(DialError::GaveUp { lost: lost.cloned(), last: Box::new(error) }),
            },
        };
        if !pause(wait, &error) {
            return Err(DialError::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ErrorCode;
    use std::net::TcpListener;

    fn refused(code: ErrorCode) -> ClientError {
        ClientError::Refused { code, message: String::new() }
    }

    #[test]
    fn only_what_may_go_away_is_tried_again() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(retry_may_help(&ClientError::Connect { server: "x".into(), source: io }));
        assert!(retry_may_help(&ClientError::Handshake("reset".into())));
        assert!(retry_may_help(&refused(ErrorCode::RelayFull)));
        assert!(retry_may_help(&refused(ErrorCode::LoginBusy)));
        assert!(!retry_may_help(&refused(ErrorCode::BadPassword)));
        assert!(!retry_may_help(&refused(ErrorCode::NameTaken)));
        assert!(!retry_may_help(&refused(ErrorCode::VersionMismatch)));
        assert!(!retry_may_help(&ClientError::Rule(crate::rules::RuleError::Empty { what: "name" })));
    }

    /// A port nothing listens on: bound, then closed, so connecting is refused at once.
    fn dead_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        addr
    }

    fn plaintext() -> ClientConfig {
        ClientConfig { security: super::super::Security::Plaintext, ..ClientConfig::new("ann", "lobby") }
    }

    #[test]
    fn waits_follow_the_backoff_and_stop_when_time_is_up() {
        let server = dead_port();
        let mut waits = Vec::new();
        let keep = KeepTrying::For(Duration::from_millis(900));
        let result = Session::dial(&server, plaintext(), keep, |wait, _| {
            waits.push(wait);
            std::thread::sleep(wait);
            true
        });
        match result {
            Err(DialError::GaveUp { lost: None, last }) => {
                assert!(matches!(*last, ClientError::Connect { .. }))
            }
            other => panic!("expected to give up, got {:?}", other.err()),
        }
        // 250 and 500 ms fit; the third wait is cut to what is left of the 900 ms.
        assert_eq!(waits[..2], [Duration::from_millis(250), Duration::from_millis(500)]);
        assert!(waits.len() == 3 && waits[2] < Duration::from_millis(200), "{waits:?}");
    }

    #[test]
    fn the_pause_function_can_call_it_off_and_forever_never_gives_up_by_itself() {
        let server = dead_port();
        let mut calls = 0;
        let result = Session::dial(&server, plaintext(), KeepTrying::Forever, |_, _| {
            calls += 1;
            calls < 3
        });
        assert!(matches!(result, Err(DialError::Cancelled)));
        assert_eq!(calls, 3);
    }

    #[test]
    fn zero_makes_one_attempt() {
        let mut paused = false;
        let result = Session::dial(&dead_port(), plaintext(), KeepTrying::For(Duration::ZERO), |_, _| {
            paused = true;
            true
        });
        assert!(matches!(result, Err(DialError::GaveUp { .. })));
        assert!(!paused);
    }
}
