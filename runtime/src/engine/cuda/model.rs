//! A model on the GPU: fp16 weights, fp16 KV caches for the whole context, fp32 activations,
//! one forward pass for every architecture ([`Spec`]), decode steps replayed as CUDA graphs.
//!
//! The device holds one KV cache per sequence that may run at once (a [`SlotPool`] of them, as
//! many as the scheduler's batch allows and memory holds): each sequence's [`KvCache`] owns a
//! slot, and its passes read and write that slot's region only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentrt_kernels::args::{
    ACT_GELU_TANH, ACT_NONE, GemvArgs, LayerArgs, MODE_PLAIN, MODE_QKV, MODE_SWIGLU,
    ROPE_HALF_SPLIT, ROPE_INTERLEAVED, ROPE_NONE, StepArgs,
};
use agentrt_kernels::table::{
    ATTN_CHUNK, ATTN_THREADS, GEMV_THREADS, NORM_THREADS, SAMPLE_THREADS,
};
use agentrt_kernels::{DeviceKernels, PtxCache};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaGraph, CudaSlice, CudaStream};

use super::GpuError;
use super::blas::Blas;
use super::device_weights::{self, DeviceWeights, LayerAddrs, Owned};
use super::launch::{Launch, addr, launch, launch_as};
use super::spec::{FfnKind, NormKind, Spec};
use crate::engine::cpu::RopeLayout;
use crate::engine::kv_cache::{KvCache, KvPrecision, SlotPool};
use crate::engine::models::{CacheShape, CausalLm, Next};
use crate::engine::sampling::Choice;
use crate::engine::weights::WeightStore;

/// Distinct recent tokens the device repeat penalty takes (more: the host applies it).
const PENALTY_SLOTS: usize = 1024;
/// Tokens per prefill pass (longer prompts run in chunks of this many).
const MAX_BATCH: usize = 256;
/// Fewest tokens whose products go through cuBLAS: below, the GEMV kernel (weights read once
/// per four tokens) costs no more than a GEMM and keeps short prompts off a second library.
const GEMM_MIN_TOKENS: usize = 8;
const EPILOGUE_THREADS: u32 = 256;
/// Context used when `AGENTRT_CUDA_CONTEXT` is not set and the model allows more.
const DEFAULT_CONTEXT: usize = 8192;
const EMBED_THREADS: u32 = 256;

/// Activation and scratch buffers (addresses into `State`'s and the model's allocations).
#[derive(Debug, Clone, Copy)]
struct Scratch {
    x: u64,
    /// The input norm's output, `[n][dim]`.
    normed: u64,
    /// Queries (RoPE applied), `[n][q_dim]`; keys and values go straight to the cache.
    q: u64,
    attn: u64,
    hidden: u64,
    logits: u64,
    part_o: u64,
    /// Prefill through cuBLAS: the products `[n][rows]` and the split activations
    /// `[n][cols]` (fp16 high and low halves).
    prod: u64,
    x_hi: u64,
    x_lo: u64,
    part_ml: u64,
    /// Per-head counters of finished attention chunks (zero between launches).
    done: u64,
    tokens: u64,
    pos0: u64,
    sampled: u64,
    penalty: u64,
}

/// How the fused decode step (decode.cu) is launched: as many blocks as are resident at
/// once (its grid barrier needs every one running), the dynamic shared memory for the
/// block's normed activations, each KV slot's layer arguments and the barrier counter.
/// Owns those two allocations: turning the step off frees them.
struct Fused {
    blocks: u32,
    shared_bytes: u32,
    /// `[slot][layer]` LayerArgs on the device (as 32-bit words).
    layers: CudaSlice<i32>,
    barrier: CudaSlice<i32>,
}

/// A captured decode step for one number of attention chunks.
struct Graph(CudaGraph);
// SAFETY: a CudaGraph is only launched while `State`'s mutex is held, one thread at a time.
unsafe impl Send for Graph {}

/// What a forward pass mutates: the per-step inputs and the captured graphs.
struct State {
    tokens: CudaSlice<i32>,
    pos0: CudaSlice<i32>,
    sampled: CudaSlice<i32>,
    /// Distinct recent tokens for the repeat penalty.
    penalty: CudaSlice<i32>,
    logits: CudaSlice<f32>,
    /// Captured decode steps by KV slot and number of attention chunks.
    graphs: HashMap<(usize, usize), Graph>,
}

