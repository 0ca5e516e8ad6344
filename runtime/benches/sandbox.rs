//! Cost of running generated tests in the Python sandbox: compiling CPython (cold, once per
//! machine), loading it from the compile cache, and one run of a small test file (a fresh
//! interpreter instance, CPython's start-up, three tests).
//!
//! Run: `cargo bench --bench sandbox` (release build).

use std::time::{Duration, Instant};

use agentrt::plugin::compile_cache::CompileCache;
use agentrt::sandbox::{PythonSandbox, SandboxLimits};

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

    let mut runs: Vec<f64> = (0..15)
        .map(|_| {
            let started = Instant::now();
            let report = sandbox.run_tests(CODE, TESTS);
            assert_eq!(report.results.len(), 3);
            ms(started.elapsed())
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "compile python.wasm (cold): {cold_ms:.0} ms; load from the compile cache: {cached_ms:.0} ms"
    );
    println!(
        "one sandboxed run (fresh instance, CPython start-up, 3 tests): min {:.1} ms, median {:.1} ms, max {:.1} ms over {}",
        runs[0],
        runs[runs.len() / 2],
        runs[runs.len() - 1],
        runs.len()
    );
}
