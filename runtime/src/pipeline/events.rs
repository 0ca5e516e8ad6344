//! What a pipeline run reports while it works: stage starts and ends, generated text, check and
//! test results, retries, the review. A tracked run (`runs`) stores and streams them; an
//! untracked one (the CLI, the seed's `/pipeline`) has no sink and pays nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::report::{CheckOutcome, ErrorOut, FindingOut, ReviewOut, StageReport};
use crate::plugin::CallContext;
use crate::sandbox::TestReport;

/// One event of a run, serialised with its `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PipelineEvent {
    /// A plugin (or the test sandbox) was called.
    StageStarted {
        stage: String,
        plugin: String,
        attempt: u32,
    },
    /// Text the model generated for the stage in progress.
    Tokens { text: String },
    /// A plugin call (or the test run) ended, with its report.
    StageFinished { report: StageReport },
    /// An attempt's code and tests as the generator delivered them, before the checks and the
    /// tests look at them (a client can show every attempt, not only the one chosen).
    Generated {
        attempt: u32,
        language: String,
        code: String,
        tests: String,
    },
    /// Every quality check of an attempt has answered; `code` is what they looked at, so a
    /// client can place the findings on its lines.
    Checks {
        attempt: u32,
        code: String,
        checks: Vec<CheckOutcome>,
        findings: Vec<FindingOut>,
    },
    /// The generated tests ran in the sandbox.
    Tests { attempt: u32, report: TestReport },
    /// The error handler chose to try a stage again; `model` when it moved the run to another
    /// model for this and every later stage.
    Retry {
        stage: String,
        attempt: u32,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// The error handler answered `fallback` or `abort` to a failed stage (or the host did for
    /// it: a `retry` with none left, a handler that failed), with its explanation. What that
    /// does depends on the stage (docs/WIT.md): after failed tests either one ends the retries
    /// and the best attempt goes on; after a failed generation either one ends the run.
    Recovery {
        stage: String,
        attempt: u32,
        decision: String,
        /// The failure's code.
        code: String,
        reason: String,
    },
    /// The attempt whose code, checks and tests go on to review and into the result: the best
    /// one, which is not always the last (sent before the review).
    Chosen { attempt: u32 },
    /// The reviewer's verdict.
    Review { review: ReviewOut },
    /// The run ended: `completed`, `failed` or `cancelled`, with the error when not completed.
    Done {
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorOut>,
    },
}

impl PipelineEvent {
    /// The SSE event name (`type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StageStarted { .. } => "stage_started",
            Self::Tokens { .. } => "tokens",
            Self::StageFinished { .. } => "stage_finished",
            Self::Generated { .. } => "generated",
            Self::Checks { .. } => "checks",
            Self::Tests { .. } => "tests",
            Self::Retry { .. } => "retry",
            Self::Recovery { .. } => "recovery",
            Self::Chosen { .. } => "chosen",
            Self::Review { .. } => "review",
            Self::Done { .. } => "done",
        }
    }
}

/// Receives a run's events, in order, from the thread running it.
pub type EventSink = Arc<dyn Fn(PipelineEvent) + Send + Sync>;

/// A tracked run's side of the pipeline: where events go and what cancels it.
#[derive(Clone, Default)]
pub struct RunContext {
    pub events: Option<EventSink>,
    /// Passed to every plugin call: the cancel flag (which also stops the pipeline between
    /// stages) and the generated-text sink.
    pub call: CallContext,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("events", &self.events.is_some())
            .field("call", &self.call)
            .finish()
    }
}

impl RunContext {
    pub fn emit(&self, event: PipelineEvent) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    pub fn cancelled(&self) -> bool {
        self.call
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}