/// A model loaded on a CUDA device.
pub struct CudaModel {
    pub spec: Spec,
    /// Positions the device KV cache holds (the context this model offers).
    pub capacity: usize,
    pub device_name: String,
    /// Bytes of fp16 weights on the device (each stored tensor once).
    pub weight_bytes: u64,
    /// Bytes of the device KV caches, all slots together.
    pub kv_bytes: u64,
    /// The KV caches: one per sequence running at once.
    slots: Arc<SlotPool>,
    /// Bytes between one slot's cache and the next.
    slot_bytes: u64,
    max_splits: usize,
    /// Launch with programmatic dependent launch (compute capability 9.0 and later, unless
    /// `AGENTRT_CUDA_PDL=0`): each kernel lets the next one launch once its main work is done.
    /// Measured on an H200: +3 % decode for the 1B shape, +13 % for SmolLM2.
    pub pdl: bool,
    /// The fused decode step, or `None` for one kernel per operation (the default).
    fused: Option<Fused>,
    /// cuBLAS for prefill's products, or why prefill runs on the GEMV kernel instead
    /// (libcublas missing, or `AGENTRT_CUDA_CUBLAS=0`).
    blas: Result<Blas, String>,
    stream: Arc<CudaStream>,
    kernels: Arc<DeviceKernels>,
    w: DeviceWeights,
    scratch: Scratch,
    state: Mutex<State>,
    /// The allocations behind `w`, `scratch` and the KV cache.
    _owned: Owned,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("spec", &self.spec)
            .field("device", &self.device_name)
            .finish_non_exhaustive()
    }
}

// SAFETY: the device addresses are plain numbers into allocations owned by `_owned`/`state`;
// every launch goes through the one stream, and mutation is serialised by `state`'s mutex.
unsafe impl Sync for CudaModel {}
unsafe impl Send for CudaModel {}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Where compiled kernels are cached: `$AGENTRT_HOME/ptx`.
fn ptx_cache() -> PtxCache {
    PtxCache::at(crate::paths::home().join("ptx"))
}

impl CudaModel {
    /// Upload the model described by `spec` from `store` to CUDA device
    /// `AGENTRT_CUDA_DEVICE` (default 0).
    /// At most `AGENTRT_CUDA_MEMORY_MIB` of device memory is taken when that is set (a
    /// shared GPU), else what the device has free.
    pub fn load(
        spec: Spec,
        store: &WeightStore,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        let limit = env_usize("AGENTRT_CUDA_MEMORY_MIB").map(|m| (m as u64) << 20);
        Self::load_limited(spec, store, on_progress, limit)
    }

