//! The error codes clients see, with the HTTP status and type each maps to.
//!
//! Families follow the system agentrt replaces (`MODEL_*`, `GEN_*`, `REV_*`, `COMM_*`, `VAL_*`),
//! extended with `PLUGIN_*` for sandboxed plugins, `COMM_004` for cancellation and
//! `NOT_FOUND`/`INTERNAL`. Every
//! library error type converts into an [`ErrorCode`] plus a message; the server renders it as
//! `{"error": {"code", "type", "message", "details"}}`.

use serde::Serialize;

/// A stable, documented error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    /// The model is not loaded, missing, corrupt or unknown.
    ModelNotAvailable,
    /// The model did not finish within the deadline.
    ModelTimeout,
    /// The model could not allocate what the request needs.
    ModelMemory,
    /// The prompt does not fit in the model's context window.
    ModelContextOverflow,
    /// Generation failed inside the generator plugin or the engine.
    GenerationFailed,
    /// The task or prompt is unusable.
    InvalidPrompt,
    /// The model's answer contained no usable code.
    CodeExtractionFailed,
    /// The reviewer failed.
    ReviewFailed,
    /// The code given for review is unusable.
    InvalidCode,
    /// A quality check failed.
    AnalysisFailed,
    /// The request was cancelled.
    Cancelled,
    /// The request body failed validation.
    ValidationFailed,
    /// A field has an invalid value.
    InvalidInput,
    /// A required field is missing.
    MissingField,
    /// No plugin is configured for a role, or a named plugin does not exist.
    PluginNotFound,
    /// The plugin could not be loaded (not a component, wrong world, bad manifest).
    PluginLoad,
    /// The plugin trapped (panic, unreachable, out-of-bounds access).
    PluginTrap,
    /// The plugin ran past its wall-clock deadline.
    PluginTimeout,
    /// The plugin hit its memory cap.
    PluginMemory,
    /// The plugin asked for something it was not granted.
    PluginAccessDenied,
    /// The plugin used up its token budget.
    PluginQuota,
    /// The plugin returned a result too large or out of range.
    PluginOutput,
    /// The plugin used up its fuel (instructions per call): the same call fails the same way
    /// again, unlike a token budget, which refills.
    PluginFuel,
    /// No API key, or one the server does not know.
    Unauthenticated,
    /// The API key's scope does not cover the route.
    Forbidden,
    /// The API key used up its requests per minute.
    RateLimited,
    /// The queue of pipeline runs (or generations) is full; try again after `Retry-After`.
    QueueFull,
    /// The run has already ended; it cannot be cancelled.
    RunFinished,
    /// The server stopped (or crashed) while the run was in progress.
    RunInterrupted,
    /// The run executes on another host sharing the store; cancel it through that host.
    RunElsewhere,
    /// The run store could not be read or written.
    StoreFailed,
    /// The request passed its deadline (504), or its body did not arrive in time (408).
    RequestTimeout,
    /// Another agentrt server (or a service it relies on) could not be reached or gave an
    /// answer that is not HTTP.
    NetworkError,
    /// A backup could not be made, or is damaged, or cannot be restored over what exists.
    BackupFailed,
    /// No such route, run or resource.
    NotFound,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// The code string clients match on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModelNotAvailable => "MODEL_001",
            Self::ModelTimeout => "MODEL_002",
            Self::ModelMemory => "MODEL_003",
            Self::ModelContextOverflow => "MODEL_004",
            Self::GenerationFailed => "GEN_001",
            Self::InvalidPrompt => "GEN_002",
            Self::CodeExtractionFailed => "GEN_003",
            Self::ReviewFailed => "REV_001",
            Self::InvalidCode => "REV_002",
            Self::AnalysisFailed => "REV_003",
            Self::Cancelled => "COMM_004",
            Self::ValidationFailed => "VAL_001",
            Self::InvalidInput => "VAL_002",
            Self::MissingField => "VAL_003",
            Self::PluginNotFound => "PLUGIN_001",
            Self::PluginLoad => "PLUGIN_002",
            Self::PluginTrap => "PLUGIN_003",
            Self::PluginTimeout => "PLUGIN_004",
            Self::PluginMemory => "PLUGIN_005",
            Self::PluginAccessDenied => "PLUGIN_006",
            Self::PluginQuota => "PLUGIN_007",
            Self::PluginOutput => "PLUGIN_008",
            Self::PluginFuel => "PLUGIN_009",
            Self::Unauthenticated => "AUTH_001",
            Self::Forbidden => "AUTH_002",
            Self::RateLimited => "AUTH_003",
            Self::QueueFull => "QUEUE_001",
            Self::RunFinished => "RUN_001",
            Self::RunInterrupted => "RUN_002",
            Self::RunElsewhere => "RUN_003",
            Self::StoreFailed => "STORE_001",
            Self::RequestTimeout => "COMM_003",
            Self::NetworkError => "COMM_002",
            Self::BackupFailed => "BACKUP_001",
            Self::NotFound => "NOT_FOUND",
            Self::Internal => "INTERNAL",
        }
    }

    /// Short machine-readable type, the `type` field of the error body.
    pub fn kind(self) -> &'static str {
        match self {
            Self::ModelNotAvailable
            | Self::ModelTimeout
            | Self::ModelMemory
            | Self::ModelContextOverflow => "model_error",
            Self::GenerationFailed | Self::InvalidPrompt | Self::CodeExtractionFailed => {
                "generation_error"
            }
            Self::ReviewFailed | Self::InvalidCode | Self::AnalysisFailed => "review_error",
            Self::Cancelled => "cancelled",
            Self::ValidationFailed | Self::InvalidInput | Self::MissingField => "validation_error",
            Self::PluginNotFound
            | Self::PluginLoad
            | Self::PluginTrap
            | Self::PluginTimeout
            | Self::PluginMemory
            | Self::PluginAccessDenied
            | Self::PluginQuota
            | Self::PluginOutput
            | Self::PluginFuel => "plugin_error",
            Self::Unauthenticated => "authentication_error",
            Self::Forbidden => "permission_error",
            Self::RateLimited | Self::QueueFull => "rate_limit_error",
            Self::RunFinished | Self::RunElsewhere => "conflict",
            Self::RunInterrupted => "run_error",
            Self::StoreFailed => "store_error",
            Self::RequestTimeout => "timeout_error",
            Self::NetworkError => "network_error",
            Self::BackupFailed => "backup_error",
            Self::NotFound => "not_found",
            Self::Internal => "internal_error",
        }
    }

    /// The HTTP status that fits.
    pub fn http_status(self) -> u16 {
        match self {
            Self::ValidationFailed
            | Self::InvalidInput
            | Self::MissingField
            | Self::InvalidPrompt => 400,
            Self::ModelContextOverflow | Self::InvalidCode => 422,
            Self::PluginAccessDenied | Self::Forbidden => 403,
            Self::Unauthenticated => 401,
            Self::NotFound | Self::PluginNotFound => 404,
            Self::PluginQuota | Self::RateLimited | Self::QueueFull => 429,
            Self::RunFinished | Self::RunElsewhere => 409,
            Self::ModelTimeout | Self::PluginTimeout | Self::RequestTimeout => 504,
            Self::Cancelled => 408,
            Self::ModelNotAvailable => 503,
            Self::PluginTrap
            | Self::PluginMemory
            | Self::PluginLoad
            | Self::PluginOutput
            | Self::PluginFuel
            | Self::NetworkError => 502,
            Self::ModelMemory
            | Self::GenerationFailed
            | Self::CodeExtractionFailed
            | Self::ReviewFailed
            | Self::AnalysisFailed
            | Self::RunInterrupted
            | Self::StoreFailed
            | Self::BackupFailed
            | Self::Internal => 500,
        }
    }

    /// Look a code string up (for codes coming back from plugins).
    pub fn parse(code: &str) -> Option<Self> {
        ALL.iter().copied().find(|c| c.as_str() == code)
    }
}

