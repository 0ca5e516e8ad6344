//! One task through the agents: generate → quality checks → run the generated tests in the
//! Python sandbox → review, with the error handler deciding what happens after any failure
//! (retry with feedback, fall back, or abort; a `model-error-handler` may also move the run to
//! another model, which every later stage's `llm` calls without a model name then use). Failing tests are a failure too: the handler
//! may send the generator back to work with the failures as feedback (as AgentCoder and
//! Self-Debugging do), within the request's retry budget; the best attempt is kept.
//!
//! Plugin calls are blocking (each runs in its own wasmtime store); callers on an async runtime
//! run pipeline methods on a blocking thread. Every stage is reported with its plugin, attempt,
//! duration, tokens and outcome, and recorded in [`Stats`].

pub mod events;
pub mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error_code::ErrorCode;
use crate::plugin::bindings::{
    CodeArtifact, Finding, GenerationRequest, PipelineError, Recovery, Review, ReviewRequest,
    Severity, Stage, TestOutcome, Verdict,
};
use crate::plugin::registry::LivePlugins;
use crate::plugin::{CallContext, CallStats, Plugin, PluginError, PluginHost};
use crate::sandbox::{LazySandbox, TestReport, TestStatus};
use crate::stats::Stats;
pub use events::{EventSink, PipelineEvent, RunContext};
pub use report::{
    ArtifactOut, CheckOutcome, ErrorOut, FindingOut, PipelineOutcome, ReviewOut, StageReport,
};

/// Most retries the pipeline allows per stage, whatever the error handler asks.
pub const MAX_RETRIES: u32 = 2;
/// Most times a failed quality check runs again when the error handler asks (checks are not
/// subject to the run's `max_retries`, which counts generations).
const CHECK_RETRIES: u32 = 2;
/// Longest delay honoured from an error handler's retry plan.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How a failed check ended, after the error handler had its say.
enum CheckFailure {
    /// The pipeline goes on without it.
    Skipped(PluginError),
    /// The run stops with its error.
    Aborted(PluginError),
    /// It failed while another check was stopping the run, so nobody was asked about it: the
    /// run stops, but with the other check's error.
    Unrecovered(PluginError),
    /// The run was cancelled during the check, or while it waited to run again.
    Cancelled(ErrorOut),
}

