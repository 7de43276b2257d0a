//! Receiving files on the client: the state of one "Receive" (every file waiting for us, one after
//! another), driven by the reader thread.
//!
//! Each file is written as `NAME.part` beside a small sidecar `NAME.part.relaychat` that records
//! which relay file it is. The SHA-256 is computed as the bytes arrive. Only when size and hash
//! match is the part renamed to its final name, and never over an existing file: `report.pdf`
//! becomes `report (1).pdf` if that name is taken.
//!
//! A file may still be *arriving* (its sender is uploading it right now, and it has no hash yet):
//! its bytes come as they reach the relay. Either way the relay ends a download with the SHA-256
//! it verified (`DownloadEnd`), and the part is checked against that, so nothing is marked
//! complete before the relay has verified the upload. If the sender's upload fails, the part is
//! deleted; if the sender only stopped (its link dropped), the part is kept: the bytes are good,
//! and the next receive of the same file resumes from them.
//!
//! Resume: when a receive starts and a sidecar in the downloads directory names the same file (id,
//! size and sender), its part is re-hashed and the download asks the relay to continue from its
//! length. (The hash is not in the sidecar: an arriving file has none yet. A part that is not a
//! prefix of the file fails the final check and is thrown away.)
//!
//! The name is cleaned again here ([`filename::clean`]): the relay is not trusted to have done it,
//! and the file is only ever created inside the downloads directory.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::reader::interrupted_event;
use super::{Direction, Event, PROGRESS_EVERY};
use crate::filename;
use crate::frame::{ErrorCode, FileInfo, Frame};
use crate::sha;
use crate::sink::Sink;

/// What the reader should do next.
pub(crate) enum Step {
    Nothing,
    /// Report this.
    Event(Event),
    /// A file is complete and verified: send a receipt for `file_id`, report, start the next.
    Done(Event, u64),
    /// A file failed: report, start the next.
    Failed(Event),
    /// Start the next file.
    Next,
}

/// The file being downloaded right now.
struct Incoming {
    info: FileInfo,
    /// The cleaned name.
    name: String,
    part: PathBuf,
    sidecar: PathBuf,
    /// The part file, written by its own thread (see [`crate::sink`]).
    sink: Sink,
    hasher: Sha256,
    written: u64,
    last_progress: Instant,
}

pub(crate) struct Receiving {
    dir: PathBuf,
    queue: VecDeque<FileInfo>,
    current: Option<Incoming>,
    received: usize,
    failed: usize,
}

const SIDECAR: &str = ".relaychat";

impl Receiving {
    pub(crate) fn new(dir: PathBuf, files: Vec<FileInfo>) -> Receiving {
        Receiving { dir, queue: files.into(), current: None, received: 0, failed: 0 }
    }

    /// Opens the next file's part and returns the request to send; `None` when all are done.
    pub(crate) fn start_next(&mut self) -> Option<Result<Frame, Event>> {
        let info = self.queue.pop_front()?;
        let name = filename::clean(&info.name);
        Some(match self.open_part(&info, &name) {
            Ok(incoming) => {
                let request = Frame::Download { file_id: info.file_id, offset: incoming.written };
                self.current = Some(incoming);
                Ok(request)
            }
            Err(e) => {
                self.failed += 1;
                Err(failed(name, format!("cannot write in {}: {e}", self.dir.display())))
            }
        })
    }

    /// A chunk arrived.
    pub(crate) fn chunk(&mut self, file_id: u64, data: Vec<u8>) -> Step {
        let Some(inc) = self.current.as_mut().filter(|c| c.info.file_id == file_id) else {
            return Step::Nothing; // stale: a file we gave up on
        };
        if inc.written + data.len() as u64 > inc.info.size {
            return self.discard("the relay sent more bytes than the file has".into());
        }
        inc.hasher.update(&data);
        inc.written += data.len() as u64;
        if inc.sink.write(data).is_err() {
            return self.discard_with_disk_error();
        }
        if inc.last_progress.elapsed() >= PROGRESS_EVERY {
            inc.last_progress = Instant::now();
            let (name, done, total) = (inc.name.clone(), inc.written, inc.info.size);
            return Step::Event(Event::Progress { direction: Direction::Down, name, done, total });
        }
        Step::Nothing
    }

