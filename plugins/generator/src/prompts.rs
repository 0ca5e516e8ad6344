//! The conversations the generator sends to the model.
//!
//! The default model is tiny (SmolLM2-135M-Instruct), so prompts are short, concrete and ask for
//! one thing at a time: first the function, then its tests. The host applies the model's chat
//! template to the conversations; [`tests_completion`] is a raw prompt for plain continuation.

use agentrt_plugin_sdk::CodeArtifact;
use agentrt_plugin_sdk::llm::ChatMessage;

/// Longest piece of earlier code or feedback quoted back to the model, in characters.
const MAX_QUOTED_CHARS: usize = 1_500;

const CODE_SYSTEM: &str = "You are an expert Python programmer. \
    Reply with one ```python code block and nothing else.";

const TESTS_SYSTEM: &str = "You write Python unit tests with plain assert statements.";

/// Ask for a function solving `task`; on a retry, quote the previous code and the feedback.
pub fn code_request(
    task: &str,
    feedback: Option<&str>,
    previous: Option<&CodeArtifact>,
) -> Vec<ChatMessage> {
    let mut user = format!(
        "Write a Python function with type hints and a docstring for this task:\n{}\n",
        task.trim()
    );
    if let Some(previous) = previous.filter(|p| !p.code.trim().is_empty()) {
        user.push_str(&format!(
            "\nYour previous answer was:\n```python\n{}\n```\n",
            quote(&previous.code)
        ));
    }
    if let Some(feedback) = feedback.filter(|f| !f.trim().is_empty()) {
        user.push_str(&format!(
            "\nIt was not good enough:\n{}\nWrite a corrected function.\n",
            quote(feedback)
        ));
    }
    vec![ChatMessage::system(CODE_SYSTEM), ChatMessage::user(user)]
}

/// The stricter second try after an answer with no usable code.
pub fn strict_code_request(task: &str) -> Vec<ChatMessage> {
    let user = format!(
        "Task: {}\n\nAnswer with Python code only, in this form:\n\
         ```python\ndef function_name(arguments):\n    ...\n```\n\
         Start with `def`. No explanation.",
        task.trim()
    );
    vec![ChatMessage::system(CODE_SYSTEM), ChatMessage::user(user)]
}

/// Ask for `test_*` functions exercising `code`.
pub fn tests_request(task: &str, code: &str, functions: &[String]) -> Vec<ChatMessage> {
    let target = functions
        .first()
        .map(String::as_str)
        .unwrap_or("the function");
    let user = format!(
        "Task: {}\n\n```python\n{}\n```\n\n\
         Write 3 test functions for `{target}`. Name each one test_<something> and check \
         results with assert. Do not use pytest or unittest. Do not repeat the function. \
         Reply with one ```python code block.",
        task.trim(),
        quote(code)
    );
    vec![ChatMessage::system(TESTS_SYSTEM), ChatMessage::user(user)]
}

/// A raw prompt (no chat template) that continues the tests of `function` as code: the solution,
/// then a test function cut off inside its first assert. Returns the prompt and that open
/// assert, which the model's continuation completes.
pub fn tests_completion(code: &str, function: &str) -> (String, String) {
    let open_assert = format!("assert {function}(");
    let prompt = format!(
        "```python\n{}\n\n\ndef test_{function}():\n    {open_assert}",
        quote(code)
    );
    (prompt, open_assert)
}

/// A raw prompt for base models without a chat template (StarCoder): the task, and the
/// feedback on a retry, as comments heading a Python file, ending in `def ` for the model to
/// continue. The continuation is a function when prefixed with [`COMPLETION_OPENING`].
pub fn code_completion(task: &str, feedback: Option<&str>) -> String {
    let mut prompt = String::from("# Task:\n");
    for line in task.trim().lines() {
        prompt.push_str(&format!("# {line}\n"));
    }
    if let Some(feedback) = feedback.filter(|f| !f.trim().is_empty()) {
        prompt.push_str("# A previous attempt was rejected:\n");
        for line in quote(feedback).lines() {
            prompt.push_str(&format!("# {line}\n"));
        }
    }
    prompt.push_str("# Solution, a function with type hints and a docstring:\n\n\n");
    prompt.push_str(COMPLETION_OPENING);
    prompt
}

/// How [`code_completion`] leaves the function open.
pub const COMPLETION_OPENING: &str = "def ";

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
    use agentrt_plugin_sdk::llm::Role;

    #[test]
    fn completion_prompt_comments_the_task_and_opens_a_function() {
        let prompt = code_completion("add two numbers\nreturn the sum", Some("tests failed"));
        assert!(prompt.starts_with("# Task:\n# add two numbers\n# return the sum\n"));
        assert!(prompt.contains("# tests failed\n"));
        assert!(prompt.ends_with("\n\n\ndef "));
    }

    #[test]
    fn first_request_is_system_then_user_with_the_task() {
        let messages = code_request("add two numbers", None, None);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[1].role, Role::User);
        assert!(messages[1].content.contains("add two numbers"));
        assert!(!messages[1].content.contains("previous"));
    }

    #[test]
    fn retry_quotes_previous_code_and_feedback() {
        let previous = CodeArtifact::new("python", "def add(a, b):\n    return a - b", "");
        let messages = code_request(
            "add two numbers",
            Some("test_add failed: assert -1 == 3"),
            Some(&previous),
        );
        let user = &messages[1].content;
        assert!(user.contains("return a - b"));
        assert!(user.contains("test_add failed"));
        assert!(user.contains("corrected"));
    }

    #[test]
    fn tests_request_names_the_function() {
        let messages = tests_request("add", "def add(a, b):\n    return a + b", &["add".into()]);
        assert!(messages[1].content.contains("`add`"));
        let (prompt, open_assert) = tests_completion("def add(a, b): ...", "add");
        assert!(prompt.starts_with("```python\ndef add(a, b): ..."));
        assert!(prompt.ends_with("def test_add():\n    assert add("));
        assert_eq!(open_assert, "assert add(");
    }

    #[test]
    fn long_quotes_are_cut() {
        let long = "x".repeat(10 * MAX_QUOTED_CHARS);
        assert_eq!(quote(&long).len(), MAX_QUOTED_CHARS);
        assert_eq!(quote("  short  "), "short");
    }
}
