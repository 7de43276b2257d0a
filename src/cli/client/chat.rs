//! The interactive chat: keyboard lines out, events in, and who does what on which thread.
//!
//! ## Three threads take turns with one chat
//!
//! ```text
//!  stdin ─▶ keyboard thread ──┐                   ┌── reader thread (the client's) ◀── socket
//!           handles each line └─▶  Mutex<Chat>   ◀┤   shows each event through the hook...
//!                                 the Session and └── main thread ◀── events queue
//!                                 the Ui (stdout)     ...or queues it for the main thread
//! ```
//!
//! The [`Chat`] (the library's reconnecting [`Session`], and the screen) is used by three
//! threads, one at a time. Whoever has something to do takes the chat's lock, does it, and
//! lets go:
//!
//! - the **keyboard thread** handles each line it reads from stdin;
//! - the client's **reader thread** shows each event from the relay itself, through an
//!   [`EventHook`] ([`event_hook`]), when that keeps the order (below);
//! - the **main thread** handles the rest from the client's event queue: the events of the
//!   upload thread, a lost connection (it reconnects), and the end of a `/receive` (it decides
//!   when to exit); and it waits for the keyboard thread to say it is done.
//!
//! Why not one thread that waits on keyboard and events with `select!`, as before? Because
//! every line and every event was then handed from one thread to another over a channel, and
//! each hand-off woke a sleeping thread: tens of microseconds on a small VM, twice on the path
//! of every message (`benches/latency.rs`). Now the thread that read the line sends it (with
//! the client's direct write, `client/direct.rs`, nothing is woken to put it on the socket), and
//! the thread that read the message prints it.
//!
//! **Order.** Events must reach the screen in the order they arrived, whichever thread shows
//! them. So the main thread takes an event from the queue only while it holds the lock, and the
//! hook shows an event itself only if the queue is empty at that moment: then nothing that came
//! before it is waiting or in anyone's hands. Otherwise it queues the event behind the others.
//!
//! The lock is held for the handling only: never while the keyboard thread waits for stdin, nor
//! while the main thread waits for events. The one long hold is a reconnect, and that is on
//! purpose: a line typed while the link is down waits for the new connection, as it always has,
//! and the new connection's first events wait until "reconnected" is on the screen. The main
//! thread never waits for the reader thread while it holds the lock (the hook of a connection
//! that is over has returned for good), so the two cannot wait for each other.

use std::io::{self, BufRead};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use anyhow::Context;
use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError};

use super::dial::reconnect;
use super::{Exit, Ui, HELP};
use crate::client::{ClientError, Event, EventHook, Session};
use crate::clock::now_ms;
use crate::display::{notice_line, visible};

/// What the keyboard thread and the main thread share, one at a time (see the module docs): the
/// library's reconnecting [`Session`] and the screen.
pub(super) struct Chat {
    pub(super) session: Session,
    pub(super) ui: Ui,
}

/// The chat behind its lock: `None` until the first connection is made, and again once the
/// chat is over.
pub(super) type Shared = Arc<Mutex<Option<Chat>>>;

/// Takes the chat. A thread that panicked while holding it has ended the chat anyway; the
/// other one still gets to close the connection.
fn lock(shared: &Shared) -> MutexGuard<'_, Option<Chat>> {
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

/// The hook the interactive client's connections are made with: the reader thread shows an
/// event itself when that keeps the order (see the module docs), and queues it otherwise.
pub(super) fn event_hook(shared: &Shared) -> EventHook {
    let shared = shared.clone();
    EventHook(Arc::new(move |event| show_now(&shared, event)))
}

/// On the reader thread: shows `event` now, or hands it back to be queued for the main thread.
fn show_now(shared: &Shared, event: Event) -> Option<Event> {
    if matches!(event, Event::Disconnected(_) | Event::ReceiveFinished { .. }) {
        return Some(event); // the main thread's: it reconnects, or may exit after a /receive
    }
    let mut guard = lock(shared);
    let Some(chat) = guard.as_mut() else { return Some(event) }; // not started, or over
    if !chat.session.events().is_empty() {
        return Some(event); // behind what is queued, to keep the order
    }
    if chat.session.fresh(&event) && chat.ui.show(&event).is_err() {
        // Stdout is gone: the main thread meets the same error and ends the chat with it.
        return Some(event);
    }
    None
}

