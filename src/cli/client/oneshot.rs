//! The one-shot commands for scripts: `client send` and `client receive`. Each connects, does
//! one thing, and exits 0 only when it is done, riding out lost connections on the way.

use std::path::PathBuf;

use super::dial::reconnect;
use super::Ui;
use crate::cli::Exit;
use crate::client::{ClientError, Direction, Disconnect, Event, Session};
use crate::display::visible;

/// `client send PATH... [--to NAME]`: upload, wait for every verdict, exit.
///
/// A lost connection is not the end: the command reconnects (the same policy as the interactive
/// client, [`Session::reconnect`]) and sends again every file the relay has not yet stored. The
/// relay resumes each where it stopped (uploads are keyed by path, size and modification time;
/// see `client/upload.rs`). A failure reported just before the link went down is therefore not
/// final and not shown; only the verdicts of the connection that sees every file through count.
/// That is why this command queues files on the connection itself ([`Session::client`]) and
/// keeps its own list, rather than letting the session's catch-up drop a file at its failure.
pub(super) fn send_once(
    mut session: Session,
    paths: &[PathBuf],
    to: Option<&str>,
    ui: &mut Ui,
) -> anyhow::Result<Exit> {
    let mut left: Vec<&PathBuf> = paths.iter().collect();
    let mut refused = 0; // files that cannot be sent at all (not found, a directory, ...)
    loop {
        // The upload thread sends files one after another, so verdicts come in queue order.
        let mut queued = Vec::new();
        for path in left {
            match session.client().send_file(path, to) {
                Ok(()) => queued.push(path),
                Err(ClientError::Disconnected) => queued.push(path), // the event will say why
                Err(e) => {
                    ui.err(&format!("error: {}", visible(&e.to_string())));
                    refused += 1;
                }
            }
        }
        let mut failures = Vec::new();
        let mut verdicts = 0;
        let lost = loop {
            if verdicts == queued.len() {
                break None;
            }
            let event = match session.events().recv() {
                Ok(event) => event,
                Err(_) => break Some(Disconnect::Closed),
            };
            match &event {
                Event::Disconnected(why) => break Some(why.clone()),
                Event::Uploaded { .. } => verdicts += 1,
                Event::TransferFailed { direction: Direction::Up, .. } => {
                    verdicts += 1;
                    failures.push((queued[verdicts - 1], event));
                    continue; // shown once the connection has lasted to the end
                }
                Event::Progress { .. } => {}
                _ => continue, // chat and notices are not this command's business
            }
            ui.show(&event)?;
        };
        match lost {
            None => {
                for (_, failure) in &failures {
                    ui.show(failure)?;
                }
                session.close();
                let ok = failures.is_empty() && refused == 0;
                return Ok(if ok { Exit::Success } else { Exit::Error });
            }
            Some(why) => {
                // Everything without an `Uploaded` is sent again: the rest of this round, and
                // the ones whose failure may have been the link going down.
                let mut again: Vec<&PathBuf> = queued[verdicts..].to_vec();
                again.extend(failures.iter().map(|(path, _)| *path));
                left = again;
                reconnect(&mut session, &why, ui)?;
            }
        }
    }
}

/// `client receive`: download everything waiting, exit.
///
/// Like `send`, it rides out a lost connection: the session reconnects and asks again for what is
/// still waiting. Files already downloaded were verified and marked received, so they are not
/// offered again, and a half-downloaded file resumes from its `.part` file.
pub(super) fn receive_once(mut session: Session, ui: &mut Ui) -> anyhow::Result<Exit> {
    let mut received = 0;
    let mut failures = Vec::new();
    // Asked on a connection that is already gone, the session asks again on the next one.
    session.receive_all(&ui.downloads)?;
    loop {
        let event = match session.events().recv() {
            Ok(event) => event,
            Err(_) => Event::Disconnected(Disconnect::Closed),
        };
        session.fresh(&event);
        match &event {
            Event::Disconnected(why) => {
                // Failures seen on a connection that did not last may have been the link going
                // down; the reconnect asks for those files again.
                failures.clear();
                reconnect(&mut session, why, ui)?;
            }
            Event::ReceiveFinished { failed, .. } => {
                let failed = *failed;
                for failure in &failures {
                    ui.show(failure)?;
                }
                ui.show(&Event::ReceiveFinished { received, failed })?;
                session.close();
                return Ok(if failed == 0 { Exit::Success } else { Exit::Error });
            }
            Event::Downloaded { .. } => {
                received += 1;
                ui.show(&event)?
            }
            Event::TransferFailed { .. } => failures.push(event),
            Event::Progress { .. } => ui.show(&event)?,
            _ => {}
        }
    }
}
