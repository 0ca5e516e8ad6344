//! The Python quality check's syntax verdict against CPython's own `ast.parse` on a corpus of
//! valid and broken files (3.12-only syntax included). Expected verdicts were produced by
//! CPython 3.12 for WASI — see `tests/fixtures/python-syntax/README.md`.

use serde_json::{Value, json};

use crate::harness::{default_server, repo_root};

#[test]
fn syntax_verdicts_agree_with_cpython() {
    let dir = repo_root().join("tests/fixtures/python-syntax");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("json");
    let cases = expected.as_object().expect("object of files");
    assert!(cases.len() >= 30, "corpus too small: {}", cases.len());
    let mut disagreements = Vec::new();
    for (file, want) in cases {
        let code = std::fs::read_to_string(dir.join(file)).expect("corpus file");
        let (status, body) = default_server().post(
            "/check",
            &json!({"code": code, "checks": ["python-quality"]}),
        );
        assert_eq!(status, 200, "{file}: {body}");
        let syntax: Vec<&Value> = body["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["rule_id"] == "syntax-error")
            .collect();
        let valid = want["valid"].as_bool().expect("valid flag");
        match (valid, syntax.first()) {
            (true, None) => {}
            (false, Some(f)) if f["line"] == want["line"] && f["column"] == want["column"] => {}
            (_, got) => disagreements.push(format!("{file}: CPython {want}, check {got:?}")),
        }
    }
    assert!(
        disagreements.is_empty(),
        "disagreements with CPython:\n{}",
        disagreements.join("\n")
    );
}
