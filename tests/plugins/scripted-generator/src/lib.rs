//! Test plugin: a generator that answers from a script instead of the model, so the end-to-end
//! tests can drive the pipeline through a known sequence of attempts. Attempt 1 is an `add`
//! that subtracts, with one test that passes and one that fails; every later attempt is the
//! same code carrying the marker [`MARKER`], which `marker-check` fails on.

use agentrt_plugin_sdk::{CodeArtifact, GenerationRequest, Generator, PipelineError};

/// The plugin type exported to the host.
pub struct ScriptedGenerator;

/// What `marker-check` fails on.
pub const MARKER: &str = "ABORT-ME";

const CODE: &str = "def add(a, b):\n    return a - b\n";
const TESTS: &str = "from solution import add\n\n\
def test_zero():\n    assert add(0, 0) == 0\n\n\
def test_sum():\n    assert add(1, 2) == 3\n";

impl Generator for ScriptedGenerator {
    fn generate(request: GenerationRequest) -> Result<CodeArtifact, PipelineError> {
        let code = if request.attempt <= 1 {
            CODE.to_string()
        } else {
            format!("{CODE}# {MARKER}\n")
        };
        // Labelled with an alias, as a third-party generator might: the host must still run
        // its tests and the checks for Python.
        Ok(CodeArtifact::new("Py", code, TESTS))
    }
}

agentrt_plugin_sdk::export_plugin!(ScriptedGenerator: generator);
