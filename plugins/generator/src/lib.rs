//! The default agentrt generator: writes a Python function and plain-`assert` tests for a task.
//!
//! [`flow`] holds the steps (and their retries), [`prompts`] the conversations, [`extract`],
//! [`source`] and [`unittest`] the text handling of model answers; this file only connects the
//! flow to the host's model.

use agentrt_plugin_sdk::llm::{self, ChatMessage, Completion, Sampling};
use agentrt_plugin_sdk::{CodeArtifact, GenerationRequest, Generator, PipelineError, log};

pub mod extract;
pub mod flow;
pub mod prompts;
pub mod source;
pub mod unittest;

/// The plugin type exported to the host.
pub struct DefaultGenerator;

impl Generator for DefaultGenerator {
    fn generate(request: GenerationRequest) -> Result<CodeArtifact, PipelineError> {
        log::write(
            log::Level::Info,
            "generating",
            &[("attempt", &request.attempt.to_string())],
        );
        flow::generate(&request, &mut HostModel)
    }
}

/// The host's default model, through the `llm` import.
struct HostModel;

impl flow::Model for HostModel {
    fn chat(&mut self, messages: &[ChatMessage], sampling: Sampling) -> Result<String, llm::Error> {
        llm::chat(messages, sampling).map(logged)
    }

    fn complete(&mut self, prompt: &str, sampling: Sampling) -> Result<String, llm::Error> {
        llm::generate(prompt, sampling).map(logged)
    }

    fn supports_chat(&mut self) -> bool {
        // The host lists its default model first.
        llm::list_models().first().is_none_or(|m| m.supports_chat)
    }
}

/// The completion's text, after logging its token use.
fn logged(completion: Completion) -> String {
    log::write(
        log::Level::Debug,
        "model answered",
        &[
            ("model", &completion.model),
            ("prompt_tokens", &completion.usage.prompt_tokens.to_string()),
            (
                "completion_tokens",
                &completion.usage.completion_tokens.to_string(),
            ),
            ("finish", &format!("{:?}", completion.finish_reason)),
        ],
    );
    completion.text
}

agentrt_plugin_sdk::export_plugin!(DefaultGenerator: generator);
