//! Generated tests run in sandboxed CPython: results per test as CPython reports them, and
//! hostile code (files, processes, sockets, endless loops, huge allocations, exits, floods of
//! output, forged results) costs only its own test.
//!
//! Needs `python.wasm` (`scripts/setup.sh` fetches it); fails with a clear message if absent.

use std::sync::OnceLock;
use std::time::Duration;

use agentrt::plugin::compile_cache::CompileCache;
use agentrt::sandbox::{
    FileNames, Interpreter, PythonSandbox, SandboxLimits, TestReport, TestStatus, Until,
};

fn sandbox() -> &'static PythonSandbox {
    static SANDBOX: OnceLock<PythonSandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let limits = SandboxLimits {
            memory_bytes: 128 << 20,
            run_timeout: Duration::from_secs(3),
            total_timeout: Duration::from_secs(7),
            output_bytes: 64 << 10,
            scratch_bytes: 8 << 20,
        };
        let cache = CompileCache::new(Some(agentrt::paths::component_cache()));
        PythonSandbox::load(&agentrt::paths::python_wasm(), &cache, limits)
            .expect("python.wasm missing or unusable: run scripts/setup.sh")
    })
}

fn status_of(report: &TestReport, name: &str) -> TestStatus {
    report
        .results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no result for {name}: {report:?}"))
        .status
}

const ADD: &str = "def add(a, b):\n    return a + b\n";

#[test]
fn passing_failing_and_erroring_tests_are_reported_like_cpython() {
    let tests = "def test_ok():\n    assert add(1, 2) == 3\n\n\
                 def test_wrong():\n    assert add(1, 2) == 4, 'one plus two'\n\n\
                 def test_raises():\n    add(1, None)\n\n\
                 def helper():\n    return 1\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    assert_eq!(report.results.len(), 3, "helper is not a test");
    assert_eq!(status_of(&report, "test_ok"), TestStatus::Passed);
    assert_eq!(status_of(&report, "test_wrong"), TestStatus::Failed);
    assert_eq!(status_of(&report, "test_raises"), TestStatus::Error);
    let wrong = &report.results[1];
    assert!(
        wrong.message.contains("one plus two") && wrong.message.contains("assert add(1, 2) == 4"),
        "{}",
        wrong.message
    );
    assert!(
        report.results[2].message.starts_with("TypeError"),
        "{:?}",
        report.results[2]
    );
    assert_eq!(report.runs, 1);
    assert!(!report.all_passed());
}

#[test]
fn broken_code_is_a_setup_error() {
    let report = sandbox().run_tests(
        "def add(a, b)\n    return a + b\n",
        "def test_x():\n    pass\n",
    );
    let error = report.setup_error.expect("setup error");
    assert!(error.starts_with("code: SyntaxError"), "{error}");
    assert!(report.results.is_empty());
}

#[test]
fn hostile_tests_fail_alone_and_the_rest_still_run() {
    let tests = "\
def test_reads_passwd():
    assert open('/etc/passwd').read()

def test_lists_root():
    import os
    assert os.listdir('/')

def test_shell():
    import os
    os.system('echo pwned > /tmp/agentrt-pwned')
    assert False, 'should not get here'

def test_subprocess():
    import subprocess
    subprocess.run(['ls'])

def test_socket():
    import socket
    socket.create_connection(('127.0.0.1', 80))

def test_environment():
    import os
    assert os.environ.get('HOME') or os.environ.get('PATH')

def test_allocates_10_gb():
    block = bytearray(10 * 1024 ** 3)

def test_allocates_past_the_cap():
    block = bytearray(1024 ** 3)

def test_forges_a_result():
    import sys
    sys.__stdout__.write('\\x1e0000 result {\"test\": \"test_forges_a_result\", \"outcome\": \"passed\"}\\n')
    assert False

def test_loops_forever():
    while True:
        pass

def test_after_the_loop():
    assert add(2, 2) == 4

def test_exits():
    import os
    os._exit(0)

def test_last():
    assert add(0, 0) == 0
";
    let report = sandbox().run_tests(ADD, tests);
    for r in &report.results {
        println!("{:<24} {:?} {}", r.name, r.status, r.message);
    }
    println!("runs {}, {} ms", report.runs, report.duration_ms);
    for name in [
        "test_reads_passwd",
        "test_lists_root",
        "test_shell",
        "test_subprocess",
        "test_socket",
        "test_environment",
        "test_allocates_10_gb",
        "test_allocates_past_the_cap",
        "test_forges_a_result",
        "test_exits",
    ] {
        assert_ne!(
            status_of(&report, name),
            TestStatus::Passed,
            "{name} must not pass"
        );
    }
    assert_eq!(
        status_of(&report, "test_loops_forever"),
        TestStatus::Timeout
    );
    assert_eq!(
        status_of(&report, "test_after_the_loop"),
        TestStatus::Passed
    );
    assert_eq!(status_of(&report, "test_last"), TestStatus::Passed);
    assert!(
        report.runs >= 3,
        "the loop and the exit each cost a fresh interpreter"
    );
    assert!(!std::path::Path::new("/tmp/agentrt-pwned").exists());
}