    /// [`CudaModel::load`] within `memory_limit` bytes of device memory.
    pub fn load_limited(
        spec: Spec,
        store: &WeightStore,
        on_progress: &mut dyn FnMut(usize, usize),
        memory_limit: Option<u64>,
    ) -> Result<Self, GpuError> {
        spec.check_supported().map_err(GpuError::Unsupported)?;
        // Before any device work: a head the config says is untied must be in the file.
        let tied = device_weights::head_is_tied(&spec, store)?;
        agentrt_kernels::cuda_available().map_err(GpuError::Unavailable)?;
        let ordinal = env_usize("AGENTRT_CUDA_DEVICE").unwrap_or(0);
        let ctx = CudaContext::new(ordinal)?;
        // Launches name raw addresses, and graphs must not capture cross-stream waits. Before
        // the stream is made: with tracking on, making one synchronises the whole context,
        // which a graph capture of another model on it would not survive.
        // SAFETY: this backend uses one stream per model and synchronises it explicitly.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let kernels = DeviceKernels::get(&ctx, &ptx_cache())?;
        let capacity = spec
            .context_length
            .min(env_usize("AGENTRT_CUDA_CONTEXT").unwrap_or(DEFAULT_CONTEXT))
            .max(1);

        let weight_bytes = device_weights::weight_bytes(&spec, tied);
        let slot_bytes = (spec.n_layer * 2 * spec.kv_dim() * capacity * 2) as u64;
        let (dim, vocab) = (spec.dim, spec.vocab);
        let widest_out = spec.qkv_dim().max(2 * spec.ffn_dim).max(dim);
        let widest_in = dim.max(spec.q_dim()).max(spec.ffn_dim);
        let scratch_bytes = (MAX_BATCH * (2 * dim + 2 * spec.q_dim() + spec.ffn_dim + widest_out)
            + vocab) as u64
            * 4
            + (2 * MAX_BATCH * widest_in) as u64 * 2;
        let (free, _total) = ctx.mem_get_info()?;
        let free = memory_limit.map_or(free as u64, |l| l.min(free as u64));
        // The context, modules and graphs take some memory of their own.
        let margin = 64u64 << 20;
        let need = weight_bytes + slot_bytes + scratch_bytes + margin;
        if need > free {
            let mib = |b: u64| b >> 20;
            return Err(GpuError::OutOfMemory {
                need_mib: mib(need),
                free_mib: mib(free),
                weights_mib: mib(weight_bytes),
                kv_mib: mib(slot_bytes),
                context: capacity,
            });
        }
        // One KV cache per sequence the scheduler may run at once, as far as memory allows
        // (at least the one just checked). The extra ones leave room for what is allocated
        // later (cuBLAS's workspace, one captured graph per slot and attention bucket, modules
        // loaded at first use) and for other models: the larger of 512 MiB and 5 % of what was
        // free.
        let wanted = crate::engine::BatchLimits::from_env().max_batch.max(1);
        let reserve = (512u64 << 20).max(free / 20);
        let spare = (free - need).saturating_sub(reserve);
        let slots = wanted.min(1 + (spare / slot_bytes.max(1)) as usize);
        if slots < wanted {
            tracing::warn!(
                "the GPU holds KV caches for {slots} sequences at once, not {wanted} \
                 (AGENTRT_MAX_BATCH): lower AGENTRT_CUDA_CONTEXT to run more"
            );
        }
        let kv_bytes = slot_bytes * slots as u64;

        let s = &stream;
        let mut owned = Owned::default();
        let kv_base = owned.zeros::<u16>(s, slots * spec.n_layer * 2 * spec.kv_dim() * capacity)?;
        let w = DeviceWeights::upload(
            &spec,
            store,
            s,
            &kernels,
            &mut owned,
            kv_base,
            capacity,
            on_progress,
        )?;
        let max_splits = capacity.div_ceil(ATTN_CHUNK);
        let tokens: CudaSlice<i32> = s.alloc_zeros(MAX_BATCH)?;
        let pos0: CudaSlice<i32> = s.alloc_zeros(1)?;
        let sampled: CudaSlice<i32> = s.alloc_zeros(1)?;
        let penalty: CudaSlice<i32> = s.alloc_zeros(PENALTY_SLOTS)?;
        let logits: CudaSlice<f32> = s.alloc_zeros(vocab)?;
        let scratch = Scratch {
            x: owned.zeros::<f32>(s, MAX_BATCH * dim)?,
            normed: owned.zeros::<f32>(s, MAX_BATCH * dim)?,
            q: owned.zeros::<f32>(s, MAX_BATCH * spec.q_dim())?,
            attn: owned.zeros::<f32>(s, MAX_BATCH * spec.q_dim())?,
            hidden: owned.zeros::<f32>(s, MAX_BATCH * spec.ffn_dim)?,
            logits: addr(&logits, s),
            part_o: owned.zeros::<f32>(s, spec.n_head * max_splits * spec.head_dim)?,
            prod: owned.zeros::<f32>(s, MAX_BATCH * widest_out)?,
            x_hi: owned.zeros::<u16>(s, MAX_BATCH * widest_in)?,
            x_lo: owned.zeros::<u16>(s, MAX_BATCH * widest_in)?,
            part_ml: owned.zeros::<f32>(s, spec.n_head * max_splits * 2)?,
            done: owned.zeros::<i32>(s, spec.n_head)?,
            tokens: addr(&tokens, s),
            pos0: addr(&pos0, s),
            sampled: addr(&sampled, s),
            penalty: addr(&penalty, s),
        };
        stream.synchronize()?;
        let device_name = ctx.name()?;
        let pdl =
            kernels.arch.major >= 9 && std::env::var("AGENTRT_CUDA_PDL").as_deref() != Ok("0");
        let blas = if std::env::var("AGENTRT_CUDA_CUBLAS").as_deref() == Ok("0") {
            Err("AGENTRT_CUDA_CUBLAS=0".to_string())
        } else {
            Blas::new(&stream)
        };
        if let Err(why) = &blas {
            tracing::warn!("prefill uses the GEMV kernel, not cuBLAS: {why}");
        }
        let mut model = Self {
            pdl,
            fused: None,
            blas,
            spec,
            capacity,
            device_name,
            weight_bytes,
            kv_bytes,
            slots: SlotPool::new(slots),
            slot_bytes,
            max_splits,
            stream,
            kernels,
            w,
            scratch,
            state: Mutex::new(State {
                tokens,
                pos0,
                sampled,
                penalty,
                logits,
                graphs: HashMap::new(),
            }),
            _owned: owned,
        };
        if std::env::var("AGENTRT_CUDA_FUSED").as_deref() == Ok("1") {
            match model.enable_fused_decode() {
                Err(GpuError::Unsupported(why)) => {
                    tracing::warn!("AGENTRT_CUDA_FUSED=1 ignored: {why}")
                }
                other => other?,
            }
        }
        Ok(model)
    }