/// Every code, for documentation and lookups.
pub const ALL: &[ErrorCode] = &[
    ErrorCode::ModelNotAvailable,
    ErrorCode::ModelTimeout,
    ErrorCode::ModelMemory,
    ErrorCode::ModelContextOverflow,
    ErrorCode::GenerationFailed,
    ErrorCode::InvalidPrompt,
    ErrorCode::CodeExtractionFailed,
    ErrorCode::ReviewFailed,
    ErrorCode::InvalidCode,
    ErrorCode::AnalysisFailed,
    ErrorCode::Cancelled,
    ErrorCode::ValidationFailed,
    ErrorCode::InvalidInput,
    ErrorCode::MissingField,
    ErrorCode::PluginNotFound,
    ErrorCode::PluginLoad,
    ErrorCode::PluginTrap,
    ErrorCode::PluginTimeout,
    ErrorCode::PluginMemory,
    ErrorCode::PluginAccessDenied,
    ErrorCode::PluginQuota,
    ErrorCode::PluginOutput,
    ErrorCode::PluginFuel,
    ErrorCode::Unauthenticated,
    ErrorCode::Forbidden,
    ErrorCode::RateLimited,
    ErrorCode::QueueFull,
    ErrorCode::RunFinished,
    ErrorCode::RunInterrupted,
    ErrorCode::RunElsewhere,
    ErrorCode::StoreFailed,
    ErrorCode::RequestTimeout,
    ErrorCode::NetworkError,
    ErrorCode::BackupFailed,
    ErrorCode::NotFound,
    ErrorCode::Internal,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ERRORS.md lists every code with its status and type, and nothing else.
    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../docs/ERRORS.md");
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        for code in ALL {
            let row = rows
                .iter()
                .find(|r| r[1] == format!("`{}`", code.as_str()))
                .unwrap_or_else(|| panic!("{} is not in docs/ERRORS.md", code.as_str()));
            assert!(
                row[2].contains(&code.http_status().to_string()),
                "{}: status {} documented as {}",
                code.as_str(),
                code.http_status(),
                row[2]
            );
            assert_eq!(row[3], code.kind(), "{}", code.as_str());
        }
        for row in &rows {
            let code = row[1].trim_matches('`');
            assert!(
                ErrorCode::parse(code).is_some(),
                "docs/ERRORS.md lists unknown {code}"
            );
        }
    }

    /// `TEST_001` (generated tests failed) is not an error a request can end with, so it is not
    /// an [`ErrorCode`]; the pipeline hands it to the error handler and counts it in `/stats`
    /// (plugin `python-sandbox`) and in the retry metrics, and docs/ERRORS.md explains it.
    #[test]
    fn the_failing_tests_code_is_documented_apart() {
        let doc = include_str!("../../docs/ERRORS.md");
        let code = crate::pipeline::TESTS_FAILED;
        assert!(ErrorCode::parse(code).is_none(), "{code} is in ALL");
        assert!(
            doc.contains(&format!("`{code}`")),
            "{code} is not in docs/ERRORS.md"
        );
        assert!(doc.contains("`python-sandbox`"), "the sandbox's /stats key");
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
        }
    }
}
