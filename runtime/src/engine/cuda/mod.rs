//! The GPU engine: the same models as the CPU engine, run by agentrt's fp16 CUDA kernels
//! (crate `agentrt-kernels`) through cudarc. Built with the `cuda` feature; CUDA is loaded at
//! run time, so the binary still starts (and uses the CPU) on machines without a driver.
//!
//! Weights are uploaded once as fp16 (GGUF Q4/Q8 and BF16/F32 converted on the device), the
//! KV cache lives on the device for the model's whole context, and each decode step is one
//! CUDA graph replay (a graph per power-of-two number of attention chunks).

pub mod blas;
pub mod device_weights;
pub mod launch;
pub mod model;
pub mod spec;
mod upload;

pub use model::CudaModel;
pub use spec::Spec;

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{DriverError, sys::CUresult};

use super::gguf::GgufFile;
use super::models::{self, Architecture, ConfigSource, HfConfig};
use super::weights::{self, WeightStore};

/// Why the GPU engine could not load or run a model.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error(
        "the GPU has {free_mib} MiB free but the model needs {need_mib} MiB (weights {weights_mib} MiB as fp16, KV cache {kv_mib} MiB for {context} positions); lower AGENTRT_CUDA_CONTEXT or use a smaller model"
    )]
    OutOfMemory {
        need_mib: u64,
        free_mib: u64,
        weights_mib: u64,
        kv_mib: u64,
        context: usize,
    },
    #[error("the GPU ran out of memory: {0}")]
    DeviceOutOfMemory(String),
    #[error("model not supported on the GPU: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Kernels(#[from] agentrt_kernels::KernelError),
    #[error("CUDA error: {0}")]
    Driver(String),
}

impl From<DriverError> for GpuError {
    fn from(e: DriverError) -> Self {
        if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Self::DeviceOutOfMemory(e.to_string())
        } else {
            Self::Driver(e.to_string())
        }
    }
}

impl GpuError {
    /// Out of device memory (`MODEL_003`) rather than any other load failure.
    pub fn is_memory(&self) -> bool {
        match self {
            Self::OutOfMemory { .. } | Self::DeviceOutOfMemory(_) => true,
            // Loading the kernel modules needs device memory too.
            Self::Kernels(agentrt_kernels::KernelError::Driver(e)) => {
                e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY
            }
            _ => false,
        }
    }
}

impl CudaModel {
    /// Open a GGUF file or HF folder straight onto the GPU, without a tokenizer (benchmarks
    /// and tests that feed token ids).
    pub fn open(path: &Path) -> Result<Self, GpuError> {
        let file_err = |e: String| GpuError::Unsupported(format!("{}: {e}", path.display()));
        let unknown = |name: &str| file_err(format!("unknown architecture {name}"));
        if path.is_dir() {
            let config = HfConfig::read(path).map_err(|e| file_err(e.to_string()))?;
            let name = config.model_type().map_err(|e| file_err(e.to_string()))?;
            let arch = Architecture::from_name(name).ok_or_else(|| unknown(name))?;
            let files = weights::safetensors_files(path).map_err(|e| file_err(e.to_string()))?;
            let store = WeightStore::from_safetensors(&files, &|n| models::hf_tensor_name(arch, n))
                .map_err(|e| file_err(e.to_string()))?;
            let spec =
                Spec::read(arch, ConfigSource::Hf(&config)).map_err(|e| file_err(e.to_string()))?;
            CudaModel::load(spec, &store, &mut |_, _| {})
        } else {
            let file = GgufFile::open(path).map_err(|e| file_err(e.to_string()))?;
            let name = file
                .str("general.architecture")
                .map_err(|e| file_err(e.to_string()))?
                .to_string();
            let arch = Architecture::from_name(&name).ok_or_else(|| unknown(&name))?;
            let file = Arc::new(file);
            let store = WeightStore::from_gguf(file.clone());
            let spec = Spec::read(arch, ConfigSource::Gguf(&file, &name))
                .map_err(|e| file_err(e.to_string()))?;
            CudaModel::load(spec, &store, &mut |_, _| {})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_memory_loading_the_kernels_is_out_of_memory() {
        let oom = DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        assert!(GpuError::Kernels(agentrt_kernels::KernelError::Driver(oom)).is_memory());
        let other = DriverError(CUresult::CUDA_ERROR_INVALID_PTX);
        assert!(!GpuError::Kernels(agentrt_kernels::KernelError::Driver(other)).is_memory());
    }
}
