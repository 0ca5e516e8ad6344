//! The `llm` host capability called directly, as a plugin's call would reach it, on the real
//! default model: a request in flight stops when the plugin's deadline passes (the deadline
//! covers time inside host calls, not only guest code), the per-minute token budget caps
//! and then refuses requests, and a run moved to another model uses it by default (within the
//! plugin's grant).
//!
//! Needs the default model (`scripts/setup.sh` fetches it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt::engine::{Engine, LoadedModel, ServedModel};
use agentrt::plugin::bindings::llm::{Error, Host, Sampling};
use agentrt::plugin::grants::{self, Grant, HostLimits, TokenMeter};
use agentrt::plugin::manifest::Manifest;
use agentrt::plugin::state::PluginState;

fn engine() -> Arc<Engine> {
    let path = agentrt::paths::default_model();
    let model = LoadedModel::load("smollm2", &path, &mut |_| {})
        .expect("default model missing: run scripts/setup.sh");
    Arc::new(Engine::new(vec![Arc::new(ServedModel::local(model))]))
}

/// A reviewer's call state with every model and `permissions` asked and granted, ending at
/// `deadline`.
fn state(engine: Arc<Engine>, permissions: &str, deadline: Instant) -> PluginState {
    state_asking(
        engine,
        &format!("models = [\"*\"]\n{permissions}"),
        deadline,
    )
}

/// A reviewer's call state with exactly `permissions` asked and granted.
fn state_asking(engine: Arc<Engine>, permissions: &str, deadline: Instant) -> PluginState {
    let manifest = Manifest::parse(&format!(
        "name = \"r\"\nversion = \"1\"\nworld = \"reviewer\"\n[permissions]\n{permissions}"
    ))
    .expect("manifest");
    let granted = grants::resolve(
        &manifest.permissions,
        &Grant::as_asked(&manifest),
        &HostLimits::default(),
    )
    .expect("granted");
    PluginState::new(
        Arc::new(manifest),
        Arc::new(granted),
        Arc::new(TokenMeter::default()),
        Some(engine),
        None,
        wasmtime_wasi::WasiCtx::builder().build(),
        deadline,
    )
}

/// Greedy continuation of a count: the model keeps counting, so only a limit ends it.
fn counting(max_tokens: u32) -> Sampling {
    Sampling {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        top_k: None,
        top_p: None,
        repeat_penalty: Some(1.0),
        seed: Some(1),
        stop: Vec::new(),
    }
}

const COUNT: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";

#[test]
fn a_generation_in_flight_stops_at_the_plugins_deadline() {
    let mut plugin = state(
        engine(),
        "max-tokens-per-call = 2000",
        Instant::now() + Duration::from_millis(400),
    );
    let started = Instant::now();
    let result = plugin.generate(None, COUNT.into(), counting(2000));
    println!(
        "a 2000-token request with 400 ms left ended after {} ms: {result:?}",
        started.elapsed().as_millis()
    );
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    // What it used before the deadline counts (its prompt and the tokens made), not the 2000
    // it reserved.
    assert!(
        (1..2000).contains(&plugin.tokens_used),
        "used {}",
        plugin.tokens_used
    );
}

#[test]
fn the_per_minute_budget_caps_then_refuses() {
    let far = Instant::now() + Duration::from_secs(300);
    let mut plugin = state(engine(), "tokens-per-minute = 40", far);
    let first = plugin
        .generate(None, COUNT.into(), counting(30))
        .expect("within budget");
    let used = first.usage.prompt_tokens + first.usage.completion_tokens;
    assert_eq!(first.usage.completion_tokens, 30);
    // What is left of the budget caps the next request's generation.
    let left = 40 - used.min(40);
    match plugin.generate(None, COUNT.into(), counting(30)) {
        Ok(second) => assert!(
            second.usage.completion_tokens <= left,
            "{} generated with {left} left",
            second.usage.completion_tokens
        ),
        Err(e) => assert!(matches!(e, Error::QuotaExceeded(_)), "{e:?}"),
    }
    let refused = plugin.generate(None, COUNT.into(), counting(5));
    assert!(
        matches!(&refused, Err(Error::QuotaExceeded(m)) if m.contains("40 tokens per minute")),
        "{refused:?}"
    );
}

/// The model an error handler moved a run to (`PluginState::default_model`, from
/// `CallContext.model`) is what calls that name no model run on, listed first, and still only
/// when the plugin is granted it.
#[test]
fn a_run_moved_to_another_model_calls_it_by_default_within_the_grant() {
    let path = agentrt::paths::default_model();
    let load = |id: &str| {
        let model = LoadedModel::load(id, &path, &mut |_| {}).expect("default model");
        Arc::new(ServedModel::local(model))
    };
    let engine = Arc::new(Engine::new(vec![load("primary"), load("fallback")]));
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut plugin = state(engine.clone(), "", deadline);
    let answer = plugin
        .generate(None, COUNT.into(), counting(2))
        .expect("generate");
    assert_eq!(
        answer.model, "primary",
        "the host's default is its first model"
    );

    plugin.default_model = Some("fallback".into());
    let answer = plugin
        .generate(None, COUNT.into(), counting(2))
        .expect("generate");
    assert_eq!(answer.model, "fallback");
    let answer = plugin
        .generate(Some("default".into()), COUNT.into(), counting(2))
        .expect("generate");
    assert_eq!(
        answer.model, "fallback",
        "`default` means the run's model too"
    );
    let answer = plugin
        .generate(Some("primary".into()), COUNT.into(), counting(2))
        .expect("generate");
    assert_eq!(
        answer.model, "primary",
        "a named model is still the plugin's choice"
    );
    let listed: Vec<String> = plugin.list_models().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ["fallback", "primary"]);

    // A plugin granted only the primary model cannot be moved onto the fallback.
    let mut narrow = state_asking(engine, "models = [\"primary\"]\n", deadline);
    narrow.default_model = Some("fallback".into());
    let refused = narrow.generate(None, COUNT.into(), counting(2));
    assert!(
        matches!(refused, Err(Error::AccessDenied(_))),
        "{refused:?}"
    );
}
