//! Test plugin: a quality check that allocates 1 MiB blocks until something stops it. The host's
//! memory cap must turn that into a clear error for this call.

use std::hint::black_box;

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck};

/// Size of each allocation.
const BLOCK: usize = 1 << 20;

/// The plugin type exported to the host.
pub struct HogCheck;

impl QualityCheck for HogCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("hog-check", Vec::<String>::new(), Vec::<String>::new())
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Filled with non-zero bytes so the pages are really touched; `black_box` keeps the
            // optimiser from dropping allocations nobody reads.
            hoard.push(black_box(vec![0xA5; BLOCK]));
            black_box(&hoard);
        }
    }
}

agentrt_plugin_sdk::export_plugin!(HogCheck: quality-check);
