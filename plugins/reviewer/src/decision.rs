//! Turning the model's opinion, the quality findings and the test outcomes into a [`Review`].
//!
//! The facts outrank the model: a `syntax-error` finding in the code rejects; an `error` finding
//! (a syntax error in the tests included) or a failed test asks for changes at least, whatever the
//! model scored. The score blends the model's score with the test pass rate, then subtracts a
//! penalty per error and warning finding:
//!
//! ```text
//! base  = model                               (no test results)
//!       = (model + 10 × passed / run) / 2     (with test results)
//! score = clamp(base − 2.5 × errors − min(1 × warnings, 3), 0, 10)
//! verdict: score ≥ 6 approve, ≥ 3 request-changes, else reject, then raised by the rules above
//! ```
//!
//! Warnings are capped so that style findings on every function (missing docstrings, missing
//! type hints) cannot by themselves reject code that works. Info findings cost nothing: the WIT
//! contract says info "never blocks approval", so they are reported but never move the verdict.
//!
//! A missing model score counts as [`NEUTRAL_MODEL_SCORE`] when tests ran, so code that passes
//! its tests and checks is approved even when the small model answers nonsense. With neither a
//! model score nor test results there is no evidence the code works, and the base is
//! [`UNVERIFIED_SCORE`], below approval.

use agentrt_plugin_sdk::{Finding, Review, ReviewRequest, Severity, Verdict};

use crate::answer::{self, Opinion};

/// Model score assumed when the model gave none (or could not be asked).
pub const NEUTRAL_MODEL_SCORE: f32 = 7.0;
/// Base score with no model score and no test results: nothing says the code works.
pub const UNVERIFIED_SCORE: f32 = 5.0;
/// Lowest score that approves.
pub const APPROVE_FROM: f32 = 6.0;
/// Lowest score that asks for changes rather than rejecting.
pub const REQUEST_CHANGES_FROM: f32 = 3.0;
/// The rule id of model-reported problems.
pub const MODEL_REVIEW_RULE: &str = "model-review";
/// The rule id quality checks use for code that does not parse.
pub const SYNTAX_ERROR_RULE: &str = "syntax-error";

/// Score penalty for one quality finding of `severity`, and the most all of them may cost.
fn penalty(severity: Severity) -> (f32, f32) {
    match severity {
        Severity::Error => (2.5, f32::INFINITY),
        Severity::Warning => (1.0, 3.0),
        // Worth knowing, never a reason to withhold approval (wit/plugin.wit).
        Severity::Info => (0.0, 0.0),
    }
}

/// Total penalty for `findings`, capped per severity.
fn penalties(findings: &[Finding]) -> f32 {
    [Severity::Error, Severity::Warning, Severity::Info]
        .into_iter()
        .map(|severity| {
            let (each, cap) = penalty(severity);
            let count = findings.iter().filter(|f| f.severity == severity).count();
            (each * count as f32).min(cap)
        })
        .sum()
}

/// Whether a `syntax-error` finding concerns the code rather than the tests (the quality check
/// prefixes messages about the tests with `tests:`).
fn is_code_syntax_error(finding: &Finding) -> bool {
    finding.rule_id == SYNTAX_ERROR_RULE && !finding.message.trim_start().starts_with("tests:")
}

