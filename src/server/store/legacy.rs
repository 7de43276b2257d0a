//! Importing a data dir from before the database: until the files issue's first release, each
//! stored file had a text file `files/<id>.meta` beside its bytes. On the first start of a newer
//! relay, each one becomes a row (keeping its id, so `<id>.bin` stays where it is) and the text
//! file is removed. Unreadable ones are left for `reconcile`, which removes their bytes.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use super::db::{Db, NewFile};
use crate::sha;

/// What one `.meta` file said.
struct Meta {
    from: String,
    name: String,
    size: u64,
    sha256: [u8; 32],
    recipients: BTreeSet<String>,
}

/// Imports every `<id>.meta` in `files_dir` into `db`, then deletes it.
pub(super) fn import(files_dir: &Path, db: &mut Db) -> io::Result<()> {
    for entry in fs::read_dir(files_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "meta") {
            continue;
        }
        let id = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
        let (Some(id), Ok(meta)) = (id, read_meta(&path)) else {
            log::warn!("store: cannot import {}; leaving it out", path.display());
            let _ = fs::remove_file(&path);
            continue;
        };
        let file = NewFile {
            id: Some(id),
            sender: &meta.from,
            name: &meta.name,
            size: meta.size,
            sha256: meta.sha256,
            created_ms: crate::clock::now_ms(),
            recipients: &meta.recipients,
            guests: &BTreeSet::new(),
            sender_addr: None,
        };
        match db.insert_file(&file, |_| Ok::<(), io::Error>(())) {
            Ok(_) => log::info!("store: imported file {id} from {}", path.display()),
            Err(e) => log::warn!("store: cannot import file {id}: {e:?}"),
        }
        fs::remove_file(&path)?;
    }
    Ok(())
}

fn read_meta(path: &Path) -> io::Result<Meta> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad or missing {what}"));
    let text = fs::read_to_string(path)?;
    let mut lines = text.lines();
    if lines.next() != Some("relaychat-file 1") {
        return Err(bad("header"));
    }
    let (mut from, mut name, mut size, mut sha256) = (None, None, None, None);
    let mut recipients = BTreeSet::new();
    for line in lines {
        match line.split_once('=') {
            Some(("from", v)) => from = Some(v.to_owned()),
            Some(("name", v)) => name = Some(v.to_owned()),
            Some(("size", v)) => size = v.parse().ok(),
            Some(("sha256", v)) => sha256 = sha::unhex(v),
            Some(("to", v)) => {
                recipients.insert(v.to_owned());
            }
            _ => return Err(bad("line")),
        }
    }
    Ok(Meta {
        from: from.ok_or_else(|| bad("from"))?,
        name: name.ok_or_else(|| bad("name"))?,
        size: size.ok_or_else(|| bad("size"))?,
        sha256: sha256.ok_or_else(|| bad("sha256"))?,
        recipients,
    })
}
