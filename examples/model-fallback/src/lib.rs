//! model-fallback: an agentrt error handler that moves a failed stage to a second model.
//!
//! A team runs its big model on a GPU box (a remote entry) and keeps a small local model as the
//! fallback: `agentrt serve --model http://gpu-box:8000/v1 --model ~/models/small.gguf`. When
//! the model fails — the remote is down or overloaded, out of memory, a prompt too long for its
//! context — this handler retries the stage on the next model the operator listed, and the rest
//! of the run stays there. The policy is [`policy::decide`]; this file is the WIT glue.

pub mod policy;

use agentrt_plugin_sdk::{ModelErrorHandler, ModelOption, ModelRecovery, PipelineError, log};

struct ModelFallback;

impl ModelErrorHandler for ModelFallback {
    fn handle(error: PipelineError, retries_left: u32, models: Vec<ModelOption>) -> ModelRecovery {
        let decision = policy::decide(&error, retries_left, &models);
        let mut fields = vec![
            ("code", error.code.clone()),
            ("stage", error.stage.as_str().to_string()),
            ("decision", policy::kind(&decision).to_string()),
        ];
        if let ModelRecovery::RetryOn(to) = &decision {
            fields.push(("model", to.model.clone()));
        }
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        log::write(log::Level::Info, "recovery decided", &fields);
        decision
    }
}

agentrt_plugin_sdk::export_plugin!(ModelFallback: model-error-handler);
