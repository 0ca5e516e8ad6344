//! What the card lets a decode step of the starcoderbase-1b shape reach, measured without the
//! model: its 97 weight matrices (2.24 GB) read by kernels that only read them (kernels
//! `probe_*`, kernels/src/cuda/probe.cu), launched the way the engine launches its GEMVs, as
//! one captured graph per step. Against the engine's own decode rate, the rows say where the
//! step's time goes: the GEMV's arithmetic (the engine far below `rows`), the gaps between
//! launches (`rows` far below `stream`), or the memory itself.

use std::ffi::c_void;
use std::sync::Arc;

use agentrt::engine::cuda::launch::{Launch, launch_as};
use agentrt_kernels::table::PROBE;
use agentrt_kernels::{Arch, PtxCache, compile_ptx};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};

/// 16-byte words in a row 2048 fp16 values wide, and in one 8192 wide.
const NARROW: usize = 2048 * 2 / 16;
const WIDE: usize = 8192 * 2 / 16;
const LAYERS: usize = 24;
const THREADS: u32 = 128;

/// One weight matrix: where it starts (in words), its rows and its row length (words).
#[derive(Clone, Copy)]
struct Matrix {
    offset: usize,
    rows: usize,
    row_words: usize,
}

impl Matrix {
    fn words(self) -> usize {
        self.rows * self.row_words
    }
}

/// The 1B shape's matrices in decode order: per layer Q/K/V (2304 × 2048), output (2048 ×
/// 2048), up (8192 × 2048), down (2048 × 8192); then the head (49152 × 2048).
fn matrices() -> Vec<Matrix> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut push = |rows, row_words| {
        out.push(Matrix {
            offset,
            rows,
            row_words,
        });
        offset += rows * row_words;
    };
    for _ in 0..LAYERS {
        push(2304, NARROW);
        push(2048, NARROW);
        push(8192, NARROW);
        push(2048, WIDE);
    }
    push(49152, NARROW);
    out
}

struct Probe {
    /// The matrices in decode order, and their 16-byte words in all.
    matrices: Vec<Matrix>,
    words: usize,
    stream: Arc<CudaStream>,
    rows: CudaFunction,
    stream_fn: CudaFunction,
    tiny: CudaFunction,
    sms: u32,
    pdl: bool,
    weights: CudaSlice<u8>,
    sums: CudaSlice<f32>,
    act: CudaSlice<f32>,
    normed: CudaSlice<f32>,
}

/// How one step is launched.
#[derive(Clone, Copy)]
enum Step {
    /// One `probe_rows` per matrix; with PDL, and with a one-block kernel before Q/K/V, the
    /// output and up matrices (the norms and attention) when `tiny`.
    Rows { pdl: bool, tiny: bool },
    /// One `probe_stream` over all the weights.
    Stream,
    /// `probe_rows` over the first `n` up matrices only (per-kernel rate of a 33.5 MB read).
    Ups(usize),
}

