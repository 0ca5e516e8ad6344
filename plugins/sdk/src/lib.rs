//! Write agentrt plugins in ordinary Rust.
//!
//! An agentrt plugin is a WebAssembly component that plays one role in the code-generation
//! pipeline. Pick the role, implement its trait, export the type:
//!
//! | role            | trait              | world (`wit/plugin.wit`) | may call the model |
//! |-----------------|--------------------|--------------------------|--------------------|
//! | generator       | [`Generator`]      | `generator`              | yes ([`llm`])      |
//! | reviewer        | [`Reviewer`]       | `reviewer`               | yes ([`llm`])      |
//! | quality check   | [`QualityCheck`]   | `quality-check`          | no                 |
//! | error handler   | [`ErrorHandler`]   | `error-handler`          | no                 |
//! | error handler that may switch models | [`ModelErrorHandler`] | `model-error-handler` | no (it picks the model the stage retries on) |
//!
//! ```no_run
//! use agentrt_plugin_sdk::{
//!     CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Severity,
//! };
//!
//! struct NoTabs;
//!
//! impl QualityCheck for NoTabs {
//!     fn describe() -> CheckInfo {
//!         CheckInfo::new("no-tabs", ["python"], ["tab-indent"])
//!     }
//!
//!     fn check(artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
//!         let tabbed = artifact.code.lines().enumerate().filter(|(_, l)| l.starts_with('\t'));
//!         Ok(tabbed
//!             .map(|(i, _)| {
//!                 Finding::new("tab-indent", Severity::Warning, "indent with spaces")
//!                     .at(i as u32 + 1, 1)
//!             })
//!             .collect())
//!     }
//! }
//!
//! agentrt_plugin_sdk::export_plugin!(NoTabs: quality-check);
//! # fn main() {}
//! ```
//!
//! `agentrt plugin build [--out DIR]` builds the crate (a `cdylib`) for `wasm32-wasip2` and
//! writes what a plugin folder takes: `NAME.wasm` beside its manifest `NAME.toml`, both named
//! by the `name` in the project's `plugin.toml`. (By hand: `cargo build --release --target
//! wasm32-wasip2`, then copy the `.wasm` — cargo writes `-` in the crate's name as `_` — and
//! `plugin.toml` under those two names.)
//!
//! Everything also compiles for the host target so the pure logic of a plugin can be unit-tested
//! with a plain `cargo test`; there the [`llm`] calls return an error and [`log`] lines go to
//! standard error.

// The generated export macros expand inside plugin crates and name SDK items by absolute path
// (`agentrt_plugin_sdk::…`); this makes the same paths valid inside the SDK itself.
extern crate self as agentrt_plugin_sdk;

#[doc(hidden)]
#[allow(missing_docs)]
#[path = "bindings.rs"]
pub mod __bindings;
#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

mod export;
pub mod llm;
pub mod log;
mod roles;
pub mod sandbox;
mod types;

pub use roles::{ErrorHandler, Generator, ModelErrorHandler, QualityCheck, Reviewer};
pub use types::{
    CheckInfo, CodeArtifact, Finding, GenerationRequest, ModelOption, ModelRecovery, ModelRetry,
    PipelineError, Recovery, RetryPlan, Review, ReviewRequest, Severity, Stage, TestOutcome,
    Verdict,
};
