//! One task through the agents: generate → quality checks → review, with the error handler
//! deciding what happens after any failure (retry with feedback, fall back, or abort).
//!
//! Plugin calls are blocking (each runs in its own wasmtime store); callers on an async runtime
//! run pipeline methods on a blocking thread. Every stage is reported with its plugin, attempt,
//! duration, tokens and outcome, and recorded in [`Stats`].

pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error_code::ErrorCode;
use crate::plugin::bindings::{
    CodeArtifact, Finding, GenerationRequest, PipelineError, Recovery, ReviewRequest, Stage,
};
use crate::plugin::registry::PluginSet;
use crate::plugin::{CallStats, Plugin, PluginError, PluginHost};
use crate::stats::Stats;
pub use report::{
    ArtifactOut, CheckOutcome, ErrorOut, FindingOut, PipelineOutcome, ReviewOut, StageReport,
};

/// Most retries the pipeline allows per stage, whatever the error handler asks.
pub const MAX_RETRIES: u32 = 2;
/// Longest delay honoured from an error handler's retry plan.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What a pipeline run needs.
#[derive(Debug, Clone)]
pub struct PipelineRequest {
    pub task_description: String,
    pub language: String,
    pub max_retries: u32,
}

/// The agents and their host.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub host: Arc<PluginHost>,
    pub plugins: Arc<PluginSet>,
    pub stats: Arc<Stats>,
}

/// A failed stage, with the reports gathered so far.
#[derive(Debug)]
pub struct StageFailure {
    pub error: ErrorOut,
    pub stages: Vec<StageReport>,
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Generate => "generate",
        Stage::Check => "check",
        Stage::Test => "test",
        Stage::Review => "review",
    }
}

impl Pipeline {
    fn record(
        &self,
        plugin: &Plugin,
        stage: Stage,
        attempt: u32,
        stats: CallStats,
        error: Option<&PluginError>,
    ) -> StageReport {
        let code = error.map(PluginError::code_str);
        self.stats.record_plugin(
            &plugin.manifest.name,
            stats.duration_ms,
            stats.tokens,
            code.as_deref(),
        );
        StageReport {
            stage: stage_name(stage).to_string(),
            plugin: plugin.manifest.name.clone(),
            attempt,
            status: if error.is_some() { "error" } else { "ok" }.to_string(),
            duration_ms: stats.duration_ms,
            tokens: stats.tokens,
            error: error.map(ErrorOut::from_plugin),
        }
    }

    fn to_pipeline_error(e: &PluginError, stage: Stage, attempt: u32) -> PipelineError {
        match e {
            PluginError::Returned { error, .. } => PipelineError {
                stage,
                attempt,
                ..error.clone()
            },
            other => PipelineError {
                code: other.code_str(),
                message: other.to_string(),
                stage,
                attempt,
            },
        }
    }

    /// Ask the error handler what to do; a failing handler means abort.
    fn recover(
        &self,
        error: &PipelineError,
        retries_left: u32,
        stages: &mut Vec<StageReport>,
    ) -> Recovery {
        let handler = &self.plugins.error_handler;
        let (res, stats) = self.host.handle_error(handler, error, retries_left);
        stages.push(self.record(
            handler,
            error.stage,
            error.attempt,
            stats,
            res.as_ref().err(),
        ));
        match res {
            Ok(Recovery::Retry(_)) if retries_left == 0 => {
                Recovery::Abort("no retries left".into())
            }
            Ok(r) => r,
            Err(e) => Recovery::Abort(format!("error handler failed: {e}")),
        }
    }

    /// Generate code and tests, retrying as the error handler decides.
    pub fn generate(
        &self,
        req: &PipelineRequest,
        stages: &mut Vec<StageReport>,
    ) -> Result<CodeArtifact, ErrorOut> {
        let generator = &self.plugins.generator;
        let max_retries = req.max_retries.min(MAX_RETRIES);
        let mut attempt = 1;
        let mut feedback = None;
        loop {
            let request = GenerationRequest {
                task_description: req.task_description.clone(),
                language: req.language.clone(),
                attempt,
                feedback: feedback.take(),
                previous: None,
            };
            let (res, stats) = self.host.generate(generator, &request);
            stages.push(self.record(
                generator,
                Stage::Generate,
                attempt,
                stats,
                res.as_ref().err(),
            ));
            let err = match res {
                Ok(artifact) => return Ok(artifact),
                Err(e) => e,
            };
            let perr = Self::to_pipeline_error(&err, Stage::Generate, attempt);
            match self.recover(&perr, max_retries + 1 - attempt, stages) {
                Recovery::Retry(plan) => {
                    std::thread::sleep(
                        Duration::from_millis(plan.delay_ms.into()).min(MAX_RETRY_DELAY),
                    );
                    feedback = plan.feedback;
                    attempt += 1;
                }
                // Generation has nothing to fall back on: both end the run with the error.
                Recovery::Fallback(_) | Recovery::Abort(_) => {
                    return Err(ErrorOut::from_plugin(&err));
                }
            }
        }
    }

