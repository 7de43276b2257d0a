//! Turning a file name that came from the network into one that is safe to show and to create.
//!
//! The seed's relay wrote whatever path a client sent it, so any client could overwrite any file
//! on the server. Here, a name from the network is never a path:
//!
//! - the **relay** stores files under numbers it chooses (`files/17.bin`) and keeps the cleaned
//!   name only as a label;
//! - the **receiving client** cleans the name again (it cannot trust the relay either) and only
//!   ever creates it inside its downloads directory.
//!
//! [`clean`] keeps the last path component, drops control and direction-changing characters,
//! replaces characters Windows forbids, defuses Windows device names, caps the length, and keeps
//! Chinese and other Unicode letters as they are.

/// The longest cleaned name, in bytes of UTF-8. Most file systems allow 255; we leave room for
/// ` (12).part`.
pub const MAX_NAME_BYTES: usize = 200;

/// The name used when nothing usable is left.
pub const FALLBACK: &str = "unnamed";

/// Returns a safe, readable file name for `raw`. Never empty, never a path.
pub fn clean(raw: &str) -> String {
    // 1. Only the last component, whichever separator the sender's OS uses.
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    // 2. Characters: drop invisible ones, replace forbidden ones.
    let mut name: String = last
        .chars()
        .filter(|&c| !is_invisible(c))
        .map(|c| if matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*') { '_' } else { c })
        .collect();
    // 3. No leading dots (".", "..", hidden files) and no leading/trailing spaces; no trailing
    //    dots, which Windows silently strips.
    name = name.trim_start_matches(['.', ' ']).trim_end_matches(['.', ' ']).to_owned();
    if name.is_empty() {
        return FALLBACK.to_owned();
    }
    // 4. CON, NUL, COM1 ... are devices on Windows, with any extension.
    if is_windows_device(&name) {
        name.insert(0, '_');
    }
    truncate_keeping_extension(&name, MAX_NAME_BYTES)
}

/// Control characters (C0, DEL, C1), and characters that change how text around them looks:
/// bidirectional overrides and isolates, zero-width marks, the byte-order mark.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

fn is_windows_device(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default().trim_end().to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
}

/// Cuts `name` to at most `max` bytes on a character boundary, keeping a short extension.
fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let ext = match name.rfind('.') {
        Some(dot) if name.len() - dot <= 16 && dot > 0 => &name[dot..],
        _ => "",
    };
    let mut stem_end = max - ext.len();
    while !name.is_char_boundary(stem_end) {
        stem_end -= 1;
    }
    format!("{}{}", &name[..stem_end], ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At least 20 hostile names, each with the exact cleaned result.
    #[test]
    fn nasty_names_are_cleaned() {
        let long = "长".repeat(100) + ".txt"; // 304 bytes
        let cases: Vec<(&str, String)> = vec![
            ("../../x", "x".into()),
            ("/etc/passwd", "passwd".into()),
            ("C:\\x", "x".into()),
            ("a\\..\\..\\b", "b".into()),
            ("con.txt", "_con.txt".into()),
            ("CON", "_CON".into()),
            ("lpt1.log", "_lpt1.log".into()),
            ("com9", "_com9".into()),
            ("com10.txt", "com10.txt".into()),
            ("evil\nname.txt", "evilname.txt".into()),
            ("\u{1b}[31mred.txt", "[31mred.txt".into()),
            ("", FALLBACK.into()),
            (".", FALLBACK.into()),
            ("..", FALLBACK.into()),
            ("...", FALLBACK.into()),
            ("dir/", FALLBACK.into()),
            ("nul\0byte", "nulbyte".into()),
            (".bashrc", "bashrc".into()),
            ("trailing. . ", "trailing".into()),
            ("what?<>|*\":.txt", "what_______.txt".into()),
            ("txt.\u{202e}exe.jpg", "txt.exe.jpg".into()),
            ("zero\u{200b}width", "zerowidth".into()),
            ("报告 2024.pdf", "报告 2024.pdf".into()),
            ("  spaced  ", "spaced".into()),
            ("\u{9b}2Jcsi", "2Jcsi".into()),
        ];
        for (raw, want) in &cases {
            assert_eq!(&clean(raw), want, "clean({raw:?})");
        }
        let cleaned = clean(&long);
        assert!(cleaned.len() <= MAX_NAME_BYTES, "{}", cleaned.len());
        assert!(cleaned.ends_with(".txt") && cleaned.starts_with('长'));
        let very_long = "x".repeat(300);
        assert_eq!(clean(&very_long).len(), MAX_NAME_BYTES);
    }

    #[test]
    fn cleaning_is_idempotent_and_never_yields_a_path() {
        let samples = ["../../x", "a/b/c", "C:\\x\\y", "con", ".", "报告.pdf", "\u{1b}]0;title\u{7}"];
        for raw in samples {
            let once = clean(raw);
            assert_eq!(clean(&once), once);
            assert!(!once.contains(['/', '\\', '\0']) && !once.is_empty() && once != "..");
        }
    }
}
