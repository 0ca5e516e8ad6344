//! Host side of the `llm` interface: model access for plugins, under their permissions.
//!
//! A plugin sees only the models it was granted; `max-tokens` is capped by its granted
//! `max-tokens-per-call` and by what is left of its `tokens-per-minute`; every call carries the
//! plugin call's deadline into the engine, so a generation in flight stops when the plugin's
//! time is up. A call that meets the model's queue full waits in line for a place (first come,
//! first served, [`Control::wait_in_line`]) until its deadline, rather than failing at once: a
//! plugin cannot see the queue, and a moment later there is usually room.

use std::sync::Arc;

use super::bindings::llm::{
    ChatMessage, Completion, Error, FinishReason, Host, ModelInfo, Role, Sampling, Usage,
};
use super::grants::Reservation;
use super::state::PluginState;
use crate::engine::chat_template::TemplateMessage;
use crate::engine::{self, Control, EngineError, Prompt, SamplingParams, ServedModel};
use crate::error_code::ErrorCode;

/// Tokens generated when a plugin does not say.
const DEFAULT_MAX_TOKENS: u32 = 256;

impl PluginState {
    fn resolve_model(&self, model: Option<String>) -> Result<Arc<ServedModel>, Error> {
        let engine = self
            .models
            .as_ref()
            .ok_or_else(|| Error::AccessDenied("this plugin has no model access".into()))?;
        // A model the run was moved to (by an error handler) stands in for the host's default.
        let wanted = match model.as_deref() {
            None | Some("") | Some("default") => self.default_model.as_deref(),
            named => named,
        };
        let loaded = engine
            .model(wanted)
            .map_err(|e| Error::ModelNotSupported(e.to_string()))?;
        if !self.granted.allows_model(&loaded.info.id) {
            return Err(Error::AccessDenied(format!(
                "plugin {} is not granted model {}",
                self.manifest.name, loaded.info.id
            )));
        }
        Ok(loaded)
    }

    /// The call's sampling settings, with its tokens reserved against the plugin's budget
    /// (settle the reservation when the generation ends).
    fn sampling_params(&self, s: Sampling) -> Result<(SamplingParams, Reservation), Error> {
        let defaults = SamplingParams::default();
        let cap = self.granted.max_tokens_per_call;
        let max_tokens = match s.max_tokens {
            Some(n) if n > cap => {
                return Err(Error::QuotaExceeded(format!(
                    "max-tokens {n} is above this plugin's per-call budget of {cap}"
                )));
            }
            Some(n) => n,
            None => DEFAULT_MAX_TOKENS.min(cap),
        };
        // Reserved before validation, so it can be handed back below; a generation may not run
        // past the budget, only its prompt can overshoot it.
        let budget = self.granted.tokens_per_minute;
        let reservation = self.tokens.reserve(budget, max_tokens).ok_or_else(|| {
            Error::QuotaExceeded(format!(
                "this plugin's budget of {} tokens per minute is spent",
                budget.unwrap_or_default()
            ))
        })?;
        let params = SamplingParams {
            max_tokens: reservation.tokens,
            temperature: s.temperature.unwrap_or(defaults.temperature),
            top_k: s.top_k.unwrap_or(defaults.top_k),
            top_p: s.top_p.unwrap_or(defaults.top_p),
            repeat_penalty: s.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            seed: s.seed.unwrap_or(defaults.seed),
            stop: s.stop,
            ..defaults
        };
        if let Err(why) = params.validate() {
            self.tokens.settle(reservation, 0);
            return Err(Error::InvalidInput(why));
        }
        Ok((params, reservation))
    }

