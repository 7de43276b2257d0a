//! Turning untrusted text into safe, readable lines for a terminal and the window.
//!
//! Everything a client prints came from other people, through the network. A name or a message
//! could carry `ESC [ 2 J` (clear the screen), a carriage return that overwrites the line, or a
//! right-to-left override that makes `exe.txt` look like `txt.exe`. [`visible`] replaces every such
//! character with a printable escape like `\x1b`, so it is shown, never executed.

use chrono::{Local, TimeZone};

/// Returns `s` with every control or direction-changing character written out as an escape.
///
/// Newlines are escaped too; callers that want multi-line output split on `'\n'` first (see
/// [`chat_line`]).
pub fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls (0x9b is a one-byte CSI on some terminals), bidirectional overrides and
            // isolates, and zero-width marks.
            '\u{80}'..='\u{9f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `[HH:MM:SS]` in the local time zone for a Unix time in milliseconds.
pub fn clock(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("[%H:%M:%S]").to_string(),
        None => "[??:??:??]".to_owned(),
    }
}

/// `1.2 MiB`-style sizes for people.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `[12:00:01] bob: hello`, with each later line of a multi-line message indented by two spaces.
pub fn chat_line(unix_ms: u64, from: &str, text: &str) -> String {
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let mut out = format!("{} {}: {}", clock(unix_ms), visible(from), visible(first));
    for line in lines {
        out.push_str("\n  ");
        out.push_str(&visible(line));
    }
    out
}

/// `[12:00:01] * bob joined lobby`: a notice from the relay or the client itself. The caller has
/// already passed any untrusted parts through [`visible`].
pub fn notice_line(unix_ms: u64, notice: &str) -> String {
    format!("{} * {}", clock(unix_ms), notice)
}

/// ` (to you, offline)`-style tags after a sender's name; nothing for a live room message.
pub fn tags(to: &str, mark: crate::client::Mark) -> String {
    let mut tags = Vec::new();
    if !to.is_empty() {
        tags.push("to you");
    }
    match mark {
        crate::client::Mark::Live => {}
        crate::client::Mark::Offline => tags.push("offline"),
        crate::client::Mark::History => tags.push("history"),
    }
    if tags.is_empty() {
        String::new()
    } else {
        format!(" ({})", tags.join(", "))
    }
}

/// A big room's head count: `1204 online in lobby (+12 joined, -3 left)`, or just the count on
/// joining. Also the window's online line in a big room, where there is no list to show.
pub fn crowd_line(room: &str, online: u32, joined: u32, left: u32) -> String {
    let mut line = format!("{online} online in {}", visible(room));
    if joined > 0 || left > 0 {
        line.push_str(&format!(" (+{joined} joined, -{left} left)"));
    }
    line
}

/// What an event says to a person: one wording for the terminal client and the window
/// (`cli/show.rs` and `gui_fltk/app.rs` only place and style it). Names, text and file names from
/// the network are already made safe to show ([`visible`], [`crate::filename::clean`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// A chat line: the sender with its tags (" (to you, offline)"), the time it was sent, the
    /// text (made visible, and possibly several lines).
    Chat { label: String, sent_at_ms: u64, text: String },
    /// About the room: who joined, left, is online.
    Room(String),
    /// About files, in the seed's words where the seed had some ("\[Newfile] …",
    /// "\[Download] File download complete: …", "File sent complete: …").
    File(String),
    /// A refusal or a failure, starting with `error: `.
    Error(String),
}

/// The words for `event`; `None` for events that are not shown as a line (progress, receipts, the
/// end of a connection, which each front end reports its own way).
pub fn describe(event: &crate::client::Event) -> Option<Said> {
    use crate::client::{Direction, Event};
    use crate::filename::clean;
    let said = match event {
        Event::Chat { from, to, sent_at_ms, mark, text, .. } => Said::Chat {
            label: format!("{}{}", visible(from), tags(to, *mark)),
            sent_at_ms: *sent_at_ms,
            text: text.clone(),
        },
        Event::Joined { name, room } => Said::Room(format!("{} joined {}", visible(name), visible(room))),
        Event::Left { name, room } => Said::Room(format!("{} left {}", visible(name), visible(room))),
        Event::Online { room, names } => {
            let names: Vec<String> = names.iter().map(|n| visible(n)).collect();
            Said::Room(format!("online in {}: {}", visible(room), names.join(", ")))
        }
        Event::Crowd { room, online, joined, left } => Said::Room(crowd_line(room, *online, *joined, *left)),
        Event::Warning { message, .. } => Said::Error(format!("error: {}", visible(message))),
        // The seed's wording, with the sender and the size added.
        Event::NewFile(info) => Said::File(format!(
            "[Newfile] {}: {} ({})",
            visible(&info.from),
            visible(&clean(&info.name)),
            human_size(info.size)
        )),
        Event::FileExpired { from, name } => Said::File(format!(
            "{} from {} expired on the relay before you received it",
            visible(&clean(name)),
            visible(from)
        )),
        Event::Uploaded { name, size } => {
            Said::File(format!("File sent complete: {} ({})", visible(name), human_size(*size)))
        }
        Event::Downloaded { name, .. } => {
            Said::File(format!("[Download] File download complete: {}", visible(name)))
        }
        Event::TransferFailed { direction, name, reason } => {
            let what = match direction {
                Direction::Up => "upload",
                Direction::Down => "download",
            };
            Said::Error(format!("error: {what} of {} failed: {}", visible(name), visible(reason)))
        }
        Event::ReceiveFinished { received: 0, failed: 0 } => Said::File("no files waiting".into()),
        Event::ReceiveFinished { received, failed: 0 } => Said::File(format!("received {received} file(s)")),
        Event::ReceiveFinished { received, failed } => {
            Said::File(format!("received {received} file(s), {failed} failed"))
        }
        Event::Progress { .. } | Event::Sent { .. } | Event::Disconnected(_) => return None,
    };
    Some(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_made_visible() {
        assert_eq!(visible("a\u{1b}[31mred"), "a\\x1b[31mred");
        assert_eq!(visible("over\rwrite"), "over\\rwrite");
        assert_eq!(visible("bell\u{7}"), "bell\\x07");
        assert_eq!(visible("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(visible("gpj.\u{202e}exe"), "gpj.\\u{202e}exe");
        assert_eq!(visible("你好 🎉 Zoë"), "你好 🎉 Zoë");
    }

    #[test]
    fn multi_line_messages_indent_later_lines() {
        let line = chat_line(0, "bob", "one\ntwo\u{1b}\nthree");
        let parts: Vec<&str> = line.split('\n').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].ends_with("] bob: one"), "{line}");
        assert_eq!(parts[1], "  two\\x1b");
        assert_eq!(parts[2], "  three");
    }

    #[test]
    fn clock_has_the_contract_shape() {
        let c = clock(crate::clock::now_ms());
        assert_eq!(c.len(), 10, "{c}");
        assert!(c.starts_with('[') && c.ends_with(']') && &c[3..4] == ":" && &c[6..7] == ":");
    }

    #[test]
    fn a_big_rooms_count_reads_as_the_contract_shows_it() {
        assert_eq!(crowd_line("lobby", 1204, 12, 3), "1204 online in lobby (+12 joined, -3 left)");
        assert_eq!(crowd_line("lobby", 150, 0, 0), "150 online in lobby", "the count on joining");
        assert_eq!(crowd_line("a\x1bb", 1, 0, 0), "1 online in a\\x1bb", "the room is made safe to show");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1_258_291), "1.2 MiB");
        assert_eq!(human_size(4 << 30), "4.0 GiB");
    }
}
