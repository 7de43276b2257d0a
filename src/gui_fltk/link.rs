//! The window's network thread: it owns the client library's reconnecting [`Session`] (the
//! same one the terminal client drives), and turns everything into [`LinkEvent`]s for the GUI
//! thread.
//!
//! FLTK widgets may only be touched by the GUI thread, and the GUI thread must never block on the
//! network. So the GUI sends [`Command`]s here over a bounded channel, and this thread sends
//! events back over another bounded channel, calling `fltk::app::awake()` after each one so the
//! GUI's event loop wakes up and reads them. No protocol logic lives in the window: this thread
//! only drives the same client library the terminal client uses.

use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};

use crate::client::{
    ClientConfig, ClientError, DialError, Disconnect, Event, KeepTrying, Security, Session, Trust, TrustError,
};

/// What the GUI asks for.
#[derive(Debug)]
pub enum Command {
    /// Send a line of chat.
    Text(String),
    /// Upload a file to everyone else in the room.
    SendFile(PathBuf),
    /// Download everything waiting into this directory.
    Receive(PathBuf),
    /// Disconnect cleanly and end the thread.
    Quit,
}

/// What the GUI is told.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected (or reconnected) as `name` in `room`.
    Connected { name: String, room: String, again: bool },
    /// Something happened on the connection.
    Net(Event),
    /// The connection was lost for `why`; the session is reconnecting.
    Lost { why: String },
    /// An attempt to connect failed for `why`; the next is in `retry_in`.
    Retrying { why: String, retry_in: Duration },
    /// The relay refused us (name taken, bad name, a changed TLS key...): no point retrying.
    Refused(String),
    /// First contact with a relay whose key no CA vouches for: ask the person whether
    /// `fingerprint` is the relay's, and send the answer back (see `client/trust.rs`).
    FirstContact { server: String, fingerprint: String, answer: Sender<bool> },
    /// A command could not be carried out (for example: not connected right now).
    Problem(String),
}