    fn run(
        &mut self,
        model: Option<String>,
        prompt: Prompt,
        s: Sampling,
    ) -> Result<Completion, Error> {
        let loaded = self.resolve_model(model)?;
        let (params, reservation) = self.sampling_params(s)?;
        let control = Control {
            deadline: Some(self.deadline),
            cancel: self.cancel.clone(),
            wait_in_line: true,
        };
        self.llm_calls += 1;
        self.note_used(&format!("llm:{}", loaded.info.id));
        let generation = match loaded.start(&prompt, &params, &control) {
            Ok(generation) => generation,
            // Refused before it was queued (a full queue until the deadline or the cancel, an
            // invalid or too long prompt, a deadline already past): nothing generated, nothing
            // spent.
            Err(e) => {
                self.tokens.settle(reservation, 0);
                return Err(to_wit_error(e));
            }
        };
        let on_text = self.on_text.clone();
        let done = match generation.finish_counted(&mut |piece| {
            if let Some(sink) = &on_text {
                sink(piece);
            }
        }) {
            Ok(done) => done,
            // Stopped once queued (deadline, cancel, a failure): what it used counts, as the
            // engine reports it; where it cannot (a remote model), the reservation stands.
            Err(stopped) => {
                if let Some(usage) = stopped.spent {
                    let spent = usage.total();
                    self.tokens_used += spent;
                    self.tokens.settle(reservation, spent);
                }
                return Err(to_wit_error(stopped.error));
            }
        };
        let spent = done.usage.total();
        self.tokens_used += spent;
        self.tokens.settle(reservation, spent);
        Ok(Completion {
            model: done.model,
            text: done.text,
            finish_reason: match done.finish_reason {
                engine::FinishReason::EndOfSequence => FinishReason::EndOfSequence,
                engine::FinishReason::StopSequence => FinishReason::StopSequence,
                engine::FinishReason::Length => FinishReason::Length,
            },
            usage: Usage {
                prompt_tokens: done.usage.prompt_tokens,
                completion_tokens: done.usage.completion_tokens,
            },
        })
    }
}

/// An engine failure as the `llm` interface says it, chosen by the engine's error code, so
/// that a plugin passing it on keeps its meaning: a KV-cache budget or a remote's context
/// limit is still `MODEL_004` (the client's to shorten, not retried), a model that cannot load
/// `MODEL_001`. What the interface has no case for is `runtime-error`.
fn to_wit_error(e: EngineError) -> Error {
    match e {
        EngineError::InvalidInput(m) => Error::InvalidInput(m),
        EngineError::Cancelled => Error::Cancelled,
        // The plugin's own deadline; a remote's timeout is the remote's failure, below.
        EngineError::Timeout => Error::Timeout,
        // A remote that could not be reached or broke off (no answer to read a meaning from)
        // may be back soon: the engine failed, which an error handler may retry.
        // Plugins are not told where the model server is.
        EngineError::Remote { status: None, .. } => Error::RuntimeError(e.public_message()),
        other => {
            let message = other.public_message();
            match other.code() {
                ErrorCode::ModelContextOverflow => Error::ContextOverflow(message),
                ErrorCode::ModelNotAvailable => Error::ModelNotSupported(message),
                ErrorCode::InvalidInput | ErrorCode::ValidationFailed | ErrorCode::MissingField => {
                    Error::InvalidInput(message)
                }
                ErrorCode::Cancelled => Error::Cancelled,
                _ => Error::RuntimeError(message),
            }
        }
    }
}

impl Host for PluginState {
    fn list_models(&mut self) -> Vec<ModelInfo> {
        let Some(engine) = &self.models else {
            return Vec::new();
        };
        // The model `llm` calls without a name run on comes first: the host's default, or the
        // model an error handler moved this run to.
        let mut models: Vec<_> = engine.models().iter().collect();
        if let Some(chosen) = &self.default_model {
            models.sort_by_key(|m| m.info.id != *chosen);
        }
        models
            .into_iter()
            .filter(|m| self.granted.allows_model(&m.info.id))
            .map(|m| ModelInfo {
                id: m.info.id.clone(),
                architecture: m.info.architecture.clone(),
                context_length: m.info.context_length,
                supports_chat: m.info.supports_chat,
            })
            .collect()
    }

    fn count_tokens(&mut self, model: Option<String>, text: String) -> Result<u32, Error> {
        let counted = self.resolve_model(model).and_then(|loaded| {
            // The audit line names every model a call used, counting included: tokenising
            // megabytes is work done for the plugin too.
            self.note_used(&format!("llm:{}", loaded.info.id));
            loaded
                .count_tokens(&text, self.deadline)
                .map_err(to_wit_error)
        });
        self.noted(counted)
    }

    fn generate(
        &mut self,
        model: Option<String>,
        prompt: String,
        params: Sampling,
    ) -> Result<Completion, Error> {
        let generated = self.run(model, Prompt::Text(prompt), params);
        self.noted(generated)
    }

    fn chat(
        &mut self,
        model: Option<String>,
        messages: Vec<ChatMessage>,
        params: Sampling,
    ) -> Result<Completion, Error> {
        if messages.is_empty() {
            return Err(Error::InvalidInput(
                "chat needs at least one message".into(),
            ));
        }
        let messages = messages
            .into_iter()
            .map(|m| TemplateMessage {
                role: match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                }
                .to_string(),
                content: m.content,
            })
            .collect();
        let answered = self.run(model, Prompt::Chat(messages), params);
        self.noted(answered)
    }
}

