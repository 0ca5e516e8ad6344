//! The default agentrt reviewer: the model's opinion plus the facts (quality findings, test
//! outcomes), decided by [`decision`].
//!
//! [`prompt`] builds the question, [`answer`] reads the model's reply. When the model cannot be
//! asked (no grant, quota spent, engine error) the review still comes back, built from the facts
//! alone and saying so in its summary.

use agentrt_plugin_sdk::llm::{self, Sampling};
use agentrt_plugin_sdk::{PipelineError, Review, ReviewRequest, Reviewer, Stage, log};

pub mod answer;
pub mod decision;
pub mod prompt;

/// Most tokens the model may spend on a review.
const MAX_TOKENS: u32 = 128;
/// Low temperature and a fixed seed: the same code gets the same review.
const TEMPERATURE: f32 = 0.2;
const SEED: u64 = 42;

/// The plugin type exported to the host.
pub struct DefaultReviewer;

impl Reviewer for DefaultReviewer {
    fn review(request: ReviewRequest) -> Result<Review, PipelineError> {
        let sampling = Sampling::default()
            .max_tokens(MAX_TOKENS)
            .temperature(TEMPERATURE)
            .seed(SEED);
        let opinion = match llm::chat(&prompt::review_request(&request), sampling) {
            Ok(completion) => Some(answer::parse(&completion.text)),
            Err(error) => {
                log::warn(format!(
                    "reviewing without the model: {} ({})",
                    error.message(),
                    error.code_in(Stage::Review)
                ));
                None
            }
        };
        let review = decision::decide(&request, opinion.as_ref());
        log::write(
            log::Level::Info,
            "reviewed",
            &[
                ("verdict", review.verdict.as_str()),
                ("score", &review.score.to_string()),
            ],
        );
        Ok(review)
    }
}

agentrt_plugin_sdk::export_plugin!(DefaultReviewer: reviewer);