impl Probe {
    fn new(ctx: &Arc<CudaContext>) -> Self {
        let stream = ctx.new_stream().expect("stream");
        let (major, minor) = ctx.compute_capability().expect("capability");
        let ptx = compile_ptx(&PROBE, Arch { major, minor }, &PtxCache::default())
            .expect("compile the probes");
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .expect("load the probes");
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .expect("SM count") as u32;
        let matrices = matrices();
        let words: usize = matrices.iter().map(|m| m.words()).sum();
        let weights = stream.alloc_zeros::<u8>(words * 16).expect("weights");
        // Not zeros: nothing between the memory and the SMs gets to skip them.
        let base = agentrt::engine::cuda::launch::addr(&weights, &stream);
        // SAFETY: `base` is a live allocation of `words * 16` bytes on this stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(base, 0x3c, words * 16, stream.cu_stream())
        }
        .expect("fill");
        let sums = stream.alloc_zeros::<f32>(49152).expect("sums");
        let act = stream.alloc_zeros::<f32>(2048).expect("activations");
        let normed = stream.alloc_zeros::<f32>(2048).expect("normed");
        stream.synchronize().expect("sync");
        Self {
            matrices,
            words,
            rows: module.load_function("probe_rows").expect("probe_rows"),
            stream_fn: module.load_function("probe_stream").expect("probe_stream"),
            tiny: module.load_function("probe_tiny").expect("probe_tiny"),
            stream,
            sms,
            pdl: major >= 9,
            weights,
            sums,
            act,
            normed,
        }
    }

    fn addr<T: cudarc::driver::DeviceRepr>(&self, s: &CudaSlice<T>) -> u64 {
        agentrt::engine::cuda::launch::addr(s, &self.stream)
    }

    fn launch(
        &self,
        f: &CudaFunction,
        grid: u32,
        block: u32,
        pdl: bool,
        params: &mut [*mut c_void],
    ) {
        let kind = if pdl { Launch::Pdl } else { Launch::Plain };
        // SAFETY: each caller passes exactly its kernel's parameters, addresses of live
        // allocations of the sizes the kernel reads.
        unsafe { launch_as(&self.stream, f, (grid, 1, 1), block, 0, kind, params) }
            .expect("launch");
    }

    fn read_rows(&self, m: Matrix, pdl: bool) {
        let mut w = self.addr(&self.weights) + (m.offset * 16) as u64;
        let mut rows = m.rows as i32;
        let mut row_words = m.row_words as i32;
        let mut out = self.addr(&self.sums);
        let warps = m.rows.div_ceil(2) as u32;
        let grid = warps.div_ceil(THREADS / 32);
        let mut params = [
            &mut w as *mut u64 as *mut c_void,
            &mut rows as *mut i32 as *mut c_void,
            &mut row_words as *mut i32 as *mut c_void,
            &mut out as *mut u64 as *mut c_void,
        ];
        self.launch(&self.rows, grid, THREADS, pdl, &mut params);
    }

    fn norm(&self, pdl: bool) {
        let mut x = self.addr(&self.act);
        let mut n = 2048i32;
        let mut y = self.addr(&self.normed);
        let mut params = [
            &mut x as *mut u64 as *mut c_void,
            &mut n as *mut i32 as *mut c_void,
            &mut y as *mut u64 as *mut c_void,
        ];
        self.launch(&self.tiny, 1, 1024, pdl, &mut params);
    }

    fn stream_all(&self) {
        let mut w = self.addr(&self.weights);
        let mut words = self.words as i64;
        let mut out = self.addr(&self.sums);
        let mut params = [
            &mut w as *mut u64 as *mut c_void,
            &mut words as *mut i64 as *mut c_void,
            &mut out as *mut u64 as *mut c_void,
        ];
        self.launch(&self.stream_fn, self.sms * 8, 256, false, &mut params);
    }

    fn encode(&self, step: Step) {
        let all = &self.matrices;
        match step {
            Step::Rows { pdl, tiny } => {
                for (i, m) in all.iter().enumerate() {
                    // Q/K/V, output and up each follow a latency-bound kernel in the engine:
                    // norm, attention, norm.
                    if tiny && i < LAYERS * 4 && i % 4 != 3 {
                        self.norm(pdl);
                    }
                    if tiny && i == LAYERS * 4 {
                        self.norm(pdl); // the final norm before the head
                    }
                    self.read_rows(*m, pdl);
                }
            }
            Step::Stream => self.stream_all(),
            Step::Ups(n) => {
                for m in all.iter().skip(2).step_by(4).take(n) {
                    self.read_rows(*m, self.pdl);
                }
            }
        }
    }

    /// Median seconds of one replay of `step` captured as a graph (20 timed after 3).
    fn time(&self, step: Step) -> f64 {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .expect("capture");
        self.encode(step);
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .expect("end capture")
            .expect("a graph");
        for _ in 0..3 {
            graph.launch().expect("replay");
        }
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::new();
        for _ in 0..20 {
            let a = self.stream.record_event(flags).expect("event");
            graph.launch().expect("replay");
            let b = self.stream.record_event(flags).expect("event");
            times.push(a.elapsed_ms(&b).expect("elapsed") as f64 / 1e3);
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }
}

/// Print the probes' table: seconds a step, GB/s, share of `copy_bandwidth` (bytes/s) and the
/// decode rate that step time would allow.
pub fn report(copy_bandwidth: f64) {
    let ctx = CudaContext::new(0).expect("context");
    let probe = Probe::new(&ctx);
    let step_bytes = (probe.words * 16) as f64;
    let up_bytes = (probe.matrices[2].words() * 16) as f64;
    let mut rows: Vec<(String, f64, f64)> = vec![(
        "one 33.5 MB up matrix per launch (24 launches, each its own matrix)".into(),
        probe.time(Step::Ups(LAYERS)) / LAYERS as f64,
        up_bytes,
    )];
    let mut steps = vec![
        (
            "97 GEMV-shaped reads, plain launches",
            Step::Rows {
                pdl: false,
                tiny: false,
            },
        ),
        ("one grid-stride read of all 2.24 GB", Step::Stream),
    ];
    if probe.pdl {
        steps.insert(
            1,
            (
                "97 GEMV-shaped reads, PDL",
                Step::Rows {
                    pdl: true,
                    tiny: false,
                },
            ),
        );
        steps.insert(
            2,
            (
                "the same + 73 one-block kernels (the norms and attention), PDL",
                Step::Rows {
                    pdl: true,
                    tiny: true,
                },
            ),
        );
    } else {
        steps.insert(
            1,
            (
                "the same + 73 one-block kernels (the norms and attention)",
                Step::Rows {
                    pdl: false,
                    tiny: true,
                },
            ),
        );
    }
    for (label, step) in steps {
        rows.push((label.into(), probe.time(step), step_bytes));
    }
    println!("\nweight streaming probes (starcoderbase-1b's matrices, without the model):");
    println!("| probe | µs | GB/s | of copy rate | decode tok/s it allows |");
    println!("|---|---:|---:|---:|---:|");
    for (label, seconds, bytes) in rows {
        let rate = bytes / seconds;
        println!(
            "| {label} | {:.1} | {:.0} | {:.1} % | {} |",
            seconds * 1e6,
            rate / 1e9,
            100.0 * rate / copy_bandwidth,
            if bytes == step_bytes {
                format!("{:.0}", 1.0 / seconds)
            } else {
                String::new()
            }
        );
    }
}
