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

/// `s` clipped, with control characters (newlines included) blanked so a plugin cannot forge
/// log lines of its own.
fn printable(s: &str, max: usize) -> String {
    clip(s, max)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
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

impl Host for PluginState {
    fn write(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let plugin = self.manifest.name.as_str();
        self.log_lines += 1;
        if self.log_lines > MAX_LINES_PER_CALL {
            if self.log_lines == MAX_LINES_PER_CALL + 1 {
                tracing::warn!(
                    plugin,
                    "plugin logged more than {MAX_LINES_PER_CALL} lines in one call; dropping the rest"
                );
            }
            return;
        }
        let message = printable(&message, MAX_MESSAGE_BYTES);
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| format!("{}={}", printable(k, 64), printable(v, 256)))
            .collect();
        let fields = fields.join(" ");
        match level {
            Level::Trace => tracing::trace!(plugin, %fields, "{message}"),
            Level::Debug => tracing::debug!(plugin, %fields, "{message}"),
            Level::Info => tracing::info!(plugin, %fields, "{message}"),
            Level::Warn => tracing::warn!(plugin, %fields, "{message}"),
            Level::Error => tracing::error!(plugin, %fields, "{message}"),
        }
    }
}
