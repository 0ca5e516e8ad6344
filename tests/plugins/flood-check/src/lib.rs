//! Test plugin: a quality check that returns far more than the host accepts — 200 000
//! findings with kilobyte messages. The output caps must turn that into a clear error.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Severity};

/// The plugin type exported to the host.
pub struct FloodCheck;

impl QualityCheck for FloodCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("flood-check", Vec::<String>::new(), ["flood"])
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let message = "x".repeat(1024);
        Ok((0..200_000)
            .map(|_| Finding::new("flood", Severity::Info, message.clone()))
            .collect())
    }
}

agentrt_plugin_sdk::export_plugin!(FloodCheck: quality-check);
