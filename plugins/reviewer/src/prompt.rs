//! The conversation the reviewer sends to the model: short, with a fixed answer format.

use agentrt_plugin_sdk::llm::ChatMessage;
use agentrt_plugin_sdk::{ReviewRequest, Severity};

/// Longest code or tests quoted to the model, in characters.
const MAX_QUOTED_CHARS: usize = 3_000;
/// Quality findings mentioned in the prompt.
const MAX_FINDINGS_SHOWN: usize = 3;

const SYSTEM: &str = "You are a strict Python code reviewer. Be brief.";

/// Ask for a 1-10 score and one problem per line.
pub fn review_request(request: &ReviewRequest) -> Vec<ChatMessage> {
    let artifact = &request.artifact;
    let mut user = format!(
        "Review this Python code.\n```python\n{}\n```\n",
        quote(&artifact.code)
    );
    if !artifact.tests.trim().is_empty() {
        user.push_str(&format!(
            "Tests:\n```python\n{}\n```\n",
            quote(&artifact.tests)
        ));
    }
    if !request.test_outcomes.is_empty() {
        let failed: Vec<String> = request
            .test_outcomes
            .iter()
            .filter(|o| !o.passed)
            .map(|o| o.name.clone())
            .collect();
        let passed = request.test_outcomes.len() - failed.len();
        user.push_str(&format!("Test results: {passed} passed"));
        if !failed.is_empty() {
            user.push_str(&format!(
                ", {} failed ({})",
                failed.len(),
                failed.join(", ")
            ));
        }
        user.push_str(".\n");
    }
    let serious: Vec<String> = request
        .findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .take(MAX_FINDINGS_SHOWN)
        .map(|f| format!("- line {}: {}", f.line, f.message))
        .collect();
    if !serious.is_empty() {
        user.push_str(&format!("Checks found:\n{}\n", serious.join("\n")));
    }
    user.push_str(
        "\nReply in exactly this format:\nSCORE: <1-10>\nPROBLEMS:\n- <one problem per line, or \"- none\">",
    );
    vec![ChatMessage::system(SYSTEM), ChatMessage::user(user)]
}

/// `text` trimmed and cut to `MAX_QUOTED_CHARS` characters.
fn quote(text: &str) -> &str {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrt_plugin_sdk::{CodeArtifact, Finding, TestOutcome};

    #[test]
    fn prompt_mentions_code_tests_results_and_findings() {
        let request = ReviewRequest {
            artifact: CodeArtifact::new("python", "def f():\n    pass", "def test_f():\n    f()"),
            findings: vec![
                Finding::new("unused", Severity::Info, "minor").at(1, 1),
                Finding::new("dangerous-call", Severity::Error, "eval() used").at(2, 3),
            ],
            test_outcomes: vec![TestOutcome {
                name: "test_f".into(),
                passed: false,
                message: "boom".into(),
            }],
        };
        let messages = review_request(&request);
        let user = &messages[1].content;
        assert!(user.contains("def f():"));
        assert!(user.contains("def test_f():"));
        assert!(user.contains("0 passed, 1 failed (test_f)"));
        assert!(user.contains("line 2: eval() used"));
        assert!(!user.contains("minor"));
        assert!(user.contains("SCORE: <1-10>"));
    }

    #[test]
    fn no_tests_no_results_sections() {
        let request = ReviewRequest {
            artifact: CodeArtifact::new("python", "x = 1", ""),
            findings: vec![],
            test_outcomes: vec![],
        };
        let user = &review_request(&request)[1].content;
        assert!(!user.contains("Tests:"));
        assert!(!user.contains("Test results"));
    }
}