    /// Run decode steps as one persistent launch (decode.cu) instead of a kernel per
    /// operation (`AGENTRT_CUDA_FUSED=1` at load). Correct, but slower than the
    /// kernel-per-operation step on an H200 so far (docs/BENCHMARKS.md), hence off by default.
    /// `AGENTRT_CUDA_FUSED_BLOCKS` caps its blocks per SM (default: as many as are resident
    /// at once). Refused (`Unsupported`, nothing changed) for a model too wide for a block's
    /// normed copy of the residual stream.
    pub fn enable_fused_decode(&mut self) -> Result<(), GpuError> {
        if self.fused.is_none() {
            self.fused = Some(self.fused_setup()?);
            self.lock().graphs.clear();
        }
        Ok(())
    }

    fn fused_setup(&mut self) -> Result<Fused, GpuError> {
        // Beside attention's few KB of static shared memory, within the 48 KB every GPU gives
        // a block without opting in.
        let shared_bytes = (self.spec.dim * 4) as u32;
        if shared_bytes > 32 << 10 {
            return Err(GpuError::Unsupported(format!(
                "the fused decode step holds rows of at most 8192, not {}",
                self.spec.dim
            )));
        }
        let per_sm = self
            .f("decode_layers")?
            .occupancy_max_active_blocks_per_multiprocessor(
                GEMV_THREADS,
                shared_bytes as usize,
                None,
            )?
            .min(env_usize("AGENTRT_CUDA_FUSED_BLOCKS").map_or(u32::MAX, |b| b.max(1) as u32));
        let ctx = self.stream.context();
        let cooperative = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH,
        )?;
        if cooperative == 0 {
            return Err(GpuError::Unsupported(
                "the device does not launch cooperative kernels".into(),
            ));
        }
        let sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let blocks = per_sm * sms.max(0) as u32;
        if blocks == 0 {
            return Err(GpuError::Unsupported(
                "no block of the fused decode step fits on an SM".into(),
            ));
        }
        let mut all: Vec<LayerArgs> = Vec::with_capacity(self.slots.total() * self.spec.n_layer);
        for slot in 0..self.slots.total() {
            let kv = slot as u64 * self.slot_bytes;
            all.extend(self.w.layers.iter().map(|l| {
                // Wide rows split over warps, as the GEMV kernel's launches choose.
                let la = self.layer_args(l, kv, 1);
                LayerArgs {
                    qkv: la.qkv.with_split(),
                    out: la.out.with_split(),
                    up: la.up.with_split(),
                    down: la.down.with_split(),
                    ..la
                }
            }));
        }
        // Uploaded as 32-bit words: LayerArgs is plain data, a multiple of 8 bytes long.
        let words = std::mem::size_of_val(all.as_slice()) / 4;
        // SAFETY: `all` is `words` 4-byte words of initialised plain data, aligned to 8.
        let words: &[i32] = unsafe { std::slice::from_raw_parts(all.as_ptr().cast(), words) };
        let layers = self.stream.clone_htod(words)?;
        let barrier = self.stream.alloc_zeros::<i32>(1)?;
        self.stream.synchronize()?;
        tracing::debug!("fused decode step: {blocks} blocks ({per_sm} per SM)");
        Ok(Fused {
            blocks,
            shared_bytes,
            layers,
            barrier,
        })
    }

    /// Whether decode steps run as one persistent launch (decode.cu), not a kernel per
    /// operation.
    pub fn fused_decode_enabled(&self) -> bool {
        self.fused.is_some()
    }

    /// Blocks of the fused decode step's launch (all resident at once), when it is on.
    pub fn fused_decode_blocks(&self) -> Option<u32> {
        self.fused.as_ref().map(|f| f.blocks)
    }

    /// Back to a kernel per operation for decode steps.
    pub fn disable_fused_decode(&mut self) {
        // The graphs name the step's memory: gone before it is freed.
        self.lock().graphs.clear();
        self.fused = None;
    }

    fn f(&self, name: &str) -> Result<&cudarc::driver::CudaFunction, GpuError> {
        Ok(self.kernels.function(name)?)
    }

    fn gemv(&self, a: GemvArgs) -> Result<(), GpuError> {
        let a = a.with_split();
        let grid = (a.blocks(), 1, 1);
        launch!(self.pdl, &self.stream, self.f("gemv")?, grid, GEMV_THREADS, 0; a)?;
        Ok(())
    }

    /// The product `a` over its `n_tokens`: through cuBLAS and the epilogue kernel for a
    /// prompt of GEMM_MIN_TOKENS or more (when cuBLAS loaded), else the GEMV kernel.
    fn project(&self, a: GemvArgs) -> Result<(), GpuError> {
        let n = a.n_tokens as usize;
        let Some(blas) = self.blas.as_ref().ok().filter(|_| n >= GEMM_MIN_TOKENS) else {
            return self.gemv(a);
        };
        let b = self.scratch;
        let (rows, cols) = (a.rows as usize, a.cols as usize);
        let values = (n * cols) as i32;
        let blocks = (values as u32).div_ceil(EPILOGUE_THREADS).min(1024);
        launch!(self.pdl, &self.stream, self.f("split_halves")?, (blocks, 1, 1), EPILOGUE_THREADS, 0;
            a.x, b.x_hi, b.x_lo, values)?;
        blas.products(a.w, (b.x_hi, b.x_lo), b.prod, rows, cols, n)?;
        let pairs = rows.div_ceil(2) as u32;
        let grid = (pairs.div_ceil(EPILOGUE_THREADS), n as u32, 1);
        launch!(self.pdl, &self.stream, self.f("gemm_epilogue")?, grid, EPILOGUE_THREADS, 0; a, b.prod)?;
        Ok(())
    }

    /// Whether prompts of several tokens are multiplied by cuBLAS (else by the GEMV kernel).
    pub fn prefill_uses_cublas(&self) -> bool {
        self.blas.is_ok()
    }

    /// Why prefill does not use cuBLAS, when it does not.
    pub fn blas_missing(&self) -> Option<&str> {
        self.blas.as_ref().err().map(String::as_str)
    }

    /// A PLAIN product `y = act(W x + bias) + residual`.
    #[allow(clippy::too_many_arguments)]
    fn plain(
        &self,
        w: u64,
        x: u64,
        y: u64,
        bias: u64,
        residual: u64,
        rows: usize,
        cols: usize,
        n: usize,
        act: i32,
    ) -> GemvArgs {
        GemvArgs {
            w,
            x,
            y,
            bias,
            residual,
            rows: rows as i32,
            cols: cols as i32,
            n_tokens: n as i32,
            y_stride: rows as i32,
            mode: MODE_PLAIN,
            act,
            ..Default::default()
        }
    }

    /// The model's input norm (weights `w`, bias `b`) of `rows` rows of `x` into `out`.
    fn norm(&self, w: u64, b: u64, x: u64, out: u64, rows: usize) -> Result<(), GpuError> {
        let layer = i32::from(self.spec.norm == NormKind::Layer);
        launch!(self.pdl, &self.stream, self.f("row_norm")?, (rows as u32, 1, 1), NORM_THREADS, 0;
            x, w, b, out, self.spec.dim as i32, self.spec.eps, layer)?;
        Ok(())
    }

    /// The four products of layer `l` over `n` tokens with the KV cache at offset `kv`
    /// (what follows each product fused into its epilogue), and its norms.
    fn layer_args(&self, l: &LayerAddrs, kv: u64, n: usize) -> LayerArgs {
        let sp = &self.spec;
        let b = self.scratch;
        let (dim, q_dim) = (sp.dim, sp.q_dim());
        let rope = match sp.rope {
            None => ROPE_NONE,
            Some((RopeLayout::Interleaved, _)) => ROPE_INTERLEAVED,
            Some((RopeLayout::HalfSplit, _)) => ROPE_HALF_SPLIT,
        };
        // Q/K/V with RoPE; keys and values straight into the cache.
        let qkv = GemvArgs {
            mode: MODE_QKV,
            y_stride: q_dim as i32,
            pos0: b.pos0,
            inv_freq: self.w.inv_freq,
            kcache: l.k_cache + kv,
            vcache: l.v_cache + kv,
            n_head: sp.n_head as i32,
            n_kv_head: sp.n_kv_head as i32,
            head_dim: sp.head_dim as i32,
            capacity: self.capacity as i32,
            rope,
            ..self.plain(
                l.qkv,
                b.normed,
                b.q,
                l.qkv_b,
                0,
                sp.qkv_dim(),
                dim,
                n,
                ACT_NONE,
            )
        };
        let up = match sp.ffn {
            FfnKind::SwiGlu => GemvArgs {
                mode: MODE_SWIGLU,
                y_stride: sp.ffn_dim as i32,
                ..self.plain(
                    l.ffn_in,
                    b.normed,
                    b.hidden,
                    0,
                    0,
                    2 * sp.ffn_dim,
                    dim,
                    n,
                    ACT_NONE,
                )
            },
            FfnKind::GeluTanh => self.plain(
                l.ffn_in,
                b.normed,
                b.hidden,
                l.ffn_in_b,
                0,
                sp.ffn_dim,
                dim,
                n,
                ACT_GELU_TANH,
            ),
        };
        LayerArgs {
            qkv,
            out: self.plain(l.wo, b.attn, b.x, l.wo_b, b.x, dim, q_dim, n, ACT_NONE),
            up,
            down: self.plain(
                l.ffn_out,
                b.hidden,
                b.x,
                l.ffn_out_b,
                b.x,
                dim,
                sp.ffn_dim,
                n,
                ACT_NONE,
            ),
            norm1_w: l.norm1_w,
            norm1_b: l.norm1_b,
            norm2_w: l.norm2_w,
            norm2_b: l.norm2_b,
        }
    }

    /// One decoder layer as separate kernels: norm, Q/K/V, attention (split-K over
    /// `decode_splits` chunks for one token, else prefill's), output, norm, feed-forward.
    fn layer(
        &self,
        la: &LayerArgs,
        n: usize,
        decode_splits: Option<usize>,
    ) -> Result<(), GpuError> {
        let sp = &self.spec;
        let b = self.scratch;
        let s = &self.stream;
        let (q_dim, hd) = (sp.q_dim(), sp.head_dim);
        let group = (sp.n_head / sp.n_kv_head) as i32;
        let scale = 1.0 / (hd as f32).sqrt();
        self.norm(la.norm1_w, la.norm1_b, b.x, b.normed, n)?;
        self.project(la.qkv)?;
        match decode_splits {
            Some(splits) => {
                launch!(self.pdl, s, self.f("attn_decode")?, (sp.n_head as u32, splits as u32, 1),
                    ATTN_THREADS, 0;
                    b.q, la.qkv.kcache, la.qkv.vcache, b.part_o, b.part_ml, b.done, b.attn, b.pos0,
                    group, hd as i32, self.capacity as i32, self.max_splits as i32, scale)?;
            }
            None => {
                launch!(self.pdl, s, self.f("attn_prefill")?, (n as u32, sp.n_head as u32, 1), ATTN_THREADS, 0;
                    b.q, q_dim as i32, la.qkv.kcache, la.qkv.vcache, b.attn, q_dim as i32, b.pos0,
                    group, hd as i32, self.capacity as i32, scale)?;
            }
        }
        self.project(la.out)?;
        self.norm(la.norm2_w, la.norm2_b, b.x, b.normed, n)?;
        self.project(la.up)?;
        self.project(la.down)
    }

    /// Every decoder layer of one decode step in one persistent launch (decode.cu), with
    /// the layer arguments of KV slot `slot`.
    fn decode_layers(&self, fused: &Fused, slot: usize) -> Result<(), GpuError> {
        let sp = &self.spec;
        let b = self.scratch;
        let barrier = addr(&fused.barrier, &self.stream);
        // The barrier counts arrivals from zero in every launch.
        // SAFETY: `barrier` is a live 4-byte allocation of this model, on this stream.
        unsafe { cudarc::driver::result::memset_d8_async(barrier, 0, 4, self.stream.cu_stream()) }?;
        let step = StepArgs {
            layers: addr(&fused.layers, &self.stream)
                + (slot * sp.n_layer * std::mem::size_of::<LayerArgs>()) as u64,
            x: b.x,
            q: b.q,
            part_o: b.part_o,
            part_ml: b.part_ml,
            done: b.done,
            attn: b.attn,
            pos0: b.pos0,
            barrier,
            n_layers: sp.n_layer as i32,
            dim: sp.dim as i32,
            layer_norm: i32::from(sp.norm == NormKind::Layer),
            n_head: sp.n_head as i32,
            group: (sp.n_head / sp.n_kv_head) as i32,
            head_dim: sp.head_dim as i32,
            capacity: self.capacity as i32,
            max_splits: self.max_splits as i32,
            eps: sp.eps,
            scale: 1.0 / (sp.head_dim as f32).sqrt(),
        };
        let mut step = step;
        let mut params = [(&mut step as *mut StepArgs).cast::<std::ffi::c_void>()];
        // Cooperative: the grid barrier needs every block resident at once, even with other
        // models' kernels on the GPU (the launch waits for room, or fails, never deadlocks).
        // SAFETY: the one parameter is a StepArgs (checked against the C struct by the PTX
        // test) whose addresses are this model's live allocations.
        unsafe {
            launch_as(
                &self.stream,
                self.f("decode_layers")?,
                (fused.blocks, 1, 1),
                GEMV_THREADS,
                fused.shared_bytes,
                Launch::Cooperative,
                &mut params,
            )
        }?;
        Ok(())
    }

    /// Every kernel of one forward pass over `n` tokens whose ids and first position are
    /// already in the device's `tokens` / `pos0`, with the KV cache of `slot`; `decode_splits`
    /// selects split-K attention (one token) over that many chunks. Leaves the last token's
    /// logits in `logits`.
    fn encode(&self, n: usize, decode_splits: Option<usize>, slot: usize) -> Result<(), GpuError> {
        let sp = &self.spec;
        let kv = slot as u64 * self.slot_bytes;
        let b = self.scratch;
        let s = &self.stream;
        let dim = sp.dim;
        launch!(self.pdl, s, self.f("embed")?, (n as u32, 1, 1), EMBED_THREADS, 0;
            self.w.embed, self.w.positions, b.tokens, b.pos0, b.x, dim as i32, sp.vocab as i32,
            sp.learned_positions.unwrap_or(self.capacity) as i32)?;
        if let (Some(_), Some(fused)) = (decode_splits, self.fused.as_ref()) {
            // The fused step works out its attention chunks from the position itself.
            self.decode_layers(fused, slot)?;
        } else {
            for l in &self.w.layers {
                self.layer(&self.layer_args(l, kv, n), n, decode_splits)?;
            }
        }
        let last = b.x + ((n - 1) * dim * 4) as u64;
        self.norm(self.w.out_norm_w, self.w.out_norm_b, last, b.normed, 1)?;
        self.gemv(self.plain(
            self.w.head,
            b.normed,
            b.logits,
            0,
            0,
            sp.vocab,
            dim,
            1,
            ACT_NONE,
        ))?;
        Ok(())
    }

    /// Run `tokens` at positions `pos0..` of the sequence in KV slot `slot`, leaving the last
    /// one's logits on the device.
    fn run(
        &self,
        st: &mut State,
        tokens: &[u32],
        pos0: usize,
        slot: usize,
    ) -> Result<(), GpuError> {
        if slot >= self.slots.total() {
            return Err(GpuError::Unsupported(format!(
                "KV slot {slot} of {}",
                self.slots.total()
            )));
        }
        if tokens.is_empty() {
            return Err(GpuError::Unsupported("forward pass of no tokens".into()));
        }
        if pos0 + tokens.len() > self.capacity {
            return Err(GpuError::Unsupported(format!(
                "positions {pos0}..{} exceed the device context of {}",
                pos0 + tokens.len(),
                self.capacity
            )));
        }
        let vocab = self.spec.vocab as u32;
        let ids: Vec<i32> = tokens.iter().map(|t| (*t).min(vocab - 1) as i32).collect();
        if ids.len() == 1 {
            self.stream
                .memcpy_htod(&ids[..1], &mut st.tokens.slice_mut(0..1))?;
            self.stream.memcpy_htod(&[pos0 as i32], &mut st.pos0)?;
            let needed = pos0 / ATTN_CHUNK + 1;
            let bucket = needed.next_power_of_two().min(self.max_splits);
            let graph = match st.graphs.entry((slot, bucket)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Graph(self.capture(bucket, slot)?))
                }
            };
            graph.0.launch()?;
            return Ok(());
        }
        for (c, chunk) in ids.chunks(MAX_BATCH).enumerate() {
            self.stream
                .memcpy_htod(chunk, &mut st.tokens.slice_mut(0..chunk.len()))?;
            self.stream
                .memcpy_htod(&[(pos0 + c * MAX_BATCH) as i32], &mut st.pos0)?;
            self.encode(chunk.len(), None, slot)?;
        }
        Ok(())
    }

    /// Record one decode step with `splits` attention chunks in KV slot `slot` as a graph.
    fn capture(&self, splits: usize, slot: usize) -> Result<CudaGraph, GpuError> {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let encoded = self.encode(1, Some(splits), slot);
        // End the capture whatever happened, or the stream stays in capture mode.
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        encoded?;
        graph?.ok_or_else(|| GpuError::Driver("stream capture produced no graph".into()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logits of the last of `tokens`, run at positions `pos0..` of the sequence in KV slot 0
    /// (benchmarks and tests that drive one sequence without a [`KvCache`]).
    pub fn logits(&self, tokens: &[u32], pos0: usize) -> Result<Vec<f32>, GpuError> {
        self.logits_in(0, tokens, pos0)
    }

    /// Logits of the last of `tokens`, run at positions `pos0..` of the sequence in `slot`.
    pub fn logits_in(
        &self,
        slot: usize,
        tokens: &[u32],
        pos0: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let mut st = self.lock();
        self.run(&mut st, tokens, pos0, slot)?;
        self.copy_logits(&st)
    }

    /// Sequences the device holds KV caches for at once.
    pub fn kv_slots(&self) -> usize {
        self.slots.total()
    }

    /// [`CudaModel::choose_in`] KV slot 0 (benchmarks and tests).
    pub fn choose(
        &self,
        tokens: &[u32],
        pos0: usize,
        choice: &Choice,
        candidates: usize,
    ) -> Result<Next, GpuError> {
        self.choose_in(0, tokens, pos0, choice, candidates)
    }

    /// Run `tokens` at `pos0..` of the sequence in `slot` and take `choice` on the device
    /// among ids `0..candidates`:
    /// the repeat penalty, then greedy argmax or top-k / top-p with the choice's draw. Only
    /// the token id crosses to the host, unless the device sampler defers (top_k off and its
    /// best candidates short of top_p, or top_k above the 64 it holds) or the penalty list is
    /// longer than its buffer: then
    /// the logits come back for the host sampler.
    pub fn choose_in(
        &self,
        slot: usize,
        tokens: &[u32],
        pos0: usize,
        choice: &Choice,
        candidates: usize,
    ) -> Result<Next, GpuError> {
        let mut st = self.lock();
        self.run(&mut st, tokens, pos0, slot)?;
        let b = self.scratch;
        let s = &self.stream;
        let vocab = self.spec.vocab as i32;
        let n = candidates.clamp(1, self.spec.vocab) as i32;
        let penalize = choice.repeat_penalty != 1.0 && !choice.penalized.is_empty();
        if penalize && choice.penalized.len() > PENALTY_SLOTS {
            return Ok(Next::Logits(self.copy_logits(&st)?));
        }
        if penalize {
            let ids: Vec<i32> = choice.penalized.iter().map(|t| *t as i32).collect();
            s.memcpy_htod(&ids, &mut st.penalty.slice_mut(0..ids.len()))?;
            let count = ids.len() as i32;
            launch!(self.pdl, s, self.f("repeat_penalty")?, ((ids.len() as u32).div_ceil(256), 1, 1), 256, 0;
                b.logits, b.penalty, count, vocab, choice.repeat_penalty)?;
        }
        if choice.greedy {
            launch!(self.pdl, s, self.f("argmax")?, (1, 1, 1), SAMPLE_THREADS, 0; b.logits, n, b.sampled)?;
        } else {
            launch!(self.pdl, s, self.f("sample_top")?, (1, 1, 1), SAMPLE_THREADS, 0;
                b.logits, n, choice.temperature, choice.top_k as i32, choice.top_p,
                choice.uniform, b.sampled)?;
        }
        let mut out = [0i32];
        s.memcpy_dtoh(&st.sampled, &mut out)?;
        s.synchronize()?;
        // A negative answer is the sampler deferring; one past the candidates is a pass with
        // no usable logit (all NaN): the host sampler sees the logits and fails the sequence.
        if (0..n).contains(&out[0]) {
            return Ok(Next::Token(out[0] as u32));
        }
        let logits = self.copy_logits(&st)?;
        Ok(if penalize {
            Next::Penalized(logits)
        } else {
            Next::Logits(logits)
        })
    }

    fn copy_logits(&self, st: &State) -> Result<Vec<f32>, GpuError> {
        let mut out = vec![0f32; self.spec.vocab];
        self.stream.memcpy_dtoh(&st.logits, &mut out)?;
        self.stream.synchronize()?;
        Ok(out)
    }

    /// Bytes a decode step at position `pos` reads from device memory: every layer's
    /// matrices, the output head, one embedding (and position) row, and the KV cache so far.
    pub fn decode_bytes(&self, pos: usize) -> u64 {
        let sp = &self.spec;
        let dim = sp.dim;
        let matrices =
            (sp.n_layer * sp.layer_weight_elements() + sp.vocab * dim + 2 * dim) as u64 * 2;
        let kv = (sp.n_layer * 2 * sp.kv_dim() * (pos + 1)) as u64 * 2;
        matrices + kv
    }
}

impl CausalLm for CudaModel {
    fn context_length(&self) -> usize {
        self.capacity
    }

    fn vocab(&self) -> usize {
        self.spec.vocab
    }

    fn cache_shape(&self) -> CacheShape {
        CacheShape {
            n_layer: self.spec.n_layer,
            kv_dim: self.spec.kv_dim(),
            head_dim: self.spec.head_dim,
        }
    }

    fn max_sequences(&self) -> usize {
        self.slots.total()
    }

    /// The keys and values live on the device in a slot this cache holds until dropped (when
    /// every slot is held, this waits for one); the host cache only counts positions.
    fn new_cache(&self, capacity: usize, _precision: KvPrecision) -> KvCache {
        KvCache::on_device(capacity.min(self.capacity), self.slots.take())
    }

    fn forward_choose(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        choice: &Choice,
        candidates: usize,
    ) -> Next {
        let next = self
            .choose_in(device_slot(cache), tokens, cache.len(), choice, candidates)
            .unwrap_or_else(|e| panic!("GPU forward pass failed: {e}"));
        cache.commit(tokens.len());
        next
    }

    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        let pos0 = cache.len();
        // The CausalLm interface has no error path; a device failure mid-generation is a
        // broken GPU, reported as a panic the engine's worker turns into GEN_* for the request.
        let logits = self
            .logits_in(device_slot(cache), tokens, pos0)
            .unwrap_or_else(|e| panic!("GPU forward pass failed: {e}"));
        cache.commit(tokens.len());
        logits
    }
}

/// The device slot of a cache this model made ([`CausalLm::new_cache`]).
fn device_slot(cache: &KvCache) -> usize {
    cache
        .device_slot()
        .expect("a GPU model runs only caches it made (KvCache::on_device)")
}
