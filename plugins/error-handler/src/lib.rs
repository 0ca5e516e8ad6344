//! The default agentrt error handler: a thin [`ErrorHandler`] over the policy in [`policy`].

use agentrt_plugin_sdk::{ErrorHandler, PipelineError, Recovery, log};

pub mod policy;

/// The plugin type exported to the host.
pub struct DefaultErrorHandler;

impl ErrorHandler for DefaultErrorHandler {
    fn handle(error: PipelineError, retries_left: u32) -> Recovery {
        let recovery = policy::decide(&error, retries_left);
        log::write(
            log::Level::Info,
            "recovery decided",
            &[
                ("code", &error.code),
                ("stage", error.stage.as_str()),
                ("retries_left", &retries_left.to_string()),
                ("recovery", policy::kind(&recovery)),
            ],
        );
        recovery
    }
}

agentrt_plugin_sdk::export_plugin!(DefaultErrorHandler: error-handler);
