//! Which processor runs a model: `--device cpu|cuda|auto` (or `AGENTRT_DEVICE`).
//!
//! `auto` takes the GPU when the binary was built with the `cuda` feature and a CUDA device
//! answers, and the CPU engine otherwise; `cuda` insists and fails with a clear error.

/// Where to run a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    Cpu,
    Cuda,
    #[default]
    Auto,
}

impl Device {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(Self::Cpu),
            "cuda" | "gpu" => Some(Self::Cuda),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    /// `AGENTRT_DEVICE`, else `auto`.
    pub fn from_env() -> Self {
        std::env::var("AGENTRT_DEVICE")
            .ok()
            .and_then(|v| Self::parse(v.trim()))
            .unwrap_or_default()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("unknown device {s:?} (cpu, cuda, auto)"))
    }
}

/// Why CUDA is not usable in this process (built without it, no driver, no device), or
/// `None` when it is.
pub fn cuda_unavailable_reason() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        agentrt_kernels::cuda_available().err()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Some("this agentrt was built without the `cuda` feature".into())
    }
}
