//! The generator's steps: ask for the function, then for its tests, each with one second try.
//!
//! - Code: a chat asking for the function (quoting the previous attempt and the feedback on a
//!   retry); if the answer defines no function, one stricter chat; then `GEN_003`.
//! - Tests: a chat asking for `test_*` functions; if that gives none, a raw completion that
//!   continues `def test_f():\n    assert f(` after the code. Small models that cannot follow
//!   the instruction still continue code well; each assert line becomes its own test, so one
//!   wrong expected value fails one test, not all. Without usable tests the code is returned
//!   with empty tests rather than lost.
//!
//! A task written as code — imports and helpers, then a function's signature and docstring, as
//! HumanEval states its problems — gets the task's imports and helpers the answer does not
//! repeat: the answer is code for that file, and its tests run against it alone. (Asking to
//! "complete this function, keeping its name" instead was measured with `agentrt eval`: more
//! syntax errors, no fewer renamed functions; docs/BENCHMARKS.md.)
//!
//! Base models without a chat template (StarCoder) get the same steps as raw completions: the
//! task as comments heading a file that ends in `def `, then the assert completion for tests.
//!
//! The model is a [`Model`] so the whole flow runs in host unit tests with canned answers.

use agentrt_plugin_sdk::llm::{self, ChatMessage, Sampling};
use agentrt_plugin_sdk::{CodeArtifact, GenerationRequest, PipelineError, Stage, log};

use crate::{extract, prompts, source};

/// The model as the flow sees it: the host's in the plugin, canned answers in tests.
pub trait Model {
    /// Answer a conversation (the host applies the chat template).
    fn chat(&mut self, messages: &[ChatMessage], sampling: Sampling) -> Result<String, llm::Error>;
    /// Continue a raw prompt.
    fn complete(&mut self, prompt: &str, sampling: Sampling) -> Result<String, llm::Error>;
    /// Whether the model has a chat template; base models are only given raw prompts.
    fn supports_chat(&mut self) -> bool {
        true
    }
}

/// Code for "the answer contained no usable code".
pub const NO_USABLE_CODE: &str = "GEN_003";
/// Code for a request the generator cannot serve (e.g. another language).
pub const INVALID_INPUT: &str = "VAL_002";
/// Code for a request without a task.
pub const MISSING_FIELD: &str = "VAL_003";

/// Low temperature: small models drift into prose quickly.
const TEMPERATURE: f32 = 0.2;
/// Fixed seed so a request is reproducible; retries of the pipeline add the attempt number.
const SEED: u64 = 42;
const CODE_MAX_TOKENS: u32 = 320;
const TESTS_MAX_TOKENS: u32 = 256;
const ASSERTS_MAX_TOKENS: u32 = 96;
/// Most tests taken from a completion; small models repeat and drift after a few lines.
const MAX_COMPLETED_TESTS: usize = 3;

/// Produce code and tests for `request`.
pub fn generate(
    request: &GenerationRequest,
    model: &mut dyn Model,
) -> Result<CodeArtifact, PipelineError> {
    let attempt = request.attempt.max(1);
    let fail = |code: &str, message: String| {
        Err(PipelineError::new(code, message, Stage::Generate).on_attempt(attempt))
    };
    let language = request.language.trim().to_lowercase();
    if !matches!(language.as_str(), "" | "python") {
        return fail(
            INVALID_INPUT,
            format!("the default generator writes Python only, not `{language}`"),
        );
    }
    let task = request.task_description.trim();
    if task.is_empty() {
        return fail(MISSING_FIELD, "the task description is empty".to_owned());
    }

    let seed = SEED + u64::from(attempt - 1);
    let code_sampling = || {
        Sampling::default()
            .max_tokens(CODE_MAX_TOKENS)
            .temperature(TEMPERATURE)
            .seed(seed)
            .stop([
                "\nif __name__",
                "\n# Example usage",
                "\n# Test",
                // No stop at a fence: "\n```\n" also matches an opening fence without a
                // language after a line of prose, and would cut the answer before its code.
            ])
    };
    let llm_error = |error: llm::Error| {
        error
            .into_pipeline_error(Stage::Generate)
            .on_attempt(attempt)
    };

    let chat = model.supports_chat();
    // A task written as code (imports, helpers, a signature and a docstring).
    let stub = source::stub_in(task);
    let mut split = if chat {
        let first =
            prompts::code_request(task, request.feedback.as_deref(), request.previous.as_ref());
        solution(&model.chat(&first, code_sampling()).map_err(llm_error)?)
    } else {
        complete_code(task, request.feedback.as_deref(), code_sampling(), model)
            .map_err(llm_error)?
    };
    if split.is_none() {
        log::warn("answer had no usable code; retrying with a stricter prompt");
        split = if chat {
            let strict = prompts::strict_code_request(task);
            solution(&model.chat(&strict, code_sampling()).map_err(llm_error)?)
        } else {
            // A base model has no stricter instruction to follow; sample again instead.
            let resampled = code_sampling().seed(seed + 1000);
            complete_code(task, request.feedback.as_deref(), resampled, model).map_err(llm_error)?
        };
    }
    let Some(mut split) = split else {
        return fail(
            NO_USABLE_CODE,
            "model answer contained no usable code (no Python function), twice".to_owned(),
        );
    };
    if let Some(stub) = &stub {
        // The imports and helpers the task gave, which the answer may use without repeating.
        split.code = source::with_stub_context(stub, &split.code);
    }

    let tests = write_tests(task, &split.code, seed, chat, model);
    // Tests the model put in its first answer are kept too, after the dedicated ones.
    let tests = merge_tests(&tests, &split.tests, &split.code);
    if tests.is_empty() {
        log::warn("no usable tests; returning the code without tests");
    }
    Ok(CodeArtifact::new("python", split.code, tests))
}