/// Code of the pipeline error that failing tests raise.
pub const TESTS_FAILED: &str = "TEST_001";
/// Name the sandbox's stage reports carry in place of a plugin.
const SANDBOX_NAME: &str = "python-sandbox";

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
    /// The plugins in use; hot reload may swap them between calls.
    pub plugins: LivePlugins,
    pub stats: Arc<Stats>,
    /// Runs generated tests; `None` leaves them unexecuted.
    pub sandbox: Option<Arc<LazySandbox>>,
    /// Events and cancellation of a tracked run (empty otherwise); see [`Pipeline::tracked`].
    pub run: RunContext,
    /// The names the code and tests run under (a file's own names when the CLI reviews one).
    pub file_names: crate::sandbox::FileNames,
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
    /// This pipeline for one tracked run: its events go to `run.events`, and setting
    /// `run.call.cancel` stops it between stages and inside model calls.
    pub fn tracked(&self, run: RunContext) -> Self {
        Self {
            run,
            // A tracked run keeps the plugins it started with, whatever hot reload does.
            plugins: self.plugins.pinned(),
            ..self.clone()
        }
    }

    fn started(&self, stage: Stage, plugin: &str, attempt: u32) {
        self.run.emit(PipelineEvent::StageStarted {
            stage: stage_name(stage).to_string(),
            plugin: plugin.to_string(),
            attempt,
        });
    }

    /// The error a cancelled run ends with, once it is cancelled.
    fn cancelled(&self) -> Option<ErrorOut> {
        self.run
            .cancelled()
            .then(|| ErrorOut::new(ErrorCode::Cancelled, "the run was cancelled"))
    }

    /// Wait out a retry plan's delay (at most [`MAX_RETRY_DELAY`]), cut short when the run is
    /// cancelled: a cancellation must not wait for a back-off to end.
    fn pause(&self, delay_ms: u32) {
        let until = Instant::now() + Duration::from_millis(delay_ms.into()).min(MAX_RETRY_DELAY);
        while !self.run.cancelled() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// The call context of a stage: the run's, with the model the run was moved to, if any.
    fn call_on(&self, model: &Option<String>) -> CallContext {
        CallContext {
            model: model.clone(),
            ..self.run.call.clone()
        }
    }

    fn record(
        &self,
        plugin: &Plugin,
        stage: Stage,
        attempt: u32,
        stats: CallStats,
        error: Option<&PluginError>,
    ) -> StageReport {
        let code = error.map(PluginError::code_str);
        let status = if error.is_some() { "error" } else { "ok" };
        let shown = error.map(ErrorOut::from_plugin);
        self.finish_stage(
            plugin,
            stage,
            attempt,
            stats,
            code.as_deref(),
            status,
            shown,
        )
    }

    /// Count a stage's call in the plugin's statistics (a failure under `failure_code`),
    /// announce its report and return it.
    #[allow(clippy::too_many_arguments)]
    fn finish_stage(
        &self,
        plugin: &Plugin,
        stage: Stage,
        attempt: u32,
        stats: CallStats,
        failure_code: Option<&str>,
        status: &str,
        error: Option<ErrorOut>,
    ) -> StageReport {
        self.stats.record_plugin(
            &plugin.manifest.name,
            stats.duration_ms,
            stats.tokens,
            failure_code,
        );
        let report = StageReport {
            stage: stage_name(stage).to_string(),
            plugin: plugin.manifest.name.clone(),
            attempt,
            status: status.to_string(),
            duration_ms: stats.duration_ms,
            tokens: stats.tokens,
            models: stats.models,
            error,
        };
        self.run.emit(PipelineEvent::StageFinished {
            report: report.clone(),
        });
        report
    }

    /// Report a stage the run's cancellation cut short: `cancelled`, not what the plugin
    /// answered (its calls counted in its statistics as it ran, not as a failure of it).
    fn record_cancelled(
        &self,
        plugin: &Plugin,
        stage: Stage,
        attempt: u32,
        stats: CallStats,
    ) -> StageReport {
        let cancelled = self.cancelled();
        self.finish_stage(plugin, stage, attempt, stats, None, "cancelled", cancelled)
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

    /// Ask the error handler what to do about a failure of a stage run by `failed` (the plugin
    /// a retry would call again); a failing handler means abort. When the handler moves the
    /// retry to another model, `model` becomes that model for the rest of the run.
    fn recover(
        &self,
        error: &PipelineError,
        retries_left: u32,
        failed: &Plugin,
        model: &mut Option<String>,
        stages: &mut Vec<StageReport>,
    ) -> Recovery {
        let plugins = self.plugins.current();
        let handler = &plugins.error_handler;
        let offered = self.host.model_options(failed, model.as_deref());
        self.started(error.stage, &handler.manifest.name, error.attempt);
        let (res, stats) =
            self.host
                .handle_error(handler, error, retries_left, &offered, &self.run.call);
        stages.push(self.record(
            handler,
            error.stage,
            error.attempt,
            stats,
            res.as_ref().err(),
        ));
        let (decision, switch_to) = match res {
            // A check or review the handler wants run again once too often is done without:
            // a broken check or reviewer must not sink a run whose code is there, by running
            // out of retries.
            Ok(d) if matches!(d.recovery, Recovery::Retry(_)) && retries_left == 0 => {
                let why = "no retries left".to_string();
                let recovery = if matches!(error.stage, Stage::Check | Stage::Review) {
                    Recovery::Fallback(why)
                } else {
                    Recovery::Abort(why)
                };
                (recovery, None)
            }
            Ok(d) => (d.recovery, d.model),
            Err(e) => (Recovery::Abort(format!("error handler failed: {e}")), None),
        };
        let switched = switch_to.filter(|to| offered.iter().any(|m| m.id == *to && !m.current));
        if let Some(to) = &switched {
            tracing::info!(
                stage = stage_name(error.stage),
                code = %error.code,
                model = %to,
                "the error handler moved the run to another model"
            );
            *model = switched.clone();
        }
        if let Recovery::Fallback(why) | Recovery::Abort(why) = &decision {
            let kind = match decision {
                Recovery::Fallback(_) => "fallback",
                _ => "abort",
            };
            tracing::info!(
                stage = stage_name(error.stage),
                attempt = error.attempt,
                code = %error.code,
                decision = kind,
                reason = %why,
                "the error handler decided not to retry"
            );
            self.run.emit(PipelineEvent::Recovery {
                stage: stage_name(error.stage).to_string(),
                attempt: error.attempt,
                decision: kind.to_string(),
                code: error.code.clone(),
                reason: why.clone(),
            });
        }
        if matches!(decision, Recovery::Retry(_)) {
            crate::metrics::global()
                .pipeline_retries
                .get_or_create(&crate::metrics::RetryLabels {
                    stage: stage_name(error.stage).to_string(),
                    reason: crate::metrics::retry_reason(&error.code),
                })
                .inc();
            self.run.emit(PipelineEvent::Retry {
                stage: stage_name(error.stage).to_string(),
                attempt: error.attempt,
                reason: format!("{}: {}", error.code, error.message),
                model: switched,
            });
        }
        decision
    }

    /// Generate code and tests, retrying as the error handler decides.
    pub fn generate(
        &self,
        req: &PipelineRequest,
        stages: &mut Vec<StageReport>,
    ) -> Result<CodeArtifact, ErrorOut> {
        self.generate_attempt(req, 1, None, None, &mut None, stages)
    }

    /// Generation from `first_attempt` on, with feedback on (and the code of) an earlier one,
    /// on `model` (`None`: the host's default) unless the error handler moves it.
    fn generate_attempt(
        &self,
        req: &PipelineRequest,
        first_attempt: u32,
        mut feedback: Option<String>,
        previous: Option<CodeArtifact>,
        model: &mut Option<String>,
        stages: &mut Vec<StageReport>,
    ) -> Result<CodeArtifact, ErrorOut> {
        let plugins = self.plugins.current();
        let generator = &plugins.generator;
        let max_retries = req.max_retries.min(MAX_RETRIES);
        let mut attempt = first_attempt;
        // What the attempt before this generation got wrong (its failing tests) stays with
        // every retry of it: a regeneration that fails for its own reasons adds to it.
        let earlier = feedback.clone();
        loop {
            if let Some(cancelled) = self.cancelled() {
                return Err(cancelled);
            }
            let request = GenerationRequest {
                task_description: req.task_description.clone(),
                language: req.language.clone(),
                attempt,
                feedback: feedback.take(),
                previous: previous.clone(),
            };
            self.started(Stage::Generate, &generator.manifest.name, attempt);
            let (res, stats) = self
                .host
                .generate(generator, &request, &self.call_on(model));
            // A call during which the run was cancelled is the cancellation, whatever the
            // plugin made of it (a generator whose model call was cancelled while it wrote the
            // tests answers with code and no tests): no handler is asked, no retry counted.
            if let Some(cancelled) = self.cancelled() {
                stages.push(self.record_cancelled(generator, Stage::Generate, attempt, stats));
                return Err(cancelled);
            }
            stages.push(self.record(
                generator,
                Stage::Generate,
                attempt,
                stats,
                res.as_ref().err(),
            ));
            let err = match res {
                Ok(artifact) => return Ok(Self::labelled(artifact, &req.language)),
                Err(e) => e,
            };
            let perr = Self::to_pipeline_error(&err, Stage::Generate, attempt);
            let retries_left = (max_retries + 1).saturating_sub(attempt);
            match self.recover(&perr, retries_left, generator, model, stages) {
                Recovery::Retry(plan) => {
                    self.pause(plan.delay_ms);
                    feedback = combined_feedback(earlier.as_deref(), plan.feedback);
                    attempt += 1;
                }
                // Generation has nothing to fall back on: both end the run with the error.
                Recovery::Fallback(_) | Recovery::Abort(_) => {
                    return Err(ErrorOut::from_plugin(&err));
                }
            }
        }
    }

    /// A generator's answer with its language by its canonical name, so that checks and the
    /// test stage recognise an alias (`py`); an answer that names none is in the language asked.
    fn labelled(mut artifact: CodeArtifact, asked: &str) -> CodeArtifact {
        let language = crate::language::canonical(&artifact.language);
        artifact.language = if language.is_empty() {
            crate::language::canonical(asked)
        } else {
            language
        };
        artifact
    }

    /// Run every quality check (or those named in `only`) in parallel.
    pub fn check(
        &self,
        artifact: &CodeArtifact,
        only: Option<&[String]>,
        stages: &mut Vec<StageReport>,
    ) -> (Vec<Finding>, Vec<CheckOutcome>) {
        self.check_attempt(artifact, only, 1, stages)
    }

    /// The quality checks in use, or only those named in `only`.
    pub fn selected_checks(&self, only: Option<&[String]>) -> Vec<Arc<Plugin>> {
        let plugins = self.plugins.current();
        (plugins.checks.iter())
            .filter(|p| only.is_none_or(|names| names.contains(&p.manifest.name)))
            .cloned()
            .collect()
    }

    /// [`Pipeline::check`] of generation attempt `attempt` (how its stages are reported).
    fn check_attempt(
        &self,
        artifact: &CodeArtifact,
        only: Option<&[String]>,
        attempt: u32,
        stages: &mut Vec<StageReport>,
    ) -> (Vec<Finding>, Vec<CheckOutcome>) {
        // A check that names the languages it understands is not called for code in another;
        // it is reported `not_applicable`.
        let (selected, not_applicable): (Vec<Arc<Plugin>>, Vec<Arc<Plugin>>) =
            self.selected_checks(only).into_iter().partition(|p| {
                p.check_scope
                    .as_ref()
                    .is_none_or(|scope| scope.covers(&artifact.language))
            });
        // Each check runs, and is recovered when it fails, on a thread of its own; once one
        // has stopped the run, the others' failures are not recovered.
        let stop = AtomicBool::new(false);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = selected
                .iter()
                .map(|p| {
                    self.started(Stage::Check, &p.manifest.name, attempt);
                    let span = tracing::Span::current();
                    let stop = &stop;
                    scope
                        .spawn(move || span.in_scope(|| self.run_check(p, artifact, attempt, stop)))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut findings = Vec::new();
        let mut outcomes = Vec::new();
        for (plugin, joined) in selected.iter().zip(results) {
            let res = match joined {
                Ok((res, reports)) => {
                    stages.extend(reports);
                    res
                }
                Err(_) => {
                    let e = PluginError::Trap {
                        plugin: plugin.manifest.name.clone(),
                        message: "host thread panicked".into(),
                    };
                    let stats = CallStats::default();
                    stages.push(self.record(plugin, Stage::Check, attempt, stats, Some(&e)));
                    self.recover_check(plugin, artifact, attempt, e, &stop, stages)
                }
            };
            match res {
                Ok(mut f) => {
                    let metrics = crate::metrics::global();
                    for finding in &f {
                        metrics
                            .findings
                            .get_or_create(&crate::metrics::FindingLabels {
                                check: plugin.manifest.name.clone(),
                                severity: FindingOut::from(finding).severity.to_string(),
                            })
                            .inc();
                    }
                    outcomes.push(CheckOutcome {
                        name: plugin.manifest.name.clone(),
                        status: "ok".into(),
                        findings: f.len(),
                        error: None,
                        stopped_run: false,
                    });
                    findings.append(&mut f);
                }
                Err(failure) => {
                    let (status, error, stopped_run) = match failure {
                        CheckFailure::Skipped(e) => ("skipped", ErrorOut::from_plugin(&e), false),
                        CheckFailure::Aborted(e) => ("aborted", ErrorOut::from_plugin(&e), true),
                        CheckFailure::Unrecovered(e) => {
                            ("aborted", ErrorOut::from_plugin(&e), false)
                        }
                        CheckFailure::Cancelled(e) => ("aborted", e, true),
                    };
                    outcomes.push(CheckOutcome {
                        name: plugin.manifest.name.clone(),
                        status: status.into(),
                        findings: 0,
                        error: Some(error),
                        stopped_run,
                    });
                }
            }
        }
        outcomes.extend(not_applicable.iter().map(|p| CheckOutcome {
            name: p.manifest.name.clone(),
            status: "not_applicable".into(),
            findings: 0,
            error: None,
            stopped_run: false,
        }));
        findings.sort_by_key(|f| (f.line, f.column));
        if self.run.events.is_some() {
            self.run.emit(PipelineEvent::Checks {
                attempt: report::attempts(stages).max(1),
                code: artifact.code.clone(),
                checks: outcomes.clone(),
                findings: findings.iter().map(FindingOut::from).collect(),
            });
        }
        (findings, outcomes)
    }

    /// One check of `artifact`, recovered as the error handler decides when it fails: its
    /// findings or how it ended, with the stage reports of every call it took.
    fn run_check(
        &self,
        plugin: &Arc<Plugin>,
        artifact: &CodeArtifact,
        attempt: u32,
        stop: &AtomicBool,
    ) -> (Result<Vec<Finding>, CheckFailure>, Vec<StageReport>) {
        let mut reports = Vec::new();
        let (res, stats) = self.host.check(plugin, artifact, &self.run.call);
        // A call the run's cancellation stopped is not a failure of the check.
        if let Some(cancelled) = self.cancelled() {
            reports.push(self.record_cancelled(plugin, Stage::Check, attempt, stats));
            return (Err(CheckFailure::Cancelled(cancelled)), reports);
        }
        reports.push(self.record(plugin, Stage::Check, attempt, stats, res.as_ref().err()));
        let res = match res {
            Ok(findings) => Ok(findings),
            Err(e) => self.recover_check(plugin, artifact, attempt, e, stop, &mut reports),
        };
        (res, reports)
    }

    /// What becomes of a failed check: the error handler may run it again (up to
    /// `CHECK_RETRIES` times, after the plan's delay), let the pipeline go on without it, or
    /// stop the run. Its findings when a retry succeeds. Runs on the check's own thread, so
    /// failed checks are recovered side by side; `stop` is set when this one ends the run.
    fn recover_check(
        &self,
        plugin: &Arc<Plugin>,
        artifact: &CodeArtifact,
        attempt: u32,
        mut error: PluginError,
        stop: &AtomicBool,
        stages: &mut Vec<StageReport>,
    ) -> Result<Vec<Finding>, CheckFailure> {
        // The run ends: the other checks' failures need no recovery.
        let stopping = |failure: CheckFailure| {
            stop.store(true, Ordering::Relaxed);
            Err(failure)
        };
        let mut retries_left = CHECK_RETRIES;
        loop {
            if let Some(cancelled) = self.cancelled() {
                return stopping(CheckFailure::Cancelled(cancelled));
            }
            // Another check has stopped the run: no need to ask about this one.
            if stop.load(Ordering::Relaxed) {
                return Err(CheckFailure::Unrecovered(error));
            }
            let perr = Self::to_pipeline_error(&error, Stage::Check, attempt);
            match self.recover(&perr, retries_left, plugin, &mut None, stages) {
                Recovery::Fallback(_) => return Err(CheckFailure::Skipped(error)),
                Recovery::Abort(_) => return stopping(CheckFailure::Aborted(error)),
                Recovery::Retry(plan) => {
                    self.pause(plan.delay_ms);
                    if let Some(cancelled) = self.cancelled() {
                        return stopping(CheckFailure::Cancelled(cancelled));
                    }
                    retries_left -= 1;
                    self.started(Stage::Check, &plugin.manifest.name, attempt);
                    let (res, stats) = self.host.check(plugin, artifact, &self.run.call);
                    stages.push(self.record(
                        plugin,
                        Stage::Check,
                        attempt,
                        stats,
                        res.as_ref().err(),
                    ));
                    match res {
                        Ok(findings) => return Ok(findings),
                        Err(e) => error = e,
                    }
                }
            }
        }
    }

    /// Review an artifact with its findings.
    pub fn review(
        &self,
        artifact: &CodeArtifact,
        findings: &[Finding],
        tests: Option<&TestReport>,
        stages: &mut Vec<StageReport>,
    ) -> Result<ReviewOut, ErrorOut> {
        self.review_attempt(artifact, findings, tests, 1, &None, stages)
    }

    /// One review, numbered `attempt`, on `model` (`None`: the host's default).
    fn review_attempt(
        &self,
        artifact: &CodeArtifact,
        findings: &[Finding],
        tests: Option<&TestReport>,
        attempt: u32,
        model: &Option<String>,
        stages: &mut Vec<StageReport>,
    ) -> Result<ReviewOut, ErrorOut> {
        let plugins = self.plugins.current();
        let reviewer = &plugins.reviewer;
        let request = ReviewRequest {
            artifact: artifact.clone(),
            findings: findings.to_vec(),
            test_outcomes: tests.map(test_outcomes).unwrap_or_default(),
        };
        self.started(Stage::Review, &reviewer.manifest.name, attempt);
        let (res, stats) = self.host.review(reviewer, &request, &self.call_on(model));
        // A review made while the run was being cancelled (a reviewer may answer a cancelled
        // model call with one of its own) is not shown as the run's review, nor counted as a
        // failure of the reviewer.
        if let Some(cancelled) = self.cancelled() {
            stages.push(self.record_cancelled(reviewer, Stage::Review, attempt, stats));
            return Err(cancelled);
        }
        stages.push(self.record(reviewer, Stage::Review, attempt, stats, res.as_ref().err()));
        let review = res
            .map(|review| ReviewOut::from(held_to_the_contract(review, findings)))
            .map_err(|e| ErrorOut::from_plugin(&e))?;
        self.run.emit(PipelineEvent::Review {
            review: review.clone(),
        });
        Ok(review)
    }

    /// Run the artifact's tests in the sandbox (when there are tests, Python, and a sandbox).
    pub fn test(
        &self,
        artifact: &CodeArtifact,
        attempt: u32,
        stages: &mut Vec<StageReport>,
    ) -> Option<TestReport> {
        let sandbox = self.sandbox.as_ref()?;
        if artifact.tests.trim().is_empty()
            || crate::language::canonical(&artifact.language) != crate::language::PYTHON
            || self.run.cancelled()
        {
            return None;
        }
        // The stage starts once there is an interpreter to run it: a stage that starts must
        // finish in the event stream.
        let sandbox = match sandbox.get() {
            Ok(sandbox) => sandbox,
            Err(why) => {
                tracing::warn!("generated tests not run: {why}");
                return None;
            }
        };
        self.started(Stage::Test, SANDBOX_NAME, attempt);
        let started = Instant::now();
        let report = sandbox.run_tests_until(
            &artifact.code,
            &artifact.tests,
            &self.file_names,
            crate::sandbox::Until {
                deadline: None,
                cancel: self.run.call.cancel.as_deref(),
            },
        );
        let duration_ms = started.elapsed().as_millis() as u64;
        if self.run.cancelled() {
            // Stopped by the cancellation, not failed: not counted against the code.
            let error = self.cancelled();
            self.test_stage(attempt, "cancelled", duration_ms, error, stages);
            return None;
        }
        let failed = !report.all_passed();
        let timeouts = report
            .results
            .iter()
            .filter(|r| r.status == TestStatus::Timeout)
            .count();
        if timeouts > 0 {
            crate::metrics::global()
                .sandbox_timeouts
                .get_or_create(&crate::metrics::TimeoutLabels {
                    sandbox: "test".into(),
                })
                .inc_by(timeouts as u64);
        }
        self.stats
            .record_plugin(SANDBOX_NAME, duration_ms, 0, failed.then_some(TESTS_FAILED));
        let status = if failed { "failed" } else { "ok" };
        self.test_stage(attempt, status, duration_ms, None, stages);
        self.run.emit(PipelineEvent::Tests {
            attempt,
            report: report.clone(),
        });
        Some(report)
    }

    /// The sandbox's report of a test stage, announced and kept.
    fn test_stage(
        &self,
        attempt: u32,
        status: &str,
        duration_ms: u64,
        error: Option<ErrorOut>,
        stages: &mut Vec<StageReport>,
    ) {
        let report = StageReport {
            stage: stage_name(Stage::Test).to_string(),
            plugin: SANDBOX_NAME.to_string(),
            attempt,
            status: status.to_string(),
            duration_ms,
            tokens: 0,
            models: Vec::new(),
            error,
        };
        self.run.emit(PipelineEvent::StageFinished {
            report: report.clone(),
        });
        stages.push(report);
    }

    /// The whole pipeline for one task.
    pub fn run(&self, req: &PipelineRequest) -> PipelineOutcome {
        let mut outcome = self.run_stages(req);
        // A cancellation that landed while a handler or plugin was deciding what to make of a
        // failure is still the reason the run ended.
        if let (Some(error), Some(cancelled)) = (outcome.error.as_mut(), self.cancelled()) {
            *error = cancelled;
        }
        let label = match &outcome.error {
            None => "completed",
            Some(e) if e.code == ErrorCode::Cancelled.as_str() => "cancelled",
            Some(_) => "failed",
        };
        crate::metrics::count_pipeline_run(label);
        outcome.status = label;
        outcome
    }

    fn run_stages(&self, req: &PipelineRequest) -> PipelineOutcome {
        let started = Instant::now();
        let mut stages = Vec::new();
        // The model the error handler moved the run to, kept for every later stage.
        let mut model: Option<String> = None;
        let mut artifact = match self.generate_attempt(req, 1, None, None, &mut model, &mut stages)
        {
            Ok(a) => a,
            Err(error) => return PipelineOutcome::failed(error, stages, started),
        };
        let max_retries = req.max_retries.min(MAX_RETRIES);
        let mut best: Option<Attempt> = None;
        loop {
            if let Some(cancelled) = self.cancelled() {
                return PipelineOutcome::failed(cancelled, stages, started);
            }
            let attempt = report::attempts(&stages).max(1);
            if self.run.events.is_some() {
                self.run.emit(PipelineEvent::Generated {
                    attempt,
                    language: artifact.language.clone(),
                    code: artifact.code.clone(),
                    tests: artifact.tests.clone(),
                });
            }
            let (findings, checks) = self.check_attempt(&artifact, None, attempt, &mut stages);
            // The run's error is the one of the check that stopped it, not of another that
            // failed meanwhile and was not asked about.
            let aborted = checks
                .iter()
                .find(|c| c.stopped_run)
                .or_else(|| checks.iter().find(|c| c.status == "aborted"));
            if let Some(aborted) = aborted {
                let error = aborted
                    .error
                    .clone()
                    .unwrap_or_else(|| ErrorOut::new(ErrorCode::AnalysisFailed, "check aborted"));
                // On a retry, an abort ends the retries, not the run: the best attempt so far
                // was checked and tested, and is reviewed (a cancellation is caught below).
                if best.is_none() || error.code == ErrorCode::Cancelled.as_str() {
                    return PipelineOutcome::failed(error, stages, started);
                }
                tracing::info!(
                    attempt,
                    code = %error.code,
                    "a check stopped this attempt; the best earlier attempt stands"
                );
                break;
            }
            let tests = self.test(&artifact, attempt, &mut stages);
            if let Some(cancelled) = self.cancelled() {
                return PipelineOutcome::failed(cancelled, stages, started);
            }
            if best.as_ref().is_none_or(|b| outranks(&tests, &b.tests)) {
                best = Some(Attempt {
                    number: attempt,
                    artifact: artifact.clone(),
                    findings,
                    checks,
                    tests: tests.clone(),
                });
            }
            let Some(report) = tests.filter(|r| !r.all_passed()) else {
                break;
            };
            let failure = PipelineError {
                code: TESTS_FAILED.to_string(),
                message: failure_summary(&report),
                stage: Stage::Test,
                attempt,
            };
            let generator = self.plugins.current().generator.clone();
            let Recovery::Retry(plan) = self.recover(
                &failure,
                (max_retries + 1).saturating_sub(attempt),
                &generator,
                &mut model,
                &mut stages,
            ) else {
                break;
            };
            self.pause(plan.delay_ms);
            // The handler was given the failures (the error's message), and its feedback is
            // what the generator gets: the default one quotes them, cut to what a small model
            // keeps in view.
            let feedback = plan.feedback.unwrap_or(failure.message);
            match self.generate_attempt(
                req,
                attempt + 1,
                Some(feedback),
                Some(artifact),
                &mut model,
                &mut stages,
            ) {
                Ok(next) => artifact = next,
                // A failed regeneration leaves the best attempt standing.
                Err(_) => break,
            }
        }
        let Some(Attempt {
            number,
            artifact,
            findings,
            checks,
            tests,
        }) = best
        else {
            return PipelineOutcome::failed(
                ErrorOut::new(ErrorCode::Internal, "no attempt to report"),
                stages,
                started,
            );
        };
        if let Some(cancelled) = self.cancelled() {
            return PipelineOutcome::failed(cancelled, stages, started);
        }
        self.run.emit(PipelineEvent::Chosen { attempt: number });
        let mut review_attempt = 1;
        let review = loop {
            if let Some(cancelled) = self.cancelled() {
                return PipelineOutcome::failed(cancelled, stages, started);
            }
            let error = match self.review_attempt(
                &artifact,
                &findings,
                tests.as_ref(),
                review_attempt,
                &model,
                &mut stages,
            ) {
                Ok(r) => break Some(r),
                Err(error) => error,
            };
            if let Some(cancelled) = self.cancelled() {
                return PipelineOutcome::failed(cancelled, stages, started);
            }
            let perr = PipelineError {
                code: error.code.clone(),
                message: error.message.clone(),
                stage: Stage::Review,
                attempt: review_attempt,
            };
            let reviewer = self.plugins.current().reviewer.clone();
            let retries_left = (max_retries + 1).saturating_sub(review_attempt);
            match self.recover(&perr, retries_left, &reviewer, &mut model, &mut stages) {
                Recovery::Retry(plan) => {
                    self.pause(plan.delay_ms);
                    review_attempt += 1;
                }
                Recovery::Fallback(_) => break None,
                Recovery::Abort(_) => return PipelineOutcome::failed(error, stages, started),
            }
        };
        // A reviewer may answer a cancelled model call with a review of its own (the default
        // one does): the run was still cancelled, and is not stored as completed.
        if let Some(cancelled) = self.cancelled() {
            return PipelineOutcome::failed(cancelled, stages, started);
        }
        PipelineOutcome::completed(
            number, &artifact, findings, checks, tests, review, stages, started,
        )
    }
}

/// A review as the WIT's one rule on verdicts has it, which the host holds every reviewer to:
/// code with an error finding is not approved. A reviewer (a third party's, say) that leaves out
/// the checks' error findings has them put back in its findings; one that approves code with an
/// error finding (the checks' or its own) requests changes instead, and its summary says why.
/// The score stays the reviewer's: how good the code is otherwise.
fn held_to_the_contract(mut review: Review, checks_found: &[Finding]) -> Review {
    let is_error = |f: &Finding| matches!(f.severity, Severity::Error);
    let same = |a: &Finding, b: &Finding| {
        (&a.rule_id, a.line, a.column, &a.message) == (&b.rule_id, b.line, b.column, &b.message)
    };
    let left_out: Vec<Finding> = checks_found
        .iter()
        .filter(|f| is_error(f) && !review.findings.iter().any(|r| same(r, f)))
        .cloned()
        .collect();
    // Counted before the cap: a review padded to the most findings it may hold still cannot
    // approve code that failed its checks.
    let errors = review.findings.iter().filter(|f| is_error(f)).count() + left_out.len();
    // Put back within what a review may hold, as the reviewer's own findings are.
    let room = crate::plugin::output::MAX_FINDINGS.saturating_sub(review.findings.len());
    review.findings.extend(left_out.into_iter().take(room));
    if matches!(review.verdict, Verdict::Approve) && errors > 0 {
        review.verdict = Verdict::RequestChanges;
        let note = format!(
            "[agentrt: the reviewer approved code with {errors} error finding(s); code with an \
             error finding is not approved]"
        );
        // The note first, so that a summary cut to its cap still says it.
        review.summary = match review.summary.trim().is_empty() {
            true => note,
            false => format!("{note} {}", review.summary),
        };
        crate::plugin::output::clip(&mut review.summary, crate::plugin::output::MAX_TEXT_BYTES);
    }
    review
}

/// Version of how a run picks the attempt it keeps ([`outranks`]); `agentrt eval` does not mix
/// results of one with another's (2: ties to the earlier attempt).
pub const ATTEMPT_SELECTION_VERSION: u32 = 2;

/// Whether a later attempt's tests make it better than the best earlier one, which it then
/// replaces: every test passing first, then code whose tests ran at all (code that did not
/// even load ranks below code that failed every test), then the share that passed, then how
/// many (each attempt brings its own tests, so raw counts of different test sets do not
/// compare). Ties go to the earlier attempt: a retry is written to satisfy the failing tests,
/// and those are often wrong themselves (a small model's expected values); a retry no better
/// by its own tests is no reason to give up code the model wrote from the task alone. Measured
/// with `agentrt eval --max-retries 2` on HumanEval: with ties to the later attempt, runs let
/// right code go for later wrong code (docs/BENCHMARKS.md).
fn outranks(later: &Option<TestReport>, earlier: &Option<TestReport>) -> bool {
    test_rank(later) > test_rank(earlier)
}

/// An attempt's place in the ranking [`outranks`] uses.
fn test_rank(tests: &Option<TestReport>) -> (bool, bool, u64, usize) {
    match tests {
        Some(t) if !t.results.is_empty() && t.setup_error.is_none() => (
            t.all_passed(),
            true,
            t.passed() as u64 * 1_000_000 / t.results.len() as u64,
            t.passed(),
        ),
        _ => (false, false, 0, 0),
    }
}

/// One generation attempt with what the later stages found; the pipeline keeps the best.
struct Attempt {
    /// Its generation attempt's number.
    number: u32,
    artifact: CodeArtifact,
    findings: Vec<Finding>,
    checks: Vec<CheckOutcome>,
    tests: Option<TestReport>,
}

/// The reviewer's view of a test report.
fn test_outcomes(report: &TestReport) -> Vec<TestOutcome> {
    let mut outcomes: Vec<TestOutcome> = report
        .results
        .iter()
        .map(|r| TestOutcome {
            name: r.name.clone(),
            passed: r.status == TestStatus::Passed,
            message: match r.status {
                TestStatus::Timeout => format!("timeout: {}", r.message),
                _ => r.message.clone(),
            },
        })
        .collect();
    if let Some(setup) = &report.setup_error {
        outcomes.push(TestOutcome {
            name: "(loading the code and tests)".into(),
            passed: false,
            message: setup.clone(),
        });
    }
    outcomes
}

/// Feedback for a retried generation: what the attempt before it got wrong, then what went wrong
/// with the retry itself.
fn combined_feedback(earlier: Option<&str>, retry: Option<String>) -> Option<String> {
    match (earlier, retry) {
        (Some(earlier), Some(retry)) if retry != earlier => Some(format!("{earlier}\n\n{retry}")),
        (earlier, retry) => retry.or_else(|| earlier.map(str::to_string)),
    }
}

/// The failures of a test report, as feedback for the generator.
fn failure_summary(report: &TestReport) -> String {
    let mut lines: Vec<String> = report
        .setup_error
        .iter()
        .map(|e| format!("the code or tests did not load: {e}"))
        .collect();
    lines.extend(
        report
            .failures()
            .map(|r| format!("{} ({:?}): {}", r.name, r.status, r.message)),
    );
    // Code or tests that never loaded ran no tests: say that, not "0 of 0 tests failed".
    if report.results.is_empty() {
        return lines.join("; ");
    }
    format!(
        "{} of {} tests failed: {}",
        report.results.len() - report.passed(),
        report.results.len(),
        lines.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{TestResult, TestStatus};

    fn finding(rule: &str, severity: Severity) -> Finding {
        Finding {
            rule_id: rule.into(),
            severity,
            message: format!("{rule} here"),
            line: 3,
            column: 1,
            suggestion: None,
        }
    }

    fn review(verdict: Verdict, findings: Vec<Finding>) -> Review {
        Review {
            verdict,
            score: 9.0,
            summary: "looks fine".into(),
            findings,
        }
    }

    #[test]
    fn no_reviewer_approves_code_with_an_error_finding() {
        let checks = [
            finding("dangerous-call", Severity::Error),
            finding("print-call", Severity::Warning),
        ];
        // The checks' error finding left out and the code approved: put back, not approved.
        let held = held_to_the_contract(review(Verdict::Approve, vec![]), &checks);
        assert!(matches!(held.verdict, Verdict::RequestChanges));
        let rules: Vec<&str> = held.findings.iter().map(|f| f.rule_id.as_str()).collect();
        assert_eq!(rules, ["dangerous-call"]);
        assert!(
            held.summary
                .starts_with("[agentrt: the reviewer approved code with 1")
                && held.summary.ends_with("] looks fine"),
            "{}",
            held.summary
        );
        // Its own error finding counts too; a finding it kept is not added twice.
        let own = vec![finding("x", Severity::Error), checks[0].clone()];
        let held = held_to_the_contract(review(Verdict::Approve, own), &checks);
        assert!(matches!(held.verdict, Verdict::RequestChanges));
        assert_eq!(held.findings.len(), 2);
        // A review already holding the most findings it may: no room to put them back, still
        // not approved.
        let padded = vec![finding("info", Severity::Info); crate::plugin::output::MAX_FINDINGS];
        let held = held_to_the_contract(review(Verdict::Approve, padded), &checks);
        assert!(matches!(held.verdict, Verdict::RequestChanges));
        assert_eq!(held.findings.len(), crate::plugin::output::MAX_FINDINGS);
        // Warnings alone may be approved; a rejection stays one.
        let held = held_to_the_contract(review(Verdict::Approve, vec![]), &checks[1..]);
        assert!(matches!(held.verdict, Verdict::Approve));
        assert_eq!(held.summary, "looks fine");
        let held = held_to_the_contract(review(Verdict::Reject, vec![]), &checks);
        assert!(matches!(held.verdict, Verdict::Reject));
        assert_eq!(held.summary, "looks fine");
    }

    fn report(passed: usize, failed: usize) -> Option<TestReport> {
        let result = |i, status| TestResult {
            name: format!("test_{i}"),
            status,
            message: String::new(),
        };
        let mut results: Vec<_> = (0..passed).map(|i| result(i, TestStatus::Passed)).collect();
        results.extend((0..failed).map(|i| result(passed + i, TestStatus::Failed)));
        Some(TestReport {
            results,
            ..TestReport::default()
        })
    }

    #[test]
    fn feedback_for_code_that_did_not_load_says_so() {
        let broken = TestReport {
            setup_error: Some("SyntaxError at solution.py:1".into()),
            ..TestReport::default()
        };
        assert_eq!(
            failure_summary(&broken),
            "the code or tests did not load: SyntaxError at solution.py:1"
        );
        let Some(mut partly) = report(1, 1) else {
            unreachable!()
        };
        partly.results[1].message = "assert 1 == 2".into();
        assert_eq!(
            failure_summary(&partly),
            "1 of 2 tests failed: test_1 (Failed): assert 1 == 2"
        );
    }

    #[test]
    fn a_generators_language_label_becomes_the_languages_name() {
        let artifact = |language: &str| CodeArtifact {
            language: language.into(),
            code: String::new(),
            tests: String::new(),
        };
        assert_eq!(
            Pipeline::labelled(artifact("Py"), "python").language,
            "python"
        );
        assert_eq!(
            Pipeline::labelled(artifact(" "), "python").language,
            "python"
        );
        assert_eq!(
            Pipeline::labelled(artifact("js"), "python").language,
            "javascript"
        );
    }

    #[test]
    fn a_retried_regeneration_keeps_the_failing_tests_in_its_feedback() {
        let tests = "1 of 2 tests failed: test_sum (Failed): assert -1 == 3";
        let no_block = "Answer with one ```python code block".to_string();
        assert_eq!(
            combined_feedback(Some(tests), Some(no_block.clone())),
            Some(format!("{tests}\n\n{no_block}"))
        );
        assert_eq!(combined_feedback(Some(tests), None).as_deref(), Some(tests));
        assert_eq!(
            combined_feedback(None, Some(no_block.clone())),
            Some(no_block)
        );
        assert_eq!(
            combined_feedback(Some(tests), Some(tests.into())).as_deref(),
            Some(tests)
        );
        assert_eq!(combined_feedback(None, None), None);
    }

    #[test]
    fn an_attempt_whose_tests_all_pass_beats_one_that_passed_more_of_its_own() {
        // Each attempt has its own tests: 2 of 2 beats 3 of 5, and 3 of 4 beats 3 of 5.
        assert!(test_rank(&report(2, 0)) > test_rank(&report(3, 2)));
        assert!(test_rank(&report(3, 1)) > test_rank(&report(3, 2)));
        assert!(test_rank(&report(4, 1)) > test_rank(&report(1, 1)));
        // No tests, or none that ran, rank last.
        assert!(test_rank(&report(0, 1)) >= test_rank(&None));
        assert_eq!(test_rank(&report(0, 0)), test_rank(&None));
        // Code that loaded and failed every test beats code that never loaded.
        let did_not_load = Some(TestReport {
            setup_error: Some("SyntaxError".into()),
            ..TestReport::default()
        });
        assert!(test_rank(&report(0, 3)) > test_rank(&did_not_load));
    }

    #[test]
    fn a_retry_no_better_by_its_own_tests_does_not_replace_the_earlier_attempt() {
        // Every test failing in both (the model's tests wrong both times): the first stays.
        assert!(!outranks(&report(0, 2), &report(0, 1)));
        assert!(!outranks(&report(1, 1), &report(2, 2)));
        assert!(!outranks(&None, &None));
        // Strictly better replaces it.
        assert!(outranks(&report(2, 0), &report(1, 1)));
        assert!(outranks(&report(0, 1), &None));
    }
}
