//! The window's state and event loop: one `App` that owns the widgets and both message receivers.
//!
//! Everything happens on the GUI thread, in [`App::turn`]: wait for FLTK events (or an
//! `awake()` from the network thread), then handle every pending [`Action`] from the widgets and
//! every pending [`LinkEvent`] from the network thread. Handlers only update widgets or send a
//! [`Command`]; none of them blocks, so the window never freezes.

use std::path::PathBuf;
use std::time::Instant;

use fltk::prelude::*;

use super::link::{Command, Link, LinkEvent};
use super::window::{Action, Widgets, STYLE_MINE, STYLE_NOTICE, STYLE_THEIRS, STYLE_TIME};
use crate::client::{ClientConfig, Direction, Event};
use crate::clock::now_ms;
use crate::display::human_size;
use crate::display::{clock, visible, Said};
use crate::filename;
use crate::frame::FileInfo;

/// What the window needs to start.
#[derive(Debug, Clone)]
pub struct GuiOptions {
    /// The relay, `HOST:PORT`.
    pub server: String,
    /// Name, room and transfer settings.
    pub config: ClientConfig,
    /// Where Receive puts files.
    pub downloads: PathBuf,
}

/// Rate shown beside a progress bar: bytes per second since the transfer's first report.
struct Meter {
    name: String,
    started: Instant,
    first_done: u64,
}

pub struct App {
    app: fltk::app::App,
    w: Widgets,
    actions: fltk::app::Receiver<Action>,
    action_sender: fltk::app::Sender<Action>,
    link: Option<Link>,
    server: String,
    me: String,
    downloads: PathBuf,
    waiting: Vec<FileInfo>,
    /// Who is online in our room: set by `Online`, kept current by `Joined` and `Left`.
    online: (String, std::collections::BTreeSet<String>),
    /// In a big room, its head count instead of a list (set by `Crowd`, cleared by `Online`).
    crowd: Option<String>,
    meters: [Option<Meter>; 2],
    closing: bool,
}

impl App {
    /// Builds and shows the window, and starts the network thread.
    pub fn new(options: GuiOptions) -> anyhow::Result<App> {
        let app = fltk::app::App::default();
        // Load the system fonts so that FLTK's font fallback (through Pango) can find a CJK font.
        fltk::app::set_font_size(14);
        let (action_sender, actions) = fltk::app::channel::<Action>();
        let title = format!("501密聊 · relaychat · {}", options.config.name);
        let mut w = Widgets::build(&title, action_sender);
        w.window.show();
        let _ = w.input.take_focus();
        let link = Link::start(options.server.clone(), options.config.clone(), fltk::app::awake)?;
        Ok(App {
            app,
            w,
            actions,
            action_sender,
            link: Some(link),
            server: options.server,
            me: options.config.name,
            downloads: options.downloads,
            waiting: Vec::new(),
            online: (String::new(), Default::default()),
            crowd: None,
            meters: [None, None],
            closing: false,
        })
    }

    /// Runs until the window is closed, then disconnects cleanly.
    pub fn run(mut self) {
        while !self.closing && self.app.wait() {
            self.handle_pending();
        }
        self.shut_down();
    }

    /// One turn of the event loop, waiting at most `seconds`. Returns false once closing.
    /// [`App::run`] is this in a loop; tests call it directly to drive a real window.
    pub fn turn(&mut self, seconds: f64) -> bool {
        let _ = fltk::app::wait_for(seconds);
        self.handle_pending();
        !self.closing
    }

    /// Closes the connection and the window. The process can exit right after.
    pub fn shut_down(mut self) {
        if let Some(link) = self.link.take() {
            link.shut_down();
        }
        self.w.window.hide();
    }

    fn handle_pending(&mut self) {
        while let Some(action) = self.actions.recv() {
            self.on_action(action);
        }
        while let Some(event) = self.link.as_ref().and_then(|l| l.events.try_recv().ok()) {
            self.on_link(event);
        }
    }

