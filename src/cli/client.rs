//! `cargo run --release --bin client`: the terminal client, and its one-shot `send` and `receive`.
//!
//! Its stdin/stdout behaviour is a contract that scripts and this project's tests rely on:
//!
//! - **stdin**, one line at a time: plain text goes to the room; `/msg NAME text`, `/who`,
//!   `/send [--to NAME] PATH…`, `/receive`, `/leave`, `/help` and `/quit` are commands; a line
//!   starting with `//` sends the text after the first `/`. At EOF, queued messages and transfers are finished, a goodbye is said,
//!   and the client exits 0.
//! - **stdout**, one event per line, flushed per line: `[HH:MM:SS] bob: hello`,
//!   `[HH:MM:SS] * bob joined lobby`, `[HH:MM:SS] [Newfile] bob: a.pdf (1.2 MiB)`,
//!   `[HH:MM:SS] File sent complete: a.pdf (1.2 MiB)`, … in the wording the window uses too
//!   (`display::describe`; placed by `cli/show.rs`). Control characters are shown as escapes.
//! - **stderr**: `error: …`, one line each, and progress bars when stderr is a terminal. Exit status
//!   non-zero when the relay is unreachable, refuses us, goes away, or a one-shot transfer fails.
//!
//! ## Threads
//! A keyboard thread reads stdin and handles each line itself; the main thread handles the
//! [`Client`](crate::client::Client)'s events. They take turns with one session (the connection and the screen): see
//! `cli/client/chat.rs` for why, and how. The client library's own threads do the network
//! (`client.rs`), so a flood of incoming messages never stops us typing.

use std::collections::HashSet;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::progress::Bars;
use super::show::{line, Line};
use super::Exit;
use crate::client::{ClientConfig, Direction, Event, FirstContact, KeepTrying, Security, Trust};
use crate::clock::now_ms;
use crate::display::{notice_line, visible};
use crate::rules::DEFAULT_ROOM;

/// relaychat client: chat with everyone in a room on a relaychat relay, and pass files through it.
///
/// Type a line and press Enter to send it. Commands: /who, /msg NAME text, /send [--to NAME]
/// PATH..., /receive, /leave, /help, /quit.
#[derive(Debug, Parser)]
#[command(name = "client", version)]
pub struct ClientCli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Where to connect and as whom; accepted before or after a subcommand.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Use the terminal even when the window is available (builds with the `gui` feature open a
    /// window by default when there is a display).
    #[arg(long, global = true)]
    pub cli: bool,
    /// The relay to connect to, as HOST:PORT [default: 127.0.0.1:21567; the window asks].
    #[arg(long, global = true, env = "RELAYCHAT_SERVER")]
    pub server: Option<String>,
    /// Your name in the chat [default: your OS user name].
    #[arg(long, global = true, env = "RELAYCHAT_NAME")]
    pub name: Option<String>,
    /// The room to join.
    #[arg(long, global = true, default_value = DEFAULT_ROOM)]
    pub room: String,
    /// Where received files go [default: a `relaychat` folder in your download directory].
    #[arg(long, global = true, env = "RELAYCHAT_DOWNLOADS")]
    pub downloads: Option<PathBuf>,
    /// Your account password: the first login with it claims your name, later logins need it.
    /// Without one, the name is kept for this machine (see README, "Accounts"); in a terminal you
    /// are asked for one.
    #[arg(long, global = true, env = "RELAYCHAT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The relay's access password, if it has one.
    #[arg(long, global = true, env = "RELAYCHAT_ACCESS_PASSWORD", hide_env_values = true)]
    pub access_password: Option<String>,
    /// Seconds without a word from the relay before the link counts as dead and the client
    /// reconnects. A Ping goes out every third of it and the relay answers, so a working link
    /// is never silent that long, idle or busy (see docs/PROTOCOL.md, "Heartbeat").
    #[arg(long, global = true, env = "RELAYCHAT_IDLE_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub idle_timeout: u64,
    /// Seconds to keep trying to reconnect after the link was lost, before the terminal client
    /// gives up and exits non-zero (0: one attempt). The window keeps trying while it is open.
    #[arg(long, global = true, env = "RELAYCHAT_RECONNECT_FOR", default_value_t = 60)]
    pub reconnect_for: u64,
    /// The relay's key fingerprint (SHA256:…, from its operator: `server --fingerprint`). On first
    /// contact it must match; without it a terminal asks, and a script trusts with a notice.
    #[arg(long, global = true, env = "RELAYCHAT_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Also trust certificates signed by this CA (PEM), for a private deployment.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// No TLS: the password and every message cross the network readable by anyone on the way.
    /// For the lesson on watching frames in Wireshark, with a relay run with --allow-plaintext.
    #[arg(long, global = true)]
    pub plaintext: bool,
    /// Test hook: wait this long after each upload chunk, so tests can interrupt a transfer.
    #[arg(long, global = true, hide = true, env = "RELAYCHAT_TEST_CHUNK_DELAY_MS")]
    pub test_chunk_delay_ms: Option<u64>,
}

