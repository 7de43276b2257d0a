//! The FLTK window (cargo feature `gui`): the seed's client, done right.
//!
//! - [`window`]: the widgets and their layout. Widgets only `emit` [`window::Action`]s.
//! - [`app`]: the `App` that owns the widgets and handles actions and network events, on the GUI
//!   thread only.
//! - [`link`]: the network thread that owns the library's reconnecting [`crate::client::Session`]
//!   (the terminal client's too) and wakes the GUI with `fltk::app::awake()`.
//! - [`connect`]: the small dialog that asks for the relay and the name when they are not given,
//!   remembering the last values in the user's config directory.
//!
//! There is no protocol logic here: the window drives the same client library as the terminal.

pub mod app;
pub mod connect;
pub mod link;
pub mod window;

use std::io;
use std::path::{Path, PathBuf};

use crate::client::ClientConfig;

pub use app::{App, GuiOptions};

/// True when a window can be shown: on Linux and the BSDs, an X11 or Wayland display is set.
pub fn display_available() -> bool {
    if cfg!(any(target_os = "windows", target_os = "macos")) {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// What the command line gave the window; anything missing is asked for.
#[derive(Debug)]
pub struct Launch {
    pub server: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    pub access: Option<String>,
    pub room: String,
    pub downloads: PathBuf,
    /// TLS and whom to trust (first contact is asked in a dialog), or plaintext.
    pub security: crate::client::Security,
}

/// Opens the window and runs until it is closed. If the relay or the name is missing, the connect
/// dialog asks for them (and for a password).
pub fn run(launch: Launch) -> anyhow::Result<()> {
    let (server, name, password) = match (launch.server, launch.name) {
        (Some(server), Some(name)) => (server, name, launch.password.unwrap_or_default()),
        (server, name) => match connect::ask(server, name) {
            Some(answer) => answer,
            None => return Ok(()), // the person cancelled
        },
    };
    let mut config = ClientConfig::new(name, launch.room);
    config.password = password;
    config.access = launch.access.unwrap_or_default();
    config.token = crate::client::identity::token_or_guest(&server);
    config.security = launch.security;
    let options = GuiOptions { server, config, downloads: launch.downloads };
    App::new(options)?.run();
    Ok(())
}

/// Asks for a file with the platform's own dialog (native-dialog runs zenity, kdialog or yad on
/// Linux); if there is none, FLTK's own file chooser, so the button always works.
pub fn choose_file() -> Option<PathBuf> {
    let native = native_dialog::DialogBuilder::file().set_title("Select File").open_single_file().show();
    match native {
        Ok(choice) => choice,
        Err(e) => {
            log::info!("no native file dialog ({e}); using FLTK's");
            fltk::dialog::file_chooser("Select File", "*", ".", false).map(PathBuf::from)
        }
    }
}

/// Shows `dir` in the file manager, creating it first.
pub fn open_folder(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(target_os = "windows") {
        "explorer"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener).arg(dir).spawn().map(|_| ())
}
