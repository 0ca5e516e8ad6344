//! The data every role works with, re-exported from the WIT `types` interface and the per-world
//! interfaces, with small constructors so plugins rarely need a struct literal.

pub use crate::__bindings::checking::CheckInfo;
pub use crate::__bindings::generation::GenerationRequest;
pub use crate::__bindings::model_recovering::{ModelOption, ModelRecovery, ModelRetry};
pub use crate::__bindings::recovering::{Recovery, RetryPlan};
pub use crate::__bindings::reviewing::{ReviewRequest, TestOutcome};
pub use crate::__bindings::types::{
    CodeArtifact, Finding, PipelineError, Review, Severity, Stage, Verdict,
};

impl CodeArtifact {
    /// An artifact in `language` (lower case, e.g. `python`).
    pub fn new(
        language: impl Into<String>,
        code: impl Into<String>,
        tests: impl Into<String>,
    ) -> Self {
        Self {
            language: language.into(),
            code: code.into(),
            tests: tests.into(),
        }
    }
}

impl Severity {
    /// The WIT name: `info`, `warning` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl Finding {
    /// A finding about the whole file (line and column 0) with no suggestion; refine it with
    /// [`Finding::at`] and [`Finding::with_suggestion`].
    pub fn new(rule_id: impl Into<String>, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            rule_id: rule_id.into(),
            severity,
            message: message.into(),
            line: 0,
            column: 0,
            suggestion: None,
        }
    }

    /// Place the finding at a 1-based `line` and `column` (0 = unknown).
    pub fn at(mut self, line: u32, column: u32) -> Self {
        self.line = line;
        self.column = column;
        self
    }

    /// Attach a replacement or a hint on how to fix the problem.
    pub fn with_suggestion(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestion = Some(suggestion.into());
        self
    }
}

impl Verdict {
    /// The WIT name: `approve`, `request-changes` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::RequestChanges => "request-changes",
            Verdict::Reject => "reject",
        }
    }
}

impl Stage {
    /// The WIT name: `generate`, `check`, `test` or `review`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Generate => "generate",
            Stage::Check => "check",
            Stage::Test => "test",
            Stage::Review => "review",
        }
    }
}

impl PipelineError {
    /// An error of `stage` with a machine-readable `code` (e.g. `GEN_003`) on attempt 1; set the
    /// attempt with [`PipelineError::on_attempt`] when the plugin knows it.
    pub fn new(code: impl Into<String>, message: impl Into<String>, stage: Stage) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            stage,
            attempt: 1,
        }
    }

    /// The same error, attributed to the 1-based `attempt`.
    pub fn on_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }
}

impl CheckInfo {
    /// Describe a check named `name` that understands `languages` (empty = all) and may report
    /// `rules`.
    pub fn new<L, R>(
        name: impl Into<String>,
        languages: impl IntoIterator<Item = L>,
        rules: impl IntoIterator<Item = R>,
    ) -> Self
    where
        L: Into<String>,
        R: Into<String>,
    {
        Self {
            name: name.into(),
            languages: languages.into_iter().map(Into::into).collect(),
            rules: rules.into_iter().map(Into::into).collect(),
        }
    }
}

impl Recovery {
    /// Run the failed stage again after `delay_ms`, passing `feedback` to it.
    pub fn retry(delay_ms: u32, feedback: Option<String>) -> Self {
        Recovery::Retry(RetryPlan { delay_ms, feedback })
    }

    /// Carry on without the failed stage's result, for the given reason.
    pub fn fallback(reason: impl Into<String>) -> Self {
        Recovery::Fallback(reason.into())
    }

    /// Stop the pipeline with this explanation.
    pub fn abort(reason: impl Into<String>) -> Self {
        Recovery::Abort(reason.into())
    }
}

impl From<Recovery> for ModelRecovery {
    /// The same decision, staying on the current model.
    fn from(recovery: Recovery) -> Self {
        match recovery {
            Recovery::Retry(plan) => ModelRecovery::Retry(plan),
            Recovery::Fallback(reason) => ModelRecovery::Fallback(reason),
            Recovery::Abort(reason) => ModelRecovery::Abort(reason),
        }
    }
}

impl ModelRecovery {
    /// Run the failed stage again on `model` (the `id` of one of the offered models) after
    /// `delay_ms`, passing `feedback` to it.
    pub fn retry_on(model: impl Into<String>, delay_ms: u32, feedback: Option<String>) -> Self {
        ModelRecovery::RetryOn(ModelRetry {
            model: model.into(),
            plan: RetryPlan { delay_ms, feedback },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_from_info_to_error() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Error);
    }

    #[test]
    fn finding_builder_sets_position_and_suggestion() {
        let finding = Finding::new("todo-comment", Severity::Info, "TODO left in code")
            .at(3, 5)
            .with_suggestion("resolve it");
        assert_eq!((finding.line, finding.column), (3, 5));
        assert_eq!(finding.suggestion.as_deref(), Some("resolve it"));
    }

    #[test]
    fn pipeline_error_attempt_is_one_based() {
        let error = PipelineError::new("GEN_003", "no code", Stage::Generate).on_attempt(0);
        assert_eq!(error.attempt, 1);
    }
}
