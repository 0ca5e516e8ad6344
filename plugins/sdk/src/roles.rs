//! One trait per plugin role; implement one and export it with [`export_plugin!`].
//!
//! The methods are associated functions, not methods on `self`: the host instantiates a plugin
//! afresh for every call, so there is no state to keep between calls.
//!
//! [`export_plugin!`]: crate::export_plugin

use crate::types::{
    CheckInfo, CodeArtifact, Finding, GenerationRequest, ModelOption, ModelRecovery, PipelineError,
    Recovery, Review, ReviewRequest,
};

/// Writes code and tests for a task (world `generator`; may call [`crate::llm`]).
pub trait Generator {
    /// Produce code and tests for `request.task_description`.
    ///
    /// On a retry `request.attempt` is above 1 and `request.feedback` / `request.previous` say
    /// what was wrong with the last answer. Return an error (e.g. code `GEN_003`) rather than
    /// an artifact with no usable code: the pipeline's error handler decides whether to retry.
    fn generate(request: GenerationRequest) -> Result<CodeArtifact, PipelineError>;
}

/// Reviews code, tests, quality findings and test results (world `reviewer`; may call
/// [`crate::llm`]).
pub trait Reviewer {
    /// Decide on `request.artifact`; the review's findings should include every finding the
    /// decision rests on, so a person can see why.
    fn review(request: ReviewRequest) -> Result<Review, PipelineError>;
}

/// Inspects code without a model (world `quality-check`). Third-party checks run here with
/// nothing granted — no files, no network, no environment — unless their manifest asks for it
/// and the operator grants it; a model is never granted to a check.
pub trait QualityCheck {
    /// The check's name, the languages it understands and the rule ids it may report.
    fn describe() -> CheckInfo;

    /// Findings for `artifact`; an empty list means nothing to report. Return an error only when
    /// the check itself could not run, not when the code is bad.
    fn check(artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError>;
}

/// Decides what the pipeline does after a failure (world `error-handler`).
pub trait ErrorHandler {
    /// Choose a [`Recovery`] for `error`; `retries_left` is how many more retries the pipeline
    /// allows (a retry when it is 0 is treated as an abort).
    fn handle(error: PipelineError, retries_left: u32) -> Recovery;
}

/// An error handler that may also move the failed stage to another model (world
/// `model-error-handler`, since agentrt:plugin 0.1.1); it takes the error-handler role.
pub trait ModelErrorHandler {
    /// Choose a [`ModelRecovery`] for `error`. `models` are the models the failed stage could
    /// run on (empty for quality checks), in the operator's order, the one it used marked
    /// `current`; [`ModelRecovery::RetryOn`] must name one of them. `retries_left` as for
    /// [`ErrorHandler::handle`].
    fn handle(error: PipelineError, retries_left: u32, models: Vec<ModelOption>) -> ModelRecovery;
}
