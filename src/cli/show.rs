//! How the terminal client prints each [`Event`]: the line contract of `src/cli/client.rs`.

use crate::client::Event;
use crate::clock::now_ms;
use crate::display::{chat_line, clock, describe, notice_line, Said};

/// Where a line goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// stdout: an event.
    Out(String),
    /// stderr: an `error: …` line.
    Err(String),
    /// Nothing to print (progress is drawn as bars, the final disconnect is handled by the caller).
    None,
}

/// The line for an event: the shared wording ([`describe`]) placed as the terminal contract says.
/// Chat is `[HH:MM:SS] from: text`, room notices `[HH:MM:SS] * …`, file lines `[HH:MM:SS] …`
/// (the seed's file lines have no star), errors go to stderr.
pub fn line(event: &Event) -> Line {
    let now = now_ms();
    match describe(event) {
        Some(Said::Chat { label, sent_at_ms, text }) => Line::Out(chat_line(sent_at_ms, &label, &text)),
        Some(Said::Room(text)) => Line::Out(notice_line(now, &text)),
        Some(Said::File(text)) => Line::Out(format!("{} {text}", clock(now))),
        Some(Said::Error(text)) => Line::Err(text),
        None => Line::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Direction, Mark};
    use crate::frame::FileInfo;

    fn out(event: Event) -> String {
        match line(&event) {
            Line::Out(s) => s[11..].to_owned(), // drop "[HH:MM:SS] "
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chat_lines_carry_their_marks() {
        let chat = |to: &str, mark| Event::Chat {
            id: 1,
            from: "bob".into(),
            to: to.into(),
            sent_at_ms: 0,
            mark,
            text: "hi".into(),
        };
        assert_eq!(out(chat("", Mark::Live)), "bob: hi");
        assert_eq!(out(chat("", Mark::Offline)), "bob (offline): hi");
        assert_eq!(out(chat("", Mark::History)), "bob (history): hi");
        assert_eq!(out(chat("alice", Mark::Live)), "bob (to you): hi");
        assert_eq!(out(chat("alice", Mark::Offline)), "bob (to you, offline): hi");
    }

    #[test]
    fn file_lines_use_the_seed_wording() {
        let info = FileInfo {
            file_id: 1,
            from: "alice".into(),
            name: "../report.pdf".into(),
            size: 1_258_291,
            sha256: Some([0; 32]),
        };
        assert_eq!(out(Event::NewFile(info.clone())), "[Newfile] alice: report.pdf (1.2 MiB)");
        let arriving = FileInfo { sha256: None, ..info };
        assert_eq!(out(Event::NewFile(arriving)), "[Newfile] alice: report.pdf (1.2 MiB)", "the same offer");
        let done = Event::Downloaded { file_id: 1, name: "report (1).pdf".into(), path: "x".into() };
        assert_eq!(out(done), "[Download] File download complete: report (1).pdf");
        assert_eq!(out(Event::ReceiveFinished { received: 0, failed: 0 }), "no files waiting");
        assert_eq!(
            out(Event::Uploaded { name: "a.txt".into(), size: 2048 }),
            "File sent complete: a.txt (2.0 KiB)"
        );
        let failed =
            Event::TransferFailed { direction: Direction::Up, name: "a\u{1b}".into(), reason: "no".into() };
        assert_eq!(line(&failed), Line::Err("error: upload of a\\x1b failed: no".into()));
    }
}
