//! A plugin's self-test: one real call with a known input, run in the plugin's sandbox exactly
//! as the pipeline would call it. `agentrt doctor` runs it for every loaded plugin and
//! `agentrt plugin check` for the component it checks.
//!
//! Quality checks look at a small clean function and error handlers decide about a generation
//! error (a `model-error-handler` with two models on offer, the first one failed). Generators and reviewers need a model: with one they generate for, or review, a tiny
//! task; without one the test stops after instantiating.

use std::sync::Arc;

use super::bindings::{
    CodeArtifact, GenerationRequest, ModelOption, PipelineError, Recovery, ReviewRequest, Stage,
    TestOutcome,
};
use super::manifest::World;
use super::{CallContext, Plugin, PluginError, PluginHost};

/// Python that every check should find nothing serious in.
const CLEAN_CODE: &str =
    "def add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n    return a + b\n";
const CLEAN_TESTS: &str = "def test_add():\n    assert add(1, 2) == 3\n";

/// Run the self-test; on success a one-line account of what the plugin answered.
pub fn run(host: &PluginHost, plugin: &Arc<Plugin>) -> Result<String, PluginError> {
    host.instantiate(plugin)?;
    let ctx = CallContext::default();
    let artifact = CodeArtifact {
        language: "python".into(),
        code: CLEAN_CODE.into(),
        tests: CLEAN_TESTS.into(),
    };
    match plugin.manifest.world {
        World::QualityCheck => {
            // The clean function is Python: a check for other languages is never given it.
            if let Some(scope) = plugin.check_scope.as_ref().filter(|s| !s.covers("python")) {
                return Ok(format!(
                    "instantiates (checks {} code; the self-test has Python only)",
                    scope.languages.join(", ")
                ));
            }
            let (res, _) = host.check(plugin, &artifact, &ctx);
            res.map(|f| format!("{} findings on a clean function", f.len()))
        }
        World::ErrorHandler | World::ModelErrorHandler => {
            let error = PipelineError {
                code: "GEN_001".into(),
                message: "self-test: the generator failed".into(),
                stage: Stage::Generate,
                attempt: 1,
            };
            // Test inputs, not served models: what a handler sees when the first of two
            // models failed.
            let offered = [("self-test-primary", true), ("self-test-fallback", false)].map(
                |(id, current)| ModelOption {
                    id: id.into(),
                    architecture: "llama".into(),
                    context_length: 2048,
                    current,
                },
            );
            let (res, _) = host.handle_error(plugin, &error, 1, &offered, &ctx);
            res.map(|d| {
                let decision = match (&d.recovery, &d.model) {
                    (Recovery::Retry(_), Some(model)) => format!("retry on {model}"),
                    (Recovery::Retry(_), None) => "retry".into(),
                    (Recovery::Fallback(_), _) => "fall back".into(),
                    (Recovery::Abort(_), _) => "abort".into(),
                };
                format!("decided to {decision} on a generation error")
            })
        }
        World::Reviewer | World::Generator if !host.has_models() => {
            Ok("instantiates (the model is needed to run it)".to_string())
        }
        World::Reviewer => {
            let request = ReviewRequest {
                artifact,
                findings: Vec::new(),
                test_outcomes: vec![TestOutcome {
                    name: "test_add".into(),
                    passed: true,
                    message: String::new(),
                }],
            };
            let (res, stats) = host.review(plugin, &request, &ctx);
            res.map(|r| {
                format!(
                    "reviewed a clean function: {:?}, score {:.1}, {} findings ({} model calls)",
                    r.verdict,
                    r.score,
                    r.findings.len(),
                    stats.llm_calls
                )
            })
        }
        World::Generator => {
            let request = GenerationRequest {
                task_description: "Write a function add(a, b) that returns the sum of a and b"
                    .into(),
                language: "python".into(),
                attempt: 1,
                feedback: None,
                previous: None,
            };
            let (res, stats) = host.generate(plugin, &request, &ctx);
            res.map(|a| {
                format!(
                    "generated {} lines of code and {} of tests ({} model calls)",
                    a.code.lines().count(),
                    a.tests.lines().count(),
                    stats.llm_calls
                )
            })
        }
    }
}
