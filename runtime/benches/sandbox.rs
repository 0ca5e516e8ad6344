//! Cost of running generated tests in the Python sandbox: compiling CPython and the
//! pre-initialised runner (cold, once per machine), loading both from the compile cache, and one
//! run of a small test file (a fresh instance, three tests) in each interpreter: the snapshot
//! (what runs by default) and python.wasm with CPython's own start-up (the fallback).
//!
//! Run: `cargo bench --bench sandbox` (release build).

use std::time::{Duration, Instant};

use agentrt::plugin::compile_cache::CompileCache;
use agentrt::sandbox::{Interpreter, PythonSandbox, SandboxLimits};

const CODE: &str = "def add(a, b):\n    return a + b\n";
const TESTS: &str = "def test_a():\n    assert add(1, 2) == 3\n\n\
                     def test_b():\n    assert add(-1, 1) == 0\n\n\
                     def test_c():\n    assert add(2, 2) == 5\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let wasm = agentrt::paths::python_wasm();
    let scratch =
        std::env::temp_dir().join(format!("agentrt-sandbox-bench-{}", std::process::id()));
    let started = Instant::now();
    let cold = PythonSandbox::load(
        &wasm,
        &CompileCache::new(Some(scratch.clone())),
        SandboxLimits::default(),
    )
    .expect("python.wasm (run scripts/setup.sh)");
    let cold_ms = ms(started.elapsed());
    drop(cold);
    let started = Instant::now();
    let sandbox = PythonSandbox::load(
        &wasm,
        &CompileCache::new(Some(scratch.clone())),
        SandboxLimits::default(),
    )
    .expect("cached load");
    let cached_ms = ms(started.elapsed());
    let _ = std::fs::remove_dir_all(&scratch);

    println!(
        "compile python.wasm and the runner snapshot (cold): {cold_ms:.0} ms; load both from the compile cache: {cached_ms:.0} ms"
    );
    for interpreter in [Interpreter::Snapshot, Interpreter::Script] {
        let mut runs: Vec<f64> = (0..15)
            .map(|_| {
                let started = Instant::now();
                let report = sandbox.run_tests_in(
                    interpreter,
                    CODE,
                    TESTS,
                    &Default::default(),
                    Default::default(),
                );
                assert_eq!(report.results.len(), 3);
                assert_eq!(report.interpreter, interpreter);
                ms(started.elapsed())
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "one sandboxed run in the {interpreter:?} interpreter (fresh instance, 3 tests): min {:.1} ms, median {:.1} ms, max {:.1} ms over {}",
            runs[0],
            runs[runs.len() / 2],
            runs[runs.len() - 1],
            runs.len()
        );
    }
}