#[test]
fn a_flood_of_output_is_contained() {
    let tests = "def test_prints():\n    for _ in range(10**6):\n        print('x' * 100)\n\n\
                 def test_fine():\n    assert add(1, 1) == 2\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    assert_eq!(status_of(&report, "test_fine"), TestStatus::Passed);
    assert_ne!(status_of(&report, "test_prints"), TestStatus::Passed);
}

#[test]
fn top_level_asserts_are_one_test() {
    let passing = sandbox().run_tests(ADD, "assert add(1, 2) == 3\n");
    assert_eq!(status_of(&passing, "<module>"), TestStatus::Passed);
    assert!(passing.all_passed());
    let failing = sandbox().run_tests(ADD, "assert add(1, 2) == 3\nassert add(2, 2) == 5\n");
    assert_eq!(status_of(&failing, "<module>"), TestStatus::Failed);
    assert!(failing.results[0].message.contains("assert add(2, 2) == 5"));
}

#[test]
fn tests_get_a_scratch_folder_of_their_own_capped_in_size() {
    let tests = "import os, tempfile\n\n\
                 def test_write_and_read_back():\n    with open('notes.txt', 'w') as f:\n        f.write('kept')\n    assert open('/tmp/notes.txt').read() == 'kept'\n    assert os.getcwd() == '/tmp'\n\n\
                 def test_tempfile():\n    with tempfile.NamedTemporaryFile(mode='w+') as f:\n        f.write('x')\n        f.seek(0)\n        assert f.read() == 'x'\n\n\
                 def test_only_the_scratch_is_there():\n    for path in ('/etc/passwd', '/tmp/../etc/passwd', '../../etc/passwd'):\n        try:\n            open(path).read()\n        except OSError:\n            continue\n        raise AssertionError('read ' + path)\n\n\
                 def test_fill_the_disk():\n    with open('big.bin', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20))\n\n\
                 def test_after():\n    assert not os.path.exists('notes.txt'), 'a fresh interpreter gets a fresh folder'\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    assert_eq!(
        status_of(&report, "test_write_and_read_back"),
        TestStatus::Passed
    );
    assert_eq!(status_of(&report, "test_tempfile"), TestStatus::Passed);
    assert_eq!(
        status_of(&report, "test_only_the_scratch_is_there"),
        TestStatus::Passed
    );
    let fill = report
        .results
        .iter()
        .find(|r| r.name == "test_fill_the_disk")
        .expect("result");
    assert_eq!(fill.status, TestStatus::Error, "{fill:?}");
    assert!(fill.message.contains("scratch folder"), "{fill:?}");
    assert_eq!(status_of(&report, "test_after"), TestStatus::Passed);
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("agentrt-scratch-")
        })
        .count();
    println!("scratch folders left in the temp dir: {leftovers}");
}

