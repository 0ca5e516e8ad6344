//! Cost of a plugin call: instantiating a default plugin in a fresh store (what every call pays
//! before the guest runs) and a whole warm call of the cheapest export (`error-handler.handle`:
//! thread, store, instance, call, result checks, audit line), for each default plugin.
//!
//! Run: `cargo bench --bench plugins` (release build). Reads the compile cache that the build
//! fills; the first run on a machine also compiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt::config::Config;
use agentrt::plugin::bindings::{PipelineError, Stage};
use agentrt::plugin::compile_cache::CompileCache;
use agentrt::plugin::registry::load_plugins;
use agentrt::plugin::{Plugin, PluginHost};

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// (min, median) of `n` timed runs of `f`, in microseconds.
fn time(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<f64> = (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            us(started.elapsed())
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[0], samples[n / 2])
}

fn main() {
    let config = Arc::new(Config::default());
    let cache = CompileCache::new(Some(agentrt::paths::component_cache()));
    let host = PluginHost::new(None, None, cache, config).expect("plugin host");
    let plugins = load_plugins(&host, None).expect("default plugins").set;
    println!(
        "instance allocator: {}",
        if host.pooling() {
            "pooling"
        } else {
            "on demand"
        }
    );
    for plugin in plugins.all() {
        let plugin: &Plugin = &plugin;
        let (min, median) = time(200, || {
            host.instantiate(plugin).expect("instantiate");
        });
        println!(
            "instantiate {:<16} ({:>9} bytes): min {min:>7.1} µs, median {median:>7.1} µs",
            plugin.manifest.name, plugin.size_bytes
        );
    }
    let error = PipelineError {
        code: "GEN_001".into(),
        message: "bench".into(),
        stage: Stage::Generate,
        attempt: 1,
    };
    let (min, median) = time(500, || {
        let (result, _) = host.handle_error(
            &plugins.error_handler,
            &error,
            1,
            &[],
            &agentrt::plugin::CallContext::default(),
        );
        result.expect("handle");
    });
    println!("whole warm call error-handler.handle: min {min:.1} µs, median {median:.1} µs");
}
