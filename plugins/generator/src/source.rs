//! Python source cut into top-level statements, and the clean-up of model answers built on it.
//!
//! Small models mix the function they were asked for with example calls, `print`s, loose
//! `assert`s, `if __name__ == "__main__":` blocks and copies of the function. The pipeline needs
//! two clean parts: the solution (definitions, imports, constants) and plain-`assert` test
//! functions named `test_*`. This module sorts each top-level statement into one of those, or
//! drops it. It is a line-based scanner, not a parser: it tracks strings, comments and brackets
//! just well enough to know where a top-level statement starts.

/// One top-level statement with the comments and decorators written just above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// Source lines, as written.
    pub lines: Vec<String>,
    /// What the statement is.
    pub kind: StatementKind,
}

/// What a top-level statement is, as far as assembling code and tests goes.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementKind {
    /// `import …` or `from … import …`.
    Import,
    /// `def name` (or `async def`) whose name does not start with `test`.
    Function(String),
    /// `def test…`: a test function.
    TestFunction(String),
    /// `class Name`.
    Class(String),
    /// `NAME = value` (also annotated).
    Assignment(String),
    /// `assert …` at top level.
    Assert,
    /// `if __name__ == "__main__":` and its body.
    MainGuard,
    /// A comment block with nothing after it.
    Comment,
    /// Anything else: calls, `print`, loops, bare expressions, prose.
    Other,
}

impl Statement {
    /// The statement's source, lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The first line that is not a comment or decorator.
    fn head(&self) -> &str {
        self.lines
            .iter()
            .map(|line| line.trim_start())
            .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('@'))
            .unwrap_or("")
    }
}

/// Cut `source` into top-level statements.
pub fn statements(source: &str) -> Vec<Statement> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    // Comments and decorators seen since the last statement; they belong to the next one.
    let mut pending: Vec<String> = Vec::new();
    let mut scanner = Scanner::default();
    for raw in source.lines() {
        let line = raw.trim_end().replace('\t', "    ");
        let continues = scanner.inside_statement();
        scanner.feed(&line);
        let top_level = !continues && !line.is_empty() && !line.starts_with(' ');
        if top_level {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || trimmed.starts_with('@') {
                pending.push(line);
                continue;
            }
            let mut group = std::mem::take(&mut pending);
            group.push(line);
            groups.push(group);
        } else if let Some(group) = groups.last_mut().filter(|_| pending.is_empty()) {
            group.push(line);
        } else if !line.trim().is_empty() {
            // Indented text before any statement, or after a dangling comment: keep it with the
            // comments so nothing is silently merged into the wrong statement.
            pending.push(line);
        }
    }
    let mut statements: Vec<Statement> = groups
        .into_iter()
        .map(|mut lines| {
            while lines.last().is_some_and(|line| line.trim().is_empty()) {
                lines.pop();
            }
            let kind = classify(&lines);
            Statement { lines, kind }
        })
        .collect();
    if !pending.is_empty() {
        statements.push(Statement {
            lines: pending,
            kind: StatementKind::Comment,
        });
    }
    statements
}

/// Sort a statement by its first line that is not a comment or decorator.
fn classify(lines: &[String]) -> StatementKind {
    let head = Statement {
        lines: lines.to_vec(),
        kind: StatementKind::Other,
    };
    let head = head.head();
    let def = head.strip_prefix("async ").unwrap_or(head);
    if let Some(rest) = def.strip_prefix("def ") {
        let name = identifier(rest);
        return if name.starts_with("test") {
            StatementKind::TestFunction(name)
        } else {
            StatementKind::Function(name)
        };
    }
    if let Some(rest) = head.strip_prefix("class ") {
        return StatementKind::Class(identifier(rest));
    }
    if head.starts_with("import ") || (head.starts_with("from ") && head.contains(" import ")) {
        return StatementKind::Import;
    }
    if head.starts_with("assert ") || head.starts_with("assert(") {
        return StatementKind::Assert;
    }
    if head.starts_with("if __name__") {
        return StatementKind::MainGuard;
    }
    if let Some(name) = assignment_target(head) {
        return StatementKind::Assignment(name);
    }
    StatementKind::Other
}

