//! [`export_plugin!`](crate::export_plugin): the one macro that turns a type into a plugin.

/// Export a type as the plugin of one role.
///
/// ```ignore
/// agentrt_plugin_sdk::export_plugin!(MyGenerator: generator);
/// agentrt_plugin_sdk::export_plugin!(MyReviewer: reviewer);
/// agentrt_plugin_sdk::export_plugin!(MyCheck: quality-check);
/// agentrt_plugin_sdk::export_plugin!(MyHandler: error-handler);
/// agentrt_plugin_sdk::export_plugin!(MyModelHandler: model-error-handler);
/// ```
///
/// The type must implement the role's trait ([`Generator`](crate::Generator),
/// [`Reviewer`](crate::Reviewer), [`QualityCheck`](crate::QualityCheck),
/// [`ErrorHandler`](crate::ErrorHandler), [`ModelErrorHandler`](crate::ModelErrorHandler)) and be
/// named by a plain identifier in scope. Invoke the macro once per crate: a component implements
/// exactly one world. (`quality_check`, `error_handler` and `model_error_handler` are accepted as
/// spellings too.)
///
/// The SDK crate must be a dependency under its own name, `agentrt-plugin-sdk`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident : generator) => {
        const _: () = {
            impl $crate::__bindings::generator::Guest for $plugin {
                fn generate(
                    request: $crate::GenerationRequest,
                ) -> ::core::result::Result<$crate::CodeArtifact, $crate::PipelineError> {
                    <$plugin as $crate::Generator>::generate(request)
                }
            }
        };
        $crate::__bindings::generator::export_generator!(
            $plugin with_types_in $crate::__bindings::generator
        );
    };
    ($plugin:ident : reviewer) => {
        const _: () = {
            impl $crate::__bindings::reviewer::Guest for $plugin {
                fn review(
                    request: $crate::ReviewRequest,
                ) -> ::core::result::Result<$crate::Review, $crate::PipelineError> {
                    <$plugin as $crate::Reviewer>::review(request)
                }
            }
        };
        $crate::__bindings::reviewer::export_reviewer!(
            $plugin with_types_in $crate::__bindings::reviewer
        );
    };
    ($plugin:ident : quality-check) => {
        const _: () = {
            impl $crate::__bindings::quality_check::Guest for $plugin {
                fn describe() -> $crate::CheckInfo {
                    <$plugin as $crate::QualityCheck>::describe()
                }

                fn check(
                    artifact: $crate::CodeArtifact,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::Finding>,
                    $crate::PipelineError,
                > {
                    <$plugin as $crate::QualityCheck>::check(&artifact)
                }
            }
        };
        $crate::__bindings::quality_check::export_quality_check!(
            $plugin with_types_in $crate::__bindings::quality_check
        );
    };
    ($plugin:ident : error-handler) => {
        const _: () = {
            impl $crate::__bindings::error_handler::Guest for $plugin {
                fn handle(error: $crate::PipelineError, retries_left: u32) -> $crate::Recovery {
                    <$plugin as $crate::ErrorHandler>::handle(error, retries_left)
                }
            }
        };
        $crate::__bindings::error_handler::export_error_handler!(
            $plugin with_types_in $crate::__bindings::error_handler
        );
    };
    ($plugin:ident : model-error-handler) => {
        const _: () = {
            impl $crate::__bindings::model_error_handler::Guest for $plugin {
                fn handle(
                    error: $crate::PipelineError,
                    retries_left: u32,
                    models: ::std::vec::Vec<$crate::ModelOption>,
                ) -> $crate::ModelRecovery {
                    <$plugin as $crate::ModelErrorHandler>::handle(error, retries_left, models)
                }
            }
        };
        $crate::__bindings::model_error_handler::export_model_error_handler!(
            $plugin with_types_in $crate::__bindings::model_error_handler
        );
    };
    ($plugin:ident : quality_check) => {
        $crate::export_plugin!($plugin: quality-check);
    };
    ($plugin:ident : error_handler) => {
        $crate::export_plugin!($plugin: error-handler);
    };
    ($plugin:ident : model_error_handler) => {
        $crate::export_plugin!($plugin: model-error-handler);
    };
}
