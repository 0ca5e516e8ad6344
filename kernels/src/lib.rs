//! agentrt's CUDA kernels: fp16 storage, fp32 arithmetic, compiled by NVRTC at first use.
//!
//! No nvcc at build time: the CUDA C sources are embedded ([`table`]), compiled to PTX for the
//! device's architecture the first time a process needs them ([`compile`]), cached on disk by
//! source hash, NVRTC version and architecture, and loaded once per device ([`DeviceKernels`]).
//! CUDA itself is loaded dynamically (cudarc's `dynamic-loading`): without a driver or NVRTC
//! every entry point returns an error saying so, and nothing panics.

pub mod args;
pub mod compile;
pub mod device;
pub mod table;

pub use compile::{Arch, PtxCache, compile_ptx, nvrtc_available, nvrtc_version};
pub use device::{DeviceKernels, cuda_available};

/// Why kernels could not be compiled or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "NVRTC (libnvrtc.so.13 or .so.12) was not found: install the PyPI package nvidia-cuda-nvrtc-cu12 and add its lib folder to LD_LIBRARY_PATH (scripts/setup.sh does)"
    )]
    NvrtcMissing,
    #[error("no CUDA driver (libcuda.so) was found")]
    DriverMissing,
    #[error("NVRTC failed to compile {module}.cu for {arch}:\n{log}")]
    Compile {
        module: &'static str,
        arch: String,
        log: String,
    },
    #[error(
        "AGENTRT_CUDA_DEFINES: {0:?} is not NAME=INTEGER for one of the tuning constants ({1})"
    )]
    Defines(String, String),
    #[error("NVRTC error: {0}")]
    Nvrtc(String),
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("kernel {0} is not in the compiled modules")]
    UnknownKernel(String),
}
