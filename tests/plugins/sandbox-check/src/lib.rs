//! Test plugin: a quality check that runs the artifact's tests against its code through the
//! host's `sandbox.run-python` capability and reports one finding per test that did not pass
//! (`test-failed`, `test-error`, `test-timeout`), `tests-passed` with the count when all did,
//! or `sandbox-refused` with the host's answer when the call was refused.

use agentrt_plugin_sdk::sandbox::{self, TestStatus};
use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Severity};

/// The plugin type exported to the host.
pub struct SandboxCheck;

impl QualityCheck for SandboxCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new(
            "sandbox-check",
            ["python"],
            [
                "test-failed",
                "test-error",
                "test-timeout",
                "tests-passed",
                "sandbox-refused",
            ],
        )
    }

    fn check(artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let report = match sandbox::run_python(&artifact.code, &artifact.tests) {
            Ok(report) => report,
            Err(e) => {
                return Ok(vec![Finding::new(
                    "sandbox-refused",
                    Severity::Info,
                    e.message(),
                )]);
            }
        };
        if let Some(setup) = report.setup_error {
            return Ok(vec![Finding::new("test-error", Severity::Error, setup)]);
        }
        let failing: Vec<Finding> = report
            .results
            .iter()
            .filter_map(|r| {
                let rule = match r.status {
                    TestStatus::Passed => return None,
                    TestStatus::Failed => "test-failed",
                    TestStatus::Error => "test-error",
                    TestStatus::Timeout => "test-timeout",
                };
                Some(Finding::new(
                    rule,
                    Severity::Error,
                    format!("{}: {}", r.name, r.message),
                ))
            })
            .collect();
        if failing.is_empty() {
            return Ok(vec![Finding::new(
                "tests-passed",
                Severity::Info,
                format!("{} tests passed", report.results.len()),
            )]);
        }
        Ok(failing)
    }
}

agentrt_plugin_sdk::export_plugin!(SandboxCheck: quality-check);
