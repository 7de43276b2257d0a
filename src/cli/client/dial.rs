//! Connecting, and connecting again: the first connection (with SSH's question on first contact
//! with a relay), and the one reconnect policy the interactive client and the one-shot commands
//! share.

use std::io;
use std::thread;

use anyhow::Context as _;

use super::Ui;
use crate::client::{
    Backoff, Client, ClientConfig, ClientError, Disconnect, Security, Trust, TrustError, Verdict,
};
use crate::clock::now_ms;
use crate::display::{notice_line, visible};

/// The first connection. On first contact with a relay in a terminal, shows its fingerprint and
/// asks whether to trust it (SSH's question); a script's first contact is trusted with a notice.
pub(super) fn first_connect(server: &str, config: &ClientConfig) -> anyhow::Result<Client> {
    let client = match Client::connect_tcp(server, config) {
        Err(ClientError::Trust(TrustError::Unknown { server: relay, fingerprint })) => {
            let Security::Tls(Trust { known_relays: Some(file), .. }) = &config.security else {
                anyhow::bail!("{}", TrustError::Unknown { server: relay, fingerprint });
            };
            eprintln!("The relay at {relay} is new to this machine. Its key's fingerprint is");
            eprintln!("    {fingerprint}");
            eprint!("Does it match the one the relay's operator gave you (server --fingerprint)? [y/N] ");
            let mut answer = String::new();
            io::stdin().read_line(&mut answer).context("cannot read the answer")?;
            if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
                anyhow::bail!("not trusted: nothing was sent to {relay}");
            }
            crate::client::trust::remember(file, &relay, &fingerprint)?;
            eprintln!("trusted; saved in {}", file.display());
            Client::connect_tcp(server, config).map_err(connect_error)?
        }
        other => other.map_err(connect_error)?,
    };
    if let Some(Verdict::FirstContact { fingerprint }) = client.verdict() {
        let saved = match &config.security {
            Security::Tls(Trust { known_relays: Some(file), .. }) => format!("; saved in {}", file.display()),
            _ => String::new(),
        };
        eprintln!("notice: first contact with the relay at {server}: trusting its key {fingerprint}{saved}");
    }
    Ok(client)
}

fn connect_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Rule(rule) => anyhow::anyhow!("{rule}"),
        other => anyhow::anyhow!(other),
    }
}

/// Where and as whom to connect, to connect again after the link was lost.
pub(super) struct Dialer {
    pub(super) server: String,
    pub(super) config: ClientConfig,
}

impl Dialer {
    /// Tries to connect again for up to `reconnect_for()`, waiting as the library's
    /// [`Backoff`] says (250 ms, doubling to 5 s; the window waits the same), after the
    /// connection was lost for `why`. The interactive client and the one-shot commands share it.
    ///
    /// A connection the relay closed with an error is not retried: the error says why, and
    /// trying again would be refused again, or (LoggedInElsewhere) take the name back from the
    /// user's other login, which would take it back in turn, in a loop. A refusal while
    /// reconnecting (a wrong password) ends the attempts too.
    pub(super) fn reconnect(&self, why: &Disconnect, ui: &mut Ui) -> anyhow::Result<Client> {
        if matches!(why, Disconnect::ServerError { .. }) {
            anyhow::bail!("{why}");
        }
        let give_up = std::time::Instant::now() + reconnect_for();
        ui.out(&notice_line(
            now_ms(),
            &format!("connection lost ({}); reconnecting", visible(&why.to_string())),
        ))?;
        let mut backoff = Backoff::default();
        let client = loop {
            match Client::connect_tcp(&self.server, &self.config) {
                Ok(client) => break client,
                Err(e @ (ClientError::Refused { .. } | ClientError::Rule(_) | ClientError::Trust(_))) => {
                    return Err(e.into())
                }
                Err(e) if std::time::Instant::now() >= give_up => {
                    anyhow::bail!("{why}; could not reconnect: {e}")
                }
                Err(_) => {
                    let pause = backoff.next_pause();
                    thread::sleep(pause.min(give_up.saturating_duration_since(std::time::Instant::now())));
                }
            }
        };
        ui.out(&notice_line(now_ms(), "reconnected"))?;
        Ok(client)
    }
}

/// How long the terminal client keeps trying to reconnect: `RELAYCHAT_RECONNECT_FOR` seconds,
/// default 60. Zero tries once, at once, and then gives up (the client exits non-zero).
fn reconnect_for() -> std::time::Duration {
    let secs = std::env::var("RELAYCHAT_RECONNECT_FOR").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    std::time::Duration::from_secs(secs)
}
