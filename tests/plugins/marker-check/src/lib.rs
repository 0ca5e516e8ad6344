//! Test plugin: a quality check that fails with `MARK_001` on code containing `ABORT-ME`
//! (what `scripted-generator` writes on its later attempts) and finds nothing otherwise.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Stage};

/// The plugin type exported to the host.
pub struct MarkerCheck;

impl QualityCheck for MarkerCheck {
    fn describe() -> CheckInfo {
        // Python only, so that a generator's alias for it (`Py`) must still reach this check.
        CheckInfo::new("marker-check", vec!["python"], Vec::<String>::new())
    }

    fn check(artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        if artifact.code.contains("ABORT-ME") {
            return Err(PipelineError::new(
                "MARK_001",
                "the code carries the marker ABORT-ME",
                Stage::Check,
            ));
        }
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(MarkerCheck: quality-check);
