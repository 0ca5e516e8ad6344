//! Test plugin: an error handler that answers `retry` (no delay) to every failure, also once the
//! pipeline has no retries left, so a test can count how often the host runs a failed stage
//! again and see what it makes of a retry it cannot grant.

use agentrt_plugin_sdk::{ErrorHandler, PipelineError, Recovery};

/// The plugin type exported to the host.
pub struct RetryHandler;

impl ErrorHandler for RetryHandler {
    fn handle(_error: PipelineError, _retries_left: u32) -> Recovery {
        Recovery::retry(0, None)
    }
}

agentrt_plugin_sdk::export_plugin!(RetryHandler: error-handler);
