//! Argument blocks passed by value to kernels with many parameters, laid out as their C
//! structs (`#[repr(C)]`, pointers first). The PTX test checks each size against the
//! parameter NVRTC emits.

use cudarc::driver::DeviceRepr;

/// What the GEMV kernel does around the products (`MODE_*` in gemv.cu).
pub const MODE_PLAIN: i32 = 0;
pub const MODE_SWIGLU: i32 = 1;
pub const MODE_QKV: i32 = 2;
/// Rotary layout (`ROPE_*`).
pub const ROPE_NONE: i32 = 0;
pub const ROPE_INTERLEAVED: i32 = 1;
pub const ROPE_HALF_SPLIT: i32 = 2;
/// Activation of MODE_PLAIN.
pub const ACT_NONE: i32 = 0;
pub const ACT_GELU_TANH: i32 = 1;

/// `struct GemvArgs` of gemv.cu: device addresses (0 for absent) and sizes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GemvArgs {
    pub w: u64,
    pub x: u64,
    pub y: u64,
    pub bias: u64,
    pub residual: u64,
    pub pos0: u64,
    pub inv_freq: u64,
    pub kcache: u64,
    pub vcache: u64,
    pub rows: i32,
    pub cols: i32,
    pub n_tokens: i32,
    pub y_stride: i32,
    pub mode: i32,
    pub act: i32,
    pub n_head: i32,
    pub n_kv_head: i32,
    pub head_dim: i32,
    pub capacity: i32,
    pub rope: i32,
    /// Warps sharing one pair of rows along the columns: 1, 2 or 4 (see [`GemvArgs::split_for`]).
    pub ksplit: i32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for GemvArgs {}

impl GemvArgs {
    /// Warps per pair for rows `cols` wide: one streams a 2048-wide pair in a single round of
    /// loads; wider rows are split so more warps share the work and fewer rounds wait in turn.
    pub fn split_for(cols: i32) -> i32 {
        if cols >= 4096 { 4 } else { 1 }
    }

    /// `self` with `ksplit` chosen for its width.
    pub fn with_split(self) -> Self {
        Self {
            ksplit: Self::split_for(self.cols),
            ..self
        }
    }

    /// Blocks to launch: `ksplit` warps per pair of weight rows, four warps per block.
    pub fn blocks(&self) -> u32 {
        let pairs = match self.mode {
            MODE_SWIGLU => (self.rows / 2) as u32,
            _ => (self.rows as u32).div_ceil(2),
        };
        let per_block = crate::table::GEMV_THREADS / 32 / self.ksplit.max(1) as u32;
        pairs.div_ceil(per_block)
    }
}

/// `struct LayerArgs` of decode.cu: one decoder layer's four products and two norms, for
/// the fused decode step (an array of them on the device, one per layer).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerArgs {
    /// Q/K/V (`x` unused: each block reads its own normed copy).
    pub qkv: GemvArgs,
    pub out: GemvArgs,
    /// The feed-forward input product (`x` unused, as `qkv`).
    pub up: GemvArgs,
    pub down: GemvArgs,
    pub norm1_w: u64,
    pub norm1_b: u64,
    pub norm2_w: u64,
    pub norm2_b: u64,
}

// SAFETY: plain old data with the C layout of the struct the kernel reads.
unsafe impl DeviceRepr for LayerArgs {}

/// `struct StepArgs` of decode.cu: what every layer of the fused decode step shares.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StepArgs {
    /// Device address of `n_layers` [`LayerArgs`].
    pub layers: u64,
    pub x: u64,
    pub q: u64,
    pub part_o: u64,
    pub part_ml: u64,
    pub done: u64,
    pub attn: u64,
    pub pos0: u64,
    /// A `u32` the engine zeroes before each launch.
    pub barrier: u64,
    pub n_layers: i32,
    pub dim: i32,
    pub layer_norm: i32,
    pub n_head: i32,
    pub group: i32,
    pub head_dim: i32,
    pub capacity: i32,
    pub max_splits: i32,
    pub eps: f32,
    pub scale: f32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for StepArgs {}