/// The leading identifier of `text`.
fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `NAME` for a line `NAME = …` or `NAME: type = …` (but not `NAME == …`).
fn assignment_target(line: &str) -> Option<String> {
    let name = identifier(line);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let rest = line[name.len()..].trim_start();
    let rest = match rest.strip_prefix(':') {
        Some(annotated) => &annotated[annotated.find('=')?..],
        None => rest,
    };
    (rest.starts_with('=') && !rest.starts_with("==")).then_some(name)
}

/// Tracks whether a line ends inside a bracket or a string, i.e. the statement goes on.
#[derive(Debug, Default)]
struct Scanner {
    depth: usize,
    /// The closing delimiter of an open triple-quoted string.
    triple: Option<&'static str>,
    /// A line ending in `\` continues the statement.
    backslash: bool,
}

impl Scanner {
    fn inside_statement(&self) -> bool {
        self.depth > 0 || self.triple.is_some() || self.backslash
    }

    fn feed(&mut self, line: &str) {
        let bytes = line.as_bytes();
        let mut i = 0;
        self.backslash = false;
        while i < bytes.len() {
            if let Some(close) = self.triple {
                match line.get(i..).and_then(|rest| rest.find(close)) {
                    Some(at) => {
                        i += at + 3;
                        self.triple = None;
                    }
                    None => return,
                }
                continue;
            }
            match bytes[i] {
                b'#' => return,
                b'(' | b'[' | b'{' => self.depth += 1,
                b')' | b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                quote @ (b'"' | b'\'') => {
                    let triple = if quote == b'"' { "\"\"\"" } else { "'''" };
                    if line.get(i..).is_some_and(|rest| rest.starts_with(triple)) {
                        self.triple = Some(triple);
                        i += 3;
                        continue;
                    }
                    // A one-line string: skip to its closing quote.
                    i += 1;
                    while i < bytes.len() && bytes[i] != quote {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'\\' if i + 1 == bytes.len() => self.backslash = true,
                _ => {}
            }
            i += 1;
        }
    }
}

/// Names of the functions and classes `source` defines at top level.
pub fn defined_names(source: &str) -> Vec<String> {
    statements(source)
        .into_iter()
        .filter_map(|statement| match statement.kind {
            StatementKind::Function(name) | StatementKind::Class(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// The solution and the tests found in one model answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    /// Imports, definitions and constants.
    pub code: String,
    /// `test_*` functions (loose asserts wrapped into one).
    pub tests: String,
}

/// Split an answer to "write the function" into solution code and any tests it contained.
///
/// Example calls, `print`s and `__main__` blocks are dropped: when the tests import the
/// solution they must not run, and they may fail.
pub fn split_solution(source: &str) -> Split {
    let statements = statements(source);
    let functions: Vec<String> = statements
        .iter()
        .filter_map(|s| match &s.kind {
            StatementKind::Function(name) | StatementKind::Class(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut code = Vec::new();
    let mut tests = Vec::new();
    let mut asserts = Vec::new();
    for statement in statements {
        match &statement.kind {
            StatementKind::Import | StatementKind::Function(_) => code.push(statement.text()),
            StatementKind::Class(name) if !name.starts_with("Test") => code.push(statement.text()),
            StatementKind::Assignment(_) if !calls_any(&statement.text(), &functions) => {
                code.push(statement.text());
            }
            StatementKind::TestFunction(_) => tests.push(statement.text()),
            StatementKind::Assert => asserts.push(statement.text()),
            _ => {}
        }
    }
    if !asserts.is_empty() {
        tests.push(wrap_asserts(&asserts));
    }
    Split {
        code: join_statements(&code),
        tests: join_statements(&tests),
    }
}

/// Clean an answer to "write tests for this code" so it runs next to `code` without pytest.
///
/// Keeps `test_*` functions, helper functions, imports (except pytest / unittest and imports of
/// names that `code` defines) and loose asserts (wrapped into one test function). Drops copies of
/// the solution's functions, which would shadow the real ones, and tests that need pytest.
pub fn clean_tests(answer: &str, code: &str) -> String {
    let solution_names = defined_names(code);
    let mut kept: Vec<String> = Vec::new();
    let mut asserts = Vec::new();
    let mut test_names: Vec<String> = Vec::new();
    let mut keep_test = |text: String, kept: &mut Vec<String>| {
        let Some(name) = runnable_test_name(&text) else {
            return;
        };
        let unique = unique_name(&name, &test_names);
        test_names.push(unique.clone());
        kept.push(if unique == name {
            text
        } else {
            text.replacen(&format!("def {name}"), &format!("def {unique}"), 1)
        });
    };
    for statement in statements(answer) {
        let text = statement.text();
        match &statement.kind {
            StatementKind::Import if !imports_forbidden_or_solution(&text, &solution_names) => {
                kept.push(text);
            }
            StatementKind::Class(name) if name.starts_with("Test") || text.contains("TestCase") => {
                for function in crate::unittest::convert_class(&text) {
                    keep_test(function, &mut kept);
                }
            }
            StatementKind::Function(name) | StatementKind::Class(name)
                if !solution_names.contains(name) =>
            {
                kept.push(text);
            }
            StatementKind::TestFunction(_) => keep_test(text, &mut kept),
            StatementKind::Assert => asserts.push(text),
            _ => {}
        }
    }
    if !asserts.is_empty() {
        keep_test(wrap_asserts(&asserts), &mut kept);
    }
    if test_names.is_empty() {
        return String::new();
    }
    join_statements(&kept)
}

/// The name of a test function that runs without a framework: no parameters (pytest fixtures),
/// no pytest, at least one `assert`.
fn runnable_test_name(function: &str) -> Option<String> {
    let header = function
        .lines()
        .find(|line| line.starts_with("def ") || line.starts_with("async def "))?;
    let name: String = header
        .trim_start_matches("async ")
        .trim_start_matches("def ")
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let no_parameters = header[header.find(&name)? + name.len()..]
        .trim_start()
        .starts_with("()");
    (name.starts_with("test")
        && no_parameters
        && !function.contains("pytest")
        && has_assert(function))
    .then_some(name)
}

/// Names of the top-level functions in `source` (tests excluded), public names first: the
/// function a task asks for rarely starts with `_`.
pub fn function_names(source: &str) -> Vec<String> {
    let mut names: Vec<String> = statements(source)
        .into_iter()
        .filter_map(|statement| match statement.kind {
            StatementKind::Function(name) => Some(name),
            _ => None,
        })
        .collect();
    names.sort_by_key(|name| name.starts_with('_'));
    names
}

/// One test function per distinct, complete `assert` line of `asserts`, at most `max`, named
/// `test_<function>_<n>`. Lines cut off mid-expression (at the token limit) are dropped.
pub fn asserts_to_tests(function: &str, asserts: &str, max: usize) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in asserts.lines().map(str::trim) {
        let mut scanner = Scanner::default();
        scanner.feed(line);
        let complete = !scanner.inside_statement() && !line.ends_with(',');
        if line.starts_with("assert ") && complete && !lines.contains(&line) {
            lines.push(line);
        }
    }
    let tests: Vec<String> = lines
        .iter()
        .take(max)
        .enumerate()
        .map(|(index, line)| format!("def test_{function}_{}():\n    {line}", index + 1))
        .collect();
    join_statements(&tests)
}

/// Number of `test_*` functions in `tests`.
pub fn count_tests(tests: &str) -> usize {
    statements(tests)
        .iter()
        .filter(|s| matches!(s.kind, StatementKind::TestFunction(_)))
        .count()
}

/// Whether `source` defines at least one top-level function with a body: a stub (`...` or
/// `pass` only) or the placeholder `function_name` from a prompt template does not count.
pub fn has_function(source: &str) -> bool {
    statements(source)
        .iter()
        .any(|statement| match &statement.kind {
            StatementKind::Function(name) => {
                let mut body = statement
                    .lines
                    .iter()
                    .skip_while(|line| {
                        !line.trim_start().starts_with("def ") && !line.contains(" def ")
                    })
                    .skip(1)
                    .map(|line| line.trim())
                    .filter(|line| !line.is_empty() && !line.starts_with('#'));
                name != "function_name" && body.any(|line| line != "..." && line != "pass")
            }
            _ => false,
        })
}

fn has_assert(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("assert ") || line.starts_with("assert(")
    })
}

/// `name`, or `name_2`, `name_3`, … if already taken.
fn unique_name(name: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == name) {
        return name.to_owned();
    }
    (2..)
        .map(|n| format!("{name}_{n}"))
        .find(|candidate| !taken.contains(candidate))
        .unwrap_or_else(|| name.to_owned())
}

fn imports_forbidden_or_solution(import: &str, solution_names: &[String]) -> bool {
    let words: Vec<&str> = import
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    let module = words.get(1).copied().unwrap_or("");
    let root = module.split('.').next().unwrap_or("");
    if matches!(root, "pytest" | "unittest") {
        return true;
    }
    // `from solution import add` (module name guessed by the model): the tests run next to the
    // code, so the names are already there.
    import.trim_start().starts_with("from ")
        && words
            .iter()
            .skip_while(|w| **w != "import")
            .skip(1)
            .any(|name| *name == "*" || solution_names.iter().any(|s| s == name))
}

/// Whether `text` calls one of `functions`.
fn calls_any(text: &str, functions: &[String]) -> bool {
    functions.iter().any(|name| {
        text.match_indices(name.as_str()).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].trim_start().chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                && after == Some('(')
        })
    })
}

fn wrap_asserts(asserts: &[String]) -> String {
    let mut body = String::from("def test_examples():\n");
    for assert in asserts {
        for line in assert.lines() {
            body.push_str("    ");
            body.push_str(line);
            body.push('\n');
        }
    }
    body.trim_end().to_owned()
}

fn join_statements(parts: &[String]) -> String {
    let mut out = String::new();
    let mut previous_one_line = false;
    for part in parts {
        let one_line = !part.contains('\n');
        if !out.is_empty() {
            // Runs of one-line statements (imports, constants) stay together; PEP 8 puts two
            // blank lines around everything else.
            out.push_str(if one_line && previous_one_line {
                "\n"
            } else {
                "\n\n\n"
            });
        }
        out.push_str(part);
        previous_one_line = one_line;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = r#"import math

# Computes the area.
def area(r: float) -> float:
    """Area of a circle.

Radius must be positive."""
    return math.pi * r ** 2

PI2 = math.pi * 2
value = area(2)
print(area(1))
assert area(1) == math.pi

def test_area():
    assert area(0) == 0

if __name__ == "__main__":
    print(area(3))
"#;

    fn kinds(source: &str) -> Vec<StatementKind> {
        statements(source).into_iter().map(|s| s.kind).collect()
    }

    #[test]
    fn statements_are_classified() {
        assert_eq!(
            kinds(MIXED),
            vec![
                StatementKind::Import,
                StatementKind::Function("area".into()),
                StatementKind::Assignment("PI2".into()),
                StatementKind::Assignment("value".into()),
                StatementKind::Other,
                StatementKind::Assert,
                StatementKind::TestFunction("test_area".into()),
                StatementKind::MainGuard,
            ]
        );
    }

    #[test]
    fn docstring_lines_at_column_zero_stay_in_the_function() {
        let function = &statements(MIXED)[1];
        assert!(
            function
                .text()
                .starts_with("# Computes the area.\ndef area")
        );
        assert!(function.text().contains("Radius must be positive."));
        assert!(function.text().ends_with("return math.pi * r ** 2"));
    }

    #[test]
    fn brackets_continue_a_statement() {
        let source = "DATA = [\n1,\n2,\n]\ndef f():\n    return DATA\n";
        assert_eq!(
            kinds(source),
            vec![
                StatementKind::Assignment("DATA".into()),
                StatementKind::Function("f".into())
            ]
        );
    }

    #[test]
    fn decorators_belong_to_the_next_definition() {
        let source = "import functools\n@functools.cache\ndef fib(n):\n    return n\n";
        let statements = statements(source);
        assert_eq!(statements[1].kind, StatementKind::Function("fib".into()));
        assert!(statements[1].text().starts_with("@functools.cache"));
    }

    #[test]
    fn brackets_inside_strings_and_comments_are_ignored() {
        let source = "def f():\n    s = \"(\"  # )(\n    return s\nx = ')'\n";
        assert_eq!(
            kinds(source),
            vec![
                StatementKind::Function("f".into()),
                StatementKind::Assignment("x".into())
            ]
        );
    }

    #[test]
    fn solution_keeps_definitions_and_moves_tests() {
        let split = split_solution(MIXED);
        assert!(split.code.contains("import math"));
        assert!(split.code.contains("def area"));
        assert!(split.code.contains("PI2 = math.pi * 2"));
        assert!(!split.code.contains("value = area(2)"));
        assert!(!split.code.contains("print"));
        assert!(!split.code.contains("__main__"));
        assert!(!split.code.contains("test_area"));
        assert!(split.tests.contains("def test_area():"));
        assert!(
            split
                .tests
                .contains("def test_examples():\n    assert area(1) == math.pi")
        );
    }

    #[test]
    fn tests_drop_copies_of_the_solution_and_pytest() {
        let code = "def add(a, b):\n    return a + b\n";
        let answer = "import pytest\nfrom solution import add\nimport math\n\n\
            def add(a, b):\n    return a - b\n\n\
            def test_add():\n    assert add(1, 2) == 3\n\n\
            def test_add():\n    assert add(0, 0) == 0\n\n\
            def test_raises():\n    with pytest.raises(TypeError):\n        add(1, None)\n\n\
            assert add(2, 2) == 4\n\
            test_add()\n";
        let tests = clean_tests(answer, code);
        assert!(!tests.contains("pytest"), "{tests}");
        assert!(!tests.contains("from solution"), "{tests}");
        assert!(!tests.contains("return a - b"), "{tests}");
        assert!(tests.contains("import math"));
        assert!(tests.contains("def test_add():"));
        assert!(tests.contains("def test_add_2():"));
        assert!(tests.contains("def test_examples():\n    assert add(2, 2) == 4"));
        assert!(!tests.contains("\ntest_add()"));
        assert_eq!(count_tests(&tests), 3);
    }

    #[test]
    fn unittest_classes_and_fixtures() {
        let code = "def add(a, b):\n    return a + b\n";
        let answer = "import unittest\n\n\
            class TestAdd(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(1, 2), 3)\n\n\
            def test_param(x):\n    assert add(x, 0) == x\n\n\
            if __name__ == '__main__':\n    unittest.main()\n";
        let tests = clean_tests(answer, code);
        assert_eq!(tests, "def test_add():\n    assert add(1, 2) == 3\n");
    }

    #[test]
    fn completed_asserts_become_one_test_each() {
        let asserts = "assert f(1) == 2\n    assert f(2) == 3\n    assert f(2) == 3\n    \
                       assert f([1,\n    assert f(3) == 4\n    assert f(4) == 5";
        assert_eq!(
            asserts_to_tests("f", asserts, 3),
            "def test_f_1():\n    assert f(1) == 2\n\n\n\
             def test_f_2():\n    assert f(2) == 3\n\n\n\
             def test_f_3():\n    assert f(3) == 4\n"
        );
        assert_eq!(asserts_to_tests("f", "assert f(", 3), "");
    }

    #[test]
    fn public_functions_come_first() {
        let code = "def _helper():\n    pass\n\ndef main_task():\n    pass\n\nclass K:\n    pass\n";
        assert_eq!(function_names(code), vec!["main_task", "_helper"]);
    }

    #[test]
    fn tests_without_test_functions_are_empty() {
        assert_eq!(clean_tests("print('hello')\n", "def f():\n    pass\n"), "");
        assert_eq!(
            clean_tests("def test_x():\n    pass\n", "def f():\n    pass\n"),
            ""
        );
    }

    #[test]
    fn assignments_and_annotations_are_recognised() {
        assert_eq!(assignment_target("x = 1"), Some("x".into()));
        assert_eq!(assignment_target("x: int = 1"), Some("x".into()));
        assert_eq!(assignment_target("x == 1"), None);
        assert_eq!(assignment_target("print(x)"), None);
    }

    #[test]
    fn function_detection() {
        assert!(has_function("def f():\n    return 1\n"));
        assert!(has_function("async def f():\n    return 1\n"));
        assert!(!has_function("print('no function')\n"));
        assert!(!has_function("def test_only():\n    assert True\n"));
        assert!(!has_function("def stub(x):\n    ...\n"));
        assert!(!has_function("def stub(x):\n    # todo\n    pass\n"));
        assert!(!has_function(
            "def function_name(arguments):\n    return 1\n"
        ));
        assert!(has_function("@cache\ndef f(x):\n    return x\n"));
    }
}
