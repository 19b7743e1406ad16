//! Progress on stderr for long work: drawn only when stderr is a terminal and never with
//! `--json`, so pipes and scripts see nothing of it.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Out;

/// A bar counting `len` items.
pub(crate) fn bar(out: &Out, len: u64, what: &str) -> ProgressBar {
    if out.json() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A spinner whose message says what is being done.
pub(crate) fn spinner(out: &Out) -> ProgressBar {
    if out.json() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// An export's or an import's progress: a spinner while the import checks the file, then a bar
/// counting the rows written (`what`: "exporting", "importing").
pub(crate) struct Transfer<'a> {
    out: &'a Out,
    what: &'static str,
    spinner: std::sync::OnceLock<ProgressBar>,
    bar: std::sync::OnceLock<ProgressBar>,
}

impl<'a> Transfer<'a> {
    pub(crate) fn new(out: &'a Out, what: &'static str) -> Self {
        Self {
            out,
            what,
            spinner: std::sync::OnceLock::new(),
            bar: std::sync::OnceLock::new(),
        }
    }
}

impl gov_sdk::admin::transfer::Progress for Transfer<'_> {
    fn checking(&self, file: &str) {
        let s = self.spinner.get_or_init(|| spinner(self.out));
        s.set_message(format!("checking {file}"));
    }

    fn checked(&self) {
        if let Some(s) = self.spinner.get() {
            s.finish_and_clear();
        }
    }

    fn rows(&self, total: u64) {
        self.bar.get_or_init(|| bar(self.out, total, self.what));
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.get() {
            b.inc(n);
        }
    }

    fn rows_done(&self) {
        if let Some(b) = self.bar.get() {
            b.finish_and_clear();
        }
    }
}