    /// The relay sent the last byte and the SHA-256 it verified: check ours, then move into place.
    pub(crate) fn end(&mut self, file_id: u64, verified: [u8; 32]) -> Step {
        let Some(inc) = self.take_if(file_id) else { return Step::Nothing };
        let Incoming { info, name, part, sidecar, sink, hasher, written, .. } = inc;
        if let Err(e) = sink.finish() {
            remove_part(&part, &sidecar);
            self.failed += 1;
            return Step::Failed(failed(name, format!("cannot write {}: {e}", part.display())));
        }
        let actual: [u8; 32] = hasher.finalize().into();
        let announced = info.sha256.unwrap_or(verified); // none yet if it was arriving
        if written != info.size || actual != verified || announced != verified {
            remove_part(&part, &sidecar);
            self.failed += 1;
            return Step::Failed(failed(
                name,
                "the SHA-256 does not match; the download was discarded".into(),
            ));
        }
        match place(&self.dir, &name, &part) {
            Ok(path) => {
                let _ = fs::remove_file(&sidecar);
                self.received += 1;
                let event =
                    Event::Downloaded { file_id: info.file_id, name: file_name_of(&path, &name), path };
                Step::Done(event, info.file_id)
            }
            Err(e) => {
                self.failed += 1;
                Step::Failed(failed(name, format!("cannot move the file into place: {e}")))
            }
        }
    }

    /// The relay cannot serve the file. Its part stays for a resume only when the bytes are good
    /// and the file may still come: the relay failed to read it, or its sender stopped sending
    /// it while it arrived (`SenderStopped`).
    pub(crate) fn failed(&mut self, file_id: u64, code: ErrorCode, message: &str) -> Step {
        let Some(Incoming { name, part, sidecar, sink, .. }) = self.take_if(file_id) else {
            return Step::Nothing;
        };
        drop(sink); // writes what it holds and closes the file
        if matches!(code, ErrorCode::NoSuchFile | ErrorCode::SenderFailed) {
            remove_part(&part, &sidecar); // nothing left to resume, or bytes that were wrong
        }
        self.failed += 1;
        Step::Failed(failed(name, message.to_owned()))
    }

    /// Takes the current file if it is `file_id` (frames for other ids are stale).
    fn take_if(&mut self, file_id: u64) -> Option<Incoming> {
        if self.current.as_ref()?.info.file_id != file_id {
            return None;
        }
        self.current.take()
    }

    /// The final event of this receive.
    pub(crate) fn finished(&self) -> Event {
        Event::ReceiveFinished { received: self.received, failed: self.failed }
    }

    /// The event for the file in progress when the connection ends (its part stays for a resume).
    pub(crate) fn interrupted(&self, why: &str) -> Event {
        match &self.current {
            Some(inc) => interrupted_event(inc.name.clone(), why),
            None => self.finished(),
        }
    }

    /// The disk thread stopped: report its error, delete the part.
    fn discard_with_disk_error(&mut self) -> Step {
        let Some(inc) = self.current.take() else { return Step::Nothing };
        let reason = match inc.sink.finish() {
            Err(e) => format!("cannot write {}: {e}", inc.part.display()),
            Ok(_) => format!("cannot write {}", inc.part.display()),
        };
        remove_part(&inc.part, &inc.sidecar);
        self.failed += 1;
        Step::Failed(failed(inc.name, reason))
    }

    /// Gives up on the current file and deletes its part.
    fn discard(&mut self, reason: String) -> Step {
        let Some(inc) = self.current.take() else { return Step::Nothing };
        let Incoming { name, part, sidecar, sink, .. } = inc;
        drop(sink); // closes the file before it is deleted
        remove_part(&part, &sidecar);
        self.failed += 1;
        Step::Failed(failed(name, reason))
    }

