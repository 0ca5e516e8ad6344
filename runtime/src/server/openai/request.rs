//! The OpenAI request bodies and what is checked before a request runs: which fields are
//! refused because honouring them is impossible here, the sampling settings and their ranges,
//! and chat messages as the chat template's.

use serde::Deserialize;
use serde_json::Value;

use super::{OpenAiError, invalid};
use crate::engine::SamplingParams;
use crate::engine::chat_template::TemplateMessage;
use crate::engine::sampling::MAX_STOP_BYTES;
use crate::server::MAX_TEMPERATURE;

/// Most tokens one request may ask for.
pub(crate) const MAX_TOKENS: u32 = 4096;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: text, or a list of parts of which the text ones are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(super) struct ContentPart {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Message {
    pub(super) role: String,
    pub(super) content: Option<Content>,
    /// A participant's name (refused: see [`template_message`]).
    pub(super) name: Option<String>,
    /// An assistant's calls of tools (refused: see [`template_message`]).
    pub(super) tool_calls: Option<Value>,
    pub(super) function_call: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamOptions {
    pub(super) include_usage: Option<bool>,
}

/// What both endpoints share.
#[derive(Debug, Deserialize)]
pub(super) struct Common {
    pub(super) model: Option<String>,
    pub(super) max_tokens: Option<u32>,
    pub(super) max_completion_tokens: Option<u32>,
    pub(super) temperature: Option<f32>,
    pub(super) top_p: Option<f32>,
    /// Any integer, as OpenAI's API takes (a negative one is used as its two's-complement bits).
    pub(super) seed: Option<i64>,
    pub(super) stop: Option<Stop>,
    pub(super) n: Option<u32>,
    pub(super) stream: Option<bool>,
    pub(super) stream_options: Option<StreamOptions>,
    // Refused unless neutral ([`Common::unsupported`]): each changes what the answer means.
    pub(super) tools: Option<Value>,
    pub(super) tool_choice: Option<Value>,
    pub(super) functions: Option<Value>,
    pub(super) function_call: Option<Value>,
    pub(super) response_format: Option<Value>,
    /// `true` on chat, a count on completions.
    pub(super) logprobs: Option<Value>,
    pub(super) top_logprobs: Option<u32>,
    pub(super) echo: Option<bool>,
    pub(super) best_of: Option<u32>,
    pub(super) logit_bias: Option<serde_json::Map<String, Value>>,
    pub(super) frequency_penalty: Option<f32>,
    pub(super) presence_penalty: Option<f32>,
    // vLLM's sampling extensions (sent through the SDKs' `extra_body`): `top_k` and
    // `repetition_penalty` are honoured by a local model, `min_p` only when 0.
    pub(super) top_k: Option<i64>,
    pub(super) repetition_penalty: Option<f32>,
    pub(super) min_p: Option<f32>,
    /// Every other field: refused unless [`harmless_extra`] (see [`Common::unsupported`]).
    #[serde(flatten)]
    pub(super) other: serde_json::Map<String, Value>,
}

/// OpenAI's fields that do not change the answer (who asked, what to store, how to bill),
/// accepted and ignored, as their neutral values are.
pub(crate) const IGNORED_FIELDS: &[&str] = &[
    "user",
    "metadata",
    "store",
    "parallel_tool_calls",
    "service_tier",
    "prediction",
    "prompt_cache_key",
    "safety_identifier",
];

/// Whether an extra field may be ignored: one of [`IGNORED_FIELDS`], `null`, or text-only
/// `modalities`.
fn harmless_extra(field: &str, value: &Value) -> bool {
    value.is_null()
        || IGNORED_FIELDS.contains(&field)
        || (field == "modalities" && *value == serde_json::json!(["text"]))
}

/// Whether a list or map holds something (`[]`, `{}` and `null` are what SDKs send for none).
pub(super) fn given(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(fields)) => !fields.is_empty(),
        Some(_) => true,
    }
}