/// The network thread and the two channels to talk to it.
pub struct Link {
    pub to_link: Sender<Command>,
    pub events: Receiver<LinkEvent>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the thread. `wake` is called after every event is queued (the window passes
    /// `fltk::app::awake`; tests can pass anything).
    pub fn start(server: String, config: ClientConfig, wake: fn()) -> std::io::Result<Link> {
        // Bounded both ways: commands come at human speed; events wait for the GUI if it is busy.
        let (to_link, commands) = bounded(64);
        let (to_gui, events) = bounded(1024);
        let thread = thread::Builder::new().name("gui-link".into()).spawn(move || {
            let looper = Looper { server, config, commands, to_gui, wake, held: Vec::new() };
            looper.run()
        })?;
        Ok(Link { to_link, events, thread: Some(thread) })
    }

    /// Asks the thread to disconnect cleanly and waits for it. The event receiver is dropped first,
    /// so a thread blocked on a full event queue wakes up.
    pub fn shut_down(mut self) {
        let _ = self.to_link.send(Command::Quit);
        drop(std::mem::replace(&mut self.events, crossbeam_channel::never()));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why the window's use of one connection ended.
enum Ended {
    Quit,
    Lost(Disconnect),
}

struct Looper {
    server: String,
    /// Only until the first connection: trusting a relay's key may change it.
    config: ClientConfig,
    commands: Receiver<Command>,
    to_gui: Sender<LinkEvent>,
    wake: fn(),
    /// What the person asked for while the link was down (a line, a file, a receive): carried
    /// out once connected, as the terminal client's line waits for the new connection. At most
    /// [`HELD`]; beyond that the window is told it was not kept.
    held: Vec<Command>,
}

/// Commands held while not connected: as many as the command channel holds.
const HELD: usize = 64;

impl Looper {
    fn tell(&self, event: LinkEvent) -> bool {
        let sent = self.to_gui.send(event).is_ok();
        (self.wake)();
        sent
    }

    /// Connects, and reconnects whenever the link is lost, with the library's policy
    /// ([`Session`]). The window never gives up on its own: it keeps trying while it is open.
    fn run(mut self) {
        let Some(mut session) = self.first_session() else { return };
        let mut again = false;
        loop {
            let client = session.client();
            let (name, room) = (client.name().to_owned(), client.room().to_owned());
            if !self.tell(LinkEvent::Connected { name, room, again }) {
                return session.close();
            }
            again = true;
            for command in std::mem::take(&mut self.held) {
                self.carry_out(&mut session, command);
            }
            let why = match self.pump(&mut session) {
                Ended::Quit => return session.close(),
                Ended::Lost(why) => why,
            };
            if why.may_reconnect() && !self.tell(LinkEvent::Lost { why: why.to_string() }) {
                return;
            }
            match session.reconnect(&why, |pause, error| self.pause(pause, error)) {
                Ok(_) => {}
                Err(DialError::Cancelled) => return,
                Err(e) => return self.stop(e.to_string()),
            }
        }
    }

    /// The first connection: tried until it works (a relay that is down when the window opens
    /// is waited for), with the question about a relay's key on first contact.
    fn first_session(&mut self) -> Option<Session> {
        loop {
            let (server, config) = (self.server.clone(), self.config.clone());
            let dialed =
                Session::dial(&server, config, KeepTrying::Forever, |pause, error| self.pause(pause, error));
            match dialed {
                Ok(session) => return Some(session),
                Err(DialError::Refused(ClientError::Trust(TrustError::Unknown { server, fingerprint }))) => {
                    match self.ask_trust(server, fingerprint) {
                        Some(true) => continue, // trusted now: connect again at once
                        Some(false) => self.stop("not trusted: nothing was sent to the relay".into()),
                        None => {} // the window closed meanwhile
                    }
                    return None;
                }
                Err(DialError::Cancelled) => return None,
                Err(e) => {
                    self.stop(e.to_string());
                    return None;
                }
            }
        }
    }

    /// One wait between attempts: tells the window, then sleeps, still answering commands.
    /// False when the window closed meanwhile (the attempts stop).
    fn pause(&mut self, pause: Duration, error: &ClientError) -> bool {
        self.tell(LinkEvent::Retrying { why: error.to_string(), retry_in: pause }) && self.wait(pause)
    }

    /// Asks the window whether to trust a relay seen for the first time. On yes, pins it in
    /// `known_relays` (or, without one, for this session). `None` when the window closed.
    fn ask_trust(&mut self, server: String, fingerprint: String) -> Option<bool> {
        let (answer, reply) = bounded(1);
        let question =
            LinkEvent::FirstContact { server: server.clone(), fingerprint: fingerprint.clone(), answer };
        if !self.tell(question) {
            return None;
        }
        let yes = loop {
            select! {
                recv(reply) -> yes => break yes.unwrap_or(false),
                recv(self.commands) -> command => match command {
                    Ok(Command::Quit) | Err(_) => return None,
                    Ok(command) if self.held.len() < HELD => self.held.push(command),
                    Ok(_) => {
                        let wait = "not connected yet: answer the question about the relay's key first";
                        self.tell(LinkEvent::Problem(wait.into()));
                    }
                },
            }
        };
        if yes {
            if let Security::Tls(trust) = &mut self.config.security {
                let saved = match &trust.known_relays {
                    Some(file) => {
                        crate::client::trust::remember(file, &server, &fingerprint).map_err(|e| e.to_string())
                    }
                    None => Err("no config dir to keep it in".to_string()),
                };
                if let Err(why) = saved {
                    // Trusted for this session at least.
                    *trust = Trust { fingerprint: Some(fingerprint), ..trust.clone() };
                    self.tell(LinkEvent::Problem(format!(
                        "the relay's key is trusted for now but not saved: {why}"
                    )));
                }
            }
        }
        Some(yes)
    }

    /// Shows why the link stopped for good, and waits for the window to close: retrying would
    /// be refused again (or take the name back from the user's other login).
    fn stop(&self, why: String) {
        self.tell(LinkEvent::Refused(why));
        while let Ok(command) = self.commands.recv() {
            if let Command::Quit = command {
                return;
            }
        }
    }

    /// Serves one connection until it drops or the GUI quits.
    fn pump(&mut self, session: &mut Session) -> Ended {
        loop {
            let events = session.events().clone();
            select! {
                recv(self.commands) -> command => match command {
                    Ok(Command::Quit) | Err(_) => return Ended::Quit,
                    Ok(command) => self.carry_out(session, command),
                },
                recv(events) -> event => match event {
                    Ok(Event::Disconnected(why)) => return Ended::Lost(why),
                    Ok(event) => {
                        if session.fresh(&event) && !self.tell(LinkEvent::Net(event)) {
                            return Ended::Quit;
                        }
                    }
                    Err(_) => return Ended::Lost(Disconnect::Closed),
                },
            }
        }
    }

    fn carry_out(&mut self, session: &mut Session, command: Command) {
        let result = match command {
            Command::Text(text) => session.send("", &text),
            Command::SendFile(path) => session.send_file(&path, None),
            Command::Receive(dir) => session.receive_all(&dir),
            Command::Quit => Ok(()),
        };
        if let Err(e) = result {
            self.tell(LinkEvent::Problem(e.to_string()));
        }
    }

    /// Sleeps for `pause`, still taking commands: they are held for the next connection (see
    /// `held`). False when the GUI quit meanwhile.
    fn wait(&mut self, pause: Duration) -> bool {
        let deadline = std::time::Instant::now() + pause;
        loop {
            match self.commands.recv_deadline(deadline) {
                Ok(Command::Quit) | Err(RecvTimeoutError::Disconnected) => return false,
                Ok(command) if self.held.len() < HELD => self.held.push(command),
                Ok(_) => {
                    let full = format!(
                        "not connected, and {HELD} requests already wait for the connection: not kept"
                    );
                    self.tell(LinkEvent::Problem(full));
                }
                Err(RecvTimeoutError::Timeout) => return true,
            }
        }
    }
}