/// One-shot commands for scripts: connect, do one thing, exit.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload files; exits 0 once the relay has stored and verified every one.
    Send {
        /// Files to send.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Send to this user (online or not) instead of everyone else in the room.
        #[arg(long)]
        to: Option<String>,
    },
    /// Download every file waiting for you; exits 0 once all are verified and in place.
    Receive,
}

mod chat;
mod dial;
mod oneshot;

use chat::Chat;
use dial::first_connect;
use oneshot::{receive_once, send_once};

const HELP: &str = "commands: /who (who is online), /msg NAME text (to one person, even offline), \
                    /send [--to NAME] PATH... (send files; quote paths with spaces), /receive (download \
                    files waiting for you), /leave (leave the room for good), /help, /quit; start a line \
                    with // to send a line that begins with /";

/// The relay used when neither `--server` nor `RELAYCHAT_SERVER` names one.
pub const DEFAULT_SERVER: &str = "127.0.0.1:21567";

/// Runs the client: the window (in `gui` builds with a display, unless `--cli`), a one-shot
/// command, or the interactive terminal chat until stdin ends or `/quit`.
pub fn run(cli: ClientCli) -> anyhow::Result<Exit> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let downloads = match cli.conn.downloads.clone() {
        Some(dir) => dir,
        None => default_downloads().context("cannot find a download directory; pass --downloads DIR")?,
    };
    #[cfg(feature = "gui")]
    if cli.command.is_none() && !cli.conn.cli && crate::gui_fltk::display_available() {
        let security = security(&cli.conn, true)?;
        let ConnArgs { server, name, room, password, access_password, .. } = cli.conn;
        let launch = crate::gui_fltk::Launch {
            server,
            name,
            password,
            access: access_password,
            room,
            downloads,
            security,
        };
        return crate::gui_fltk::run(launch).map(|()| Exit::Success);
    }
    let password = match cli.conn.password.clone() {
        Some(password) => Some(password),
        None if cli.command.is_none() => {
            let name = cli.conn.name.clone().or_else(crate::client::default_name).unwrap_or_default();
            ask_password(&name)
        }
        None => None,
    };
    // Ask on first contact only where someone can answer: the interactive client in a terminal.
    let can_ask = cli.command.is_none() && io::stdin().is_terminal();
    let (server, mut config, keep_trying) = client_config(&cli, password, can_ask)?;
    // This machine's token for this relay: the name stays ours without a password (see
    // client/identity.rs). Kept out of `client_config`: it reads (or makes) the identity file.
    config.token = crate::client::identity::token_or_guest(&server);
    // The interactive chat shows events on the reader thread (see cli/client/chat.rs).
    let shared = chat::Shared::default();
    if cli.command.is_none() {
        config.on_event = Some(chat::event_hook(&shared));
    }
    let session = first_connect(&server, config, keep_trying)?;
    let mut ui = Ui { out: io::stdout(), bars: Bars::new(), downloads, offered: HashSet::new() };
    match cli.command {
        Some(Command::Send { paths, to }) => send_once(session, &paths, to.as_deref(), &mut ui),
        Some(Command::Receive) => receive_once(session, &mut ui),
        None => {
            let client = session.client();
            ui.out(&notice_line(
                now_ms(),
                &format!("connected to {} as {} in {}", visible(&server), client.name(), client.room()),
            ))?;
            chat::run(shared, Chat { session, ui })
        }
    }
}

