//! What to do after a failed pipeline step: retry, fall back, or abort.
//!
//! Rules, first match wins:
//!
//! 1. A failed **check** or **review** falls back (the pipeline carries on without that
//!    result), whatever the code: a broken third-party check must never sink a request, and
//!    skipping a stage spends no retry.
//! 2. Errors that a retry cannot fix abort: `PLUGIN_003` (a bug in the plugin), `VAL_*`
//!    (invalid input), refused model access or spent quota, cancellation, unknown model, a
//!    prompt longer than the model's context (a retry's prompt is longer still).
//! 3. With no retries left, abort.
//! 4. Everything else in **generate** and **test** (transient codes such as `PLUGIN_004`,
//!    `MODEL_BUSY`, `GEN_*`, `COMM_*`, and failed tests, `TEST_001`) is retried after an
//!    exponential delay, with feedback that tells the generator what went wrong.

use agentrt_plugin_sdk::{PipelineError, Recovery, Stage};

/// Delay before the first retry.
pub const BASE_DELAY_MS: u32 = 200;
/// Longest delay between retries.
pub const MAX_DELAY_MS: u32 = 5_000;
/// Longest feedback passed to the retried step; small models lose the task in long prompts.
const MAX_FEEDBACK_CHARS: usize = 600;

/// Codes that no retry can fix. A prompt too long for the model's context (`MODEL_004`) is
/// one: a retry's prompt only grows, with the feedback and the previous attempt's code.
const PERMANENT_CODES: &[&str] = &[
    "PLUGIN_003",
    "PLUGIN_006",
    "PLUGIN_007",
    "PLUGIN_009",
    "COMM_004",
    "MODEL_001",
    "MODEL_004",
];

/// Code prefixes that no retry can fix.
const PERMANENT_PREFIXES: &[&str] = &["VAL_", "AUTH_"];

/// Decide how the pipeline recovers from `error` with `retries_left` retries still allowed.
pub fn decide(error: &PipelineError, retries_left: u32) -> Recovery {
    let what = format!("{} ({})", error.message, error.code);
    match error.stage {
        Stage::Check => return Recovery::fallback(format!("skipping the failed check: {what}")),
        Stage::Review => {
            return Recovery::fallback(format!("continuing without a review: {what}"));
        }
        Stage::Generate | Stage::Test => {}
    }
    if is_permanent(&error.code) {
        return Recovery::abort(format!(
            "{} failed and a retry cannot fix it: {what}",
            error.stage.as_str()
        ));
    }
    if retries_left == 0 {
        return Recovery::abort(format!(
            "{} failed with no retries left: {what}",
            error.stage.as_str()
        ));
    }
    Recovery::retry(backoff_ms(error.attempt), Some(feedback(error)))
}

/// `BASE_DELAY_MS * 2^(attempt-1)`, capped at `MAX_DELAY_MS`.
pub fn backoff_ms(attempt: u32) -> u32 {
    let doublings = attempt.saturating_sub(1).min(31);
    BASE_DELAY_MS
        .saturating_mul(1u32 << doublings)
        .min(MAX_DELAY_MS)
}

/// Whether a retry cannot help with `code`.
pub fn is_permanent(code: &str) -> bool {
    PERMANENT_CODES.contains(&code) || PERMANENT_PREFIXES.iter().any(|p| code.starts_with(p))
}

/// Whether `code` names a failure that usually goes away on its own.
pub fn is_transient(code: &str) -> bool {
    matches!(code, "PLUGIN_004" | "MODEL_BUSY" | "MODEL_002")
        || ["GEN_", "COMM_", "RATE_"]
            .iter()
            .any(|p| code.starts_with(p))
}

