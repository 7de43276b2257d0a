//! `cargo run --release --bin client`: the terminal client.
//!
//! Its stdin/stdout behaviour is a contract that scripts and this project's tests rely on:
//!
//! - **stdin**, one line at a time: plain text goes to the room; `/who`, `/help`, `/quit` are
//!   commands; a line starting with `//` sends the text after the first `/`. At EOF everything
//!   queued is sent, a goodbye is said, and the client exits 0.
//! - **stdout**, one event per line, flushed per line: `[HH:MM:SS] bob: hello`,
//!   `[HH:MM:SS] * bob joined lobby`, … Later lines of a multi-line message are indented by two
//!   spaces. Control characters are shown as escapes (see [`crate::display`]).
//! - **stderr**: `error: …`, one line each. Exit status non-zero when the relay is unreachable,
//!   refuses us, or goes away.
//!
//! ## Threads
//! The main thread waits on two channels with `select!`: lines from a stdin thread, and events
//! from the [`Client`]. Sending goes through the client's send queue, so a slow network never
//! stops us from reading the keyboard, and a flood of incoming messages never stops us typing.

use std::io::{self, BufRead, Write};
use std::thread;

use anyhow::Context;
use clap::Parser;
use crossbeam_channel::{bounded, select, Receiver};

use super::Exit;
use crate::client::{Client, ClientConfig, ClientError, Event};
use crate::display::{chat_line, notice_line, now_ms, visible};
use crate::rules::DEFAULT_ROOM;

/// relaychat client: chat with everyone in a room on a relaychat relay.
///
/// Type a line and press Enter to send it. Commands: /who, /help, /quit.
#[derive(Debug, Parser)]
#[command(name = "client", version)]
pub struct ClientCli {
    /// Use the terminal (the only interface in builds without the `gui` feature).
    #[arg(long)]
    pub cli: bool,
    /// The relay to connect to, as HOST:PORT.
    #[arg(long, env = "RELAYCHAT_SERVER", default_value = "127.0.0.1:21567")]
    pub server: String,
    /// Your name in the chat [default: your OS user name].
    #[arg(long, env = "RELAYCHAT_NAME")]
    pub name: Option<String>,
    /// The room to join.
    #[arg(long, default_value = DEFAULT_ROOM)]
    pub room: String,
}

const HELP: &str = "commands: /who (who is online), /help (this list), /quit (leave); \
                    start a line with // to send a line that begins with /";

/// Runs the terminal client until stdin ends, `/quit`, or the relay goes away.
pub fn run(cli: ClientCli) -> anyhow::Result<Exit> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let name = match cli.name {
        Some(name) => name,
        None => os_user_name().context("no --name given and the OS user name is unknown")?,
    };
    let config = ClientConfig { name, room: cli.room };
    let client = Client::connect_tcp(&cli.server, &config).map_err(connect_error)?;
    let mut out = Out(io::stdout());
    out.line(&notice_line(
        now_ms(),
        &format!("connected to {} as {} in {}", visible(&cli.server), client.name(), client.room()),
    ))?;
    let keyboard = spawn_stdin_reader()?;
    chat_loop(client, keyboard, &mut out)
}

fn connect_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Rule(rule) => anyhow::anyhow!("{rule}"),
        other => anyhow::anyhow!(other),
    }
}

/// The main loop: keyboard lines out, events in.
fn chat_loop(client: Client, keyboard: Receiver<io::Result<String>>, out: &mut Out) -> anyhow::Result<Exit> {
    loop {
        select! {
            recv(keyboard) -> line => match line {
                Ok(Ok(line)) => {
                    if let Step::Quit = handle_line(&client, &line, out)? {
                        break;
                    }
                }
                Ok(Err(e)) => eprintln!("error: cannot read this input line: {e}"),
                Err(_) => break, // stdin reached EOF
            },
            recv(client.events()) -> event => match event {
                Ok(Event::Disconnected(why)) => anyhow::bail!("{why}"),
                Ok(event) => show_event(&event, out)?,
                Err(_) => anyhow::bail!("the connection ended"),
            },
        }
    }
    client.close();
    Ok(Exit::Success)
}

enum Step {
    Continue,
    Quit,
}

fn handle_line(client: &Client, line: &str, out: &mut Out) -> anyhow::Result<Step> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let result = match line {
        "" => Ok(()),
        "/quit" => return Ok(Step::Quit),
        "/who" => client.who(),
        "/help" => {
            out.line(&notice_line(now_ms(), HELP))?;
            Ok(())
        }
        _ if line.starts_with("//") => client.send_text(&line[1..]),
        _ if line.starts_with('/') => {
            let command = line.split_whitespace().next().unwrap_or(line);
            eprintln!("error: unknown command {} (try /help)", visible(command));
            Ok(())
        }
        text => client.send_text(text),
    };
    match result {
        Ok(()) => Ok(Step::Continue),
        Err(ClientError::Rule(e)) => {
            eprintln!("error: not sent: {e}");
            Ok(Step::Continue)
        }
        // The reader thread will deliver `Disconnected` with the reason; wait for it.
        Err(ClientError::Disconnected) => Ok(Step::Continue),
        Err(e) => Err(e.into()),
    }
}

fn show_event(event: &Event, out: &mut Out) -> anyhow::Result<()> {
    let line = match event {
        Event::Chat { from, sent_at_ms, text } => chat_line(*sent_at_ms, from, text),
        Event::Joined { name, room } => {
            notice_line(now_ms(), &format!("{} joined {}", visible(name), visible(room)))
        }
        Event::Left { name, room } => {
            notice_line(now_ms(), &format!("{} left {}", visible(name), visible(room)))
        }
        Event::Online { room, names } => {
            let names: Vec<String> = names.iter().map(|n| visible(n)).collect();
            notice_line(now_ms(), &format!("online in {}: {}", visible(room), names.join(", ")))
        }
        Event::Warning { message, .. } => {
            eprintln!("error: {}", visible(message));
            return Ok(());
        }
        Event::Disconnected(_) => return Ok(()),
    };
    out.line(&line)
}

/// stdout, flushed after every line so that a script reading us sees each event at once.
struct Out(io::Stdout);

impl Out {
    fn line(&mut self, line: &str) -> anyhow::Result<()> {
        let mut lock = self.0.lock();
        writeln!(lock, "{line}").and_then(|()| lock.flush()).context("cannot write to stdout")
    }
}

/// Reads stdin line by line on its own thread.
///
/// This is the one thread we never join: a blocking read on stdin cannot be interrupted portably,
/// so when the relay goes away while the user is not typing, the process exits underneath it.
fn spawn_stdin_reader() -> anyhow::Result<Receiver<io::Result<String>>> {
    // Bounded: if the network is slow, a pasted novel waits in the pipe, not in our memory.
    let (to_main, lines) = bounded(64);
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut input = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match input.read_until(b'\n', &mut buf) {
                    Ok(0) => return, // EOF: dropping `to_main` tells the main loop
                    Ok(_) => {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                        }
                        let line = String::from_utf8(buf.clone())
                            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not valid UTF-8"));
                        if to_main.send(line).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = to_main.send(Err(e));
                        return;
                    }
                }
            }
        })
        .context("cannot start the stdin thread")?;
    Ok(lines)
}

/// The OS user name, as the default chat name.
fn os_user_name() -> Option<String> {
    ["USER", "USERNAME", "LOGNAME"].iter().find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        ClientCli::command().debug_assert();
        crate::cli::server::ServerCli::command().debug_assert();
    }
}
