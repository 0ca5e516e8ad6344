//! Prefill's matrix products through cuBLAS (cudarc's binding, loaded at run time).
//!
//! A prompt of n tokens multiplies every weight matrix by n activation rows; the GEMV kernel
//! reads the weights once per four tokens, cuBLAS's tensor-core GEMM once per prompt chunk.
//! Tensor cores take fp16 on both sides, and the CPU engine (the reference) keeps fp32
//! activations, so each activation is split into two fp16 halves (`split_halves` in gemv.cu)
//! and the two products are summed in fp32: `W·hi + W·lo`. The GEMV's own epilogue kernel
//! then applies bias, activation, residual, SwiGLU or RoPE and the cache write, so both paths
//! end in the same code.
//!
//! Where libcublas is missing the model keeps prefilling with the GEMV kernel.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{CudaBlas, result};
use cudarc::driver::CudaStream;

use super::GpuError;

/// A cuBLAS handle bound to the model's stream.
pub struct Blas {
    handle: CudaBlas,
}

// SAFETY: the handle is only used while the model's state mutex is held, one thread at a
// time, on the stream it was created for.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blas")
    }
}

impl Blas {
    /// cuBLAS on `stream`, or why not (the library is not installed, or refused to start).
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self, String> {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err("libcublas was not found on the library path".into());
        }
        let handle = CudaBlas::new(stream.clone()).map_err(|e| e.to_string())?;
        Ok(Self { handle })
    }

    /// `out[t][r] = Σ_c w[r][c] · (hi[t][c] + lo[t][c])` for `rows` × `cols` fp16 weights and
    /// `n` tokens of split activations, `out` fp32 `[n][rows]`.
    pub fn products(
        &self,
        w: u64,
        (hi, lo): (u64, u64),
        out: u64,
        rows: usize,
        cols: usize,
        n: usize,
    ) -> Result<(), GpuError> {
        let (zero, one) = (0f32, 1f32);
        let err = |e: result::CublasError| GpuError::Driver(format!("cuBLAS: {e}"));
        // cuBLAS is column-major: row-major W [rows][cols] is Wᵀ to it, so C = op(A)·B with
        // A = W transposed (rows × cols), B = the activations (cols × n), C = out (rows × n).
        for (x, beta) in [(hi, &zero), (lo, &one)] {
            // SAFETY: the addresses are live device allocations of the stated sizes (the
            // model's weights and scratch), on the handle's stream.
            unsafe {
                result::gemm_ex(
                    *self.handle.handle(),
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    rows as i32,
                    n as i32,
                    cols as i32,
                    &one as *const f32 as *const c_void,
                    w as *const c_void,
                    cudaDataType_t::CUDA_R_16F,
                    cols as i32,
                    x as *const c_void,
                    cudaDataType_t::CUDA_R_16F,
                    cols as i32,
                    beta as *const f32 as *const c_void,
                    out as *mut c_void,
                    cudaDataType_t::CUDA_R_32F,
                    rows as i32,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .map_err(err)?;
            }
        }
        Ok(())
    }
}
