//! Language-model access through the host: [`chat`] and [`generate`] with [`Sampling`] settings.
//!
//! ```no_run
//! use agentrt_plugin_sdk::llm::{self, ChatMessage, Sampling};
//!
//! fn ask(task: &str) -> Result<String, llm::Error> {
//!     let answer = llm::chat(
//!         &[ChatMessage::system("Answer with Python code only."), ChatMessage::user(task)],
//!         Sampling::default().max_tokens(256).temperature(0.2).seed(7),
//!     )?;
//!     Ok(answer.text)
//! }
//! ```
//!
//! Only the `generator` and `reviewer` worlds import `llm`; a quality check or error handler that
//! calls these functions does not load. The host enforces the models and token budget the
//! plugin's manifest asked for and the operator granted; a refusal comes back as an [`Error`].
//! Outside a WebAssembly host (unit tests on the host target) every call fails with
//! [`Error::RuntimeError`] and [`list_models`] is empty.

pub use crate::__bindings::llm::{
    ChatMessage, Completion, Error, FinishReason, ModelInfo, Role, Sampling, Usage,
};
use crate::types::{PipelineError, Stage};

impl Default for Sampling {
    /// Every field `None` (the host's defaults) and no stop sequences.
    fn default() -> Self {
        Self {
            max_tokens: None,
            temperature: None,
            top_k: None,
            top_p: None,
            repeat_penalty: None,
            seed: None,
            stop: Vec::new(),
        }
    }
}

impl Sampling {
    /// Generate at most `tokens` tokens.
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = Some(tokens);
        self
    }

    /// Softmax temperature; 0 selects greedy decoding.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Keep only the `k` most likely tokens (0 = off).
    pub fn top_k(mut self, k: u32) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Nucleus sampling threshold (1.0 = off).
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Penalty (> 1.0) for tokens already in the context.
    pub fn repeat_penalty(mut self, penalty: f32) -> Self {
        self.repeat_penalty = Some(penalty);
        self
    }

    /// Seed for reproducible sampling.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Stop before any of these strings (replaces earlier stop sequences).
    pub fn stop<S: Into<String>>(mut self, sequences: impl IntoIterator<Item = S>) -> Self {
        self.stop = sequences.into_iter().map(Into::into).collect();
        self
    }
}

impl ChatMessage {
    /// Instructions for the model.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A request from the person (or plugin) asking.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An earlier answer of the model.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

impl Error {
    /// The pipeline error code for this failure (`MODEL_*`, `PLUGIN_*`, `VAL_*` families), as a
    /// generator reports it: an engine failure is `GEN_001` here; [`Error::code_in`] gives the
    /// code for another stage.
    pub fn code(&self) -> &'static str {
        self.code_in(Stage::Generate)
    }

    /// The pipeline error code for this failure in `stage`: an engine failure is the stage's
    /// own failure code (`GEN_001` generating, `REV_001` reviewing, `REV_003` in a quality
    /// check); every other failure has one code wherever it happens.
    pub fn code_in(&self, stage: Stage) -> &'static str {
        match self {
            Error::ModelNotSupported(_) => "MODEL_001",
            Error::Timeout => "PLUGIN_004",
            Error::ContextOverflow(_) => "MODEL_004",
            Error::RuntimeError(_) => match stage {
                Stage::Review => "REV_001",
                Stage::Check => "REV_003",
                Stage::Generate | Stage::Test => "GEN_001",
            },
            Error::AccessDenied(_) => "PLUGIN_006",
            Error::QuotaExceeded(_) => "PLUGIN_007",
            Error::Cancelled => "COMM_004",
            Error::InvalidInput(_) => "VAL_002",
        }
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> String {
        match self {
            Error::ModelNotSupported(detail) => format!("model not supported: {detail}"),
            Error::AccessDenied(detail) => format!("model access denied: {detail}"),
            Error::QuotaExceeded(detail) => format!("token quota exceeded: {detail}"),
            Error::ContextOverflow(detail) => format!("prompt does not fit the context: {detail}"),
            Error::Timeout => "the plugin's deadline passed during a model request".to_owned(),
            Error::Cancelled => "the model request was cancelled by the host".to_owned(),
            Error::InvalidInput(detail) => format!("invalid model request: {detail}"),
            Error::RuntimeError(detail) => format!("model engine failed: {detail}"),
        }
    }