    fn command(&mut self, command: Command) {
        if let Some(link) = &self.link {
            if link.to_link.try_send(command).is_err() {
                self.set_status("busy: the network thread is not keeping up; try again");
            }
        }
    }

    fn on_action(&mut self, action: Action) {
        match action {
            Action::Send => self.send_message(),
            Action::SelectFile => {
                if let Some(path) = super::choose_file() {
                    self.w.path.set_value(&path.to_string_lossy());
                }
            }
            Action::SendFile => self.send_file(),
            Action::Receive => {
                let dir = self.downloads.clone();
                self.command(Command::Receive(dir));
            }
            Action::OpenFolder => {
                if let Err(e) = super::open_folder(&self.downloads) {
                    self.info_line(&format!("error: cannot open {}: {e}", self.downloads.display()));
                }
            }
            Action::Close => self.closing = true,
        }
    }

    fn send_message(&mut self) {
        let Some(mut buffer) = self.w.input.buffer() else { return };
        let text = buffer.text();
        let text = text.trim_end_matches(['\n', '\r']).to_owned();
        if !text.trim().is_empty() {
            self.log_chat(now_ms(), &self.me.clone(), &text, true);
            self.command(Command::Text(text));
        }
        buffer.set_text("");
        let _ = self.w.input.take_focus();
    }

