//! A model's tensors on the device: every weight matrix as fp16 (stacked where the forward
//! pass fuses products), norms and biases as f32, and the RoPE frequencies. Addresses are kept
//! as plain numbers for the kernels; the allocations they point into live in [`Owned`].

use std::sync::Arc;

use agentrt_kernels::DeviceKernels;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use super::GpuError;
use super::launch::addr;
use super::spec::{NormKind, Spec};
use super::upload;
use crate::engine::weights::{FileWeight, WeightStore};

/// Device allocations kept for a model's life; the addresses handed out point into them.
#[derive(Default)]
pub struct Owned {
    half: Vec<CudaSlice<u16>>,
    float: Vec<CudaSlice<f32>>,
    int: Vec<CudaSlice<i32>>,
}

/// Element types [`Owned`] keeps.
pub trait Keep: DeviceRepr + ValidAsZeroBits + Sized {
    fn keep(owned: &mut Owned, slice: CudaSlice<Self>);
}

impl Keep for u16 {
    fn keep(owned: &mut Owned, slice: CudaSlice<Self>) {
        owned.half.push(slice);
    }
}

impl Keep for f32 {
    fn keep(owned: &mut Owned, slice: CudaSlice<Self>) {
        owned.float.push(slice);
    }
}

impl Keep for i32 {
    fn keep(owned: &mut Owned, slice: CudaSlice<Self>) {
        owned.int.push(slice);
    }
}

impl Owned {
    /// Keep `slice` and return its address.
    pub fn hold<T: Keep>(&mut self, slice: CudaSlice<T>, stream: &CudaStream) -> u64 {
        let a = addr(&slice, stream);
        T::keep(self, slice);
        a
    }

    /// A zeroed buffer of `n` elements, kept; its address.
    pub fn zeros<T: Keep>(&mut self, stream: &Arc<CudaStream>, n: usize) -> Result<u64, GpuError> {
        let slice = stream.alloc_zeros::<T>(n)?;
        Ok(self.hold(slice, stream))
    }

    /// `v` copied to the device, kept; its address.
    pub fn floats(&mut self, stream: &Arc<CudaStream>, v: &[f32]) -> Result<u64, GpuError> {
        let slice = upload::vector(stream, v)?;
        Ok(self.hold(slice, stream))
    }
}

/// Device addresses of one layer's tensors (0 where the architecture has none) and of its
/// slice of the KV cache.
#[derive(Debug, Clone, Copy)]
pub struct LayerAddrs {
    pub norm1_w: u64,
    pub norm1_b: u64,
    pub qkv: u64,
    pub qkv_b: u64,
    pub wo: u64,
    pub wo_b: u64,
    pub norm2_w: u64,
    pub norm2_b: u64,
    pub ffn_in: u64,
    pub ffn_in_b: u64,
    pub ffn_out: u64,
    pub ffn_out_b: u64,
    pub k_cache: u64,
    pub v_cache: u64,
}

/// Every tensor of a model, on the device.
pub struct DeviceWeights {
    pub embed: u64,
    /// Learned positions (GPT-BigCode), or 0.
    pub positions: u64,
    pub layers: Vec<LayerAddrs>,
    pub out_norm_w: u64,
    pub out_norm_b: u64,
    /// The output head (the embedding when tied).
    pub head: u64,
    /// `base^(-2i/d)` per rotary pair, computed as the CPU engine does.
    pub inv_freq: u64,
}

/// Bytes of fp16 weights `spec` needs on the device (a tied head is stored once).
pub fn weight_bytes(spec: &Spec, tied: bool) -> u64 {
    let dim = spec.dim;
    let elements = spec.vocab * dim
        + spec.learned_positions.unwrap_or(0) * dim
        + spec.n_layer * spec.layer_weight_elements()
        + if tied { 0 } else { spec.vocab * dim };
    elements as u64 * 2
}

/// Whether `store` has no separate output head (it is the embedding); an error when the head
/// is missing but `spec`'s config says it is not tied ([`Spec::head_tied`]).
pub fn head_is_tied(spec: &Spec, store: &WeightStore) -> Result<bool, GpuError> {
    spec.head_tied(store.contains("output.weight"))
        .map_err(GpuError::Unsupported)
}

/// Reads named tensors of a store and uploads them.
struct Loader<'a> {
    store: &'a WeightStore,
    stream: &'a Arc<CudaStream>,
    kernels: &'a DeviceKernels,
    owned: &'a mut Owned,
}

