//! End-to-end tests: the real `agentrt` binary, the real default model and plugins, driven
//! over HTTP on a free port (and through the CLI).
//!
//! Modules by area: `api` (every endpoint and error code on the default set-up), `grants`
//! (operator grants: what a plugin asked for and was or was not given), `hostile`
//! (plugins that trap, loop forever, or allocate without bound), `syntax` (the Python quality
//! check's syntax verdict against CPython on a corpus), `limits` (request deadlines, draining), `runs` (pipeline runs as resources: events, cancel, queue, crash recovery), `remote` (a model served by another OpenAI-compatible server), `cli`, `authoring` (the plugin guide run as written, WIT versions), `reload` (hot reload under load), `examples` (the example plugins built and deployed), `console` (the web console in headless Chromium), `starcoder` (a StarCoder-shaped
//! safetensors checkpoint through the CLI, server and plugins).

mod api;
mod auth;
mod authoring;
mod cli;
mod console;
mod eval;
mod examples;
mod grants;
mod harness;
mod hostile;
mod limits;
mod openai;
mod reload;
mod remote;
mod runs;
mod starcoder;
mod syntax;