    /// Resumes a part of the same file if one is here, or starts a new one under a free name.
    fn open_part(&self, info: &FileInfo, name: &str) -> io::Result<Incoming> {
        fs::create_dir_all(&self.dir)?;
        let tag = sidecar_text(info);
        if let Some((part, sidecar)) = find_resumable(&self.dir, &tag)? {
            let mut file = OpenOptions::new().read(true).write(true).open(&part)?;
            let mut have = file.metadata()?.len();
            if have > info.size {
                file.set_len(0)?;
                have = 0;
            }
            let mut hasher = Sha256::new();
            sha::hash_prefix(&mut file, have, &mut hasher)?;
            return Ok(incoming(info, name, part, sidecar, Sink::start(file)?, hasher, have));
        }
        let (part, sidecar) = free_part_name(&self.dir, name)?;
        let file = OpenOptions::new().write(true).create_new(true).open(&part)?;
        fs::write(&sidecar, tag)?;
        Ok(incoming(info, name, part, sidecar, Sink::start(file)?, Sha256::new(), 0))
    }
}

fn incoming(
    info: &FileInfo,
    name: &str,
    part: PathBuf,
    sidecar: PathBuf,
    sink: Sink,
    hasher: Sha256,
    written: u64,
) -> Incoming {
    Incoming {
        info: info.clone(),
        name: name.to_owned(),
        part,
        sidecar,
        sink,
        hasher,
        written,
        last_progress: Instant::now(),
    }
}

fn failed(name: String, reason: String) -> Event {
    Event::TransferFailed { direction: Direction::Down, name, reason }
}

fn sidecar_text(info: &FileInfo) -> String {
    format!("relaychat-part 2\nfile_id={}\nsize={}\nfrom={:?}\n", info.file_id, info.size, info.from)
}

/// Looks for a sidecar with exactly this content; returns its part and sidecar paths.
fn find_resumable(dir: &Path, tag: &str) -> io::Result<Option<(PathBuf, PathBuf)>> {
    for entry in fs::read_dir(dir)? {
        let sidecar = entry?.path();
        let Some(file_name) = sidecar.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(part_name) = file_name.strip_suffix(SIDECAR) else { continue };
        if !part_name.ends_with(".part") || fs::read_to_string(&sidecar).ok().as_deref() != Some(tag) {
            continue;
        }
        let part = dir.join(part_name);
        if part.is_file() {
            return Ok(Some((part, sidecar)));
        }
    }
    Ok(None)
}

/// `name`, `name (1)`, `name (2)`, ... with the counter before the extension.
fn candidate(name: &str, n: usize) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.').filter(|&dot| dot > 0) {
        Some(dot) => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        None => format!("{name} ({n})"),
    }
}

/// The first `candidate` for which neither the file nor its part exists.
fn free_part_name(dir: &Path, name: &str) -> io::Result<(PathBuf, PathBuf)> {
    for n in 0..10_000 {
        let base = candidate(name, n);
        let part = dir.join(format!("{base}.part"));
        if !dir.join(&base).exists() && !part.exists() {
            let sidecar = dir.join(format!("{base}.part{SIDECAR}"));
            return Ok((part, sidecar));
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name left"))
}

/// Moves a verified part to the first free final name. A hard link cannot overwrite, so even a
/// file created a moment ago by someone else is safe; then the part's own name is removed.
fn place(dir: &Path, name: &str, part: &Path) -> io::Result<PathBuf> {
    for n in 0..10_000 {
        let target = dir.join(candidate(name, n));
        match fs::hard_link(part, &target) {
            Ok(()) => {
                fs::remove_file(part)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name left"))
}

fn remove_part(part: &Path, sidecar: &Path) {
    let _ = fs::remove_file(part);
    let _ = fs::remove_file(sidecar);
}

fn file_name_of(path: &Path, fallback: &str) -> String {
    path.file_name().and_then(|n| n.to_str()).unwrap_or(fallback).to_owned()
}

#[cfg(test)]
mod tests {
    use super::candidate;

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(candidate("report.pdf", 0), "report.pdf");
        assert_eq!(candidate("report.pdf", 2), "report (2).pdf");
        assert_eq!(candidate("README", 1), "README (1)");
        assert_eq!(candidate("archive.tar.gz", 1), "archive.tar (1).gz");
    }
}