/// The command line turned into where to connect, the client's configuration and how long to
/// keep trying after a lost link: everything but the questions (the password prompt, `can_ask`)
/// and the identity file is decided here, so it can be tested without a terminal, a config dir
/// or a relay.
fn client_config(
    cli: &ClientCli,
    password: Option<String>,
    can_ask: bool,
) -> anyhow::Result<(String, ClientConfig, KeepTrying)> {
    let name = match cli.conn.name.clone() {
        Some(name) => name,
        None => crate::client::default_name().context("no --name given and the OS user name is unknown")?,
    };
    let server = cli.conn.server.clone().unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let mut config = ClientConfig::new(name, cli.conn.room.clone());
    config.password = password.unwrap_or_default();
    config.access = cli.conn.access_password.clone().unwrap_or_default();
    config.idle_timeout = std::time::Duration::from_secs(cli.conn.idle_timeout);
    config.ping_every = config.idle_timeout / 3;
    // The keyboard thread goes straight back to reading stdin after a line: it may write the
    // line itself instead of waking the writer (see `ClientConfig::direct_writes`).
    config.direct_writes = true;
    config.security = security(&cli.conn, can_ask)?;
    // Test hook (tests/file_binaries.rs, tests/links.rs): slow uploads down so they can be cut.
    config.chunk_delay = cli.conn.test_chunk_delay_ms.map(std::time::Duration::from_millis);
    let keep_trying = KeepTrying::For(std::time::Duration::from_secs(cli.conn.reconnect_for));
    Ok((server, config, keep_trying))
}

/// TLS and whom to trust, from the flags (see `client/trust.rs`), or plaintext with a warning.
/// `can_ask`: someone may be asked on first contact (the window always can; the terminal client
/// when stdin is a terminal).
fn security(conn: &ConnArgs, can_ask: bool) -> anyhow::Result<Security> {
    if conn.plaintext {
        eprintln!("warning: --plaintext: your password and messages cross the network unencrypted");
        return Ok(Security::Plaintext);
    }
    let extra_roots = match &conn.tls_ca {
        None => Vec::new(),
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", path.display()))?,
    };
    let known_relays = crate::client::identity::Identity::default_dir().map(|dir| dir.join("known_relays"));
    let first_contact = if can_ask { FirstContact::Refuse } else { FirstContact::Accept };
    Ok(Security::Tls(Trust {
        known_relays,
        fingerprint: conn.fingerprint.clone(),
        extra_roots,
        first_contact,
    }))
}

/// Output: stdout lines, stderr errors, progress bars.
struct Ui {
    out: io::Stdout,
    bars: Bars,
    downloads: PathBuf,
    /// Files shown as `[Newfile]` while they were arriving. The relay offers such a file again
    /// when its upload resumes and when it is stored; it is shown once. (Ids of uploads that
    /// never complete stay here: a few bytes each, for the life of the process.)
    offered: HashSet<u64>,
}

impl Ui {
    /// One stdout line, flushed, so a script reading us sees each event at once.
    fn out(&mut self, text: &str) -> anyhow::Result<()> {
        let out = &self.out;
        self.bars.suspend(|| {
            let mut lock = out.lock();
            writeln!(lock, "{text}").and_then(|()| lock.flush()).context("cannot write to stdout")
        })
    }

    fn err(&self, text: &str) {
        self.bars.suspend(|| eprintln!("{text}"));
    }

    /// Prints an event and keeps the progress bars in step.
    fn show(&mut self, event: &Event) -> anyhow::Result<()> {
        if let Event::NewFile(info) = event {
            let first = match info.sha256 {
                None => self.offered.insert(info.file_id),
                Some(_) => !self.offered.remove(&info.file_id),
            };
            if !first {
                return Ok(());
            }
        }
        match event {
            Event::Progress { direction, name, done, total } => {
                self.bars.update(*direction, name, *done, *total)
            }
            Event::Uploaded { name, .. } => self.bars.finish(Direction::Up, name),
            Event::Downloaded { name, .. } => self.bars.finish(Direction::Down, name),
            Event::TransferFailed { direction, name, .. } => self.bars.finish(*direction, name),
            _ => {}
        }
        match line(event) {
            Line::Out(text) => self.out(&text),
            Line::Err(text) => {
                self.err(&text);
                Ok(())
            }
            Line::None => Ok(()),
        }
    }
}

