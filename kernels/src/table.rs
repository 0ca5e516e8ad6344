//! The kernel sources, embedded in the binary, and the entry points each one defines.
//!
//! One CUDA C file per family of operations under `src/cuda/`, all sharing `common.cuh`. NVRTC
//! sees no include path: [`KernelSource::full_text`] splices the common header in front of the
//! file, so a source compiles the same on any machine that has NVRTC and nothing else of CUDA.

/// One CUDA source file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// Module name, the file's stem.
    pub name: &'static str,
    pub text: &'static str,
    pub functions: &'static [&'static str],
    /// Other files whose device code this one calls, spliced in before it (in this order).
    pub uses: &'static [&'static str],
}

/// Shared helpers (fp16 conversion, reductions), spliced into every module.
pub const COMMON: &str = include_str!("cuda/common.cuh");

pub const EMBED: KernelSource = KernelSource {
    name: "embed",
    text: include_str!("cuda/embed.cu"),
    functions: &["embed"],
    uses: &[],
};

pub const NORM: KernelSource = KernelSource {
    name: "norm",
    text: include_str!("cuda/norm.cu"),
    functions: &["row_norm"],
    uses: &[],
};

pub const ATTENTION: KernelSource = KernelSource {
    name: "attention",
    text: include_str!("cuda/attention.cu"),
    functions: &["attn_decode", "attn_prefill"],
    uses: &[],
};

pub const GEMV: KernelSource = KernelSource {
    name: "gemv",
    text: include_str!("cuda/gemv.cu"),
    functions: &["gemv", "split_halves", "gemm_epilogue"],
    uses: &[],
};

pub const DEQUANT: KernelSource = KernelSource {
    name: "dequant",
    text: include_str!("cuda/dequant.cu"),
    functions: &["dequant_blocks", "bf16_to_f16", "f32_to_f16"],
    uses: &[],
};

pub const SAMPLING: KernelSource = KernelSource {
    name: "sampling",
    text: include_str!("cuda/sampling.cu"),
    functions: &["repeat_penalty", "argmax", "sample_top"],
    uses: &[],
};

pub const DECODE: KernelSource = KernelSource {
    name: "decode",
    text: include_str!("cuda/decode.cu"),
    functions: &["decode_layers"],
    uses: &[GEMV.text, ATTENTION.text],
};

/// Every module, in the order they are compiled.
pub const ALL: [KernelSource; 7] = [EMBED, NORM, ATTENTION, GEMV, DEQUANT, SAMPLING, DECODE];

/// Probes of the card's weight streaming for the decode benchmark; not loaded by the engine.
pub const PROBE: KernelSource = KernelSource {
    name: "probe",
    text: include_str!("cuda/probe.cu"),
    functions: &["probe_rows", "probe_stream", "probe_tiny"],
    uses: &[],
};

/// Positions per decode-attention chunk (`ATTN_CHUNK` in attention.cu).
pub const ATTN_CHUNK: usize = 128;
/// Threads per attention block (`ATTN_THREADS`).
pub const ATTN_THREADS: u32 = 128;
/// Largest head size the attention kernels hold in shared memory (`MAX_HEAD_DIM`).
pub const MAX_HEAD_DIM: usize = 256;
/// Tokens per pass of the GEMV kernel (`GEMV_TOKENS`).
pub const GEMV_TOKENS: usize = 4;
/// Threads per GEMV block (`GEMV_THREADS`); each warp computes two weight rows.
pub const GEMV_THREADS: u32 = 128;
/// Threads of the norm kernel (`NORM_THREADS`) and most values each holds (`NORM_PER_THREAD`).
pub const NORM_THREADS: u32 = 1024;
pub const NORM_PER_THREAD: usize = 16;
/// Threads of the one-block sampling kernels (`SAMPLE_THREADS`).
pub const SAMPLE_THREADS: u32 = 1024;
/// Most candidates the device sampler considers (`SAMPLE_MAX_K`).
pub const SAMPLE_MAX_K: usize = 64;

const INCLUDE_COMMON: &str = "#include \"common.cuh\"";

impl KernelSource {
    /// The text NVRTC compiles: the common header in place of its `#include`, then the files
    /// it uses and the file itself, each without its own include of the header.
    pub fn full_text(&self) -> String {
        let mut text = String::from(COMMON);
        for part in self.uses.iter().chain([&self.text]) {
            text.push('\n');
            text.push_str(&part.replacen(INCLUDE_COMMON, "", 1));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust copies of the sources' constants must agree with the `#define`s.
    #[test]
    fn constants_match_the_sources() {
        let define = |src: &str, name: &str| -> usize {
            let line = src
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("no #define {name}"));
            line.split_whitespace()
                .nth(2)
                .and_then(|v| v.parse().ok())
                .expect("a number")
        };
        assert_eq!(define(ATTENTION.text, "ATTN_CHUNK"), ATTN_CHUNK);
        assert_eq!(
            define(ATTENTION.text, "ATTN_THREADS"),
            ATTN_THREADS as usize
        );
        assert_eq!(define(ATTENTION.text, "MAX_HEAD_DIM"), MAX_HEAD_DIM);
        assert_eq!(define(GEMV.text, "GEMV_TOKENS"), GEMV_TOKENS);
        assert_eq!(define(GEMV.text, "GEMV_THREADS"), GEMV_THREADS as usize);
        assert_eq!(define(NORM.text, "NORM_THREADS"), NORM_THREADS as usize);
        assert_eq!(define(NORM.text, "NORM_PER_THREAD"), NORM_PER_THREAD);
        assert_eq!(
            define(SAMPLING.text, "SAMPLE_THREADS"),
            SAMPLE_THREADS as usize
        );
        assert_eq!(define(SAMPLING.text, "SAMPLE_MAX_K"), SAMPLE_MAX_K);
    }

    /// The header appears once, before everything a module splices in.
    #[test]
    fn modules_splice_the_header_and_their_uses_once() {
        let text = DECODE.full_text();
        assert!(text.starts_with(COMMON));
        assert!(!text.contains(INCLUDE_COMMON));
        assert_eq!(text.matches("struct GemvArgs {").count(), 1);
        assert!(
            text.find("attn_decode_item(").expect("attention")
                < text.find("decode_layers(").expect("step"),
            "attention is spliced before the file that calls it"
        );
        assert!(!EMBED.full_text().contains(INCLUDE_COMMON));
    }

    /// Every listed function is defined as an `extern "C"` kernel of its file, and the other
    /// way round, so the loader never asks for a name NVRTC did not emit.
    #[test]
    fn function_lists_match_the_sources() {
        for source in ALL {
            let mut defined: Vec<&str> = Vec::new();
            let text = source.text;
            for (at, _) in text.match_indices("extern \"C\" __global__ void") {
                let mut rest = text[at + "extern \"C\" __global__ void".len()..].trim_start();
                if let Some(after) = rest.strip_prefix("__launch_bounds__(") {
                    rest = after[after.find(')').expect("closing )") + 1..].trim_start();
                }
                defined.push(&rest[..rest.find('(').expect("parameter list")]);
            }
            defined.sort_unstable();
            let mut listed = source.functions.to_vec();
            listed.sort_unstable();
            assert_eq!(defined, listed, "{}", source.name);
        }
    }
}
