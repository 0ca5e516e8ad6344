//! Host side of the `log` interface: plugin log lines become tracing events tagged with the
//! plugin's name, capped in size so a plugin cannot flood the host's log.

use super::bindings::log::{Host, Level};
use super::state::PluginState;

/// Longest message kept from one log call.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Most fields kept from one log call.
const MAX_FIELDS: usize = 16;

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
        let message = clip(&message, MAX_MESSAGE_BYTES);
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| format!("{}={}", clip(k, 64), clip(v, 256)))
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
