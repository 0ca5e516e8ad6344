//! Generated bindings for the five worlds of `wit/plugin.wit`; private to the SDK.
//!
//! Each world is generated once. The first (`generator`) generates the shared interfaces
//! (`types`, `llm`, `log`, `sandbox`, `generation`); the others reuse them through `with:`, so there is a
//! single Rust type for every WIT type whatever the world.
//!
//! Paths are spelled `agentrt_plugin_sdk::…` (the crate names itself through
//! `extern crate self`) because the generated export macros expand inside plugin crates, where
//! `crate::` would mean the plugin.
//!
//! `pub_export_macro: true` also changes *where* wit-bindgen puts the component-type custom
//! section that carries each world's exports: not here, but in the expansion of that world's
//! export macro. A plugin therefore links only the exports of the world it asks for, although
//! the SDK holds all five.
//!
//! The imports-only halves of the five worlds do all land in every plugin (rustc keeps every
//! `#[link_section]` custom section of the objects it links), and wit-component keeps imported
//! interfaces that have no functions. So every component also imports the types-only interfaces
//! `generation`, `reviewing`, `checking`, `recovering` and `model-recovering`: types, no functions, nothing to grant,
//! and wasmtime's linker needs no definitions for them. Interfaces with functions (`llm`, `log`,
//! `sandbox`) are imported only when the plugin calls them.

// Generated code: not ours to lint.
#![allow(clippy::all)]

/// The `generator` world, plus the interfaces every other world shares.
pub mod generator {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agentrt:plugin/generator@0.1.1",
        generate_all,
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "export_generator",
        default_bindings_module: "agentrt_plugin_sdk::__bindings::generator",
        runtime_path: "agentrt_plugin_sdk::__wit_bindgen::rt",
    });
}

/// The `reviewer` world.
pub mod reviewer {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agentrt:plugin/reviewer@0.1.1",
        with: {
            "agentrt:plugin/types@0.1.1": agentrt_plugin_sdk::__bindings::types,
            "agentrt:plugin/llm@0.1.1": agentrt_plugin_sdk::__bindings::llm,
            "agentrt:plugin/log@0.1.1": agentrt_plugin_sdk::__bindings::log,
            "agentrt:plugin/sandbox@0.1.1": agentrt_plugin_sdk::__bindings::sandbox,
            "agentrt:plugin/reviewing@0.1.1": generate,
        },
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "export_reviewer",
        default_bindings_module: "agentrt_plugin_sdk::__bindings::reviewer",
        runtime_path: "agentrt_plugin_sdk::__wit_bindgen::rt",
    });
}

/// The `quality-check` world.
pub mod quality_check {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agentrt:plugin/quality-check@0.1.1",
        with: {
            "agentrt:plugin/types@0.1.1": agentrt_plugin_sdk::__bindings::types,
            "agentrt:plugin/log@0.1.1": agentrt_plugin_sdk::__bindings::log,
            "agentrt:plugin/sandbox@0.1.1": agentrt_plugin_sdk::__bindings::sandbox,
            "agentrt:plugin/checking@0.1.1": generate,
        },
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "export_quality_check",
        default_bindings_module: "agentrt_plugin_sdk::__bindings::quality_check",
        runtime_path: "agentrt_plugin_sdk::__wit_bindgen::rt",
    });
}

/// The `error-handler` world.
pub mod error_handler {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agentrt:plugin/error-handler@0.1.1",
        with: {
            "agentrt:plugin/types@0.1.1": agentrt_plugin_sdk::__bindings::types,
            "agentrt:plugin/log@0.1.1": agentrt_plugin_sdk::__bindings::log,
            "agentrt:plugin/recovering@0.1.1": generate,
        },
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "export_error_handler",
        default_bindings_module: "agentrt_plugin_sdk::__bindings::error_handler",
        runtime_path: "agentrt_plugin_sdk::__wit_bindgen::rt",
    });
}

/// The `model-error-handler` world (since agentrt:plugin 0.1.1).
pub mod model_error_handler {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agentrt:plugin/model-error-handler@0.1.1",
        with: {
            "agentrt:plugin/types@0.1.1": agentrt_plugin_sdk::__bindings::types,
            "agentrt:plugin/log@0.1.1": agentrt_plugin_sdk::__bindings::log,
            "agentrt:plugin/recovering@0.1.1": agentrt_plugin_sdk::__bindings::recovering,
            "agentrt:plugin/model-recovering@0.1.1": generate,
        },
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "export_model_error_handler",
        default_bindings_module: "agentrt_plugin_sdk::__bindings::model_error_handler",
        runtime_path: "agentrt_plugin_sdk::__wit_bindgen::rt",
    });
}

pub use error_handler::agentrt::plugin::recovering;
pub use generator::agentrt::plugin::{generation, llm, log, sandbox, types};
pub use model_error_handler::agentrt::plugin::model_recovering;
pub use quality_check::agentrt::plugin::checking;
pub use reviewer::agentrt::plugin::reviewing;
