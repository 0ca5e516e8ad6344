//! Test plugin: a quality check whose `describe` never returns. Loading it (the host's trial
//! call) must end at its deadline with the deadline's code, and a folder reload must not wait
//! on it again while its files stay as they are.

use std::hint::black_box;

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck};

/// The plugin type exported to the host.
pub struct SlowDescribeCheck;

impl QualityCheck for SlowDescribeCheck {
    fn describe() -> CheckInfo {
        // `black_box` keeps the optimiser from proving the loop does nothing.
        let mut spins = 0u64;
        loop {
            spins = black_box(spins.wrapping_add(1));
        }
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(SlowDescribeCheck: quality-check);
