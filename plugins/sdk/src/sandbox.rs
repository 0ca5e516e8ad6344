//! Running Python tests in the host's sandboxed CPython: [`run_python`].
//!
//! ```no_run
//! use agentrt_plugin_sdk::sandbox::{self, TestStatus};
//!
//! fn failing(code: &str, tests: &str) -> Vec<String> {
//!     match sandbox::run_python(code, tests) {
//!         Ok(report) => report
//!             .results
//!             .into_iter()
//!             .filter(|r| r.status != TestStatus::Passed)
//!             .map(|r| format!("{}: {}", r.name, r.message))
//!             .collect(),
//!         Err(e) => vec![e.message()],
//!     }
//! }
//! ```
//!
//! The host answers only plugins whose manifest asks for `run-python = true` and whose operator
//! granted it; others get [`SandboxError::AccessDenied`]. The interpreter has no network and no
//! host files, a memory cap and a time limit that never outlasts the plugin's own deadline.
//! Outside a WebAssembly host every call fails with [`SandboxError::Unavailable`].

pub use crate::__bindings::sandbox::{SandboxError, TestReport, TestResult, TestStatus};

impl SandboxError {
    /// What went wrong, for a person.
    pub fn message(&self) -> String {
        match self {
            SandboxError::AccessDenied(detail) => format!("sandbox access denied: {detail}"),
            SandboxError::Unavailable(detail) => format!("no Python sandbox: {detail}"),
            SandboxError::Timeout => "the plugin's deadline passed before the run".to_owned(),
        }
    }
}

/// Run the `test_*` functions and top-level asserts of `tests` against `code`.
pub fn run_python(code: &str, tests: &str) -> Result<TestReport, SandboxError> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::sandbox::run_python(code, tests)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (code, tests);
        Err(SandboxError::Unavailable(
            "no agentrt host: the sandbox only works inside a plugin".to_owned(),
        ))
    }
}
