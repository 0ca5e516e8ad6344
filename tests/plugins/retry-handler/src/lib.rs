//! Test plugin: an error handler that answers `retry` (no delay) to every failure while the
//! pipeline has retries left, and `fallback` once none are, so a test can count how often the
//! host runs a failed stage again.

use agentrt_plugin_sdk::{ErrorHandler, PipelineError, Recovery};

/// The plugin type exported to the host.
pub struct RetryHandler;

impl ErrorHandler for RetryHandler {
    fn handle(error: PipelineError, retries_left: u32) -> Recovery {
        if retries_left > 0 {
            Recovery::retry(0, None)
        } else {
            Recovery::fallback(format!("giving up after retries: {}", error.code))
        }
    }
}

agentrt_plugin_sdk::export_plugin!(RetryHandler: error-handler);
