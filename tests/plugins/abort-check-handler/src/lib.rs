//! Test plugin: an error handler that aborts whenever a quality check fails, and retries every
//! other failure (failed generated tests above all) at once while retries are left, falling
//! back once none are. With `scripted-generator` and `marker-check` it shows what an abort on
//! a regenerated attempt does to the run.

use agentrt_plugin_sdk::{ErrorHandler, PipelineError, Recovery, Stage};

/// The plugin type exported to the host.
pub struct AbortCheckHandler;

impl ErrorHandler for AbortCheckHandler {
    fn handle(error: PipelineError, retries_left: u32) -> Recovery {
        match error.stage {
            Stage::Check => Recovery::abort(format!("a failed check stops it: {}", error.code)),
            _ if retries_left > 0 => Recovery::retry(0, None),
            _ => Recovery::fallback(format!("no retries left: {}", error.code)),
        }
    }
}

agentrt_plugin_sdk::export_plugin!(AbortCheckHandler: error-handler);