/// Decide on `request`; `opinion` is `None` when the model could not be asked.
pub fn decide(request: &ReviewRequest, opinion: Option<&Opinion>) -> Review {
    let outcomes = &request.test_outcomes;
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    let passed = outcomes.len() - failed.len();

    let model_score = opinion
        .and_then(|o| o.score)
        .unwrap_or(if outcomes.is_empty() {
            UNVERIFIED_SCORE
        } else {
            NEUTRAL_MODEL_SCORE
        });
    let base = if outcomes.is_empty() {
        model_score
    } else {
        (model_score + 10.0 * passed as f32 / outcomes.len() as f32) / 2.0
    };
    let score = ((base - penalties(&request.findings)).clamp(0.0, 10.0) * 10.0).round() / 10.0;

    let syntax_error = request.findings.iter().any(is_code_syntax_error);
    let errors = request
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = request
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let no_code = request.artifact.code.trim().is_empty();

    let mut verdict = if score >= APPROVE_FROM {
        Verdict::Approve
    } else if score >= REQUEST_CHANGES_FROM {
        Verdict::RequestChanges
    } else {
        Verdict::Reject
    };
    if errors > 0 || !failed.is_empty() {
        verdict = verdict.max(Verdict::RequestChanges);
    }
    if syntax_error || no_code {
        verdict = Verdict::Reject;
    }

    let mut findings = request.findings.clone();
    for outcome in &failed {
        let message = match outcome.message.trim() {
            "" => format!("test `{}` failed", outcome.name),
            why => format!("test `{}` failed: {why}", outcome.name),
        };
        findings.push(Finding::new("test-failed", Severity::Error, message));
    }
    if outcomes.is_empty() {
        let message = if request.artifact.tests.trim().is_empty() {
            "the code came without tests"
        } else {
            "the tests were not run"
        };
        findings.push(Finding::new("tests-missing", Severity::Info, message));
    }
    for problem in opinion.map(|o| o.problems.as_slice()).unwrap_or_default() {
        findings.push(Finding::new(
            MODEL_REVIEW_RULE,
            answer::problem_severity(problem),
            problem.clone(),
        ));
    }

    let mut reasons = Vec::new();
    if no_code {
        reasons.push("there is no code".to_owned());
    }
    if syntax_error {
        reasons.push("the code does not parse".to_owned());
    }
    if !outcomes.is_empty() {
        reasons.push(format!("{passed}/{} tests passed", outcomes.len()));
    }
    // The quality checks' own findings: failed tests and model remarks, added above, are
    // counted in their own reasons.
    reasons.push(format!(
        "quality checks: {}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    ));
    reasons.push(match opinion {
        Some(Opinion {
            score: Some(score), ..
        }) => format!("model score {score}/10"),
        Some(_) => "the model gave no score".to_owned(),
        None => "no model review".to_owned(),
    });
    let summary = format!("{}: {}", verdict.as_str(), reasons.join("; "));

    Review {
        verdict,
        score,
        summary,
        findings,
    }
}

/// `n` things, in words: "no errors", "1 error", "3 errors".
fn plural(n: usize, thing: &str) -> String {
    match n {
        0 => format!("no {thing}s"),
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrt_plugin_sdk::{CodeArtifact, TestOutcome};

    fn request(findings: Vec<Finding>, outcomes: &[(&str, bool)]) -> ReviewRequest {
        ReviewRequest {
            artifact: CodeArtifact::new(
                "python",
                "def add(a, b):\n    return a + b\n",
                "def test_add():\n    assert add(1, 2) == 3\n",
            ),
            findings,
            test_outcomes: outcomes
                .iter()
                .map(|(name, passed)| TestOutcome {
                    name: (*name).to_owned(),
                    passed: *passed,
                    message: if *passed {
                        String::new()
                    } else {
                        "AssertionError".to_owned()
                    },
                })
                .collect(),
        }
    }

    fn opinion(score: Option<f32>, problems: &[&str]) -> Opinion {
        Opinion {
            score,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn clean_code_with_passing_tests_is_approved() {
        let review = decide(
            &request(vec![], &[("test_add", true)]),
            Some(&opinion(Some(8.0), &[])),
        );
        assert_eq!(review.verdict, Verdict::Approve);
        assert_eq!(review.score, 9.0);
        assert!(review.summary.starts_with("approve: 1/1 tests passed"));
    }

    #[test]
    fn the_summary_counts_the_checks_findings_apart_from_failed_tests() {
        let warning = || Finding::new("missing-docstring", Severity::Warning, "no docstring");
        let review = decide(
            &request(vec![warning(), warning()], &[("test_b", false)]),
            Some(&opinion(None, &[])),
        );
        assert_eq!(
            review.summary,
            "reject: 0/1 tests passed; quality checks: no errors, 2 warnings; \
             the model gave no score"
        );
        let error = Finding::new("undefined-name", Severity::Error, "x");
        let review = decide(&request(vec![error, warning()], &[]), None);
        assert!(
            review
                .summary
                .contains("quality checks: 1 error, 1 warning; no model review"),
            "{}",
            review.summary
        );
    }

    #[test]
    fn failed_test_requests_changes_even_with_a_perfect_model_score() {
        let review = decide(
            &request(vec![], &[("test_a", true), ("test_b", false)]),
            Some(&opinion(Some(10.0), &[])),
        );
        assert_eq!(review.verdict, Verdict::RequestChanges);
        assert!(
            review
                .findings
                .iter()
                .any(|f| f.rule_id == "test-failed" && f.message.contains("test_b"))
        );
    }

    #[test]
    fn error_finding_requests_changes() {
        let finding = Finding::new("dangerous-call", Severity::Error, "eval() on input").at(2, 5);
        let review = decide(&request(vec![finding.clone()], &[("t", true)]), None);
        assert_eq!(review.verdict, Verdict::RequestChanges);
        assert_eq!(review.findings[0], finding);
        assert_eq!(review.score, 6.0);
    }

    #[test]
    fn syntax_error_rejects() {
        let finding = Finding::new(SYNTAX_ERROR_RULE, Severity::Error, "invalid syntax").at(1, 1);
        let review = decide(
            &request(vec![finding], &[]),
            Some(&opinion(Some(10.0), &[])),
        );
        assert_eq!(review.verdict, Verdict::Reject);
        assert!(review.summary.contains("does not parse"));
    }

    #[test]
    fn syntax_error_in_the_tests_only_requests_changes() {
        let finding = Finding::new(SYNTAX_ERROR_RULE, Severity::Error, "tests: invalid syntax");
        let review = decide(&request(vec![finding], &[]), Some(&opinion(Some(9.0), &[])));
        assert_eq!(review.verdict, Verdict::RequestChanges);
    }

    #[test]
    fn penalties_lower_the_score_and_can_reject() {
        let warnings: Vec<Finding> = (0..3)
            .map(|i| Finding::new("style", Severity::Warning, format!("w{i}")))
            .collect();
        let review = decide(&request(warnings, &[]), Some(&opinion(Some(5.0), &[])));
        assert_eq!(review.score, 2.0);
        assert_eq!(review.verdict, Verdict::Reject);
    }

    #[test]
    fn style_warnings_alone_cannot_reject_working_code() {
        let warnings: Vec<Finding> = (0..12)
            .map(|i| Finding::new("missing-docstring", Severity::Warning, format!("w{i}")))
            .collect();
        let review = decide(
            &request(warnings, &[("t", true)]),
            Some(&opinion(None, &[])),
        );
        assert_eq!(review.score, 5.5);
        assert_eq!(review.verdict, Verdict::RequestChanges);
    }

    #[test]
    fn info_findings_never_move_the_verdict() {
        let infos: Vec<Finding> = (0..4)
            .map(|i| Finding::new("hint", Severity::Info, format!("i{i}")))
            .collect();
        let review = decide(&request(infos, &[]), Some(&opinion(Some(6.0), &[])));
        assert_eq!(review.score, 6.0);
        assert_eq!(review.verdict, Verdict::Approve);
        assert_eq!(
            review
                .findings
                .iter()
                .filter(|f| f.rule_id == "hint")
                .count(),
            4
        );
    }

    #[test]
    fn missing_model_score_is_neutral_when_tests_passed() {
        let review = decide(&request(vec![], &[("t", true)]), Some(&opinion(None, &[])));
        assert_eq!(review.verdict, Verdict::Approve);
    }

    #[test]
    fn no_score_and_no_test_results_is_not_approved() {
        let review = decide(&request(vec![], &[]), Some(&opinion(None, &[])));
        assert_eq!(review.score, UNVERIFIED_SCORE);
        assert_eq!(review.verdict, Verdict::RequestChanges);
        assert!(review.findings.iter().any(|f| f.rule_id == "tests-missing"));
        assert!(review.summary.contains("no score"));
    }

    #[test]
    fn model_problems_become_findings() {
        let review = decide(
            &request(vec![], &[("t", true)]),
            Some(&opinion(
                Some(7.0),
                &["crashes on None", "name could be clearer"],
            )),
        );
        let model: Vec<_> = review
            .findings
            .iter()
            .filter(|f| f.rule_id == MODEL_REVIEW_RULE)
            .map(|f| f.severity)
            .collect();
        assert_eq!(model, vec![Severity::Warning, Severity::Info]);
    }

    #[test]
    fn empty_code_is_rejected() {
        let mut empty = request(vec![], &[]);
        empty.artifact.code = "  ".to_owned();
        assert_eq!(decide(&empty, None).verdict, Verdict::Reject);
    }

    #[test]
    fn score_stays_in_range() {
        let errors: Vec<Finding> = (0..10)
            .map(|_| Finding::new("x", Severity::Error, "bad"))
            .collect();
        let review = decide(
            &request(errors, &[("t", false)]),
            Some(&opinion(Some(0.0), &[])),
        );
        assert_eq!(review.score, 0.0);
        assert_eq!(review.verdict, Verdict::Reject);
    }
}