    fn send_file(&mut self) {
        let path = self.w.path.value();
        if path.trim().is_empty() {
            self.set_status("type a file path or use Select File first");
            return;
        }
        self.command(Command::SendFile(PathBuf::from(path.trim())));
        self.w.path.set_value("");
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { name, room, again } => {
                self.set_status(&format!("connected to {} as {} in {}", self.server, name, room));
                if again {
                    self.log_notice("reconnected");
                }
            }
            LinkEvent::Net(event) => self.on_event(event),
            // The same wording as the terminal client's: "connection lost (…); reconnecting" once
            // in the log, then each failed attempt on the status line only.
            LinkEvent::Lost { why } => {
                self.set_status(&format!("reconnecting: {why}"));
                self.log_notice(&format!("connection lost ({why}); reconnecting"));
            }
            LinkEvent::Retrying { why, retry_in } => {
                self.set_status(&format!("reconnecting in {:.1} s: {why}", retry_in.as_secs_f64()));
            }
            LinkEvent::Refused(why) => {
                self.set_status(&format!("error: {why}"));
                self.log_notice(&format!("error: {why}"));
            }
            LinkEvent::Problem(why) => self.log_notice(&format!("error: {why}")),
            LinkEvent::FirstContact { server, fingerprint, answer } => {
                let question = format!(
                    "The relay at {server} is new to this computer.\n\nIts key's fingerprint is\n{fingerprint}\n\n\
                     Does it match the one the relay's operator gave you (server --fingerprint)?\n\
                     Nothing is sent to the relay until you trust it."
                );
                let trusted = fltk::dialog::choice2_default(&question, "Don't trust", "Trust", "") == Some(1);
                if trusted {
                    self.log_notice(&format!("trusted the relay's key {fingerprint}"));
                }
                let _ = answer.send(trusted);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        // What the event says comes from the one wording both front ends share; the window only
        // decides where it goes (chat on the right, files on the left) and keeps its lists.
        let said = crate::display::describe(&event);
        match event {
            Event::Chat { from, .. } => {
                if let Some(Said::Chat { label, sent_at_ms, text }) = said {
                    let mine = from == self.me;
                    self.log_chat(sent_at_ms, &label, &text, mine)
                }
            }
            Event::Joined { name, .. } => {
                self.say_in_chat(said);
                self.online.1.insert(name);
                self.show_online();
            }
            Event::Left { name, .. } => {
                self.say_in_chat(said);
                self.online.1.remove(&name);
                self.show_online();
            }
            Event::Online { room, names } => {
                self.online = (room, names.into_iter().collect());
                self.crowd = None;
                self.show_online();
            }
            // Not logged in the chat: a big room's counts come every second while people come
            // and go. The online line shows the head count instead.
            Event::Crowd { room, online, .. } => {
                self.crowd = Some(crate::display::crowd_line(&room, online, 0, 0));
                self.show_online();
            }
            Event::Warning { .. } => self.say_in_chat(said),
            Event::NewFile(info) => {
                self.say_in_files(said);
                // An arriving file listed earlier comes again, stored, if its upload stopped in
                // between: update its line rather than add a second one.
                match self.waiting.iter_mut().find(|w| w.file_id == info.file_id) {
                    Some(listed) => *listed = info,
                    None => self.waiting.push(info),
                }
                self.refresh_waiting();
            }
            Event::FileExpired { .. } => self.say_in_files(said),
            Event::Progress { direction, name, done, total } => self.progress(direction, &name, done, total),
            Event::Uploaded { .. } => {
                self.end_progress(Direction::Up);
                self.say_in_files(said);
            }
            Event::Downloaded { file_id, .. } => {
                self.end_progress(Direction::Down);
                self.say_in_files(said);
                self.waiting.retain(|w| w.file_id != file_id);
                self.refresh_waiting();
            }
            Event::TransferFailed { direction, .. } => {
                self.end_progress(direction);
                self.say_in_files(said);
            }
            Event::ReceiveFinished { received: 0, failed: 0 } => self.say_in_files(said),
            Event::ReceiveFinished { .. } => {}
            Event::Sent { .. } => {}
            Event::Disconnected(_) => {} // the link thread turns this into Lost and reconnects
        }
    }

    /// A room notice or an error, in the chat log.
    fn say_in_chat(&mut self, said: Option<Said>) {
        match said {
            Some(Said::Room(text)) => self.log_notice(&text),
            Some(Said::Error(text) | Said::File(text)) => self.log_notice(&text),
            Some(Said::Chat { .. }) | None => {}
        }
    }

    /// A file line or a transfer's failure, in the files panel.
    fn say_in_files(&mut self, said: Option<Said>) {
        if let Some(Said::File(text) | Said::Error(text) | Said::Room(text)) = said {
            self.info_line(&text);
        }
    }

    fn log_chat(&mut self, at_ms: u64, from: &str, text: &str, mine: bool) {
        let style = if mine { STYLE_MINE } else { STYLE_THEIRS };
        self.append_log(&format!("{} ", clock(at_ms)), STYLE_TIME);
        let mut lines = text.split('\n');
        let first = lines.next().unwrap_or_default();
        let mut body = format!("{}: {}", visible(from), visible(first));
        for line in lines {
            body.push_str("\n  ");
            body.push_str(&visible(line));
        }
        body.push('\n');
        self.append_log(&body, style);
    }

    fn log_notice(&mut self, text: &str) {
        self.append_log(&format!("{} ", clock(now_ms())), STYLE_TIME);
        self.append_log(&format!("* {text}\n"), STYLE_NOTICE);
    }

    /// Appends text and the same number of style bytes (FLTK styles text byte by byte).
    fn append_log(&mut self, text: &str, style: char) {
        if let Some(mut buffer) = self.w.log.buffer() {
            buffer.append(text);
            self.w.log_styles.append(&style.to_string().repeat(text.len()));
            let lines = buffer.count_lines(0, buffer.length());
            self.w.log.scroll(lines, 0);
        }
    }

    fn info_line(&mut self, text: &str) {
        if let Some(mut buffer) = self.w.info.buffer() {
            buffer.append(&format!("{} {text}\n", clock(now_ms())));
            let lines = buffer.count_lines(0, buffer.length());
            self.w.info.scroll(lines, 0);
        }
    }

    fn refresh_waiting(&mut self) {
        self.w.waiting.clear();
        for info in &self.waiting {
            let line = format!(
                "{} ({}) from {}{}",
                visible(&filename::clean(&info.name)),
                human_size(info.size),
                visible(&info.from),
                if info.sha256.is_none() { ", arriving" } else { "" }
            );
            // `@` starts a format code in an FLTK browser line; `@.` turns them off.
            self.w.waiting.add(&format!("@.{line}"));
        }
    }

    fn progress(&mut self, direction: Direction, name: &str, done: u64, total: u64) {
        let slot = direction as usize;
        let meter = self.meters[slot].get_or_insert_with(|| Meter {
            name: name.to_owned(),
            started: Instant::now(),
            first_done: done,
        });
        if meter.name != name {
            *meter = Meter { name: name.to_owned(), started: Instant::now(), first_done: done };
        }
        let secs = meter.started.elapsed().as_secs_f64().max(0.001);
        let rate = (done.saturating_sub(meter.first_done)) as f64 / secs;
        let arrow = if direction == Direction::Up { "↑" } else { "↓" };
        let label = format!(
            "{arrow} {} {}% · {}/s",
            visible(name),
            done * 100 / total.max(1),
            human_size(rate as u64)
        );
        let bar = if direction == Direction::Up { &mut self.w.upload } else { &mut self.w.download };
        bar.set_value(done as f64 / total.max(1) as f64);
        bar.set_label(&label);
        bar.show();
        bar.redraw();
    }

    fn end_progress(&mut self, direction: Direction) {
        self.meters[direction as usize] = None;
        let bar = if direction == Direction::Up { &mut self.w.upload } else { &mut self.w.download };
        bar.hide();
    }

    fn show_online(&mut self) {
        let names: Vec<String> = self.online.1.iter().map(|n| visible(n)).collect();
        let line = match &self.crowd {
            Some(count) => count.clone(),
            None => format!("online in {}: {}", visible(&self.online.0), names.join(", ")),
        };
        self.w.online.set_label(&line);
        self.w.online.redraw();
    }

    fn set_status(&mut self, text: &str) {
        self.w.status.set_label(&format!(" {text}"));
        self.w.status.redraw();
    }

    // ---- For tests: read what a person would see, and act as a person would. ----

    /// Types into the message input (replacing what is there).
    pub fn type_message(&mut self, text: &str) {
        if let Some(mut buffer) = self.w.input.buffer() {
            buffer.set_text(text);
        }
    }

    /// Puts a path in the file field.
    pub fn type_path(&mut self, path: &str) {
        self.w.path.set_value(path);
    }

    /// Does what a button press (or Enter, for [`Action::Send`]) does: sends the action through
    /// the same channel the widgets use.
    pub fn press(&self, action: Action) {
        self.action_sender.send(action);
    }

    /// The chat log's text.
    pub fn log_text(&self) -> String {
        self.w.log.buffer().map(|b| b.text()).unwrap_or_default()
    }

    /// The style bytes of the chat log, parallel to [`App::log_text`]'s bytes.
    pub fn log_styles(&self) -> String {
        self.w.log_styles.text()
    }

    /// The file panel's text.
    pub fn info_text(&self) -> String {
        self.w.info.buffer().map(|b| b.text()).unwrap_or_default()
    }

    /// The lines of the "waiting for you" list.
    pub fn waiting_lines(&self) -> Vec<String> {
        (1..=self.w.waiting.size()).filter_map(|i| self.w.waiting.text(i)).collect()
    }

    /// The status line and the online line.
    pub fn status_text(&self) -> (String, String) {
        (self.w.status.label(), self.w.online.label())
    }

    /// What the message input holds, and whether it has the keyboard focus.
    pub fn input_state(&self) -> (String, bool) {
        let text = self.w.input.buffer().map(|b| b.text()).unwrap_or_default();
        (text, self.w.input.has_focus())
    }

    /// True while the upload or download progress bar is shown.
    pub fn progress_visible(&self) -> (bool, bool) {
        (self.w.upload.visible(), self.w.download.visible())
    }

    /// Captures the window as RGB bytes, with its width and height.
    pub fn capture(&mut self) -> Option<(Vec<u8>, i32, i32)> {
        let image = fltk::draw::capture_window(&mut self.w.window).ok()?;
        Some((image.to_rgb_data(), image.data_w(), image.data_h()))
    }
}
