//! End-to-end tests: the real `agentrt` binary, the real default model and plugins, driven
//! over HTTP on a free port (and through the CLI).
//!
//! Modules by area: `api` (every endpoint and error code on the default set-up), `hostile`
//! (plugins that trap, loop forever, or allocate without bound), `syntax` (the Python quality
//! check's syntax verdict against CPython on a corpus), `cli`, `starcoder` (a StarCoder-shaped
//! safetensors checkpoint through the CLI, server and plugins).

mod api;
mod cli;
mod harness;
mod hostile;
mod starcoder;
mod syntax;
