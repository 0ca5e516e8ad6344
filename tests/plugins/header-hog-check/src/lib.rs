//! Test plugin: a quality check that asks the host for one `wasi:http` header map after another
//! and keeps them all. Each map lives in host memory, not in the plugin's linear memory, so the
//! plugin's memory cap does not bound it: the host must bound what a plugin can make it hold.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Stage};
use wasi::http::types::Fields;

/// The plugin type exported to the host.
pub struct HeaderHogCheck;

impl QualityCheck for HeaderHogCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new(
            "header-hog-check",
            Vec::<String>::new(),
            Vec::<String>::new(),
        )
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let value = vec![b'a'; 8 << 10];
        let mut held = Vec::new();
        loop {
            match Fields::from_list(&[("x-fill".to_string(), value.clone())]) {
                Ok(fields) => held.push(fields),
                Err(e) => {
                    return Err(PipelineError {
                        code: "HOG_001".into(),
                        message: format!("refused after {} header maps: {e:?}", held.len()),
                        stage: Stage::Check,
                        attempt: 1,
                    });
                }
            }
        }
    }
}

agentrt_plugin_sdk::export_plugin!(HeaderHogCheck: quality-check);
