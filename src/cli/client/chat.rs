//! The interactive chat: keyboard lines out, events in, and who does what on which thread.
//!
//! ## Two threads take turns with one session
//!
//! ```text
//!  stdin ─▶ keyboard thread ─┐                      ┌─ main thread ◀── events ◀── reader thread
//!           (reads a line)   └─▶ Mutex<Session> ◀───┘  (waits on events, and on the keyboard's end)
//!                               the Link (client, catch-up) and the Ui (stdout, bars)
//! ```
//!
//! The [`Session`] (the connection and what it must catch up on, and the screen) is used by two
//! threads, one at a time: the **keyboard thread** handles each line it reads from stdin itself,
//! and the **main thread** handles each event from the relay. Whoever has something to do takes
//! the session's lock, does it, and lets go.
//!
//! Why not one thread that waits on both with `select!`, as before? Because stdin can only be
//! waited on by a thread blocked in `read`, so a line then had to be handed from a stdin thread
//! to the main thread over a channel, and that hand-off woke a sleeping thread on every line:
//! tens of microseconds on a small VM, on the path of every message (`benches/latency.rs`). Now
//! the thread that read the line sends it, and with the client's direct write (`client.rs`,
//! `Direct`) the line is on the socket without any thread being woken.
//!
//! The lock is held for the handling only: never while the keyboard thread waits for stdin, nor
//! while the main thread waits for events. The one long hold is a reconnect, and that is on
//! purpose: a line typed while the link is down waits for the new connection, as it always has.

use std::io::{self, BufRead};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use anyhow::Context;
use crossbeam_channel::{bounded, select, Receiver, Sender};

use super::dial::Dialer;
use super::{Exit, Ui, HELP};
use crate::client::{CatchUp, Client, ClientError, Disconnect, Event};
use crate::clock::now_ms;
use crate::display::{notice_line, visible};

/// What the keyboard thread and the main thread share, one at a time (see the module docs).
pub(super) struct Session {
    pub(super) link: Link,
    pub(super) ui: Ui,
}

type Shared = Arc<Mutex<Option<Session>>>;

/// Takes the session. A thread that panicked while holding it has ended the chat anyway; the
/// other one still gets to close the connection.
fn lock(shared: &Shared) -> MutexGuard<'_, Option<Session>> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the keyboard's part ends (its channel simply closing means EOF on stdin).
enum KeyboardEnd {
    /// `/quit`.
    Quit,
    /// `/leave`: quit and stop being a member of the room.
    Leave,
    /// Handling a line failed for good (stdout is gone, or the connection cannot be used).
    Failed(anyhow::Error),
}

/// The interactive loop, until stdin ends (and what it started is finished), `/quit`, `/leave`,
/// or a connection that cannot be brought back.
///
/// ## Close sequence
/// 1. The keyboard thread says how it ended (or its channel closes at EOF).
/// 2. At EOF, events are handled until nothing started from this terminal is still going on.
/// 3. The session is taken out of the lock, so a line read after this is ignored, and the
///    client is closed (goodbye, threads joined), or leaves the room for good on `/leave`.
/// 4. The keyboard thread is not joined: a blocking read of stdin cannot be interrupted
///    portably, so the process exits underneath it.
pub(super) fn run(session: Session) -> anyhow::Result<Exit> {
    let shared: Shared = Arc::new(Mutex::new(Some(session)));
    let mut keyboard = spawn_keyboard(shared.clone())?;
    let mut stdin_done = false;
    let ending = loop {
        let Some(events) = lock(&shared).as_ref().map(|s| s.link.client.events().clone()) else {
            anyhow::bail!("the session ended");
        };
        select! {
            recv(keyboard) -> end => match end {
                Ok(KeyboardEnd::Quit) => break KeyboardEnd::Quit,
                Ok(KeyboardEnd::Leave) => break KeyboardEnd::Leave,
                Ok(KeyboardEnd::Failed(e)) => return Err(e),
                Err(_) => {
                    // EOF: finish what was started, then leave.
                    if lock(&shared).as_ref().is_none_or(|s| s.link.is_idle()) {
                        break KeyboardEnd::Quit;
                    }
                    stdin_done = true;
                    keyboard = crossbeam_channel::never();
                }
            },
            recv(events) -> event => {
                let mut guard = lock(&shared);
                let Some(session) = guard.as_mut() else { anyhow::bail!("the session ended") };
                match event {
                    Ok(Event::Disconnected(why)) => session.link.reconnect(&why, &mut session.ui)?,
                    Ok(event) => {
                        if session.link.catch_up.fresh(&event) {
                            session.ui.show(&event)?;
                        }
                        if let Event::ReceiveFinished { .. } = event {
                            session.link.receiving = false;
                        }
                        if stdin_done && session.link.is_idle() {
                            break KeyboardEnd::Quit;
                        }
                    }
                    Err(_) => anyhow::bail!("the connection ended"),
                }
            },
        }
    };
    let Some(session) = lock(&shared).take() else { anyhow::bail!("the session ended") };
    match ending {
        KeyboardEnd::Leave => session.link.client.leave_room(),
        _ => session.link.client.close(),
    }
    Ok(Exit::Success)
}

/// Starts the keyboard thread: it reads stdin line by line and handles each line itself, with
/// the session's lock held for the handling only. Its channel to the main thread carries only
/// how it ended, and closes at EOF.
fn spawn_keyboard(shared: Shared) -> anyhow::Result<Receiver<KeyboardEnd>> {
    // Holds at most the one message the thread sends before it ends.
    let (to_main, ended) = bounded(1);
    thread::Builder::new()
        .name("keyboard".into())
        .spawn(move || keyboard(&shared, &to_main))
        .context("cannot start the keyboard thread")?;
    Ok(ended)
}

