//! The widgets and their layout: the seed's window, at a size where nothing is cut off.
//!
//! ```text
//! +-- files (light yellow) ------+-- chat (light blue) ------------------------+
//! | [Newfile] alice: a.pdf (1 MiB)| [12:00:01] bob: hello                       |
//! | [Download] File download ...  | [12:00:02] alice: 你好，世界                |
//! |-- waiting for you ------------|                                              |
//! | a.pdf (1.0 MiB) from alice    |----------------------------------------------|
//! | [Receive]  [Open folder]      | message (Enter sends, Shift+Enter: new line) [Send Text] |
//! | ↑ upload progress             | file path                [Select File] [Send File] |
//! | ↓ download progress           | online: alice, bob                           |
//! +-------------------------------+----------------------------------------------+
//! | status: connected to 127.0.0.1:21567 as alice in lobby                      |
//! +------------------------------------------------------------------------------+
//! ```
//!
//! Only the GUI thread creates or touches these widgets. Buttons do not act themselves: they
//! `emit` an [`Action`] that the [`super::app::App`] handles in its loop.

use fltk::app::Sender;
use fltk::browser::HoldBrowser;
use fltk::button::Button;
use fltk::enums::{Align, Color, Event, Font, FrameType, Key};
use fltk::frame::Frame;
use fltk::input::Input;
use fltk::misc::Progress;
use fltk::prelude::*;
use fltk::text::{StyleTableEntry, TextBuffer, TextDisplay, TextEditor, WrapMode};
use fltk::window::Window;

/// What a widget asks the app to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the message in the input (the Enter key and the Send Text button).
    Send,
    /// Open a file chooser and put the choice in the path field.
    SelectFile,
    /// Upload the file named in the path field.
    SendFile,
    /// Download everything waiting.
    Receive,
    /// Show the downloads directory in the file manager.
    OpenFolder,
    /// The window is closing.
    Close,
}

/// Window size: the seed's 620×400 clipped its own buttons.
pub const WIDTH: i32 = 980;
pub const HEIGHT: i32 = 640;

/// The seed's panel colours.
const LIGHT_YELLOW: Color = Color::from_rgb(255, 255, 224);
const LIGHT_BLUE: Color = Color::from_rgb(173, 216, 230);

/// Style characters of the chat log (one per byte of text, as FLTK's style buffers want).
pub const STYLE_TIME: char = 'A';
pub const STYLE_MINE: char = 'B';
pub const STYLE_THEIRS: char = 'C';
pub const STYLE_NOTICE: char = 'D';

pub struct Widgets {
    pub window: Window,
    pub info: TextDisplay,
    pub waiting: HoldBrowser,
    pub log: TextDisplay,
    pub log_styles: TextBuffer,
    pub input: TextEditor,
    pub path: Input,
    pub upload: Progress,
    pub download: Progress,
    pub online: Frame,
    pub status: Frame,
}

impl Widgets {
    /// Builds the window. `actions` is where buttons (and Enter) send their [`Action`]s.
    pub fn build(title: &str, actions: Sender<Action>) -> Widgets {
        let mut window = Window::new(100, 100, WIDTH, HEIGHT, None);
        window.set_label(title);

        let info = text_display(8, 8, 320, 330, LIGHT_YELLOW);
        let mut label = Frame::new(8, 342, 320, 20, "Waiting for you");
        label.set_align(Align::Left | Align::Inside);
        let mut waiting = HoldBrowser::new(8, 364, 320, 128, None);
        waiting.set_color(LIGHT_YELLOW);
        let mut receive = Button::new(8, 500, 156, 30, "Receive");
        receive.emit(actions, Action::Receive);
        let mut open = Button::new(172, 500, 156, 30, "Open folder");
        open.emit(actions, Action::OpenFolder);
        let upload = progress(8, 538);
        let download = progress(8, 566);

        let mut log = text_display(340, 8, 632, 392, LIGHT_BLUE);
        let log_styles = TextBuffer::default();
        log.set_highlight_data(log_styles.clone(), style_table());

        let mut input = TextEditor::new(340, 408, 500, 84, None);
        input.set_buffer(TextBuffer::default());
        input.wrap_mode(WrapMode::AtBounds, 0);
        input.set_tooltip("Enter sends; Shift+Enter starts a new line");
        // Enter sends; Shift+Enter falls through to the editor, which inserts a newline.
        input.handle(move |_, event| {
            if event == Event::KeyDown && fltk::app::event_key() == Key::Enter && !fltk::app::is_event_shift()
            {
                actions.send(Action::Send);
                return true;
            }
            false
        });
        let mut send = Button::new(848, 408, 124, 84, "Send Text\n[or Enter]");
        send.emit(actions, Action::Send);

        let mut path = Input::new(340, 500, 390, 30, None);
        path.set_tooltip("path of a file to send");
        let mut select = Button::new(738, 500, 110, 30, "Select File");
        select.emit(actions, Action::SelectFile);
        let mut send_file = Button::new(856, 500, 116, 30, "Send File");
        send_file.emit(actions, Action::SendFile);

        let mut online = Frame::new(340, 538, 632, 50, "online: -");
        online.set_align(Align::Left | Align::Inside | Align::Wrap);

        let mut status = Frame::new(0, HEIGHT - 30, WIDTH, 30, "connecting...");
        status.set_frame(FrameType::ThinDownBox);
        status.set_align(Align::Left | Align::Inside);

        window.end();
        window.resizable(&log);
        window.set_callback(move |_| {
            // Only the close button (or Escape) comes here: we quit cleanly instead of at once.
            if fltk::app::event() == Event::Close || fltk::app::event_key() == Key::Escape {
                actions.send(Action::Close);
            }
        });
        Widgets { window, info, waiting, log, log_styles, input, path, upload, download, online, status }
    }
}

fn text_display(x: i32, y: i32, w: i32, h: i32, color: Color) -> TextDisplay {
    let mut display = TextDisplay::new(x, y, w, h, None);
    display.set_buffer(TextBuffer::default());
    display.set_color(color);
    display.wrap_mode(WrapMode::AtBounds, 0);
    display.set_text_font(Font::Helvetica);
    display.set_text_size(14);
    display
}

fn progress(x: i32, y: i32) -> Progress {
    let mut bar = Progress::new(x, y, 320, 24, "");
    bar.set_minimum(0.0);
    bar.set_maximum(1.0);
    bar.set_selection_color(Color::from_rgb(90, 160, 90));
    bar.hide();
    bar
}

/// Styles of the chat log, in the order of the STYLE_* characters: time, mine (green), theirs
/// (blue), notices (grey).
fn style_table() -> Vec<StyleTableEntry> {
    let entry = |color| StyleTableEntry { color, font: Font::Helvetica, size: 14 };
    vec![
        entry(Color::from_rgb(90, 90, 90)),
        entry(Color::from_rgb(0, 120, 0)),
        entry(Color::from_rgb(0, 0, 170)),
        entry(Color::from_rgb(100, 100, 100)),
    ]
}
