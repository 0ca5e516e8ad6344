//! JSON shapes of pipeline results, converted from the WIT types the plugins return.

use std::time::Instant;

use serde::Serialize;

use crate::error_code::ErrorCode;
use crate::plugin::PluginError;
use crate::plugin::bindings::{CodeArtifact, Finding, Review, Severity, Verdict};
use crate::sandbox::TestReport;

/// The answer to a generation (`POST /generate`, `agentrt generate --json`): the code, its
/// tests, the model the code came from (the last successful generation's: an error handler may
/// have moved it off `default_model`), the tokens spent and each stage.
pub fn generation_answer(
    artifact: &CodeArtifact,
    stages: &[StageReport],
    default_model: &str,
) -> serde_json::Value {
    let tokens: u64 = stages.iter().map(|s| s.tokens).sum();
    let model = stages
        .iter()
        .rev()
        .find(|s| s.stage == "generate" && s.error.is_none())
        .and_then(|s| s.models.last().cloned())
        .unwrap_or_else(|| default_model.to_string());
    serde_json::json!({
        "code": artifact.code,
        "tests": artifact.tests,
        "language": artifact.language,
        "model": model,
        "usage": {"total_tokens": tokens},
        "stages": stages,
    })
}

/// An error as clients see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorOut {
    pub code: String,
    pub message: String,
}

impl ErrorOut {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }

    pub fn from_plugin(e: &PluginError) -> Self {
        let message = match e {
            PluginError::Returned { error, .. } => error.message.clone(),
            other => other.to_string(),
        };
        Self {
            code: e.code_str(),
            message,
        }
    }

    /// The HTTP status for this error's code. Stage errors can carry a code a plugin chose; a
    /// plugin must not make its own failure look like the client's fault (4xx), so client-error
    /// families and unknown codes become 502.
    pub fn http_status(&self) -> u16 {
        match ErrorCode::parse(&self.code) {
            Some(code) if !matches!(code.kind(), "validation_error" | "not_found") => {
                code.http_status()
            }
            _ => 502,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingOut {
    pub rule_id: String,
    pub severity: &'static str,
    pub message: String,
    pub line: u32,
    pub column: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl From<&Finding> for FindingOut {
    fn from(f: &Finding) -> Self {
        Self {
            rule_id: f.rule_id.clone(),
            severity: match f.severity {
                Severity::Info => "info",
                Severity::Warning => "warning",
                Severity::Error => "error",
            },
            message: f.message.clone(),
            line: f.line,
            column: f.column,
            suggestion: f.suggestion.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReviewOut {
    pub verdict: &'static str,
    pub score: f32,
    pub summary: String,
    pub findings: Vec<FindingOut>,
}

impl From<Review> for ReviewOut {
    fn from(r: Review) -> Self {
        Self {
            verdict: match r.verdict {
                Verdict::Approve => "approve",
                Verdict::RequestChanges => "request_changes",
                Verdict::Reject => "reject",
            },
            score: r.score,
            summary: r.summary,
            findings: r.findings.iter().map(FindingOut::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactOut {
    pub language: String,
    pub code: String,
    pub tests: String,
}

impl From<&CodeArtifact> for ArtifactOut {
    fn from(a: &CodeArtifact) -> Self {
        Self {
            language: a.language.clone(),
            code: a.code.clone(),
            tests: a.tests.clone(),
        }
    }
}

/// One plugin call within a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub plugin: String,
    pub attempt: u32,
    pub status: String,
    pub duration_ms: u64,
    pub tokens: u64,
    /// The models the call's `llm` requests ran on (none for stages without a model).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorOut>,
}

/// Outcome of one quality check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub name: String,
    /// `ok`, `skipped` (failed; the pipeline went on without it), `aborted`, or
    /// `not_applicable` (not called: its `describe` names other languages than the code's).
    pub status: String,
    pub findings: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorOut>,
    /// Whether this check's failure is what stopped the run (an `aborted` check can also be one
    /// that failed meanwhile and was never asked about).
    #[serde(skip)]
    pub stopped_run: bool,
}

/// The result of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineOutcome {
    /// `completed`, `failed`, or `cancelled` (the run was cancelled: `error` is `COMM_004`).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    pub findings: Vec<FindingOut>,
    pub checks: Vec<CheckOutcome>,
    /// The generated tests run against the generated code in the Python sandbox (absent when
    /// there were no tests or the sandbox is unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_results: Option<TestReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewOut>,
    pub attempts: u32,
    /// The attempt whose code, checks and tests these are (the best, not always the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_attempt: Option<u32>,
    pub tokens: u64,
    pub duration_ms: u64,
    pub stages: Vec<StageReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorOut>,
}

/// Generation attempts in `stages` (the highest attempt number of a generate stage; 0 if none).
pub(crate) fn attempts(stages: &[StageReport]) -> u32 {
    stages
        .iter()
        .filter(|s| s.stage == "generate")
        .map(|s| s.attempt)
        .max()
        .unwrap_or(0)
}

impl PipelineOutcome {
    pub fn failed(error: ErrorOut, stages: Vec<StageReport>, started: Instant) -> Self {
        Self {
            status: "failed",
            code: None,
            tests: None,
            language: None,
            findings: Vec::new(),
            checks: Vec::new(),
            test_results: None,
            review: None,
            attempts: attempts(&stages),
            chosen_attempt: None,
            tokens: stages.iter().map(|s| s.tokens).sum(),
            duration_ms: started.elapsed().as_millis() as u64,
            stages,
            error: Some(error),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn completed(
        chosen_attempt: u32,
        artifact: &CodeArtifact,
        findings: Vec<Finding>,
        checks: Vec<CheckOutcome>,
        test_results: Option<TestReport>,
        review: Option<ReviewOut>,
        stages: Vec<StageReport>,
        started: Instant,
    ) -> Self {
        Self {
            status: "completed",
            code: Some(artifact.code.clone()),
            tests: Some(artifact.tests.clone()),
            language: Some(artifact.language.clone()),
            findings: findings.iter().map(FindingOut::from).collect(),
            checks,
            test_results,
            review,
            attempts: attempts(&stages),
            chosen_attempt: Some(chosen_attempt),
            tokens: stages.iter().map(|s| s.tokens).sum(),
            duration_ms: started.elapsed().as_millis() as u64,
            stages,
            error: None,
        }
    }
}