fn keyboard(shared: &Shared, to_main: &Sender<KeyboardEnd>) {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // The lock is not held here: this is where the thread waits for the person.
        let read = input.read_until(b'\n', &mut buf);
        let mut guard = lock(shared);
        let Some(session) = guard.as_mut() else { return }; // the chat is over
        let step = match read {
            Ok(0) => return, // EOF: dropping `to_main` tells the main thread
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                match std::str::from_utf8(&buf) {
                    Ok(line) => handle_line(&mut session.link, line, &mut session.ui),
                    Err(_) => {
                        session.ui.err("error: cannot read this input line: not valid UTF-8");
                        Ok(Step::Continue)
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Continue),
            Err(e) => {
                session.ui.err(&format!("error: cannot read this input line: {e}"));
                return;
            }
        };
        drop(guard);
        let end = match step {
            Ok(Step::Continue) => continue,
            Ok(Step::Quit) => KeyboardEnd::Quit,
            Ok(Step::Leave) => KeyboardEnd::Leave,
            Err(e) => KeyboardEnd::Failed(e),
        };
        let _ = to_main.send(end);
        return;
    }
}

/// The interactive client's connection, with where and as whom to reconnect and what it needs to
/// catch up afterwards (see [`CatchUp`]).
pub(super) struct Link {
    pub(super) dialer: Dialer,
    pub(super) client: Client,
    /// Messages without a receipt and files without a verdict, sent again after a reconnect.
    pub(super) catch_up: CatchUp,
    /// A `/receive` is going on (asked again after a reconnect).
    pub(super) receiving: bool,
    /// Where `/receive` puts files.
    pub(super) downloads: std::path::PathBuf,
}

impl Link {
    /// Sends text (to the room if `to` is empty) and keeps it until its receipt comes.
    fn send(&mut self, to: &str, text: &str) -> Result<(), ClientError> {
        self.catch_up.send(&self.client, to, text)
    }

    /// Reconnects (see [`Dialer::reconnect`]), then carries on with what the lost connection
    /// left unfinished: messages without a receipt, files being sent (the relay resumes them)
    /// and a `/receive` (a half-downloaded file resumes from its `.part`).
    fn reconnect(&mut self, why: &Disconnect, ui: &mut Ui) -> anyhow::Result<()> {
        let client = self.dialer.reconnect(why, ui)?;
        let old = std::mem::replace(&mut self.client, client);
        drop(old);
        self.catch_up.resend(&self.client)?;
        let uploads = self.catch_up.uploads_pending();
        if uploads > 0 {
            ui.out(&notice_line(now_ms(), &format!("resuming {uploads} upload(s)")))?;
        }
        if self.receiving {
            self.client.receive_all(&self.downloads)?;
        }
        Ok(())
    }

    /// Nothing started from this terminal is still going on.
    fn is_idle(&self) -> bool {
        self.catch_up.uploads_pending() == 0 && !self.receiving
    }
}

/// The interactive loop: keyboard lines out, events in.

/// What a keyboard line asks of the session.
enum Step {
    Continue,
    Quit,
    /// `/leave`: quit and stop being a member of the room.
    Leave,
}

/// Carries out one keyboard line: a command, or text for the room.
fn handle_line(link: &mut Link, line: &str, ui: &mut Ui) -> anyhow::Result<Step> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let result = match command {
        "" if rest.is_empty() => Ok(()),
        "/quit" => return Ok(Step::Quit),
        "/leave" => return Ok(Step::Leave),
        "/msg" => match rest.trim_start().split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => {
                crate::rules::check_name(to).map_err(ClientError::Rule).and_then(|()| link.send(to, text))
            }
            _ => {
                ui.err("error: usage: /msg NAME text");
                Ok(())
            }
        },
        "/who" => link.client.who(),
        "/help" => {
            ui.out(&notice_line(now_ms(), HELP))?;
            Ok(())
        }
        "/send" => {
            send_command(link, rest, ui);
            Ok(())
        }
        "/receive" => link.client.receive_all(&ui.downloads).map(|()| link.receiving = true),
        _ if line.starts_with("//") => link.send("", &line[1..]),
        _ if line.starts_with('/') => {
            ui.err(&format!("error: unknown command {} (try /help)", visible(command)));
            Ok(())
        }
        _ => link.send("", line),
    };
    match result {
        Ok(()) => Ok(Step::Continue),
        Err(e @ (ClientError::Rule(_) | ClientError::Busy | ClientError::Encode(_))) => {
            ui.err(&format!("error: not sent: {e}"));
            Ok(Step::Continue)
        }
        // The reader thread will deliver `Disconnected` with the reason; wait for it.
        Err(ClientError::Disconnected) => Ok(Step::Continue),
        Err(e) => Err(e.into()),
    }
}

/// `/send [--to NAME] PATH...`, with shell-style quoting for paths with spaces.
fn send_command(link: &mut Link, args: &str, ui: &mut Ui) {
    let words = match shell_words::split(args) {
        Ok(words) => words,
        Err(e) => return ui.err(&format!("error: /send: {e} (check your quotes)")),
    };
    let (to, paths) = match words.as_slice() {
        [flag, name, paths @ ..] if flag == "--to" => (Some(name.as_str()), paths),
        paths => (None, paths),
    };
    if paths.is_empty() {
        return ui.err("error: usage: /send [--to NAME] PATH...");
    }
    for path in paths {
        if let Err(e) = link.catch_up.send_file(&link.client, path.as_ref(), to) {
            ui.err(&format!("error: {}", visible(&e.to_string())));
        }
    }
}
