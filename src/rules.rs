//! What counts as a valid user name, room name and chat text.
//!
//! The server enforces these rules on every hello and every message; the client checks them too,
//! so a person gets a clear error before anything is sent. Keeping them in one small module means
//! both sides always agree.
//!
//! Names are shown on other people's screens and will later name things on disk, so they are
//! deliberately strict: letters and digits from any script (`张伟` is fine), plus `_`, `-` and `.`,
//! never starting with `.` or `-`. No spaces, no control characters, no path separators.

use std::fmt;

/// Longest user or room name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Longest chat message, in bytes of UTF-8 (64 KiB, the seed's receive buffer size).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The room a client joins when it names none.
pub const DEFAULT_ROOM: &str = "lobby";

/// A broken rule, with enough detail to tell a person what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// The name or room is empty.
    Empty { what: &'static str },
    /// Too many characters.
    TooLong { what: &'static str, chars: usize, max: usize },
    /// A character outside the allowed set.
    BadChar { what: &'static str, ch: char },
    /// Starts with `.` or `-`.
    BadStart { what: &'static str },
    /// The text is empty or only whitespace.
    EmptyText,
    /// The text is longer than [`MAX_TEXT_BYTES`].
    TextTooLong { bytes: usize, max: usize },
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::Empty { what } => write!(f, "{what} is empty"),
            RuleError::TooLong { what, chars, max } => {
                write!(f, "{what} has {chars} characters; the limit is {max}")
            }
            RuleError::BadChar { what, ch } => {
                write!(f, "{what} contains {:?}; use letters, digits, '_', '-' or '.'", ch)
            }
            RuleError::BadStart { what } => write!(f, "{what} must not start with '.' or '-'"),
            RuleError::EmptyText => write!(f, "message is empty"),
            RuleError::TextTooLong { bytes, max } => {
                write!(f, "message is {bytes} bytes; the limit is {max}")
            }
        }
    }
}

impl std::error::Error for RuleError {}

/// Checks a user name.
pub fn check_name(name: &str) -> Result<(), RuleError> {
    check_identifier("name", name)
}

/// Checks a room name (same rules as user names).
pub fn check_room(room: &str) -> Result<(), RuleError> {
    check_identifier("room", room)
}

/// Checks chat text: not blank, not longer than [`MAX_TEXT_BYTES`]. Newlines are allowed;
/// control characters are allowed on the wire and made visible by whoever displays them.
pub fn check_text(text: &str) -> Result<(), RuleError> {
    if text.trim().is_empty() {
        return Err(RuleError::EmptyText);
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(RuleError::TextTooLong { bytes: text.len(), max: MAX_TEXT_BYTES });
    }
    Ok(())
}

fn check_identifier(what: &'static str, s: &str) -> Result<(), RuleError> {
    if s.is_empty() {
        return Err(RuleError::Empty { what });
    }
    let chars = s.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(RuleError::TooLong { what, chars, max: MAX_NAME_CHARS });
    }
    if let Some(ch) = s.chars().find(|&c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(RuleError::BadChar { what, ch });
    }
    if s.starts_with(['.', '-']) {
        return Err(RuleError::BadStart { what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["alice", "bob_2", "张伟", "Zoë", "a.b-c", "x", &"n".repeat(MAX_NAME_CHARS)] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_fail_with_the_right_reason() {
        let cases: &[(&str, RuleError)] = &[
            ("", RuleError::Empty { what: "name" }),
            ("a b", RuleError::BadChar { what: "name", ch: ' ' }),
            ("../etc", RuleError::BadChar { what: "name", ch: '/' }),
            ("a\u{1b}[31m", RuleError::BadChar { what: "name", ch: '\u{1b}' }),
            ("bob\n", RuleError::BadChar { what: "name", ch: '\n' }),
            (".hidden", RuleError::BadStart { what: "name" }),
            ("-rf", RuleError::BadStart { what: "name" }),
        ];
        for (name, want) in cases {
            assert_eq!(check_name(name).as_ref(), Err(want), "{name:?}");
        }
        let long = "n".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            check_room(&long),
            Err(RuleError::TooLong { what: "room", chars: MAX_NAME_CHARS + 1, max: MAX_NAME_CHARS })
        );
    }

    #[test]
    fn text_rules() {
        assert_eq!(check_text("hi\nthere"), Ok(()));
        assert_eq!(check_text(" \n\t"), Err(RuleError::EmptyText));
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(
            check_text(&long),
            Err(RuleError::TextTooLong { bytes: MAX_TEXT_BYTES + 1, max: MAX_TEXT_BYTES })
        );
    }
}