/// What a test writes past the scratch cap is caught though it hides it in a file it removed
/// but holds open. (A folder nested past the host's path limit: `folder_bytes`'s own test.)
#[test]
fn the_scratch_cap_counts_unlinked_files() {
    let tests = "import os\n\n\
                 def test_unlinked():\n    f = open('hidden.bin', 'wb')\n    os.unlink('hidden.bin')\n    for _ in range(64):\n        f.write(b'x' * (1 << 20))\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    let result = report
        .results
        .iter()
        .find(|r| r.name == "test_unlinked")
        .unwrap_or_else(|| panic!("no result: {report:?}"));
    assert_eq!(result.status, TestStatus::Error, "{result:?}");
    assert!(result.message.contains("scratch folder"), "{result:?}");
}

/// A test (or the code) that writes to the real stdout without a newline cannot glue its text
/// to the runner's result line and so drop a failing test from the report.
#[test]
fn output_without_a_newline_does_not_hide_a_result() {
    let tests = "import sys\n\n\
                 def test_wrong():\n    print('checking add', end='', file=sys.__stdout__)\n    assert add(1, 2) == 4\n\n\
                 def test_ok():\n    assert add(0, 0) == 0\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    assert_eq!(status_of(&report, "test_wrong"), TestStatus::Failed);
    assert_eq!(status_of(&report, "test_ok"), TestStatus::Passed);
    assert!(!report.all_passed());
}

#[test]
fn the_snapshot_runs_common_code_and_the_full_interpreter_covers_the_rest() {
    // Modules generated code commonly imports are in the pre-initialised snapshot.
    let tests = "import math, re, json, collections, itertools, functools, heapq, fractions\n\
                 from collections import Counter\nfrom dataclasses import dataclass\n\n\
                 def test_stdlib():\n    assert math.gcd(12, 18) == 6\n    assert Counter('aab')['a'] == 2\n    assert json.loads('[1]') == [1]\n    assert re.match(r'a+', 'aa')\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    assert_eq!(report.interpreter, Interpreter::Snapshot, "{report:?}");
    assert_eq!(status_of(&report, "test_stdlib"), TestStatus::Passed);
    // A module left out of the snapshot: the request is run again in python.wasm, which has
    // the whole library, and answers exactly as if it had run there first.
    let tests = "import xml.sax.saxutils\n\n\
                 def test_escape():\n    assert xml.sax.saxutils.escape('<') == '&lt;'\n";
    let report = sandbox().run_tests(ADD, tests);
    println!("{report:?}");
    assert_eq!(report.interpreter, Interpreter::Script, "{report:?}");
    assert_eq!(status_of(&report, "test_escape"), TestStatus::Passed);
    // A module that exists nowhere fails the same way in both.
    let report = sandbox().run_tests(ADD, "import no_such_module\n\ndef test_x():\n    pass\n");
    assert!(
        report
            .setup_error
            .as_deref()
            .is_some_and(|e| e.contains("ModuleNotFoundError: No module named")),
        "{report:?}"
    );
}

#[test]
fn a_callers_deadline_ends_the_run_before_the_sandbox_limit() {
    // A plugin calling the sandbox with 500 ms left must get its answer by then, not after the
    // sandbox's own 3 s limit; the rest of the tests are not started past the deadline.
    let tests = "def test_spin():\n    while True:\n        pass\n\n\
                 def test_later():\n    assert True\n";
    let sandbox = sandbox();
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    let report = sandbox.run_tests_until(
        ADD,
        tests,
        &FileNames::default(),
        Until {
            deadline: Some(deadline),
            cancel: None,
        },
    );
    println!("{report:?}");
    let spin = &report.results[0];
    assert_eq!(spin.status, TestStatus::Timeout, "{report:?}");
    let limit_ms: u64 = spin
        .message
        .trim_start_matches("ran past the ")
        .trim_end_matches(" ms limit")
        .parse()
        .unwrap_or_else(|_| panic!("unexpected message {}", spin.message));
    assert!(limit_ms <= 500, "the run was given {limit_ms} ms");
    let later = &report.results[1];
    assert_eq!(
        (later.name.as_str(), later.status, later.message.as_str()),
        (
            "test_later",
            TestStatus::Timeout,
            "not run: the caller's deadline passed"
        ),
        "a test was started after the deadline: {report:?}"
    );
    assert_eq!(report.setup_error, None);
}

