//! The window, for real: an FLTK window against a real relay on loopback, with the real terminal
//! client binary as the other person.
//!
//! ```text
//! xvfb-run -a cargo test --features gui --test gui
//! RELAYCHAT_SCREENSHOT=docs/screenshot.png xvfb-run -a -s "-screen 0 1280x800x24" cargo test --features gui --test gui
//! ```
//!
//! The link thread is also tested on its own, without a window (it needs no display).
//!
//! All scenarios run in this one process, in order, on the main thread: FLTK's state is global and
//! wants the thread that created the window. Without a display the test says so and is skipped.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::client_config;
use common::proc::Proc;
use common::{random_file, try_until, wait_until, TempDir, TestServer};
use relaychat::client::Event;
use relaychat::gui_fltk::link::{Command, Link, LinkEvent};
use relaychat::gui_fltk::window::{Action, STYLE_MINE, STYLE_THEIRS};
use relaychat::gui_fltk::{display_available, App, GuiOptions};
use relaychat::server::ServerConfig;

const WAIT: Duration = Duration::from_secs(20);

fn main() {
    // The link thread needs no window: this part runs with or without a display.
    link_holds_what_is_asked_while_away_up_to_its_limit();
    println!("gui: the link holds at most 64 requests while away: ok");
    if !display_available() {
        println!("gui: the window: skipped: no display (DISPLAY is not set); run it under xvfb-run");
        println!("gui: 1 passed, 0 failed, 1 skipped");
        return;
    }
    let started = Instant::now();
    window_against_a_terminal_client();
    println!("gui: the window scenario took {:.1} s", started.elapsed().as_secs_f64());
    println!("gui: 2 passed, 0 failed");
}

/// The window's link thread without a window: while the relay is away it holds what the person
/// asks for, up to 64 requests (as many as its command channel holds); each one beyond that is
/// answered with a problem saying it was not kept; once the relay is back the held ones are
/// carried out, all of them, once, and no more.
fn link_holds_what_is_asked_while_away_up_to_its_limit() {
    const HELD: usize = 64;
    const EXTRA: usize = 6;
    // Room history longer than the held lines, so that bob, joining after the relay is back,
    // sees every one of them whether it was stored before or after he came.
    let config = || ServerConfig { history: 2 * HELD, ..ServerConfig::default() };
    let server = TestServer::start_with(config());
    let link =
        Link::start(server.addr.to_string(), client_config("ann", "lobby"), || {}).expect("the link starts");
    let next = |what: &str| link.events.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no event: {what}"));
    while !matches!(next("connected"), LinkEvent::Connected { .. }) {}
    let server = server.restart_as(config(), || {
        // A failed attempt: the link now waits for its next one, holding what it is asked.
        while !matches!(next("a failed attempt"), LinkEvent::Retrying { .. }) {}
        for i in 0..HELD + EXTRA {
            link.to_link.send(Command::Text(format!("held {i}"))).expect("the link takes commands");
        }
        let mut refused = 0;
        while refused < EXTRA {
            match next("a problem for each request beyond the limit") {
                LinkEvent::Problem(why) if why.contains("not kept") => refused += 1,
                LinkEvent::Problem(why) => panic!("unexpected problem: {why}"),
                _ => {}
            }
        }
    });
    while !matches!(next("connected again"), LinkEvent::Connected { again: true, .. }) {}
    let bob = server.client("bob", "lobby");
    let mut seen = Vec::new();
    while seen.len() < HELD {
        match bob.events().recv_timeout(WAIT).expect("every held line reaches the room") {
            Event::Chat { from, text, .. } if from == "ann" => seen.push(text),
            _ => {}
        }
    }
    let expected: Vec<String> = (0..HELD).map(|i| format!("held {i}")).collect();
    assert_eq!(seen, expected, "the held lines, in order, each once");
    // Nothing of what was refused.
    let more = bob.events().recv_timeout(Duration::from_millis(500));
    assert!(
        !matches!(&more, Ok(Event::Chat { from, .. }) if from == "ann"),
        "a line beyond the limit: {more:?}"
    );
    link.shut_down();
    drop(server);
}

/// Turns the event loop until `condition` holds; fails with `what` after [`WAIT`].
fn until(app: &mut App, what: &str, mut condition: impl FnMut(&App) -> bool) {
    let shown = try_until(WAIT, || {
        if condition(app) {
            return Some(());
        }
        app.turn(0.02);
        None
    });
    if shown.is_none() {
        panic!("the window never showed: {what}\nlog:\n{}\ninfo:\n{}", app.log_text(), app.info_text());
    }
}

/// The style byte of the first occurrence of `needle` in the log.
fn style_of(app: &App, needle: &str) -> Option<char> {
    let at = app.log_text().find(needle)?;
    app.log_styles().as_bytes().get(at).map(|&b| b as char)
}

