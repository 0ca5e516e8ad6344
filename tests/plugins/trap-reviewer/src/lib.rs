//! Test plugin: a reviewer that panics on every call. In WebAssembly a panic aborts, so the host
//! sees a trap; it must fail this call only and keep serving others.

use agentrt_plugin_sdk::{PipelineError, Review, ReviewRequest, Reviewer};

/// The plugin type exported to the host.
pub struct TrapReviewer;

impl Reviewer for TrapReviewer {
    fn review(request: ReviewRequest) -> Result<Review, PipelineError> {
        panic!(
            "trap-reviewer panics on purpose (asked to review {} bytes of code)",
            request.artifact.code.len()
        );
    }
}

agentrt_plugin_sdk::export_plugin!(TrapReviewer: reviewer);