/// Asks for the account password on the terminal, without echoing it. `None` when stdin is not a
/// terminal (a script: no password means the name is kept for this machine only) or the
/// terminal cannot be switched.
fn ask_password(name: &str) -> Option<String> {
    use std::io::IsTerminal;
    if !io::stdin().is_terminal() {
        return None;
    }
    eprint!("password for {} (Enter: none, the name is kept for this machine): ", visible(name));
    let _ = io::stderr().flush();
    // rpassword reads from the terminal with echo off, on Unix and Windows alike.
    let line = rpassword::read_password();
    eprintln!(); // the Enter that ended the password was not echoed either
    let line = line.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// `~/Downloads/relaychat` (or the OS's download folder), else `relaychat` under the home dir.
fn default_downloads() -> Option<PathBuf> {
    dirs::download_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join("Downloads")))
        .map(|d| d.join("relaychat"))
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

    #[test]
    fn connection_flags_work_before_and_after_the_subcommand() {
        let before =
            ClientCli::try_parse_from(["client", "--name", "bob", "receive", "--downloads", "/tmp/d"])
                .unwrap();
        let after =
            ClientCli::try_parse_from(["client", "receive", "--name", "bob", "--downloads", "/tmp/d"])
                .unwrap();
        for cli in [before, after] {
            assert_eq!(cli.conn.name.as_deref(), Some("bob"));
            assert_eq!(cli.conn.downloads, Some(PathBuf::from("/tmp/d")));
            assert!(matches!(cli.command, Some(Command::Receive)));
        }
        let send = ClientCli::try_parse_from(["client", "send", "a b.txt", "c", "--to", "bob"]).unwrap();
        match send.command {
            Some(Command::Send { paths, to }) => {
                assert_eq!(paths, vec![PathBuf::from("a b.txt"), PathBuf::from("c")]);
                assert_eq!(to.as_deref(), Some("bob"));
            }
            other => panic!("{other:?}"),
        }
        assert!(ClientCli::try_parse_from(["client", "send"]).is_err(), "send needs a path");
    }

    #[test]
    fn the_command_line_becomes_a_config() {
        let cli = ClientCli::parse_from([
            "client",
            "--server",
            "relay.example:9",
            "--name",
            "alice",
            "--room",
            "den",
            "--idle-timeout",
            "30",
            "--reconnect-for",
            "5",
            "--plaintext",
            "send",
            "a.txt",
        ]);
        let (server, config, keep_trying) = client_config(&cli, Some("pw".into()), false).unwrap();
        assert_eq!(server, "relay.example:9");
        assert_eq!(
            (config.name.as_str(), config.room.as_str(), config.password.as_str()),
            ("alice", "den", "pw")
        );
        assert_eq!(config.idle_timeout, std::time::Duration::from_secs(30));
        assert_eq!(config.ping_every, std::time::Duration::from_secs(10), "a ping every third of it");
        assert!(matches!(config.security, Security::Plaintext));
        assert_eq!(keep_trying, KeepTrying::For(std::time::Duration::from_secs(5)));
        // Without --plaintext: TLS, and a script accepts a first contact while a terminal asks.
        let cli = ClientCli::parse_from(["client", "--name", "bob", "--fingerprint", "SHA256:ab"]);
        let (server, config, keep_trying) = client_config(&cli, None, false).unwrap();
        assert_eq!(server, DEFAULT_SERVER);
        assert_eq!(keep_trying, KeepTrying::For(std::time::Duration::from_secs(60)), "a minute by default");
        match config.security {
            Security::Tls(trust) => {
                assert_eq!(trust.fingerprint.as_deref(), Some("SHA256:ab"));
                assert_eq!(trust.first_contact, FirstContact::Accept);
            }
            Security::Plaintext => panic!("TLS is the default"),
        }
        let (_, asked, _) = client_config(&cli, None, true).unwrap();
        assert!(matches!(asked.security, Security::Tls(Trust { first_contact: FirstContact::Refuse, .. })));
    }
}