impl PluginState {
    /// `result`, with the code of a refusal the plugin may pass on noted for the call (see
    /// [`crate::plugin::output::RELAYED_ONLY`]).
    fn noted<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(refusal) = &result
            && let Some(code) = crate::plugin::output::relayable(refusal)
            && !self.relayable.contains(&code)
        {
            self.relayable.push(code);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampling::MAX_STOP_BYTES;
    use crate::plugin::grants::{Granted, TokenMeter};
    use crate::plugin::manifest::Manifest;
    use std::time::{Duration, Instant};

    /// A generator plugin's state with every model granted and no token budget.
    fn plugin_state() -> PluginState {
        let manifest = Manifest::parse("name = \"p\"\nversion = \"1\"\nworld = \"generator\"\n")
            .expect("manifest");
        let granted = Granted {
            models: vec!["*".into()],
            max_tokens_per_call: 256,
            tokens_per_minute: None,
            memory_mb: 16,
            timeout_ms: 1000,
            fuel: None,
            env: Vec::new(),
            folders: Vec::new(),
            hosts: Vec::new(),
            internal_hosts: false,
            run_python: false,
        };
        PluginState::new(
            Arc::new(manifest),
            Arc::new(granted),
            Arc::new(TokenMeter::default()),
            None,
            None,
            wasmtime_wasi::WasiCtx::builder().build(),
            Instant::now() + Duration::from_secs(1),
        )
    }

    fn with_stop(stop: Vec<String>) -> Sampling {
        Sampling {
            max_tokens: None,
            temperature: None,
            top_k: None,
            top_p: None,
            repeat_penalty: None,
            seed: None,
            stop,
        }
    }

    #[test]
    fn engine_failures_keep_their_meaning_across_the_interface() {
        let remote = |code| EngineError::Remote {
            url: "http://model.test".into(),
            status: Some(400),
            code,
            message: "no".into(),
        };
        let cases = [
            (
                EngineError::KvCacheBudget {
                    need_mib: 9,
                    budget_mib: 1,
                },
                "context-overflow",
            ),
            (remote(ErrorCode::ModelContextOverflow), "context-overflow"),
            (
                EngineError::ContextOverflow {
                    prompt: 9,
                    max_tokens: 1,
                    context: 8,
                },
                "context-overflow",
            ),
            (
                EngineError::UnsupportedArchitecture("\"mamba\"".into()),
                "model-not-supported",
            ),
            (
                EngineError::ModelNotFound("m".into()),
                "model-not-supported",
            ),
            (EngineError::NoFillInTheMiddle("m".into()), "invalid-input"),
            (remote(ErrorCode::InvalidInput), "invalid-input"),
            (
                EngineError::Remote {
                    url: "http://model.test".into(),
                    status: None,
                    code: ErrorCode::ModelNotAvailable,
                    message: "cannot reach it".into(),
                },
                "runtime-error",
            ),
            (EngineError::Timeout, "timeout"),
            (remote(ErrorCode::ModelTimeout), "runtime-error"),
            (EngineError::Cancelled, "cancelled"),
            (EngineError::QueueFull { waiting: 3 }, "runtime-error"),
            (EngineError::Runtime("boom".into()), "runtime-error"),
        ];
        for (engine_error, expected) in cases {
            let said = engine_error.to_string();
            let case = match to_wit_error(engine_error) {
                Error::ContextOverflow(_) => "context-overflow",
                Error::ModelNotSupported(_) => "model-not-supported",
                Error::InvalidInput(_) => "invalid-input",
                Error::Timeout => "timeout",
                Error::Cancelled => "cancelled",
                Error::RuntimeError(_) => "runtime-error",
                Error::AccessDenied(_) => "access-denied",
                Error::QuotaExceeded(_) => "quota-exceeded",
            };
            assert_eq!(case, expected, "{said}");
        }
    }

    #[test]
    fn a_stop_sequence_past_the_cap_is_invalid_input_and_spends_nothing() {
        let state = plugin_state();
        let at_cap = "x".repeat(MAX_STOP_BYTES);
        let Ok((params, reservation)) = state.sampling_params(with_stop(vec![at_cap.clone()]))
        else {
            panic!("a stop sequence at the cap was refused");
        };
        assert_eq!(params.stop, std::slice::from_ref(&at_cap));
        state.tokens.settle(reservation, 0);

        let got = state.sampling_params(with_stop(vec!["\n".into(), format!("{at_cap}y")]));
        assert!(
            matches!(&got, Err(Error::InvalidInput(m)) if m.contains("stop")),
            "a stop sequence over the cap was not refused as invalid input"
        );
        assert_eq!(
            state.tokens.used(),
            0,
            "the refused call's tokens were handed back"
        );
    }
}
