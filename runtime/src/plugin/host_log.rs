//! Host side of the `log` interface: plugin log lines become tracing events tagged with the
//! plugin's name, capped in size and count per call, with control characters blanked, so a
//! plugin can neither flood the host's log nor forge lines in it.

use super::bindings::log::{Host, Level};
use super::state::PluginState;

/// Longest message kept from one log call.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Most fields kept from one log call.
const MAX_FIELDS: usize = 16;
/// Most lines one plugin call may log; the rest are dropped (with one warning).
const MAX_LINES_PER_CALL: u32 = 1000;
/// Most bytes (messages and fields) one plugin call may log: at the line and size caps alone,
/// one call could write 4 MiB of messages and 5 MiB of fields.
const MAX_BYTES_PER_CALL: usize = 64 << 10;

/// What one plugin call has logged so far, against the caps.
#[derive(Debug, Default)]
pub struct LogBudget {
    lines: u32,
    bytes: usize,
    exhausted: bool,
}

/// What [`LogBudget::admit`] decided about a line.
#[derive(Debug, PartialEq)]
enum Admitted {
    Yes,
    /// Dropped, the first: the host says once that the rest are dropped.
    FirstDropped,
    Dropped,
}

impl LogBudget {
    /// Count a line of `bytes`; a call past either cap logs nothing more.
    fn admit(&mut self, bytes: usize) -> Admitted {
        if !self.exhausted
            && self.lines < MAX_LINES_PER_CALL
            && self.bytes + bytes <= MAX_BYTES_PER_CALL
        {
            self.lines += 1;
            self.bytes += bytes;
            return Admitted::Yes;
        }
        if std::mem::replace(&mut self.exhausted, true) {
            Admitted::Dropped
        } else {
            Admitted::FirstDropped
        }
    }
}

/// `s` clipped, with control characters (newlines included) blanked so a plugin cannot forge
/// log lines of its own.
fn printable(s: &str, max: usize) -> String {
    let mut s = clip(s, max).to_string();
    super::output::blank_controls(&mut s, false);
    s
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether the process logs JSON (`AGENTRT_LOG_FORMAT=json`, read once as `main` does).
fn json_logs() -> bool {
    static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JSON.get_or_init(|| crate::settings::word("AGENTRT_LOG_FORMAT") == Some("json"))
}

/// A plugin's log fields as one value: quoted in a text log, so that
/// `fields="request_id=x outcome=ok"` cannot pass for the host's own `request_id` and
/// `outcome`; as it is in a JSON log, whose strings are quoted already.
struct Fields(String);

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match json_logs() {
            true => f.write_str(&self.0),
            false => write!(f, "{:?}", self.0),
        }
    }
}

impl Host for PluginState {
    fn write(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let plugin = self.manifest.name.as_str();
        let message = printable(&message, MAX_MESSAGE_BYTES);
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| format!("{}={}", printable(k, 64), printable(v, 256)))
            .collect();
        let fields = Fields(fields.join(" "));
        match self.log_budget.admit(message.len() + fields.0.len()) {
            Admitted::Yes => {}
            Admitted::FirstDropped => {
                tracing::warn!(
                    plugin,
                    "plugin logged more than {MAX_LINES_PER_CALL} lines or {} KiB in one call; \
                     dropping the rest",
                    MAX_BYTES_PER_CALL >> 10
                );
                return;
            }
            Admitted::Dropped => return,
        }
        match level {
            Level::Trace => tracing::trace!(plugin, fields = %fields, "{message}"),
            Level::Debug => tracing::debug!(plugin, fields = %fields, "{message}"),
            Level::Info => tracing::info!(plugin, fields = %fields, "{message}"),
            Level::Warn => tracing::warn!(plugin, fields = %fields, "{message}"),
            Level::Error => tracing::error!(plugin, fields = %fields, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_logs_at_most_its_lines_and_bytes_and_is_told_once() {
        let mut budget = LogBudget::default();
        for _ in 0..MAX_LINES_PER_CALL {
            assert_eq!(budget.admit(10), Admitted::Yes);
        }
        assert_eq!(budget.admit(10), Admitted::FirstDropped);
        assert_eq!(budget.admit(10), Admitted::Dropped);

        let mut budget = LogBudget::default();
        let line = MAX_MESSAGE_BYTES + 16 * (64 + 256);
        let fitting = MAX_BYTES_PER_CALL / line;
        for _ in 0..fitting {
            assert_eq!(budget.admit(line), Admitted::Yes);
        }
        assert_eq!(budget.admit(line), Admitted::FirstDropped);
        // Nothing more once dropping started, even a line that would fit.
        assert_eq!(budget.admit(1), Admitted::Dropped);
    }
}
