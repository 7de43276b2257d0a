//! Progress bars for transfers, drawn on stderr only when stderr is a terminal, so scripts and
//! pipes see clean output. The library reports progress as events; this turns them into bars.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Direction;

/// The bars of the transfers in progress, keyed by direction and file name.
pub struct Bars {
    multi: Option<MultiProgress>,
    bars: HashMap<(bool, String), ProgressBar>,
}

impl Bars {
    /// Bars on stderr if it is a terminal; otherwise a no-op.
    pub fn new() -> Bars {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Bars { multi, bars: HashMap::new() }
    }

    /// Moves the bar of one transfer (creating it on first sight).
    pub fn update(&mut self, direction: Direction, name: &str, done: u64, total: u64) {
        let Some(multi) = &self.multi else { return };
        let key = (direction == Direction::Up, name.to_owned());
        let bar = self.bars.entry(key).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(total));
            let arrow = if direction == Direction::Up { "↑" } else { "↓" };
            let template = format!(
                "{arrow} {{msg:24!}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(crate::display::visible(name));
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
    }

    /// Removes the bar of a finished or failed transfer.
    pub fn finish(&mut self, direction: Direction, name: &str) {
        if let Some(bar) = self.bars.remove(&(direction == Direction::Up, name.to_owned())) {
            bar.finish_and_clear();
        }
    }

    /// Runs `print` with the bars hidden, so a printed line does not tear them.
    pub fn suspend<T>(&self, print: impl FnOnce() -> T) -> T {
        match &self.multi {
            Some(multi) => multi.suspend(print),
            None => print(),
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}
