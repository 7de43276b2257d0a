//! Connecting, and connecting again: the first connection (with SSH's question on first contact
//! with a relay), and the notices around the library's reconnect, which the interactive client
//! and the one-shot commands share.

use std::io;
use std::thread;

use anyhow::Context as _;

use super::Ui;
use crate::client::{
    ClientConfig, ClientError, Disconnect, KeepTrying, Security, Session, Trust, TrustError, Verdict,
};
use crate::clock::now_ms;
use crate::display::{notice_line, visible};

/// The first connection. On first contact with a relay in a terminal, shows its fingerprint and
/// asks whether to trust it (SSH's question); a script's first contact is trusted with a notice.
///
/// One attempt (a typo in the address fails at once); `keep_trying` is for when the link is lost
/// later.
pub(super) fn first_connect(
    server: &str,
    config: ClientConfig,
    keep_trying: KeepTrying,
) -> anyhow::Result<Session> {
    let session = match Session::connect(server, config.clone(), keep_trying) {
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
            Session::connect(server, config.clone(), keep_trying).map_err(connect_error)?
        }
        other => other.map_err(connect_error)?,
    };
    if let Some(Verdict::FirstContact { fingerprint }) = session.client().verdict() {
        let saved = match &config.security {
            Security::Tls(Trust { known_relays: Some(file), .. }) => format!("; saved in {}", file.display()),
            _ => String::new(),
        };
        eprintln!("notice: first contact with the relay at {server}: trusting its key {fingerprint}{saved}");
    }
    Ok(session)
}

fn connect_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Rule(rule) => anyhow::anyhow!("{rule}"),
        other => anyhow::anyhow!(other),
    }
}

/// After the link was lost for `why`: says so, reconnects with the library's one policy
/// ([`Session::reconnect`]: at once, then 250 ms doubling to 5 s, for `--reconnect-for`), says
/// so again, and says what was picked up again. The interactive client and the one-shot commands
/// share it. An error ends the program: the relay ended the session in a way that coming back
/// would repeat, it refused us, or it stayed out of reach for too long.
pub(super) fn reconnect(session: &mut Session, why: &Disconnect, ui: &mut Ui) -> anyhow::Result<()> {
    if why.may_reconnect() {
        ui.out(&notice_line(
            now_ms(),
            &format!("connection lost ({}); reconnecting", visible(&why.to_string())),
        ))?;
    }
    let resumed = session.reconnect(why, |pause, _| {
        thread::sleep(pause);
        true
    })?;
    ui.out(&notice_line(now_ms(), "reconnected"))?;
    if resumed.uploads > 0 {
        ui.out(&notice_line(now_ms(), &format!("resuming {} upload(s)", resumed.uploads)))?;
    }
    Ok(())
}
