//! agentrt: a local runtime for a team of code-generating agents.
//!
//! The host owns the model [`engine`] and runs the agents — generator, reviewer, quality checks,
//! error handlers — as sandboxed WebAssembly components ([`plugin`]) that reach the host only
//! through the WIT interfaces in `wit/`. Generated tests run in sandboxed CPython
//! ([`sandbox`]). The [`pipeline`] drives one task through them;
//! [`server`] exposes everything over HTTP and [`cli`] does the same jobs one-off.

pub mod authoring;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod engine;
pub mod error_code;
pub mod eval;
pub mod fifo_semaphore;
pub mod heap;
pub mod language;
pub mod logs;
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod plugin;
pub mod runs;
pub mod sandbox;
pub mod server;
pub mod settings;
pub mod stats;
pub mod store;
pub(crate) mod watched_file;
