//! Rendering: human text (colour only on a terminal) or JSON, and errors on stderr.

use std::io::Write;

use owo_colors::OwoColorize;

/// Where results go.
pub(crate) struct Out {
    json: bool,
}

impl Out {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Prints a JSON value on stdout (one line).
    pub(crate) fn emit_json(&self, v: &serde_json::Value) {
        let mut stdout = anstream::stdout();
        let _ = writeln!(stdout, "{v}");
    }

    /// Prints a line of human text on stdout.
    pub(crate) fn line(&self, s: impl std::fmt::Display) {
        let mut stdout = anstream::stdout();
        let _ = writeln!(stdout, "{s}");
    }

    /// Prints a line on stderr.
    pub(crate) fn warn(&self, s: impl std::fmt::Display) {
        let mut stderr = anstream::stderr();
        let _ = writeln!(stderr, "{s}");
    }

    /// Reports an error: `error: …` on stderr and, with `--json`, an object on stdout that
    /// also names its kind and exit code.
    pub(crate) fn error(&self, err: &anyhow::Error, kind: gov_sdk::ErrorKind, code: u8) {
        let mut stderr = anstream::stderr();
        let _ = writeln!(stderr, "{} {err:#}", "error:".red().bold());
        if self.json {
            self.emit_json(&serde_json::json!({
                "status": "error",
                "kind": kind.as_str(),
                "exit_code": code,
                "message": format!("{err:#}"),
            }));
        }
    }
}

/// `1 event`, `2 events`.
pub(crate) fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}
