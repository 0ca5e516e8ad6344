//! The kernels loaded on one device: compiled (or read from the PTX cache) for its
//! architecture the first time, then kept for the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction};

use crate::KernelError;
use crate::compile::{Arch, PtxCache, compile_ptx};
use crate::table::ALL;

/// Why CUDA cannot be used here, or the number of devices it sees. Never panics: the driver
/// library is probed before any call into it.
pub fn cuda_available() -> Result<usize, String> {
    // SAFETY: only tries to dlopen the candidate library names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this machine".into());
    }
    match CudaContext::device_count() {
        Ok(0) => Err("the CUDA driver sees no device".into()),
        Ok(n) => Ok(n as usize),
        Err(e) => Err(format!("the CUDA driver did not start: {e}")),
    }
}

/// Every kernel of [`ALL`], loaded on one device.
#[derive(Debug)]
pub struct DeviceKernels {
    pub arch: Arch,
    functions: HashMap<&'static str, CudaFunction>,
}

impl DeviceKernels {
    /// The kernels of `ctx`'s device, compiled once per process and device.
    pub fn get(ctx: &Arc<CudaContext>, cache: &PtxCache) -> Result<Arc<Self>, KernelError> {
        static LOADED: OnceLock<Mutex<HashMap<usize, Arc<DeviceKernels>>>> = OnceLock::new();
        let loaded = LOADED.get_or_init(Default::default);
        let mut loaded = loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = loaded.get(&ctx.ordinal()) {
            return Ok(k.clone());
        }
        let kernels = Arc::new(Self::load(ctx, cache)?);
        loaded.insert(ctx.ordinal(), kernels.clone());
        Ok(kernels)
    }

    fn load(ctx: &Arc<CudaContext>, cache: &PtxCache) -> Result<Self, KernelError> {
        let (major, minor) = ctx.compute_capability()?;
        let arch = Arch { major, minor };
        let mut functions = HashMap::new();
        for source in ALL {
            let ptx = compile_ptx(&source, arch, cache)?;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
            for name in source.functions {
                functions.insert(*name, module.load_function(name)?);
            }
        }
        Ok(Self { arch, functions })
    }

    /// The kernel `name` (one of the table's functions).
    pub fn function(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.functions
            .get(name)
            .ok_or_else(|| KernelError::UnknownKernel(name.to_string()))
    }
}
