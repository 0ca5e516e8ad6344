//! Weights onto the device as fp16: F16 copied as is, BF16 / F32 narrowed and GGUF Q4_0,
//! Q4_1 and Q8_0 dequantised by kernels, several tensors stacked into one matrix where the
//! forward pass fuses their products (Q/K/V, gate/up).

use std::sync::Arc;

use agentrt_kernels::DeviceKernels;
use cudarc::driver::{CudaSlice, CudaStream};

use super::GpuError;
use super::launch::{addr, launch};
use crate::engine::cpu::WeightRef;
use crate::engine::quant::GgmlType;

const THREADS: u32 = 256;

/// A matrix of `rows` stacked from `parts` (each `cols` wide), as fp16 on the device.
pub fn stacked_matrix(
    stream: &Arc<CudaStream>,
    kernels: &DeviceKernels,
    parts: &[WeightRef<'_>],
) -> Result<CudaSlice<u16>, GpuError> {
    let cols = parts[0].cols;
    let rows: usize = parts.iter().map(|p| p.rows).sum();
    // SAFETY: every element is written below (each part covers its rows entirely).
    let dst = unsafe { stream.alloc::<u16>(rows * cols) }?;
    let base = addr(&dst, stream);
    let mut row0 = 0usize;
    for part in parts {
        if part.cols != cols {
            return Err(GpuError::Unsupported(format!(
                "stacked tensors of different widths ({} and {cols})",
                part.cols
            )));
        }
        let elements = part.rows * part.cols;
        let at = base + (row0 * cols * 2) as u64;
        let staged: CudaSlice<u8> = stream.clone_htod(part.data)?;
        let src = addr(&staged, stream);
        let grid = |n: usize| ((n as u32).div_ceil(THREADS), 1, 1);
        match part.ty {
            GgmlType::F16 => {
                // SAFETY: both ranges are live device allocations of `elements * 2` bytes.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        at,
                        src,
                        elements * 2,
                        stream.cu_stream(),
                    )
                }?;
            }
            GgmlType::BF16 => {
                let f = kernels.function("bf16_to_f16")?;
                launch!(false, stream, f, grid(elements), THREADS, 0; src, at, elements as i64)?;
            }
            GgmlType::F32 => {
                let f = kernels.function("f32_to_f16")?;
                launch!(false, stream, f, grid(elements), THREADS, 0; src, at, elements as i64)?;
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
                let kind: i32 = match part.ty {
                    GgmlType::Q4_0 => 0,
                    GgmlType::Q4_1 => 1,
                    _ => 2,
                };
                let blocks = elements / 32;
                let f = kernels.function("dequant_blocks")?;
                launch!(false, stream, f, grid(blocks), THREADS, 0; src, at, blocks as i64, kind)?;
            }
        }
        // The staging buffer is freed when this iteration ends; the copy must be done by then.
        stream.synchronize()?;
        drop(staged);
        row0 += part.rows;
    }
    Ok(dst)
}

/// A small f32 vector (norm weights, biases) on the device.
pub fn vector(stream: &Arc<CudaStream>, v: &[f32]) -> Result<CudaSlice<f32>, GpuError> {
    Ok(stream.clone_htod(v)?)
}