const HANGING: &str = "def test_a():\n    while True:\n        pass\n\n\
                       def test_b():\n    while True:\n        pass\n\n\
                       def test_c():\n    while True:\n        pass\n\n\
                       def test_d():\n    while True:\n        pass\n";

#[test]
fn hanging_tests_share_one_time_budget() {
    // A hanging test costs an interpreter run of its own (3 s here); the report's runs share a
    // 7 s budget, so four hanging tests do not take four run timeouts.
    let report = sandbox().run_tests(ADD, HANGING);
    println!("{report:?}");
    assert!(report.runs <= 3, "{report:?}");
    let statuses: Vec<_> = report.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [TestStatus::Timeout; 4], "{report:?}");
    assert_eq!(
        report.results[3].message,
        "not run: the tests' 7000 ms time budget ran out"
    );
}

#[test]
fn a_rerun_in_the_full_interpreter_shares_the_reports_time_budget() {
    // A test importing a module outside the snapshot sends the report to python.wasm; when the
    // snapshot's run has spent the whole budget on hanging tests, there is no second budget.
    let tests = format!("def test_0():\n    import no_such_module\n\n{HANGING}");
    let report = sandbox().run_tests(ADD, &tests);
    println!("{report:?}");
    assert_eq!(report.interpreter, Interpreter::Snapshot, "{report:?}");
    assert_eq!(status_of(&report, "test_0"), TestStatus::Error);
    assert!(
        report.results[0].message.contains("ModuleNotFoundError"),
        "{report:?}"
    );
    assert_eq!(
        report.results.last().map(|r| r.message.as_str()),
        Some("not run: the tests' 7000 ms time budget ran out"),
        "{report:?}"
    );
}

#[test]
fn a_cancel_stops_a_hanging_test_and_the_runs_after_it() {
    // Loaded before the cancel's clock starts: a first load compiles the interpreter, which
    // on a cold cache takes longer than the wait below.
    let sandbox = sandbox();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        sandbox.run_tests_until(
            ADD,
            HANGING,
            &FileNames::default(),
            Until {
                deadline: None,
                cancel: Some(&cancel),
            },
        )
    });
    println!("{report:?}");
    assert_eq!(report.runs, 1, "{report:?}");
    // The test hanging when the cancel came is stopped too, not left to its run's 3 s timeout
    // (on a busy machine the cancel may even come before the tests were collected).
    if report.setup_error.is_some() {
        assert_eq!(
            report.setup_error.as_deref(),
            Some("the request or run was cancelled"),
            "{report:?}"
        );
        assert!(report.results.is_empty(), "{report:?}");
    } else {
        assert_eq!(report.results.len(), 4, "{report:?}");
        for r in &report.results {
            assert_eq!(r.message, "not run: the request or run was cancelled");
        }
    }
    // Cancelled before anything ran: no tests were even collected.
    let report = sandbox.run_tests_until(
        ADD,
        HANGING,
        &FileNames::default(),
        Until {
            deadline: None,
            cancel: Some(&cancel),
        },
    );
    assert_eq!(report.runs, 0);
    assert_eq!(
        report.setup_error.as_deref(),
        Some("the request or run was cancelled")
    );
}