fn window_against_a_terminal_client() {
    let server = TestServer::start();
    let addr = server.addr.to_string();
    let screenshot = std::env::var("RELAYCHAT_SCREENSHOT").ok();
    let downloads = TempDir::new("gui-dl");
    let mut config = client_config("alice", "lobby");
    if screenshot.is_some() {
        // Slow the window's uploads down so the picture catches a transfer in progress.
        config.chunk_delay = Some(Duration::from_millis(40));
    }
    let mut app =
        App::new(GuiOptions { server: addr.clone(), config, downloads: downloads.path.clone() }).unwrap();
    until(&mut app, "connected", |a| a.status_text().0.contains("connected to"));

    let bob_dl = TempDir::new("bob-dl");
    let mut bob = Proc::client(&addr, "bob", &["--cli", "--downloads", bob_dl.path.to_str().unwrap()]);
    until(&mut app, "bob joining", |a| a.log_text().contains("bob joined lobby"));

    // 1. The message input has the focus from the start; Enter's path sends and clears it.
    assert!(app.input_state().1, "the input has the keyboard focus when the window opens");
    app.type_message("hello from the window");
    app.press(Action::Send);
    until(&mut app, "my own line", |a| a.log_text().contains("alice: hello from the window"));
    bob.expect(&bob.stdout, "alice: hello from the window");
    assert_eq!(style_of(&app, "alice: hello"), Some(STYLE_MINE), "my messages are green");
    assert_eq!(app.input_state(), (String::new(), true), "cleared, and the focus is back");

    // 2. Chinese from the terminal, shown in blue.
    bob.type_line("你好，世界");
    until(&mut app, "bob's Chinese line", |a| a.log_text().contains("bob: 你好，世界"));
    assert_eq!(style_of(&app, "bob: 你好"), Some(STYLE_THEIRS), "their messages are blue");
    bob.type_line("/who");
    bob.expect(&bob.stdout, "* online in lobby: alice, bob");
    until(&mut app, "the online list", |a| a.status_text().1.contains("alice, bob"));

    // 3. Send File from the window.
    let src = TempDir::new("gui-src");
    let small = random_file(&src.path, "窗口 notes.txt", 5000, 11);
    app.type_path(small.to_str().unwrap());
    app.press(Action::SendFile);
    until(&mut app, "File sent complete", |a| a.info_text().contains("File sent complete: 窗口 notes.txt"));
    bob.expect(&bob.stdout, "[Newfile] alice: 窗口 notes.txt (4.9 KiB)");

    // 4. Receive a file the terminal client sent.
    let report = random_file(&src.path, "report.pdf", 3 << 20, 12);
    bob.type_line(&format!("/send \"{}\"", report.display()));
    until(&mut app, "[Newfile]", |a| a.info_text().contains("[Newfile] bob: report.pdf (3.0 MiB)"));
    // Offered as it arrives (", arriving"), then marked stored once the relay verified it.
    until(&mut app, "the file stored", |a| {
        a.waiting_lines() == vec!["@.report.pdf (3.0 MiB) from bob".to_string()]
    });
    app.press(Action::Receive);
    until(&mut app, "[Download]", |a| {
        a.info_text().contains("[Download] File download complete: report.pdf")
    });
    assert_eq!(common::sha256(&downloads.path.join("report.pdf")), common::sha256(&report));
    until(&mut app, "the waiting list to empty", |a| a.waiting_lines().is_empty());

    // 5. A mistake is shown, not fatal: a path that does not exist.
    app.type_path("/no/such/file.bin");
    app.press(Action::SendFile);
    until(&mut app, "the error", |a| a.log_text().contains("cannot send /no/such/file.bin"));

    if let Some(path) = screenshot {
        take_screenshot(&mut app, &src.path, &path);
    }

    // 6. The relay goes away for a while: the window says so, keeps a line typed meanwhile,
    //    reconnects by itself, sends the line then, and carries on.
    let server = server.restart_after(|| {
        until(&mut app, "the reconnecting status", |a| a.status_text().0.contains("reconnecting"));
        until(&mut app, "a failed attempt", |a| a.status_text().0.contains("reconnecting in"));
        app.type_message("typed while the relay was away");
        app.press(Action::Send);
        until(&mut app, "the held line shown", |a| {
            a.log_text().contains("alice: typed while the relay was away")
        });
    });
    assert!(!bob.wait().success(), "the terminal client exits non-zero when the relay goes away");
    until(&mut app, "the reconnection", |a| a.log_text().contains("* reconnected"));
    until(&mut app, "connected again", |a| a.status_text().0.contains("connected to"));
    let bob = Proc::client(&addr, "bob", &["--cli"]);
    until(&mut app, "bob joining again", |a| a.log_text().matches("bob joined lobby").count() == 2);
    // The held line reached the relay after the reconnect: bob, back after it, gets it as a
    // message that waited for him, and the window did not complain about it.
    bob.expect(&bob.stdout, "alice (offline): typed while the relay was away");
    assert!(!app.log_text().contains("not connected"), "the held line was refused:\n{}", app.log_text());
    assert!(
        !app.log_text().contains("(history)"),
        "history already shown is not shown again:\n{}",
        app.log_text()
    );
    app.type_message("after the restart");
    app.press(Action::Send);
    until(&mut app, "my line after the restart", |a| a.log_text().contains("alice: after the restart"));
    bob.expect(&bob.stdout, "alice: after the restart");

    // 7. Closing the window disconnects cleanly: the other side sees us leave.
    app.press(Action::Close);
    wait_until("the window to close", WAIT, || (!app.turn(0.02)).then_some(()));
    app.shut_down();
    bob.expect(&bob.stdout, "* alice left lobby");
    drop(server);
}

/// Starts a slow upload, waits until its progress bar shows, and saves the window as a PNG.
fn take_screenshot(app: &mut App, dir: &Path, target: &str) {
    app.type_message("这个窗口也能发中文：传输进行中，聊天不停。");
    app.press(Action::Send);
    let big = random_file(dir, "假期照片.zip", 40 << 20, 13);
    app.type_path(big.to_str().unwrap());
    app.press(Action::SendFile);
    until(app, "the upload progress bar", |a| a.progress_visible().0);
    for _ in 0..20 {
        app.turn(0.05); // let the bar move and the window repaint
    }
    let (rgb, w, h) = app.capture().expect("capture the window");
    let file = std::fs::File::create(target).expect("create the screenshot file");
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().and_then(|mut writer| writer.write_image_data(&rgb)).expect("write the PNG");
    println!("gui: screenshot saved to {target} ({w}x{h})");
}