/// The function a base model writes after the task as comments.
fn complete_code(
    task: &str,
    feedback: Option<&str>,
    sampling: Sampling,
    model: &mut dyn Model,
) -> Result<Option<source::Split>, llm::Error> {
    let prompt = prompts::code_completion(task, feedback);
    // A file goes on after the function: stop at the next top-level statement.
    let sampling = sampling.stop(["\n\n\n", "\nif __name__", "\nprint(", "\n# Test", "\n```"]);
    let continuation = model.complete(&prompt, sampling)?;
    Ok(solution(&format!(
        "{}{continuation}",
        prompts::COMPLETION_OPENING
    )))
}

/// The solution in a model answer, if it defines a function.
fn solution(answer: &str) -> Option<source::Split> {
    let code = extract::python_code(answer)?;
    let split = source::split_solution(&code);
    source::has_function(&split.code).then_some(split)
}

/// Ask for tests, then complete them as code. A model failure here leaves the code without tests
/// rather than losing it.
fn write_tests(task: &str, code: &str, seed: u64, chat: bool, model: &mut dyn Model) -> String {
    let functions = source::function_names(code);
    let sampling = |max_tokens: u32| {
        Sampling::default()
            .max_tokens(max_tokens)
            .temperature(TEMPERATURE)
            .seed(seed)
    };
    let request = prompts::tests_request(task, code, &functions);
    let answer = if chat {
        model.chat(&request, sampling(TESTS_MAX_TOKENS).stop(["\nif __name__"]))
    } else {
        Ok(String::new())
    };
    match answer {
        Ok(answer) => {
            let tests = extract::python_code(&answer)
                .map(|tests| source::clean_tests(&tests, code))
                .unwrap_or_default();
            if !tests.is_empty() {
                return tests;
            }
            if chat {
                log::warn("test answer had no usable test functions; completing tests as code");
            }
        }
        Err(error) => {
            log::warn(format!(
                "model failed while writing tests: {}",
                error.message()
            ));
            return String::new();
        }
    }
    let Some(function) = functions.first() else {
        return String::new();
    };
    let (prompt, open_assert) = prompts::tests_completion(code, function);
    let stop = ["\n\n", "```", "\ndef ", "\nif __name__"];
    match model.complete(&prompt, sampling(ASSERTS_MAX_TOKENS).stop(stop)) {
        Ok(continuation) => source::asserts_to_tests(
            function,
            &format!("{open_assert}{continuation}"),
            MAX_COMPLETED_TESTS,
        ),
        Err(error) => {
            log::warn(format!(
                "model failed while completing tests: {}",
                error.message()
            ));
            String::new()
        }
    }
}

