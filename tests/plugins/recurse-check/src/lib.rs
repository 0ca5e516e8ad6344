//! Test plugin: a quality check that recurses without bound. The wasm stack limit must turn
//! that into a trap for this call alone.

use std::hint::black_box;

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck};

/// The plugin type exported to the host.
pub struct RecurseCheck;

/// Depth-first descent with a frame the optimiser cannot fold away.
#[inline(never)]
fn descend(depth: u64, frame: [u64; 16]) -> u64 {
    let frame = black_box(frame);
    // Never true, but the compiler cannot know: the recursion has a base case on paper.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    black_box(descend(depth + 1, [depth; 16])) + frame[(depth % 16) as usize]
}

impl QualityCheck for RecurseCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("recurse-check", Vec::<String>::new(), Vec::<String>::new())
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let _ = black_box(descend(0, [0; 16]));
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(RecurseCheck: quality-check);