    /// Run every quality check (or those named in `only`) in parallel.
    pub fn check(
        &self,
        artifact: &CodeArtifact,
        only: Option<&[String]>,
        stages: &mut Vec<StageReport>,
    ) -> (Vec<Finding>, Vec<CheckOutcome>) {
        let selected: Vec<&Arc<Plugin>> = self
            .plugins
            .checks
            .iter()
            .filter(|p| only.is_none_or(|names| names.iter().any(|n| *n == p.manifest.name)))
            .collect();
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = selected
                .iter()
                .map(|p| scope.spawn(|| self.host.check(p, artifact)))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut findings = Vec::new();
        let mut outcomes = Vec::new();
        for (plugin, joined) in selected.iter().zip(results) {
            let (res, stats) = match joined {
                Ok(r) => r,
                Err(_) => (
                    Err(PluginError::Trap {
                        plugin: plugin.manifest.name.clone(),
                        message: "host thread panicked".into(),
                    }),
                    CallStats::default(),
                ),
            };
            stages.push(self.record(plugin, Stage::Check, 1, stats, res.as_ref().err()));
            match res {
                Ok(mut f) => {
                    outcomes.push(CheckOutcome {
                        name: plugin.manifest.name.clone(),
                        status: "ok".into(),
                        findings: f.len(),
                        error: None,
                    });
                    findings.append(&mut f);
                }
                Err(e) => {
                    let perr = Self::to_pipeline_error(&e, Stage::Check, 1);
                    // Checks are not retried: the handler decides only whether to go on without it.
                    let decision = self.recover(&perr, 0, stages);
                    let status = match decision {
                        Recovery::Abort(_) => "aborted",
                        _ => "skipped",
                    };
                    outcomes.push(CheckOutcome {
                        name: plugin.manifest.name.clone(),
                        status: status.into(),
                        findings: 0,
                        error: Some(ErrorOut::from_plugin(&e)),
                    });
                }
            }
        }
        findings.sort_by_key(|f| (f.line, f.column));
        (findings, outcomes)
    }

    /// Review an artifact with its findings.
    pub fn review(
        &self,
        artifact: &CodeArtifact,
        findings: &[Finding],
        stages: &mut Vec<StageReport>,
    ) -> Result<ReviewOut, ErrorOut> {
        let reviewer = &self.plugins.reviewer;
        let request = ReviewRequest {
            artifact: artifact.clone(),
            findings: findings.to_vec(),
            test_outcomes: Vec::new(),
        };
        let (res, stats) = self.host.review(reviewer, &request);
        stages.push(self.record(reviewer, Stage::Review, 1, stats, res.as_ref().err()));
        res.map(ReviewOut::from)
            .map_err(|e| ErrorOut::from_plugin(&e))
    }

    /// The whole pipeline for one task.
    pub fn run(&self, req: &PipelineRequest) -> PipelineOutcome {
        let started = Instant::now();
        let mut stages = Vec::new();
        let artifact = match self.generate(req, &mut stages) {
            Ok(a) => a,
            Err(error) => return PipelineOutcome::failed(error, stages, started),
        };
        let (findings, checks) = self.check(&artifact, None, &mut stages);
        if let Some(aborted) = checks.iter().find(|c| c.status == "aborted") {
            let error = aborted
                .error
                .clone()
                .unwrap_or_else(|| ErrorOut::new(ErrorCode::AnalysisFailed, "check aborted"));
            return PipelineOutcome::failed(error, stages, started);
        }
        let review = match self.review(&artifact, &findings, &mut stages) {
            Ok(r) => Some(r),
            Err(error) => {
                let perr = PipelineError {
                    code: error.code.clone(),
                    message: error.message.clone(),
                    stage: Stage::Review,
                    attempt: 1,
                };
                match self.recover(&perr, 0, &mut stages) {
                    Recovery::Fallback(_) => None,
                    _ => return PipelineOutcome::failed(error, stages, started),
                }
            }
        };
        PipelineOutcome::completed(&artifact, findings, checks, review, stages, started)
    }
}
