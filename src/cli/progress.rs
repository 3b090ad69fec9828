//! A live message counter on stderr, shown only when stderr is a terminal (never in pipes, logs
//! or tests).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner with the count and rate of messages, cleared when done or dropped.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A counter of messages `verb` (e.g. "sent"); hidden unless stderr is a terminal.
    pub(crate) fn new(verb: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        let template = format!("{{spinner}} {{human_pos}} messages {verb} ({{per_sec}})");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        Self { bar: Some(bar) }
    }

    /// Sets the count.
    pub(crate) fn set(&self, count: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(count);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Clear the line so that the summary or error that follows starts on a clean line.
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
