//! Host side of the `sandbox` interface: plugins granted `run-python` run Python tests in the
//! host's CPython sandbox (the one the pipeline's test stage uses), never past their own
//! deadline.

use super::bindings::sandbox::{Host, SandboxError, TestReport, TestResult, TestStatus};
use super::state::PluginState;
use crate::sandbox;

impl Host for PluginState {
    fn run_python(&mut self, code: String, tests: String) -> Result<TestReport, SandboxError> {
        if !self.granted.run_python {
            return Err(SandboxError::AccessDenied(format!(
                "plugin {} is not granted run-python",
                self.manifest.name
            )));
        }
        let sandbox = self.sandbox.clone();
        let python = sandbox
            .as_ref()
            .ok_or_else(|| SandboxError::Unavailable("this host has no Python sandbox".into()))?
            .get()
            .map_err(|why| SandboxError::Unavailable(why.to_string()))?;
        if std::time::Instant::now() >= self.deadline {
            return Err(SandboxError::Timeout);
        }
        self.note_used("run-python");
        let report = python.run_tests_until(
            &code,
            &tests,
            &Default::default(),
            crate::sandbox::Until {
                deadline: Some(self.deadline),
                cancel: self.cancel.as_deref(),
            },
        );
        Ok(TestReport {
            results: report.results.into_iter().map(to_wit).collect(),
            setup_error: report.setup_error,
            duration_ms: report.duration_ms,
        })
    }
}

fn to_wit(r: sandbox::TestResult) -> TestResult {
    TestResult {
        name: r.name,
        status: match r.status {
            sandbox::TestStatus::Passed => TestStatus::Passed,
            sandbox::TestStatus::Failed => TestStatus::Failed,
            sandbox::TestStatus::Error => TestStatus::Error,
            sandbox::TestStatus::Timeout => TestStatus::Timeout,
        },
        message: r.message,
    }
}
