//! What to do after a failed stage, given the models it could run on.
//!
//! Rules, first match wins:
//!
//! 1. A failed **check** is skipped: a broken check must not sink the run.
//! 2. **Failed tests** (`TEST_001`) are the code's fault, not the model's: retried on the same
//!    model with the failures as feedback while retries are left.
//! 3. A **model failure** in generate or review — the engine failed or could not be reached
//!    (the SDK's `GEN_001` in generate, `REV_001` in review; `MODEL_001`), the call ran past the
//!    plugin's deadline (`PLUGIN_004`), the prompt did not fit (`MODEL_004`) — moves the stage to
//!    another model:
//!    the next one in the operator's order after the one that failed; for a prompt that did not
//!    fit, the next one with a longer context. Only forward, so a run never bounces between two
//!    broken models. The retry starts at once (the other model is up) and without feedback (it
//!    was not the answer that was wrong).
//! 4. Anything else, or no model left to move to, or no retries left: the review is skipped
//!    (the run keeps its code and test results), generation stops the run.

use agentrt_plugin_sdk::{ModelOption, ModelRecovery, PipelineError, Recovery, Stage};

/// Delay before retrying on the same model, per attempt.
const SAME_MODEL_DELAY_MS: u32 = 250;

/// Codes that say the model, not the plugin or the task, failed.
const MODEL_FAILURES: &[&str] = &["GEN_001", "REV_001", "MODEL_001", "MODEL_004", "PLUGIN_004"];

/// The prompt did not fit the model's context.
const CONTEXT_OVERFLOW: &str = "MODEL_004";

/// Failing generated tests.
const TESTS_FAILED: &str = "TEST_001";

/// Decide how the pipeline recovers from `error`.
pub fn decide(error: &PipelineError, retries_left: u32, models: &[ModelOption]) -> ModelRecovery {
    let what = format!("{} ({})", error.message, error.code);
    if error.stage == Stage::Check {
        return Recovery::fallback(format!("skipping the failed check: {what}")).into();
    }
    let give_up = |why: String| -> ModelRecovery {
        match error.stage {
            Stage::Review => Recovery::fallback(format!("continuing without a review: {why}")),
            _ => Recovery::abort(why),
        }
        .into()
    };
    if retries_left == 0 {
        return give_up(format!(
            "{} failed with no retries left: {what}",
            error.stage.as_str()
        ));
    }
    if error.code == TESTS_FAILED {
        return Recovery::retry(
            SAME_MODEL_DELAY_MS * error.attempt,
            Some(format!(
                "Fix the function so that these tests pass: {}",
                error.message
            )),
        )
        .into();
    }
    if !MODEL_FAILURES.contains(&error.code.as_str()) {
        return give_up(format!(
            "{} failed and another model would not help: {what}",
            error.stage.as_str()
        ));
    }
    match fallback_model(models, error.code == CONTEXT_OVERFLOW) {
        Some(next) => ModelRecovery::retry_on(&next.id, 0, None),
        None => give_up(format!(
            "{} failed on {} and no other model is left to try: {what}",
            error.stage.as_str(),
            current_id(models)
        )),
    }
}

/// The model to move to: the first after the current one in the operator's order (with a
/// longer context than the current one when `longer_context`).
pub fn fallback_model(models: &[ModelOption], longer_context: bool) -> Option<&ModelOption> {
    let at = models.iter().position(|m| m.current)?;
    let current = &models[at];
    models[at + 1..]
        .iter()
        .find(|m| !longer_context || m.context_length > current.context_length)
}

fn current_id(models: &[ModelOption]) -> &str {
    models
        .iter()
        .find(|m| m.current)
        .map_or("the model", |m| m.id.as_str())
}

/// A one-word name for a decision, for logs.
pub fn kind(decision: &ModelRecovery) -> &'static str {
    match decision {
        ModelRecovery::Retry(_) => "retry",
        ModelRecovery::RetryOn(_) => "retry-on",
        ModelRecovery::Fallback(_) => "fallback",
        ModelRecovery::Abort(_) => "abort",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, context_length: u32, current: bool) -> ModelOption {
        ModelOption {
            id: id.into(),
            architecture: "llama".into(),
            context_length,
            current,
        }
    }

    fn failed(code: &str, stage: Stage) -> PipelineError {
        PipelineError::new(code, "the model failed", stage)
    }

    fn team() -> Vec<ModelOption> {
        vec![
            model("gpu-box", 4096, true),
            model("local-small", 2048, false),
            model("local-long", 16384, false),
        ]
    }

    #[test]
    fn a_model_failure_moves_to_the_next_model() {
        let decision = decide(&failed("GEN_001", Stage::Generate), 2, &team());
        assert!(
            matches!(&decision, ModelRecovery::RetryOn(r) if r.model == "local-small" && r.plan.delay_ms == 0),
            "{decision:?}"
        );
        // A reviewer's model call that failed, as the SDK reports it in a review.
        let decision = decide(&failed("REV_001", Stage::Review), 1, &team());
        assert!(matches!(&decision, ModelRecovery::RetryOn(r) if r.model == "local-small"));
    }

    #[test]
    fn a_prompt_too_long_moves_to_a_longer_context() {
        let decision = decide(&failed("MODEL_004", Stage::Generate), 2, &team());
        assert!(matches!(&decision, ModelRecovery::RetryOn(r) if r.model == "local-long"));
    }

    #[test]
    fn only_forward_then_give_up() {
        let mut models = team();
        models[0].current = false;
        models[2].current = true;
        assert!(matches!(
            decide(&failed("GEN_001", Stage::Generate), 2, &models),
            ModelRecovery::Abort(m) if m.contains("local-long")
        ));
        assert!(matches!(
            decide(&failed("GEN_001", Stage::Review), 2, &models),
            ModelRecovery::Fallback(_)
        ));
    }

    #[test]
    fn tests_and_checks_stay_on_the_model() {
        assert!(matches!(
            decide(&failed("TEST_001", Stage::Test), 1, &team()),
            ModelRecovery::Retry(p) if p.feedback.is_some()
        ));
        assert!(matches!(
            decide(&failed("PLUGIN_003", Stage::Check), 0, &[]),
            ModelRecovery::Fallback(_)
        ));
        assert!(matches!(
            decide(&failed("VAL_002", Stage::Generate), 2, &team()),
            ModelRecovery::Abort(_)
        ));
    }

    #[test]
    fn no_retries_left_stops_generation_and_skips_review() {
        assert!(matches!(
            decide(&failed("GEN_001", Stage::Generate), 0, &team()),
            ModelRecovery::Abort(_)
        ));
        assert!(matches!(
            decide(&failed("GEN_001", Stage::Review), 0, &team()),
            ModelRecovery::Fallback(_)
        ));
    }
}
