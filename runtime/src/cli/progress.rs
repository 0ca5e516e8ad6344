//! Progress of a one-off pipeline (`agentrt run`, `agentrt generate`) on standard error: a line
//! per stage started and ended, per retry and for the attempt chosen, each with the time since
//! the start. A run on the CPU takes minutes; without these lines the terminal stays silent
//! until the answer. Standard output keeps only the answer; with `--json` no progress is
//! printed.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use crate::pipeline::{Pipeline, PipelineEvent, RunContext};
use crate::plugin::CallContext;

/// `pipeline`, printing its progress unless the output is JSON (for a program, which reads
/// standard output, and may well take standard error with it).
pub fn shown_unless(json: bool, pipeline: Pipeline) -> Pipeline {
    if json {
        pipeline
    } else {
        pipeline.tracked(on_stderr())
    }
}

/// A run context whose events are printed to standard error as they come.
fn on_stderr() -> RunContext {
    let started = Instant::now();
    RunContext {
        events: Some(Arc::new(move |event| {
            if let Some(line) = describe(&event) {
                let seconds = started.elapsed().as_secs_f64();
                // A closed or full stderr must not stop the run.
                let _ = writeln!(std::io::stderr().lock(), "[{seconds:7.1}s] {line}");
            }
        })),
        call: CallContext::default(),
    }
}

/// The line for `event`, if it gets one (generated text does not: the answer has it).
fn describe(event: &PipelineEvent) -> Option<String> {
    Some(match event {
        PipelineEvent::StageStarted {
            stage,
            plugin,
            attempt,
        } => format!("{stage}: {plugin} (attempt {attempt})"),
        PipelineEvent::StageFinished { report } => {
            let took = format!("{:.1} s", report.duration_ms as f64 / 1000.0);
            match &report.error {
                Some(e) => format!(
                    "{}: {} failed after {took}: {} {}",
                    report.stage, report.plugin, e.code, e.message
                ),
                None if report.tokens > 0 => format!(
                    "{}: {} done in {took}, {} tokens",
                    report.stage, report.plugin, report.tokens
                ),
                None => format!("{}: {} done in {took}", report.stage, report.plugin),
            }
        }
        PipelineEvent::Tests { attempt, report } => match &report.setup_error {
            Some(why) => format!("tests of attempt {attempt} did not load: {why}"),
            None => format!(
                "tests of attempt {attempt}: {} of {} passed",
                report.passed(),
                report.results.len()
            ),
        },
        PipelineEvent::Retry {
            stage,
            attempt,
            reason,
            model,
        } => match model {
            Some(model) => format!("retrying {stage} after attempt {attempt} on {model}: {reason}"),
            None => format!("retrying {stage} after attempt {attempt}: {reason}"),
        },
        PipelineEvent::Recovery {
            stage,
            attempt,
            decision,
            code,
            reason,
        } => format!(
            "error handler: {decision} after {stage} of attempt {attempt} failed ({code}): {reason}"
        ),
        PipelineEvent::Chosen { attempt } => format!("chose attempt {attempt}"),
        PipelineEvent::Tokens { .. }
        | PipelineEvent::Generated { .. }
        | PipelineEvent::Checks { .. }
        | PipelineEvent::Review { .. }
        | PipelineEvent::Done { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::report::{ErrorOut, StageReport};

    fn finished(error: Option<ErrorOut>, tokens: u64) -> PipelineEvent {
        PipelineEvent::StageFinished {
            report: StageReport {
                stage: "generate".into(),
                plugin: "generator".into(),
                attempt: 1,
                status: "ok".into(),
                duration_ms: 8140,
                tokens,
                models: Vec::new(),
                error,
            },
        }
    }

    #[test]
    fn stages_retries_and_the_choice_get_a_line_and_generated_text_none() {
        let started = PipelineEvent::StageStarted {
            stage: "review".into(),
            plugin: "reviewer".into(),
            attempt: 2,
        };
        assert_eq!(
            describe(&started).as_deref(),
            Some("review: reviewer (attempt 2)")
        );
        assert_eq!(
            describe(&finished(None, 318)).as_deref(),
            Some("generate: generator done in 8.1 s, 318 tokens")
        );
        let error = ErrorOut::new(crate::error_code::ErrorCode::GenerationFailed, "no code");
        assert_eq!(
            describe(&finished(Some(error), 0)).as_deref(),
            Some("generate: generator failed after 8.1 s: GEN_001 no code")
        );
        let retry = PipelineEvent::Retry {
            stage: "test".into(),
            attempt: 1,
            reason: "TESTS_FAILED: 1 of 2 tests failed".into(),
            model: None,
        };
        assert_eq!(
            describe(&retry).as_deref(),
            Some("retrying test after attempt 1: TESTS_FAILED: 1 of 2 tests failed")
        );
        let gave_up = |decision: &str| PipelineEvent::Recovery {
            stage: "check".into(),
            attempt: 1,
            decision: decision.into(),
            code: "PLUGIN_003".into(),
            reason: "the check is broken".into(),
        };
        assert_eq!(
            describe(&gave_up("fallback")).as_deref(),
            Some(
                "error handler: fallback after check of attempt 1 failed (PLUGIN_003): the check \
                 is broken"
            )
        );
        assert_eq!(
            describe(&PipelineEvent::Chosen { attempt: 1 }).as_deref(),
            Some("chose attempt 1")
        );
        let text = PipelineEvent::Tokens { text: "def".into() };
        assert_eq!(describe(&text), None);
    }
}
