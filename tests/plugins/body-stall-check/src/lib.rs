//! Test plugin: a quality check, granted nothing, that writes to the body of an outgoing
//! `wasi:http` request and never sends the request. The host buffers a few writes; the next
//! blocking write waits for room that only sending would make, inside a host call the epoch
//! deadline cannot interrupt. The host must still end the call at its deadline (`PLUGIN_004`)
//! and free its instance slot.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Stage};
use wasi::http::types::{Fields, OutgoingBody, OutgoingRequest};

/// The plugin type exported to the host.
pub struct BodyStallCheck;

/// The check's own error, for a host that refuses a step instead of blocking.
fn refused(what: &str, detail: String) -> PipelineError {
    PipelineError {
        code: "STALL_001".into(),
        message: format!("{what}: {detail}"),
        stage: Stage::Check,
        attempt: 1,
    }
}

impl QualityCheck for BodyStallCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new(
            "body-stall-check",
            Vec::<String>::new(),
            Vec::<String>::new(),
        )
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let request = OutgoingRequest::new(Fields::new());
        let body: OutgoingBody = request
            .body()
            .map_err(|()| refused("no body", String::new()))?;
        let stream = body
            .write()
            .map_err(|()| refused("no body stream", String::new()))?;
        let chunk = [b'x'; 4096];
        for written in 0u64.. {
            stream
                .blocking_write_and_flush(&chunk)
                .map_err(|e| refused(&format!("write {written} failed"), format!("{e:?}")))?;
        }
        Ok(Vec::new())
    }
}

agentrt_plugin_sdk::export_plugin!(BodyStallCheck: quality-check);