/// Whether a `tool_choice` / `function_call` demands a call: `"required"` or a named function.
fn forces_a_call(choice: &Option<Value>) -> bool {
    match choice {
        Some(Value::Object(_)) => true,
        Some(v) => v.as_str() == Some("required"),
        None => false,
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub(super) messages: Vec<Message>,
    #[serde(flatten)]
    pub(super) common: Common,
}

/// `prompt`: a string, or a list holding one; token ids (one list or several), which OpenAI
/// takes too, are read only to be refused by name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum PromptField {
    One(String),
    Many(Vec<String>),
    TokenIds(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub(super) prompt: PromptField,
    pub(super) suffix: Option<String>,
    #[serde(flatten)]
    pub(super) common: Common,
}

impl Common {
    /// The first field whose value this server cannot honour, with why. Each changes what the
    /// answer means (a tool call, JSON, log probabilities, other sampling), so ignoring it would
    /// answer another question than the one asked; the neutral values SDKs send by default
    /// (`tools: []`, `tool_choice: "none"`, `logprobs: false`, `response_format: {"type":
    /// "text"}`, penalties of 0, ...) pass. A `logprobs` of 0 on a completion is not neutral:
    /// it asks for the chosen tokens' log probabilities.
    ///
    /// A field OpenAI's API does not have, or one of its fields this server has no use for
    /// (`audio`, `reasoning_effort`, ...), is refused too, as OpenAI refuses an unrecognized
    /// argument: a client that sends another server's extensions learns they are not applied.
    pub(super) fn unsupported(&self) -> Option<(String, String)> {
        let says_none = |v: &Option<Value>| v.as_ref().and_then(Value::as_str) == Some("none");
        let penalized = |p: Option<f32>| p.is_some_and(|p| p != 0.0);
        let not_text = self
            .response_format
            .as_ref()
            .is_some_and(|f| !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text"));
        let checks = [
            (
                given(&self.tools) && !says_none(&self.tool_choice),
                "tools",
                "tools: tool calling is not supported (send no tools, or tool_choice \"none\")",
            ),
            (
                forces_a_call(&self.tool_choice),
                "tool_choice",
                "tool_choice: tool calling is not supported",
            ),
            (
                given(&self.functions) && !says_none(&self.function_call),
                "functions",
                "functions: function calling is not supported (or send function_call \"none\")",
            ),
            (
                forces_a_call(&self.function_call),
                "function_call",
                "function_call: function calling is not supported",
            ),
            (
                not_text,
                "response_format",
                "response_format: only {\"type\": \"text\"} is supported",
            ),
            (
                !matches!(self.logprobs, None | Some(Value::Null | Value::Bool(false))),
                "logprobs",
                "logprobs: log probabilities are not supported",
            ),
            (
                self.top_logprobs.is_some_and(|n| n > 0),
                "top_logprobs",
                "top_logprobs: log probabilities are not supported",
            ),
            (
                self.echo == Some(true),
                "echo",
                "echo: echoing the prompt is not supported",
            ),
            (
                self.best_of.is_some_and(|n| n > 1),
                "best_of",
                "best_of: only best_of = 1 is supported",
            ),
            (
                self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()),
                "logit_bias",
                "logit_bias: biasing tokens is not supported",
            ),
            (
                penalized(self.frequency_penalty),
                "frequency_penalty",
                "frequency_penalty: only 0 is supported",
            ),
            (
                penalized(self.presence_penalty),
                "presence_penalty",
                "presence_penalty: only 0 is supported",
            ),
            (penalized(self.min_p), "min_p", "min_p: only 0 is supported"),
        ];
        let named = checks
            .into_iter()
            .find_map(|(refused, field, why)| refused.then(|| (field.into(), why.into())));
        named.or_else(|| {
            self.other
                .iter()
                .find(|(field, value)| !harmless_extra(field, value))
                .map(|(field, _)| {
                    let why = format!("unrecognized request argument supplied: {field}");
                    (field.clone(), why)
                })
        })
    }

    /// The engine's sampling settings: OpenAI's defaults (temperature 1, top_p 1, no top-k, no
    /// repeat penalty) where the request is silent.
    pub(super) fn sampling(&self, default_max_tokens: u32) -> Result<SamplingParams, OpenAiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n = 1 is supported"));
        }
        let asked = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = asked.unwrap_or(default_max_tokens);
        if max_tokens == 0 || max_tokens > MAX_TOKENS {
            let field = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(invalid(field, format!("{field} must be 1..={MAX_TOKENS}")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(invalid("stop", "at most 4 stop sequences"));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(invalid(
                "stop",
                format!(
                    "stop: each stop sequence must be at most {MAX_STOP_BYTES} bytes, got one of {}",
                    long.len()
                ),
            ));
        }
        // OpenAI's range: a client relying on the 400 for a typo'd 20 gets it here too.
        if self
            .temperature
            .is_some_and(|t| !(0.0..=MAX_TEMPERATURE).contains(&t))
        {
            return Err(invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        if self.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(invalid("top_p", "top_p must be between 0 and 1"));
        }
        // vLLM's meaning: -1 (or 0) considers every token.
        let top_k = match self.top_k {
            None | Some(-1 | 0) => 0,
            Some(k) => u32::try_from(k)
                .map_err(|_| invalid("top_k", "top_k must be -1 (off) or a positive number"))?,
        };
        if self
            .repetition_penalty
            .is_some_and(|p| !(p.is_finite() && p > 0.0))
        {
            return Err(invalid(
                "repetition_penalty",
                "repetition_penalty must be above 0 (1 is off)",
            ));
        }
        // OpenAI takes top_p 0 as "the most likely token only"; the engine's top_p is a share
        // of the probability that must be above 0, and its greedy choice is temperature 0.
        let greedy = self.top_p == Some(0.0);
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            max_tokens,
            temperature: if greedy {
                0.0
            } else {
                self.temperature.unwrap_or(1.0)
            },
            top_k,
            top_p: if greedy {
                1.0
            } else {
                self.top_p.unwrap_or(1.0)
            },
            repeat_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self
                .seed
                .map_or_else(crate::engine::sampling::fresh_seed, |s| s as u64),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            // Without a max_tokens of its own, a long prompt gets what room the context has
            // left rather than a refusal (as vLLM does).
            fit_to_context: asked.is_none(),
            ..defaults
        };
        // The engine's own checks, behind the ones above; each message starts with its field.
        params.validate().map_err(|m| {
            let field = m.split_whitespace().next().unwrap_or_default().to_string();
            invalid(&field, m)
        })?;
        Ok(params)
    }

    /// The sampling fields that only a local model honours: a remote one is sent OpenAI's
    /// fields only (see `engine::remote`), so a request naming these for it is refused.
    pub(super) fn local_only(&self) -> Option<&'static str> {
        let top_k_on = self.top_k.is_some_and(|k| k != 0 && k != -1);
        let penalized = self.repetition_penalty.is_some_and(|p| p != 1.0);
        if top_k_on {
            Some("top_k")
        } else if penalized {
            Some("repetition_penalty")
        } else {
            None
        }
    }

    pub(super) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// The text of message `i`'s content. A part that is not text (an image, audio) is refused,
/// not dropped: the model would answer without what it was asked about. A message without
/// content is refused as OpenAI refuses it (only an assistant's tool calls may stand in for
/// it, and those are refused): a misnamed field must not become an empty turn.
pub(super) fn content_text(i: usize, content: Option<Content>) -> Result<String, OpenAiError> {
    let parts = match content {
        None => {
            return Err(invalid(
                &format!("messages[{i}].content"),
                format!("missing required parameter: messages[{i}].content"),
            ));
        }
        Some(Content::Text(t)) => return Ok(t),
        Some(Content::Parts(parts)) => parts,
    };
    if let Some((j, part)) = parts.iter().enumerate().find(|(_, p)| p.kind != "text") {
        return Err(invalid(
            &format!("messages[{i}].content[{j}].type"),
            format!(
                "messages[{i}].content[{j}]: {:?} parts are not supported (text only)",
                part.kind
            ),
        ));
    }
    Ok(parts
        .into_iter()
        .filter_map(|p| p.text)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// OpenAI's chat messages as the chat template's (`developer` is a system message).
pub(super) fn template_messages(
    messages: Vec<Message>,
) -> Result<Vec<TemplateMessage>, OpenAiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| template_message(i, m))
        .collect()
}

/// Message `i` as the template's. The template sees a role and text only, so what it would
/// lose is refused: an assistant's tool calls (their names, arguments and ids would vanish)
/// and tool results (answers to calls this server cannot have made).
fn template_message(i: usize, m: Message) -> Result<TemplateMessage, OpenAiError> {
    let role_field = format!("messages[{i}].role");
    let role = match m.role.as_str() {
        "developer" => "system".to_string(),
        "system" | "user" | "assistant" => m.role,
        "tool" | "function" => {
            return Err(invalid(
                &role_field,
                format!(
                    "messages[{i}]: {:?} messages are not supported (this server does not call \
                     tools)",
                    m.role
                ),
            ));
        }
        other => {
            return Err(invalid(
                &role_field,
                format!("unknown message role {other:?}"),
            ));
        }
    };
    // The chat template sees a role and text: a participant's name would be dropped, and
    // with it who said what.
    if m.name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Err(invalid(
            &format!("messages[{i}].name"),
            format!(
                "messages[{i}].name: participant names are not supported (put the name in the \
                 message's content)"
            ),
        ));
    }
    for (field, value) in [
        ("tool_calls", &m.tool_calls),
        ("function_call", &m.function_call),
    ] {
        if given(value) {
            return Err(invalid(
                &format!("messages[{i}].{field}"),
                format!("messages[{i}].{field}: tool calls are not supported"),
            ));
        }
    }
    Ok(TemplateMessage {
        role,
        content: content_text(i, m.content)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ApiError;
    use serde_json::json;

    pub(super) fn sampling(body: Value) -> SamplingParams {
        let Ok(params) = serde_json::from_value::<Common>(body)
            .expect("request")
            .sampling(512)
        else {
            panic!("settings refused");
        };
        params
    }

    #[test]
    fn a_request_without_max_tokens_or_seed_fits_the_context_and_draws_its_own_seed() {
        let silent = sampling(json!({}));
        assert_eq!(silent.max_tokens, 512);
        assert!(silent.fit_to_context);
        assert_ne!(silent.seed, sampling(json!({})).seed);

        let named = sampling(json!({"max_tokens": 10, "seed": 7}));
        assert_eq!((named.max_tokens, named.seed), (10, 7));
        assert_eq!(sampling(json!({"seed": -1})).seed, u64::MAX);
        assert!(!named.fit_to_context);
        assert!(!sampling(json!({"max_completion_tokens": 10})).fit_to_context);
    }

    /// The 400 a request's settings are refused with.
    fn refused(body: Value) -> ApiError {
        match serde_json::from_value::<Common>(body)
            .expect("request")
            .sampling(512)
        {
            Ok(params) => panic!("settings accepted: {params:?}"),
            Err(OpenAiError(e)) => e,
        }
    }

    #[test]
    fn top_p_zero_is_greedy_and_top_p_outside_zero_to_one_is_refused() {
        for body in [
            json!({"top_p": 0}),
            json!({"top_p": 0.0, "temperature": 0.8}),
        ] {
            let greedy = sampling(body);
            assert_eq!((greedy.temperature, greedy.top_p), (0.0, 1.0));
            assert!(greedy.validate().is_ok());
        }
        let nucleus = sampling(json!({"top_p": 0.5, "temperature": 0.8}));
        assert_eq!((nucleus.temperature, nucleus.top_p), (0.8, 0.5));
        for top_p in [-0.1, 1.5] {
            let e = refused(json!({ "top_p": top_p }));
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.contains("top_p"), "{}", e.message);
        }
    }

    #[test]
    fn neutral_values_pass_and_ones_that_change_the_answer_are_refused_by_name() {
        let refused_field = |body: Value| {
            serde_json::from_value::<Common>(body)
                .expect("request")
                .unsupported()
                .map(|(field, _)| field)
        };
        let refused_field = |body: Value| refused_field(body).map(|f| f.to_string());
        let neutral = json!({"tools": [], "tool_choice": "auto", "functions": [],
            "logprobs": false, "top_logprobs": 0, "response_format": {"type": "text"},
            "logit_bias": {}, "frequency_penalty": 0, "presence_penalty": 0.0, "echo": false,
            "best_of": 1, "user": "u-1", "parallel_tool_calls": true});
        assert_eq!(refused_field(neutral), None);
        let tools_off = json!({"tools": [{"type": "function"}], "tool_choice": "none"});
        assert_eq!(refused_field(tools_off), None);
        for (body, field) in [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (json!({"tool_choice": {"type": "function"}}), "tool_choice"),
            (json!({"function_call": {"name": "add"}}), "function_call"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            // On completions, 0 still asks for the chosen tokens' log probabilities.
            (json!({"logprobs": 0}), "logprobs"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"best_of": 3}), "best_of"),
            (json!({"frequency_penalty": 0.1}), "frequency_penalty"),
        ] {
            assert_eq!(refused_field(body.clone()), Some(field.into()), "{body}");
        }
    }

    #[test]
    fn fields_openai_does_not_have_are_refused_unless_they_cannot_change_the_answer() {
        let refused_field = |body: Value| {
            serde_json::from_value::<Common>(body)
                .expect("request")
                .unsupported()
                .map(|(field, why)| {
                    assert!(why.contains(&field), "{why}");
                    field
                })
        };
        let harmless = json!({"user": "u", "metadata": {"a": "b"}, "store": false,
            "service_tier": "auto", "modalities": ["text"], "audio": null,
            "stream_options": {"include_usage": true}, "min_p": 0});
        assert_eq!(refused_field(harmless), None);
        for (body, field) in [
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"audio": {"voice": "alloy"}}), "audio"),
            (json!({"reasoning_effort": "low"}), "reasoning_effort"),
            (json!({"mirostat": 2}), "mirostat"),
            (json!({"min_p": 0.1}), "min_p"),
        ] {
            assert_eq!(
                refused_field(body.clone()).as_deref(),
                Some(field),
                "{body}"
            );
        }
    }

    #[test]
    fn vllm_top_k_and_repetition_penalty_reach_the_sampler() {
        let asked = sampling(json!({"top_k": 1, "repetition_penalty": 1.3}));
        assert_eq!((asked.top_k, asked.repeat_penalty), (1, 1.3));
        // OpenAI's own defaults where the request is silent; -1 is vLLM's "off".
        let silent = sampling(json!({"top_k": -1}));
        assert_eq!((silent.top_k, silent.repeat_penalty), (0, 1.0));
        for (body, field) in [
            (json!({"top_k": -2}), "top_k"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
        ] {
            let e = refused(body.clone());
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert!(e.message.starts_with(field), "{}", e.message);
        }
        let local_only = |body: Value| {
            serde_json::from_value::<Common>(body)
                .expect("request")
                .local_only()
        };
        assert_eq!(local_only(json!({"top_k": 5})), Some("top_k"));
        assert_eq!(
            local_only(json!({"repetition_penalty": 1.2})),
            Some("repetition_penalty")
        );
        assert_eq!(
            local_only(json!({"top_k": -1, "repetition_penalty": 1})),
            None
        );
    }

    #[test]
    fn a_message_without_content_or_with_a_name_is_refused_naming_it() {
        let refused_param = |messages: Value| {
            let messages: Vec<Message> = serde_json::from_value(messages).expect("messages");
            match template_messages(messages) {
                Ok(m) => panic!("accepted: {m:?}"),
                Err(OpenAiError(e)) => e
                    .details
                    .and_then(|d| d["field"].as_str().map(str::to_string)),
            }
        };
        assert_eq!(
            refused_param(json!([{"role": "system", "content": "be brief"}, {"role": "user"}])),
            Some("messages[1].content".into())
        );
        assert_eq!(
            refused_param(json!([{"role": "user", "content": null}])),
            Some("messages[0].content".into())
        );
        assert_eq!(
            refused_param(json!([{"role": "user", "content": "hi", "name": "alice"}])),
            Some("messages[0].name".into())
        );
        let unnamed = json!([{"role": "user", "content": "hi", "name": ""}]);
        let messages: Vec<Message> = serde_json::from_value(unnamed).expect("messages");
        assert!(template_messages(messages).is_ok());
    }

    #[test]
    fn stop_sequences_past_the_cap_are_refused_naming_the_field() {
        let at_cap = "x".repeat(MAX_STOP_BYTES);
        assert_eq!(
            sampling(json!({"stop": at_cap.clone()})).stop,
            std::slice::from_ref(&at_cap)
        );
        let over = format!("{at_cap}y");
        for stop in [json!(over.clone()), json!(["\n", over.clone()])] {
            let e = refused(json!({ "stop": stop }));
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.starts_with("stop:"), "{}", e.message);
        }
    }
}
