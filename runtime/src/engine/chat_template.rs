//! Chat templates: the Jinja template a model ships with, rendered by minijinja.
//!
//! Templates written for HF `transformers` call Python string methods (`.strip()`,
//! `.startswith()`…) and `raise_exception`; minijinja-contrib's pycompat layer and a small
//! `raise_exception` function make those templates render unchanged.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::Serialize;

/// One message, in the shape HF chat templates expect.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compile `source`; `bos`/`eos` are the texts of the model's BOS and EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // HF templates rely on Jinja's default of keeping a trailing newline out and blocks as
        // written; `trim_blocks`/`lstrip_blocks` stay off exactly as in transformers.
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos.to_string(),
            eos_token: eos.to_string(),
        })
    }

    /// Render a conversation, ending with the cue for the assistant's turn.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| TemplateError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_a_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").expect("compile");
        let out = t
            .render(&[TemplateMessage {
                role: "user".into(),
                content: "hi".into(),
            }])
            .expect("render");
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(src, "", "").expect("compile");
        let ok = t.render(&[TemplateMessage {
            role: "user".into(),
            content: "  x  ".into(),
        }]);
        assert_eq!(ok.expect("render"), "x");
        let err = t.render(&[TemplateMessage {
            role: "system".into(),
            content: "x".into(),
        }]);
        assert!(
            err.expect_err("must fail")
                .to_string()
                .contains("first must be user")
        );
    }
}
