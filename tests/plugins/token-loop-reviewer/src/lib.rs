//! Test plugin: a reviewer that calls the model over and over, ignoring how much it has used,
//! until the host refuses. The host must stop it at its `tokens-per-minute` budget with a
//! `quota-exceeded` error; the plugin reports how far it got in its own error, so the test can
//! check that the budget held.

use agentrt_plugin_sdk::llm::{self, Sampling};
use agentrt_plugin_sdk::{PipelineError, Review, ReviewRequest, Reviewer, Stage};

/// The plugin type exported to the host.
pub struct TokenLoopReviewer;

/// More calls than any budget in the tests allows; the host must refuse long before.
const MAX_CALLS: u32 = 10_000;

impl Reviewer for TokenLoopReviewer {
    fn review(_request: ReviewRequest) -> Result<Review, PipelineError> {
        let mut tokens = 0u64;
        for call in 1..=MAX_CALLS {
            let params = Sampling::default().max_tokens(16).temperature(0.0);
            match llm::generate("def add(a, b):", params) {
                Ok(done) => {
                    tokens += u64::from(done.usage.prompt_tokens + done.usage.completion_tokens);
                }
                Err(e) => {
                    return Err(PipelineError::new(
                        e.code(),
                        format!(
                            "stopped after {} calls and {tokens} tokens: {}",
                            call - 1,
                            e.message()
                        ),
                        Stage::Review,
                    ));
                }
            }
        }
        Err(PipelineError::new(
            "REV_001",
            format!("the host never refused: {MAX_CALLS} calls, {tokens} tokens"),
            Stage::Review,
        ))
    }
}

agentrt_plugin_sdk::export_plugin!(TokenLoopReviewer: reviewer);
