//! Test plugin: a quality check whose `check` never returns. The host's wall-clock deadline
//! (epoch interruption) must stop it.

use std::hint::black_box;

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck};

/// The plugin type exported to the host.
pub struct SpinCheck;

impl QualityCheck for SpinCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("spin-check", Vec::<String>::new(), Vec::<String>::new())
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        // `black_box` keeps the optimiser from proving the loop does nothing.
        let mut spins = 0u64;
        loop {
            spins = black_box(spins.wrapping_add(1));
        }
    }
}

agentrt_plugin_sdk::export_plugin!(SpinCheck: quality-check);