/// Guidance for the retried step, echoing what went wrong.
fn feedback(error: &PipelineError) -> String {
    let advice = match (error.stage, error.code.as_str()) {
        (_, "GEN_003") => "Answer with one ```python code block that defines the function.",
        (Stage::Test, _) => "Fix the function so that these tests pass.",
        (_, code) if is_transient(code) => "Try again; keep the answer short.",
        _ => "Fix this problem.",
    };
    let message = truncate_chars(error.message.trim(), MAX_FEEDBACK_CHARS);
    format!("The previous attempt failed: {message}\n{advice}")
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A one-word name for a recovery, for logs.
pub fn kind(recovery: &Recovery) -> &'static str {
    match recovery {
        Recovery::Retry(_) => "retry",
        Recovery::Fallback(_) => "fallback",
        Recovery::Abort(_) => "abort",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrt_plugin_sdk::RetryPlan;

    fn error(code: &str, stage: Stage, attempt: u32) -> PipelineError {
        PipelineError::new(code, "something broke", stage).on_attempt(attempt)
    }

    fn retry_plan(recovery: Recovery) -> RetryPlan {
        match recovery {
            Recovery::Retry(plan) => plan,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_plugin_out_of_fuel_or_tokens_is_not_retried() {
        for code in ["PLUGIN_007", "PLUGIN_009"] {
            let recovery = decide(&error(code, Stage::Generate, 1), 2);
            assert_eq!(kind(&recovery), "abort", "{code}");
        }
    }

    #[test]
    fn a_prompt_too_long_for_the_context_is_not_retried() {
        let recovery = decide(&error("MODEL_004", Stage::Generate, 1), 2);
        assert_eq!(kind(&recovery), "abort");
    }

    #[test]
    fn no_retries_left_aborts_generation() {
        let recovery = decide(&error("GEN_001", Stage::Generate, 3), 0);
        assert_eq!(kind(&recovery), "abort");
    }

    #[test]
    fn transient_generation_errors_are_retried_with_feedback() {
        for code in ["PLUGIN_004", "MODEL_BUSY", "GEN_003", "COMM_001"] {
            let plan = retry_plan(decide(&error(code, Stage::Generate, 1), 2));
            assert_eq!(plan.delay_ms, BASE_DELAY_MS, "{code}");
            let feedback = plan.feedback.expect("feedback");
            assert!(feedback.contains("something broke"), "{feedback}");
        }
    }

    #[test]
    fn failed_tests_are_retried_with_a_request_to_fix_them() {
        // TEST_001: the code the pipeline gives failing generated tests.
        let plan = retry_plan(decide(&error("TEST_001", Stage::Test, 2), 1));
        assert_eq!(plan.delay_ms, 2 * BASE_DELAY_MS);
        assert!(plan.feedback.expect("feedback").contains("tests pass"));
    }

    #[test]
    fn delay_doubles_per_attempt_and_is_capped() {
        assert_eq!(backoff_ms(0), 200);
        assert_eq!(backoff_ms(1), 200);
        assert_eq!(backoff_ms(2), 400);
        assert_eq!(backoff_ms(3), 800);
        assert_eq!(backoff_ms(6), MAX_DELAY_MS);
        assert_eq!(backoff_ms(u32::MAX), MAX_DELAY_MS);
    }

    #[test]
    fn failed_checks_are_skipped_even_without_retries() {
        for code in ["PLUGIN_004", "PLUGIN_003", "PLUGIN_005"] {
            let recovery = decide(&error(code, Stage::Check, 1), 0);
            match recovery {
                Recovery::Fallback(reason) => assert!(reason.contains("skipping the failed check")),
                other => panic!("{code}: expected fallback, got {other:?}"),
            }
        }
    }

    #[test]
    fn failed_reviews_fall_back() {
        let recovery = decide(&error("PLUGIN_003", Stage::Review, 1), 2);
        assert_eq!(kind(&recovery), "fallback");
    }

    #[test]
    fn traps_and_invalid_input_abort_generation() {
        for code in ["PLUGIN_003", "VAL_002", "PLUGIN_006"] {
            let recovery = decide(&error(code, Stage::Generate, 1), 5);
            assert_eq!(kind(&recovery), "abort", "{code}");
        }
    }

    #[test]
    fn long_messages_are_truncated_in_feedback() {
        let mut long = error("GEN_001", Stage::Generate, 1);
        long.message = "x".repeat(5_000);
        let feedback = retry_plan(decide(&long, 1)).feedback.expect("feedback");
        assert!(feedback.chars().count() < MAX_FEEDBACK_CHARS + 100);
    }
}