/// The interactive loop, until stdin ends (and what it started is finished), `/quit`, `/leave`,
/// or a connection that cannot be brought back. `shared` is the one the connection's hook was
/// given ([`event_hook`]); `chat` goes into it now.
///
/// ## Close sequence
/// 1. The keyboard thread says how it ended (or its channel closes at EOF).
/// 2. At EOF, events are handled until nothing started from this terminal is still going on.
/// 3. The session is taken out of the lock, so a line read or an event shown after this is
///    ignored or queued for nobody, and the client is closed (goodbye, threads joined), or
///    leaves the room for good on `/leave`.
/// 4. The keyboard thread is not joined: a blocking read of stdin cannot be interrupted
///    portably, so the process exits underneath it.
pub(super) fn run(shared: Shared, chat: Chat) -> anyhow::Result<Exit> {
    *lock(&shared) = Some(chat);
    let mut keyboard = spawn_keyboard(shared.clone())?;
    let mut stdin_done = false;
    let ending = loop {
        let Some(events) = lock(&shared).as_ref().map(|c| c.session.events().clone()) else {
            anyhow::bail!("the session ended");
        };
        // Wait without taking: an event is taken only with the lock held (see "Order").
        let mut ready = Select::new();
        let from_keyboard = ready.recv(&keyboard);
        ready.recv(&events);
        if ready.ready() == from_keyboard {
            match keyboard.try_recv() {
                Ok(KeyboardEnd::Quit) => break KeyboardEnd::Quit,
                Ok(KeyboardEnd::Leave) => break KeyboardEnd::Leave,
                Ok(KeyboardEnd::Failed(e)) => return Err(e),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    // EOF: finish what was started, then leave.
                    if lock(&shared).as_ref().is_none_or(|c| c.session.is_idle()) {
                        break KeyboardEnd::Quit;
                    }
                    stdin_done = true;
                    keyboard = crossbeam_channel::never();
                }
            }
            continue;
        }
        let mut guard = lock(&shared);
        let Some(chat) = guard.as_mut() else { anyhow::bail!("the session ended") };
        match events.try_recv() {
            Ok(Event::Disconnected(why)) => reconnect(&mut chat.session, &why, &mut chat.ui)?,
            Ok(event) => {
                if chat.session.fresh(&event) {
                    chat.ui.show(&event)?;
                }
                if stdin_done && chat.session.is_idle() {
                    break KeyboardEnd::Quit;
                }
            }
            Err(TryRecvError::Empty) => {} // only this thread takes events; kept total
            Err(TryRecvError::Disconnected) => anyhow::bail!("the connection ended"),
        }
    };
    let Some(chat) = lock(&shared).take() else { anyhow::bail!("the session ended") };
    match ending {
        KeyboardEnd::Leave => chat.session.leave_room(),
        _ => chat.session.close(),
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
        let Some(chat) = guard.as_mut() else { return }; // the chat is over
        let step = match read {
            Ok(0) => return, // EOF: dropping `to_main` tells the main thread
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                match std::str::from_utf8(&buf) {
                    Ok(line) => handle_line(&mut chat.session, line, &mut chat.ui),
                    Err(_) => {
                        chat.ui.err("error: cannot read this input line: not valid UTF-8");
                        Ok(Step::Continue)
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Continue),
            Err(e) => {
                chat.ui.err(&format!("error: cannot read this input line: {e}"));
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

/// What a keyboard line asks of the session.
enum Step {
    Continue,
    Quit,
    /// `/leave`: quit and stop being a member of the room.
    Leave,
}

/// Carries out one keyboard line: a command, or text for the room.
fn handle_line(session: &mut Session, line: &str, ui: &mut Ui) -> anyhow::Result<Step> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let result = match command {
        "" if rest.is_empty() => Ok(()),
        "/quit" => return Ok(Step::Quit),
        "/leave" => return Ok(Step::Leave),
        "/msg" => match rest.trim_start().split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => {
                crate::rules::check_name(to).map_err(ClientError::Rule).and_then(|()| session.send(to, text))
            }
            _ => {
                ui.err("error: usage: /msg NAME text");
                Ok(())
            }
        },
        "/who" => session.client().who(),
        "/help" => {
            ui.out(&notice_line(now_ms(), HELP))?;
            Ok(())
        }
        "/send" => {
            send_command(session, rest, ui);
            Ok(())
        }
        "/receive" => session.receive_all(&ui.downloads),
        _ if line.starts_with("//") => session.send("", &line[1..]),
        _ if line.starts_with('/') => {
            ui.err(&format!("error: unknown command {} (try /help)", visible(command)));
            Ok(())
        }
        _ => session.send("", line),
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
fn send_command(session: &mut Session, args: &str, ui: &mut Ui) {
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
        if let Err(e) = session.send_file(path.as_ref(), to) {
            ui.err(&format!("error: {}", visible(&e.to_string())));
        }
    }
}
