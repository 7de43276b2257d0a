//! How the terminal client prints each [`Event`]: the line contract of `src/cli/client.rs`.

use crate::client::{Direction, Event};
use crate::clock::now_ms;
use crate::display::human_size;
use crate::display::{chat_line, notice_line, tags, visible};
use crate::filename;

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

/// The line for an event.
pub fn line(event: &Event) -> Line {
    let now = now_ms();
    let notice = |text: String| Line::Out(notice_line(now, &text));
    match event {
        Event::Chat { from, to, sent_at_ms, mark, text, .. } => {
            Line::Out(chat_line(*sent_at_ms, &format!("{from}{}", tags(to, *mark)), text))
        }
        Event::Joined { name, room } => notice(format!("{} joined {}", visible(name), visible(room))),
        Event::Left { name, room } => notice(format!("{} left {}", visible(name), visible(room))),
        Event::Online { room, names } => {
            let names: Vec<String> = names.iter().map(|n| visible(n)).collect();
            notice(format!("online in {}: {}", visible(room), names.join(", ")))
        }
        Event::Warning { message, .. } => Line::Err(format!("error: {}", visible(message))),
        // The seed's wording, with the sender and the size added.
        Event::NewFile(info) => Line::Out(format!(
            "{} [Newfile] {}: {} ({})",
            crate::display::clock(now),
            visible(&info.from),
            visible(&filename::clean(&info.name)),
            human_size(info.size)
        )),
        Event::FileExpired { from, name } => notice(format!(
            "{} from {} expired on the relay before you received it",
            visible(&filename::clean(name)),
            visible(from)
        )),
        Event::Uploaded { name, size } => notice(format!("sent {} ({})", visible(name), human_size(*size))),
        Event::Downloaded { name, .. } => Line::Out(format!(
            "{} [Download] File download complete: {}",
            crate::display::clock(now),
            visible(name)
        )),
        Event::TransferFailed { direction, name, reason } => {
            let what = match direction {
                Direction::Up => "upload",
                Direction::Down => "download",
            };
            Line::Err(format!("error: {what} of {} failed: {}", visible(name), visible(reason)))
        }
        Event::ReceiveFinished { received: 0, failed: 0 } => notice("no files waiting".into()),
        Event::ReceiveFinished { received, failed: 0 } => notice(format!("received {received} file(s)")),
        Event::ReceiveFinished { received, failed } => {
            notice(format!("received {received} file(s), {failed} failed"))
        }
        Event::Progress { .. } | Event::Sent { .. } | Event::Disconnected(_) => Line::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Mark;
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
            sha256: [0; 32],
        };
        assert_eq!(out(Event::NewFile(info)), "[Newfile] alice: report.pdf (1.2 MiB)");
        let done = Event::Downloaded { file_id: 1, name: "report (1).pdf".into(), path: "x".into() };
        assert_eq!(out(done), "[Download] File download complete: report (1).pdf");
        assert_eq!(out(Event::ReceiveFinished { received: 0, failed: 0 }), "* no files waiting");
        let failed =
            Event::TransferFailed { direction: Direction::Up, name: "a\u{1b}".into(), reason: "no".into() };
        assert_eq!(line(&failed), Line::Err("error: upload of a\\x1b failed: no".into()));
    }
}
