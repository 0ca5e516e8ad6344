//! house-style: an example agentrt reviewer that enforces a team's style guide.
//!
//! The guide lives outside the component, in a folder the operator grants it
//! (`/style/house-style.txt`; see `plugin.toml` and the README), so the team edits its
//! conventions without rebuilding the plugin. The verdict is rule-based: an error finding (from
//! any check, or a forbidden import) rejects; style departures or failed tests request changes;
//! the rest is approved. The model is asked for one sentence on the style, which becomes the
//! summary's tail — when it cannot be reached the review still stands.

pub mod style;

use agentrt_plugin_sdk::llm::{self, ChatMessage, Sampling};
use agentrt_plugin_sdk::{
    Finding, PipelineError, Review, ReviewRequest, Reviewer, Severity, Verdict, log,
};

use style::Guide;

/// Where the granted folder puts the guide.
pub const GUIDE_PATH: &str = "/style/house-style.txt";

struct HouseStyle;

impl Reviewer for HouseStyle {
    fn review(request: ReviewRequest) -> Result<Review, PipelineError> {
        let guide = match std::fs::read_to_string(GUIDE_PATH) {
            Ok(text) => Guide::parse(&text).map_err(|e| {
                PipelineError::new(
                    "REV_001",
                    format!("{GUIDE_PATH}: {e}"),
                    agentrt_plugin_sdk::Stage::Review,
                )
            })?,
            Err(e) => {
                log::warn(format!(
                    "no style guide at {GUIDE_PATH} ({e}); using PEP 8's defaults"
                ));
                Guide::default()
            }
        };
        let style = guide.check(&request.artifact.code);
        let failed_tests = request.test_outcomes.iter().filter(|t| !t.passed).count();
        let opinion = opinion(&request.artifact.code);
        Ok(decide(&request.findings, style, failed_tests, &opinion))
    }
}

/// One sentence from the model on the code's style; empty when the model is not reachable.
fn opinion(code: &str) -> String {
    let question = format!("In one sentence, how readable is this Python code?\n\n{code}");
    let params = Sampling::default().max_tokens(64).temperature(0.0);
    match llm::chat(&[ChatMessage::user(question)], params) {
        Ok(c) => c.text.trim().to_string(),
        Err(e) => {
            log::warn(format!("no model opinion: {}", e.message()));
            String::new()
        }
    }
}

/// The verdict from the checks' findings, the style findings and the failed tests.
pub fn decide(
    findings: &[Finding],
    style: Vec<Finding>,
    failed_tests: usize,
    opinion: &str,
) -> Review {
    let mut all = findings.to_vec();
    all.extend(style);
    let count = |severity| all.iter().filter(|f| f.severity == severity).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    let style_count = all
        .iter()
        .filter(|f| f.rule_id.starts_with("house-style/"))
        .count();
    let verdict = if errors > 0 {
        Verdict::Reject
    } else if style_count > 0 || failed_tests > 0 {
        Verdict::RequestChanges
    } else {
        Verdict::Approve
    };
    let score = (10.0 - 3.0 * errors as f32 - 1.0 * warnings as f32 - 2.0 * failed_tests as f32)
        .clamp(0.0, 10.0);
    let summary = format!(
        "house-style: {style_count} departure(s) from the style guide, {errors} error(s), {failed_tests} failed test(s). {opinion}"
    )
    .trim_end()
    .to_string();
    Review {
        verdict,
        score,
        summary,
        findings: all,
    }
}

agentrt_plugin_sdk::export_plugin!(HouseStyle: reviewer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_departures_request_changes_and_errors_reject() {
        let guide = Guide::default();
        let long = format!("x = '{}'\n", "a".repeat(100));
        let review = decide(&[], guide.check(&long), 0, "");
        assert_eq!(review.verdict, Verdict::RequestChanges);
        assert!(review.summary.starts_with("house-style: 1 departure"));
        let error = Finding::new("secret-scanner/aws-access-key", Severity::Error, "key");
        assert_eq!(decide(&[error], Vec::new(), 0, "").verdict, Verdict::Reject);
        let clean = decide(&[], Vec::new(), 0, "Readable.");
        assert_eq!((clean.verdict, clean.score), (Verdict::Approve, 10.0));
    }
}