/// `dedicated` tests followed by the cleaned `from_solution` ones (renamed where names clash).
fn merge_tests(dedicated: &str, from_solution: &str, code: &str) -> String {
    if from_solution.trim().is_empty() {
        return dedicated.to_owned();
    }
    let combined = format!("{dedicated}\n\n{from_solution}");
    source::clean_tests(&combined, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(task: &str) -> GenerationRequest {
        GenerationRequest {
            task_description: task.to_owned(),
            language: "python".to_owned(),
            attempt: 1,
            feedback: None,
            previous: None,
        }
    }

    /// A model that returns canned answers in turn and records each prompt (the last chat
    /// message, or the raw prompt).
    struct Scripted {
        answers: std::vec::IntoIter<&'static str>,
        prompts: Vec<String>,
    }

    impl Scripted {
        fn new(answers: Vec<&'static str>) -> Self {
            Self {
                answers: answers.into_iter(),
                prompts: Vec::new(),
            }
        }

        fn answer(&mut self, prompt: String) -> Result<String, llm::Error> {
            self.prompts.push(prompt);
            Ok(self.answers.next().unwrap_or("").to_owned())
        }
    }

    impl Model for Scripted {
        fn chat(&mut self, messages: &[ChatMessage], _: Sampling) -> Result<String, llm::Error> {
            let last = messages.last().map(|m| m.content.clone());
            self.answer(last.unwrap_or_default())
        }

        fn complete(&mut self, prompt: &str, _: Sampling) -> Result<String, llm::Error> {
            self.answer(prompt.to_owned())
        }
    }

    /// A model that always fails.
    struct Broken;

    impl Model for Broken {
        fn chat(&mut self, _: &[ChatMessage], _: Sampling) -> Result<String, llm::Error> {
            Err(llm::Error::Timeout)
        }

        fn complete(&mut self, _: &str, _: Sampling) -> Result<String, llm::Error> {
            Err(llm::Error::Timeout)
        }
    }

    #[test]
    fn code_then_tests() {
        let mut model = Scripted::new(vec![
            "```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```",
            "```python\ndef test_add():\n    assert add(1, 2) == 3\n```",
        ]);
        let artifact = generate(&request("add two numbers"), &mut model).expect("artifact");
        assert_eq!(artifact.language, "python");
        assert_eq!(artifact.code, "def add(a, b):\n    return a + b\n");
        assert_eq!(
            artifact.tests,
            "def test_add():\n    assert add(1, 2) == 3\n"
        );
        assert_eq!(model.prompts.len(), 2);
    }

    #[test]
    fn a_task_written_as_a_stub_is_completed_with_the_tasks_imports_and_helpers() {
        let task = "from typing import List\n\n\ndef _double(x: int) -> int:\n    return 2 * x\n\n\n\
                    def doubled(xs: List[int]) -> List[int]:\n    \"\"\"Every x twice.\"\"\"\n";
        let mut model = Scripted::new(vec![
            // An echo of the stub is no code: the stricter prompt follows.
            "```python\ndef doubled(xs: List[int]) -> List[int]:\n    \"\"\"Every x twice.\"\"\"\n```",
            "```python\ndef doubled(xs: List[int]) -> List[int]:\n    return [_double(x) for x in xs]\n```",
            "```python\ndef test_doubled():\n    assert doubled([1]) == [2]\n```",
        ]);
        let artifact = generate(&request(task), &mut model).expect("artifact");
        assert!(
            model.prompts[1].contains("Start with `def`"),
            "{}",
            model.prompts[1]
        );
        assert_eq!(
            artifact.code,
            "from typing import List\n\n\ndef _double(x: int) -> int:\n    return 2 * x\n\n\n\
             def doubled(xs: List[int]) -> List[int]:\n    return [_double(x) for x in xs]\n"
        );
    }

    #[test]
    fn prose_answer_is_retried_with_a_stricter_prompt() {
        let mut model = Scripted::new(vec![
            "Adding numbers is easy, just use the plus sign.",
            "def add(a, b):\n    return a + b",
            "def test_add():\n    assert add(2, 2) == 4",
        ]);
        let artifact = generate(&request("add two numbers"), &mut model).expect("artifact");
        assert!(artifact.code.contains("def add"));
        assert!(model.prompts[1].contains("Start with `def`"));
    }

    #[test]
    fn two_unusable_answers_give_gen_002() {
        let mut model = Scripted::new(vec!["no idea", "still no idea"]);
        let error = generate(&request("add two numbers"), &mut model).expect_err("error");
        assert_eq!(error.code, NO_USABLE_CODE);
        assert_eq!(error.stage, Stage::Generate);
    }

    #[test]
    fn unusable_test_chat_falls_back_to_completing_asserts() {
        let mut model = Scripted::new(vec![
            "```python\ndef add(a, b):\n    return a + b\n```",
            "I would test it by hand.",
            "1, 2) == 3\n    assert add(0, 0) == 0\n    assert add(0, 0) == 0\n    assert add(5,",
        ]);
        let artifact = generate(&request("add"), &mut model).expect("artifact");
        assert!(model.prompts[2].ends_with("def test_add():\n    assert add("));
        assert_eq!(
            artifact.tests,
            "def test_add_1():\n    assert add(1, 2) == 3\n\n\n\
             def test_add_2():\n    assert add(0, 0) == 0\n"
        );
    }

    #[test]
    fn no_usable_tests_leave_the_code_with_empty_tests() {
        let mut model = Scripted::new(vec![
            "```python\ndef add(a, b):\n    return a + b\n```",
            "I would test it by hand.",
            "",
        ]);
        let artifact = generate(&request("add"), &mut model).expect("artifact");
        assert!(artifact.code.contains("def add"));
        assert_eq!(artifact.tests, "");
    }

    #[test]
    fn tests_written_with_the_code_are_kept() {
        let mut model = Scripted::new(vec![
            "```python\ndef add(a, b):\n    return a + b\n\nassert add(1, 1) == 2\n```",
            "```python\ndef test_add():\n    assert add(1, 2) == 3\n```",
        ]);
        let artifact = generate(&request("add"), &mut model).expect("artifact");
        assert!(artifact.tests.contains("def test_add():"));
        assert!(artifact.tests.contains("def test_examples():"));
        assert!(!artifact.code.contains("assert"));
    }

    #[test]
    fn code_in_a_list_item_is_used() {
        let mut model = Scripted::new(vec![
            "Steps:\n1. The function:\n   ```python\n   def add(a, b):\n       return a + b\n   ```\n\
             2. Call it.",
            "```python\ndef test_add():\n    assert add(1, 2) == 3\n```",
        ]);
        let artifact = generate(&request("add"), &mut model).expect("artifact");
        assert_eq!(artifact.code, "def add(a, b):\n    return a + b\n");
    }

    #[test]
    fn retry_prompt_carries_feedback_and_previous_code() {
        let mut model = Scripted::new(vec!["def add(a, b):\n    return a + b"]);
        let mut retry = request("add");
        retry.attempt = 2;
        retry.feedback = Some("test_add failed".to_owned());
        retry.previous = Some(CodeArtifact::new(
            "python",
            "def add(a, b):\n    return a - b",
            "",
        ));
        generate(&retry, &mut model).expect("artifact");
        assert!(model.prompts[0].contains("test_add failed"));
        assert!(model.prompts[0].contains("return a - b"));
    }

    /// A base model: no chat template, so only raw completions.
    struct Base(Scripted);

    impl Model for Base {
        fn chat(&mut self, _: &[ChatMessage], _: Sampling) -> Result<String, llm::Error> {
            panic!("a base model must not be sent a chat")
        }

        fn complete(&mut self, prompt: &str, sampling: Sampling) -> Result<String, llm::Error> {
            self.0.complete(prompt, sampling)
        }

        fn supports_chat(&mut self) -> bool {
            false
        }
    }

    #[test]
    fn base_models_complete_the_function_and_its_asserts() {
        let mut model = Base(Scripted::new(vec![
            "add(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n    return a + b",
            "1, 2) == 3\n    assert add(2, 2) == 4",
        ]));
        let artifact = generate(&request("add two numbers"), &mut model).expect("artifact");
        assert!(artifact.code.starts_with("def add(a: int, b: int) -> int:"));
        assert!(
            artifact.tests.contains("assert add(1, 2) == 3"),
            "{}",
            artifact.tests
        );
        assert!(model.0.prompts[0].starts_with("# Task:\n# add two numbers\n"));
        assert!(model.0.prompts[0].ends_with("def "));
        assert!(model.0.prompts[1].ends_with("assert add("));
    }

    #[test]
    fn base_models_get_a_second_sample_then_gen_003() {
        let mut model = Base(Scripted::new(vec!["!!!", "???"]));
        let error = generate(&request("add"), &mut model).expect_err("no code");
        assert_eq!(error.code, NO_USABLE_CODE);
        assert_eq!(model.0.prompts.len(), 2);
    }

    #[test]
    fn model_errors_become_pipeline_errors() {
        let error = generate(&request("add"), &mut Broken).expect_err("error");
        assert_eq!(error.code, "PLUGIN_004");
    }

    #[test]
    fn other_languages_and_empty_tasks_are_invalid_input() {
        let mut model = Scripted::new(vec![]);
        let mut rust = request("add");
        rust.language = "rust".to_owned();
        assert_eq!(
            generate(&rust, &mut model).expect_err("error").code,
            INVALID_INPUT
        );
        assert_eq!(
            generate(&request("  "), &mut model)
                .expect_err("error")
                .code,
            MISSING_FIELD
        );
        assert!(
            model.prompts.is_empty(),
            "invalid input must not reach the model"
        );
    }
}