    /// This failure as a [`PipelineError`] of `stage`.
    pub fn into_pipeline_error(self, stage: Stage) -> PipelineError {
        PipelineError::new(self.code_in(stage), self.message(), stage)
    }
}

/// Answer a conversation with the default model, formatted with its chat template.
pub fn chat(messages: &[ChatMessage], params: Sampling) -> Result<Completion, Error> {
    call_chat(None, messages, &params)
}

/// Answer a conversation with the model `model` (an id from [`list_models`]).
pub fn chat_with(
    model: &str,
    messages: &[ChatMessage],
    params: Sampling,
) -> Result<Completion, Error> {
    call_chat(Some(model), messages, &params)
}

/// Continue a raw prompt with the default model.
pub fn generate(prompt: &str, params: Sampling) -> Result<Completion, Error> {
    call_generate(None, prompt, &params)
}

/// Continue a raw prompt with the model `model`.
pub fn generate_with(model: &str, prompt: &str, params: Sampling) -> Result<Completion, Error> {
    call_generate(Some(model), prompt, &params)
}

/// Number of tokens `text` takes for the default model.
pub fn count_tokens(text: &str) -> Result<u32, Error> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::llm::count_tokens(None, text)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = text;
        Err(no_host())
    }
}

/// Models available to this plugin.
pub fn list_models() -> Vec<ModelInfo> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::llm::list_models()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Vec::new()
    }
}

fn call_chat(
    model: Option<&str>,
    messages: &[ChatMessage],
    params: &Sampling,
) -> Result<Completion, Error> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::llm::chat(model, messages, params)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (model, messages, params);
        Err(no_host())
    }
}

fn call_generate(
    model: Option<&str>,
    prompt: &str,
    params: &Sampling,
) -> Result<Completion, Error> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__bindings::llm::generate(model, prompt, params)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (model, prompt, params);
        Err(no_host())
    }
}

/// The error every model call returns when the code does not run inside the agentrt host.
#[cfg(not(target_arch = "wasm32"))]
fn no_host() -> Error {
    Error::RuntimeError("no agentrt host: model calls only work inside a plugin".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sampling_leaves_everything_to_the_host() {
        let sampling = Sampling::default();
        assert_eq!(sampling.max_tokens, None);
        assert_eq!(sampling.temperature, None);
        assert!(sampling.stop.is_empty());
    }

    #[test]
    fn sampling_builder_sets_fields() {
        let sampling = Sampling::default()
            .max_tokens(64)
            .temperature(0.2)
            .seed(7)
            .stop(["\n\n"]);
        assert_eq!(sampling.max_tokens, Some(64));
        assert_eq!(sampling.temperature, Some(0.2));
        assert_eq!(sampling.seed, Some(7));
        assert_eq!(sampling.stop, vec!["\n\n".to_owned()]);
    }

    #[test]
    fn model_calls_fail_cleanly_outside_the_host() {
        let error = chat(&[ChatMessage::user("hi")], Sampling::default())
            .expect_err("no host in unit tests");
        let pipeline_error = error.into_pipeline_error(Stage::Generate);
        assert_eq!(pipeline_error.code, "GEN_001");
    }

    #[test]
    fn an_engine_failure_takes_the_code_of_the_stage_it_ends() {
        let failed = || Error::RuntimeError("engine stopped".to_owned());
        assert_eq!(failed().into_pipeline_error(Stage::Review).code, "REV_001");
        assert_eq!(failed().into_pipeline_error(Stage::Check).code, "REV_003");
        assert_eq!(
            failed().into_pipeline_error(Stage::Generate).code,
            "GEN_001"
        );
        // Failures that are not the stage's own keep their code everywhere.
        assert_eq!(
            Error::Timeout.into_pipeline_error(Stage::Review).code,
            "PLUGIN_004"
        );
        assert_eq!(
            Error::ContextOverflow("long".to_owned())
                .into_pipeline_error(Stage::Review)
                .code,
            "MODEL_004"
        );
    }
}