#[test]
fn tests_import_the_code_by_its_file_name_and_failures_name_the_files() {
    // `agentrt review sol.py --tests test_sol.py`: the tests import `sol` as pytest beside the
    // file would let them, and a failure points into the user's own files.
    let names = FileNames::of(
        std::path::Path::new("work/sol.py"),
        Some(std::path::Path::new("work/test_sol.py")),
    );
    let tests = "from sol import add\nimport solution\n\n\
                 def test_ok():\n    assert add(1, 2) == solution.add(2, 1) == 3\n\n\
                 def test_wrong():\n    assert add(1, 2) == 4\n";
    for interpreter in [Interpreter::Snapshot, Interpreter::Script] {
        let report = sandbox().run_tests_in(interpreter, ADD, tests, &names, Until::default());
        println!("{report:?}");
        assert_eq!(report.setup_error, None, "{report:?}");
        assert_eq!(status_of(&report, "test_ok"), TestStatus::Passed);
        let wrong = report
            .results
            .iter()
            .find(|r| r.name == "test_wrong")
            .expect("a result for test_wrong");
        assert!(
            wrong
                .message
                .contains("at test_sol.py:8: assert add(1, 2) == 4"),
            "{}",
            wrong.message
        );
    }
    // A file named after a standard module keeps the module: the tests' `import random` must
    // still find the real one.
    let names = FileNames::of(std::path::Path::new("random.py"), None);
    let report = sandbox().run_tests_until(
        ADD,
        "import random\n\ndef test_real_random():\n    assert 0 <= random.random() < 1\n",
        &names,
        Until::default(),
    );
    assert_eq!(
        status_of(&report, "test_real_random"),
        TestStatus::Passed,
        "{report:?}"
    );
    // Under the default names, a wrong import fails to load as before, naming the tests' file.
    let report = sandbox().run_tests(ADD, "from sol import add\n");
    assert!(
        report.setup_error.as_deref().is_some_and(
            |e| e.contains("No module named 'sol'") && e.contains("test_solution.py:1")
        ),
        "{report:?}"
    );
}

/// A problem in HumanEval's form: a helper and an import in the prompt, and a `check` that uses
/// the helper, a helper of its own named `test…`, and the entry point by its name.
fn eval_problem() -> agentrt::eval::Problem {
    let line = serde_json::json!({
        "task_id": "judge/0",
        "prompt": "from typing import List\n\n\ndef encode(xs: List[int]) -> List[int]:\n    return [x + 1 for x in xs]\n\n\ndef decode(xs: List[int]) -> List[int]:\n    \"\"\"Undo encode.\"\"\"\n",
        "test": "def testcase(candidate, xs):\n    assert candidate(encode(xs)) == xs\n\n\ndef check(candidate):\n    testcase(candidate, [1, 2])\n    assert abs(-1) == 1\n    assert decode(encode([5])) == [5]\n",
        "entry_point": "decode",
        "canonical_solution": "    return [x - 1 for x in xs]\n",
    });
    agentrt::eval::parse_problems(line.to_string().as_bytes(), "judge.jsonl")
        .expect("a problem")
        .remove(0)
}

#[test]
fn eval_judges_code_by_the_problems_tests_in_a_namespace_of_their_own() {
    use agentrt::eval::{canonical_program, judge, program};
    let p = eval_problem();
    let judged = |code: &str| judge(sandbox(), &p, &program(&p, code));
    assert_eq!(
        judge(sandbox(), &p, &canonical_program(&p).expect("canonical")),
        Ok(())
    );
    // Whole code as a model writes it, using the prompt's import and helper; with a future
    // import, which must open the file.
    let right = "def decode(xs: List[int]) -> List[int]:\n    assert encode([0]) == [1]\n    return [x - 1 for x in xs]\n";
    assert_eq!(judged(right), Ok(()));
    assert_eq!(
        judged(&format!("from __future__ import annotations\n\n{right}")),
        Ok(())
    );
    // Wrong code fails, with the failing line of the problem's tests.
    let wrong = judged("def decode(xs):\n    return xs\n").expect_err("wrong");
    assert!(
        wrong.contains("AssertionError") && wrong.contains("candidate(encode(xs)) == xs"),
        "{wrong}"
    );
    // Code that restates the prompt's helper, or a builtin, does not change what the tests
    // mean.
    let fooling = "def encode(xs):\n    return xs\n\n\ndef decode(xs):\n    return xs\n";
    assert!(judged(fooling).is_err());
    let shadowing =
        "def decode(xs):\n    return [x - 1 for x in xs]\n\n\ndef abs(x):\n    return 0\n";
    assert_eq!(judged(shadowing), Ok(()));
    // Code that never defines the entry point is judged on the prompt's stub, which fails.
    assert!(judged("def other(xs):\n    return [x - 1 for x in xs]\n").is_err());
}
