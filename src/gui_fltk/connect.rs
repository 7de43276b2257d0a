//! The connect dialog: asks for the relay and the name when the command line did not give them.
//! The seed made people edit HOST in the source code; this remembers the last values in
//! `<config dir>/relaychat/gui.conf` instead.

use std::path::PathBuf;

use fltk::button::Button;
use fltk::frame::Frame;
use fltk::input::{Input, SecretInput};
use fltk::prelude::*;
use fltk::window::Window;

use crate::rules;

/// Shows the dialog; returns `(server, name, password)`, or `None` if the person cancelled. The
/// password is never remembered.
pub fn ask(server: Option<String>, name: Option<String>) -> Option<(String, String, String)> {
    let _app = fltk::app::App::default();
    let remembered = load();
    let server =
        server.or(remembered.0).unwrap_or_else(|| format!("127.0.0.1:{}", crate::frame::DEFAULT_PORT));
    let name = name.or(remembered.1).or_else(crate::client::default_name).unwrap_or_default();

    let mut win = Window::new(200, 200, 420, 230, "relaychat: connect");
    Frame::new(10, 15, 90, 30, "Relay").set_align(fltk::enums::Align::Right | fltk::enums::Align::Inside);
    let mut server_in = Input::new(110, 15, 290, 30, None);
    server_in.set_value(&server);
    Frame::new(10, 55, 90, 30, "Your name").set_align(fltk::enums::Align::Right | fltk::enums::Align::Inside);
    let mut name_in = Input::new(110, 55, 290, 30, None);
    name_in.set_value(&name);
    Frame::new(10, 95, 90, 30, "Password").set_align(fltk::enums::Align::Right | fltk::enums::Align::Inside);
    let password_in = SecretInput::new(110, 95, 290, 30, None);
    let mut problem = Frame::new(10, 135, 400, 30, "empty password: the name is kept for this machine");
    let mut ok = Button::new(200, 180, 95, 32, "Connect");
    let mut cancel = Button::new(305, 180, 95, 32, "Cancel");
    win.end();
    win.make_modal(true);
    win.show();

    let (sender, receiver) = fltk::app::channel::<bool>();
    ok.emit(sender, true);
    cancel.emit(sender, false);
    while win.shown() && fltk::app::wait() {
        match receiver.recv() {
            Some(true) => {
                let (server, name) = (server_in.value().trim().to_owned(), name_in.value().trim().to_owned());
                match rules::check_name(&name) {
                    Ok(()) if !server.is_empty() => {
                        win.hide();
                        save(&server, &name);
                        return Some((server, name, password_in.value()));
                    }
                    Ok(()) => problem.set_label("the relay address is empty"),
                    Err(e) => problem.set_label(&e.to_string()),
                }
            }
            Some(false) => break,
            None => {}
        }
    }
    win.hide();
    None
}

fn settings_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("relaychat").join("gui.conf"))
}

/// The remembered server and name, if any.
fn load() -> (Option<String>, Option<String>) {
    let text = settings_path().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    let get = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).map(str::to_owned).filter(|v| !v.is_empty())
    };
    (get("server="), get("name="))
}

fn save(server: &str, name: &str) {
    let Some(path) = settings_path() else { return };
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(&path, format!("server={server}\nname={name}\n")));
    if let Err(e) = written {
        log::warn!("cannot remember the connection settings in {}: {e}", path.display());
    }
}
