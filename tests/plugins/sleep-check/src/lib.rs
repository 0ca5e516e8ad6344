//! Test plugin: a quality check that sleeps for two minutes in a single WASI call. Guest code
//! can be interrupted at the deadline, a host call cannot: the host cuts the sleep's timer at
//! the deadline, so the call ends with `PLUGIN_004` then and frees its slot.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck};

/// The plugin type exported to the host.
pub struct SleepCheck;

impl QualityCheck for SleepCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("sleep-check", Vec::<String>::new(), Vec::<String>::new())
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        std::thread::sleep(std::time::Duration::from_secs(120));
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(SleepCheck: quality-check);
