//! Prometheus metrics of the process, served at `GET /metrics` (OpenMetrics text).
//!
//! One registry for the process ([`global`]); the engine, the pipeline, the plugin host, the
//! run queue and the HTTP layer record into it where the thing happens:
//!
//! - generation: time to first token, time per output token, time waiting for the model
//!   (queue), requests waiting and running, prompt and generated tokens, sequences per forward
//!   pass (batch size) — per model;
//! - HTTP: requests by route and status, end-to-end latency by route (to the response head:
//!   a stream's length is its client's business);
//! - pipeline: runs by outcome, retries by stage and reason, findings by check and severity,
//!   runs queued and running;
//! - sandboxes: plugin calls past their deadline, generated tests past theirs;
//! - the process: CPU time, memory, threads and file descriptors ([`process`]).

mod process;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub stage: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub check: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// `plugin` (a plugin call past its deadline) or `test` (a generated test past its own).
    pub sandbox: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn ttft_histogram() -> Histogram {
    Histogram::new(
        [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
            .iter()
            .copied(),
    )
}

fn tpot_histogram() -> Histogram {
    Histogram::new(
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
            .iter()
            .copied(),
    )
}

fn latency_histogram() -> Histogram {
    Histogram::new(
        [
            // Up to the default request deadline: a pipeline on the CPU takes minutes.
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            600.0,
        ]
        .iter()
        .copied(),
    )
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0].iter().copied())
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub time_to_first_token: Histograms<ModelLabels>,
    pub time_per_output_token: Histograms<ModelLabels>,
    pub queue_time: Histograms<ModelLabels>,
    pub generations_waiting: Family<ModelLabels, Gauge>,
    pub generations_running: Family<ModelLabels, Gauge>,
    pub prompt_tokens: Family<ModelLabels, Counter>,
    pub generated_tokens: Family<ModelLabels, Counter>,
    pub requests: Family<RouteStatusLabels, Counter>,
    pub request_duration: Histograms<RouteLabels>,
    pub pipeline_runs: Family<OutcomeLabels, Counter>,
    pub pipeline_retries: Family<RetryLabels, Counter>,
    pub findings: Family<FindingLabels, Counter>,
    pub sandbox_timeouts: Family<TimeoutLabels, Counter>,
    pub runs_in_flight: Family<StateLabels, Gauge>,
    pub batch_size: Histograms<ModelLabels>,
    pub prompt_tokens_reused: Family<ModelLabels, Counter>,
    pub prefix_cache_bytes: Family<ModelLabels, Gauge>,
    /// 1 while the config file holds a version the server refused (it runs on the one before).
    pub config_refused: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("agentrt");
        let m = Self {
            time_to_first_token: Family::new_with_constructor(ttft_histogram),
            time_per_output_token: Family::new_with_constructor(tpot_histogram),
            queue_time: Family::new_with_constructor(ttft_histogram),
            generations_waiting: Family::default(),
            generations_running: Family::default(),
            prompt_tokens: Family::default(),
            generated_tokens: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            pipeline_runs: Family::default(),
            pipeline_retries: Family::default(),
            findings: Family::default(),
            sandbox_timeouts: Family::default(),
            runs_in_flight: Family::default(),
            batch_size: Family::new_with_constructor(batch_histogram),
            prompt_tokens_reused: Family::default(),
            prefix_cache_bytes: Family::default(),
            config_refused: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "time_to_first_token_seconds",
            "From a generation's arrival to its first token (includes waiting for the model)",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "time_per_output_token_seconds",
            "Mean time per generated token after the first, per generation",
            m.time_per_output_token.clone(),
        );
        registry.register(
            "queue_time_seconds",
            "Time a generation waited for its model",
            m.queue_time.clone(),
        );
        registry.register(
            "generations_waiting",
            "Generations waiting for their model",
            m.generations_waiting.clone(),
        );
        registry.register(
            "generations_running",
            "Generations running on their model",
            m.generations_running.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated",
            m.generated_tokens.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "From a request's arrival to its response head, by route",
            m.request_duration.clone(),
        );
        registry.register(
            "pipeline_runs",
            "Pipeline runs ended, by outcome (completed, failed, cancelled)",
            m.pipeline_runs.clone(),
        );
        registry.register(
            "pipeline_retries",
            "Stages the error handler sent back to work, by stage and the error code that caused it",
            m.pipeline_retries.clone(),
        );
        registry.register(
            "findings",
            "Quality-check findings, by check and severity",
            m.findings.clone(),
        );
        registry.register(
            "sandbox_timeouts",
            "Plugin calls and generated tests stopped at their deadline",
            m.sandbox_timeouts.clone(),
        );
        registry.register(
            "pipeline_runs_in_flight",
            "Tracked pipeline runs queued or running",
            m.runs_in_flight.clone(),
        );
        registry.register(
            "batch_size",
            "Sequences sharing each forward pass of a model (continuous batching)",
            m.batch_size.clone(),
        );
        registry.register(
            "prompt_tokens_reused",
            "Prompt tokens whose keys and values were copied from the prefix cache instead of computed",
            m.prompt_tokens_reused.clone(),
        );
        registry.register(
            "prefix_cache_bytes",
            "Bytes of finished sequences' keys and values kept for reuse by later prompts",
            m.prefix_cache_bytes.clone(),
        );
        registry.register(
            "config_refused",
            "1 while the config file holds an edit the server refused (the version before it stays in use; GET /plugins says why)",
            m.config_refused.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition of everything.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        // The process's own families go unprefixed, under the names every exporter uses.
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &process))
            .and_then(|()| encode_eof(&mut out));
        if let Err(e) = encoded {
            tracing::error!("metrics not encoded: {e}");
        }
        out
    }

    pub fn model(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Measures one generation from arrival to end: waiting, running, first token, tokens.
/// Dropping it (on success or on any error) settles the gauges and counters.
#[derive(Debug)]
pub struct GenerationTimer {
    labels: ModelLabels,
    arrived: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    prompt_tokens: u64,
    generated: u64,
}

impl GenerationTimer {
    /// A generation of `prompt_tokens` arrives for `model`: it is waiting.
    pub fn arrive(model: &str, prompt_tokens: usize) -> Self {
        let labels = Metrics::model(model);
        global().generations_waiting.get_or_create(&labels).inc();
        Self {
            labels,
            arrived: Instant::now(),
            admitted: None,
            first_token: None,
            prompt_tokens: prompt_tokens as u64,
            generated: 0,
        }
    }

    /// It has the model now.
    pub fn admitted(&mut self) {
        let m = global();
        let now = Instant::now();
        m.generations_waiting.get_or_create(&self.labels).dec();
        m.generations_running.get_or_create(&self.labels).inc();
        m.queue_time
            .get_or_create(&self.labels)
            .observe((now - self.arrived).as_secs_f64());
        self.admitted = Some(now);
    }

    /// The first text came (a remote model streams text, not tokens: [`Self::counted`] gives
    /// the counts at the end).
    pub fn first_text(&mut self) {
        if self.first_token.is_none() {
            let now = Instant::now();
            self.first_token = Some(now);
            global()
                .time_to_first_token
                .get_or_create(&self.labels)
                .observe((now - self.arrived).as_secs_f64());
        }
    }

    /// The tokens of prompt and answer, as a remote server reported them.
    pub fn counted(&mut self, prompt_tokens: u64, generated: u64) {
        self.prompt_tokens = prompt_tokens;
        self.generated = generated;
    }

    /// A token was generated.
    pub fn token(&mut self) {
        self.generated += 1;
        self.first_text();
    }
}

impl Drop for GenerationTimer {
    fn drop(&mut self) {
        let m = global();
        if self.admitted.is_some() {
            m.generations_running.get_or_create(&self.labels).dec();
            m.prompt_tokens
                .get_or_create(&self.labels)
                .inc_by(self.prompt_tokens);
        } else {
            m.generations_waiting.get_or_create(&self.labels).dec();
        }
        m.generated_tokens
            .get_or_create(&self.labels)
            .inc_by(self.generated);
        if let Some(first) = self.first_token.filter(|_| self.generated > 1) {
            let per_token = first.elapsed() / (self.generated - 1) as u32;
            m.time_per_output_token
                .get_or_create(&self.labels)
                .observe(per_token.as_secs_f64());
        }
    }
}

/// One forward pass of `model` ran `sequences` sequences together.
pub fn batch_step(model: &str, sequences: usize) {
    global()
        .batch_size
        .get_or_create(&Metrics::model(model))
        .observe(sequences as f64);
}

/// A new sequence of `model` started with `tokens` prompt tokens from the prefix cache.
pub fn prefix_reused(model: &str, tokens: usize) {
    global()
        .prompt_tokens_reused
        .get_or_create(&Metrics::model(model))
        .inc_by(tokens as u64);
}

/// The prefix cache of `model` now holds `bytes`.
pub fn prefix_cache_bytes(model: &str, bytes: usize) {
    global()
        .prefix_cache_bytes
        .get_or_create(&Metrics::model(model))
        .set(bytes as i64);
}

/// Count one pipeline run that ended `outcome` (completed, failed or cancelled).
pub fn count_pipeline_run(outcome: &str) {
    global()
        .pipeline_runs
        .get_or_create(&OutcomeLabels {
            outcome: outcome.into(),
        })
        .inc();
}

/// The `reason` label of a retry: the error's code when it is one of agentrt's, else `other`
/// (plugins choose their codes freely: one series per code they invent would grow without
/// end).
pub fn retry_reason(code: &str) -> String {
    if crate::error_code::ErrorCode::parse(code).is_some() || code == crate::pipeline::TESTS_FAILED
    {
        code.to_string()
    } else {
        "other".to_string()
    }
}

/// Record one HTTP request.
pub fn record_request(route: &str, status: u16, took: Duration) {
    let m = global();
    m.requests
        .get_or_create(&RouteStatusLabels {
            route: route.to_string(),
            status,
        })
        .inc();
    m.request_duration
        .get_or_create(&RouteLabels {
            route: route.to_string(),
        })
        .observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_exposition_carries_the_process_families_once_and_ends_once() {
        let text = global().render();
        for family in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(family)),
                "{family}missing:\n{text}"
            );
        }
        assert!(!text.contains("agentrt_process_"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn retry_reasons_are_agentrts_codes_or_other() {
        assert_eq!(retry_reason("PLUGIN_004"), "PLUGIN_004");
        assert_eq!(retry_reason("TEST_001"), "TEST_001");
        assert_eq!(retry_reason("GEN_1764248157"), "other");
        assert_eq!(retry_reason("MY_PLUGIN_CODE"), "other");
    }

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_generation_moves_through_the_gauges_and_counts_its_tokens() {
        let model = "metrics-test-model";
        let waiting = format!("agentrt_generations_waiting{{model=\"{model}\"}}");
        let running = format!("agentrt_generations_running{{model=\"{model}\"}}");
        let generated = format!("agentrt_generated_tokens_total{{model=\"{model}\"}}");
        let ttft = format!("agentrt_time_to_first_token_seconds_count{{model=\"{model}\"}}");
        let tpot = format!("agentrt_time_per_output_token_seconds_count{{model=\"{model}\"}}");
        let mut timer = GenerationTimer::arrive(model, 12);
        let text = global().render();
        assert_eq!(sample(&text, &waiting), Some(1.0), "{text}");
        timer.admitted();
        let text = global().render();
        assert_eq!(sample(&text, &waiting), Some(0.0));
        assert_eq!(sample(&text, &running), Some(1.0));
        for _ in 0..5 {
            timer.token();
        }
        drop(timer);
        let text = global().render();
        assert_eq!(sample(&text, &running), Some(0.0));
        assert_eq!(sample(&text, &generated), Some(5.0));
        assert_eq!(sample(&text, &ttft), Some(1.0));
        assert_eq!(sample(&text, &tpot), Some(1.0));
        assert!(
            text.trim_end().ends_with("# EOF"),
            "OpenMetrics ends with # EOF"
        );

        // Given up while waiting: no longer waiting, nothing counted as running.
        let timer = GenerationTimer::arrive(model, 3);
        drop(timer);
        let text = global().render();
        assert_eq!(sample(&text, &waiting), Some(0.0));
        assert_eq!(sample(&text, &running), Some(0.0));
    }
}