impl Loader<'_> {
    /// The matrix's rows (a k-quant's converted for this upload only).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<FileWeight<'_>, GpuError> {
        self.store
            .matrix(name, rows, cols)
            .map(|m| self.store.file_weight(&m))
            .map_err(|e| GpuError::Unsupported(e.to_string()))
    }

    /// The `.weight` matrices of `parts` (name, rows), stacked, as fp16; their address.
    fn stacked(&mut self, parts: &[(String, usize)], cols: usize) -> Result<u64, GpuError> {
        let weights = parts
            .iter()
            .map(|(name, rows)| self.matrix(&format!("{name}.weight"), *rows, cols))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = weights.iter().map(FileWeight::as_weight).collect();
        let slice = upload::stacked_matrix(self.stream, self.kernels, &refs)?;
        Ok(self.owned.hold(slice, self.stream))
    }

    /// The `.bias` vectors of `parts`, concatenated; their address, or 0 when `present` is off.
    fn biases(&mut self, parts: &[(String, usize)], present: bool) -> Result<u64, GpuError> {
        if !present {
            return Ok(0);
        }
        let mut all = Vec::new();
        for (name, rows) in parts {
            all.extend(self.vector(&format!("{name}.bias"), *rows)?);
        }
        self.owned.floats(self.stream, &all)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, GpuError> {
        self.store
            .vector(name, n)
            .map_err(|e| GpuError::Unsupported(e.to_string()))
    }

    /// A norm's weight (and bias for LayerNorm) of width `dim`.
    fn norm(&mut self, name: &str, dim: usize, with_bias: bool) -> Result<(u64, u64), GpuError> {
        let w = self.vector(&format!("{name}.weight"), dim)?;
        let w = self.owned.floats(self.stream, &w)?;
        let b = if with_bias {
            let b = self.vector(&format!("{name}.bias"), dim)?;
            self.owned.floats(self.stream, &b)?
        } else {
            0
        };
        Ok((w, b))
    }
}

impl DeviceWeights {
    /// Upload every tensor `spec` names from `store`; `kv_base` is the start of the KV cache
    /// (`[layer][k, v][kv_head][capacity][head_dim]` fp16), which each layer is given a slice of.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        spec: &Spec,
        store: &WeightStore,
        stream: &Arc<CudaStream>,
        kernels: &DeviceKernels,
        owned: &mut Owned,
        kv_base: u64,
        capacity: usize,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        let (dim, vocab) = (spec.dim, spec.vocab);
        let mut l = Loader {
            store,
            stream,
            kernels,
            owned,
        };
        let embed = l.stacked(&[("token_embd".into(), vocab)], dim)?;
        let positions = match spec.learned_positions {
            Some(n) => l.stacked(&[("position_embd".into(), n)], dim)?,
            None => 0,
        };
        let head = if head_is_tied(spec, store)? {
            embed
        } else {
            l.stacked(&[("output".into(), vocab)], dim)?
        };
        let with_bias = spec.norm == NormKind::Layer;
        let kv_layer_bytes = (spec.kv_dim() * capacity * 2) as u64;
        let mut layers = Vec::with_capacity(spec.n_layer);
        for i in 0..spec.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            let (norm1_w, norm1_b) = l.norm(&p("attn_norm"), dim, with_bias)?;
            let (norm2_w, norm2_b) = l.norm(&p("ffn_norm"), dim, with_bias)?;
            let qkv_parts = spec.qkv_parts(i);
            let wo_part = [(p("attn_output"), dim)];
            let in_parts = spec.ffn_in_parts(i);
            let out_part = [(p("ffn_down"), dim)];
            let k_cache = kv_base + 2 * i as u64 * kv_layer_bytes;
            layers.push(LayerAddrs {
                norm1_w,
                norm1_b,
                qkv: l.stacked(&qkv_parts, dim)?,
                qkv_b: l.biases(&qkv_parts, spec.qkv_bias)?,
                wo: l.stacked(&wo_part, spec.q_dim())?,
                wo_b: l.biases(&wo_part, spec.proj_bias)?,
                norm2_w,
                norm2_b,
                ffn_in: l.stacked(&in_parts, dim)?,
                ffn_in_b: l.biases(&in_parts, spec.proj_bias)?,
                ffn_out: l.stacked(&out_part, spec.ffn_dim)?,
                ffn_out_b: l.biases(&out_part, spec.proj_bias)?,
                k_cache,
                v_cache: k_cache + kv_layer_bytes,
            });
            on_progress(i + 1, spec.n_layer);
        }
        let (out_norm_w, out_norm_b) = l.norm("output_norm", dim, with_bias)?;
        let inv_freq = match spec.rope {
            Some((layout, base)) => {
                let rope = crate::engine::cpu::Rope::new(spec.head_dim, base, layout);
                l.owned.floats(stream, rope.inv_freq())?
            }
            None => l.owned.floats(stream, &[0.0])?,
        };
        Ok(Self {
            embed,
            positions,
            layers,
            out_norm_w,
            out_norm_b,
            head,
            inv_freq,
        })
    }
}
