//! Source → PTX through NVRTC, with an on-disk cache.
//!
//! The cache key is the SHA-256 of the spliced source, the NVRTC version and the target
//! architecture, so a changed kernel, a different NVRTC or another GPU never reuses stale
//! PTX. Cache writes go to a temporary file renamed into place: concurrent processes race
//! harmlessly, and a crash leaves no truncated entry.

use std::path::{Path, PathBuf};

use cudarc::nvrtc::{CompileError, CompileOptions};
use sha2::{Digest, Sha256};

use crate::KernelError;
use crate::table::KernelSource;

/// A virtual GPU architecture (`compute_XY`), the target PTX is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: i32,
    pub minor: i32,
}

impl Arch {
    pub fn name(self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

/// Whether NVRTC can be loaded (never panics).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32), KernelError> {
    if !nvrtc_available() {
        return Err(KernelError::NvrtcMissing);
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: two valid out-pointers; the library is present (checked above).
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| KernelError::Nvrtc(format!("{e:?}")))?;
    Ok((major, minor))
}

/// Where compiled PTX is kept between processes; `None` keeps nothing.
#[derive(Debug, Clone, Default)]
pub struct PtxCache {
    pub dir: Option<PathBuf>,
}

impl PtxCache {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    fn path(&self, key: &str, module: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{module}-{key}.ptx")))
    }
}

/// `#define` lines for the tuning constants a source leaves open (`#ifndef NAME`), from
/// `AGENTRT_CUDA_DEFINES` ("NAME=VALUE ..." with integer values): kernel variants can be
/// measured on a GPU without rebuilding the binary. Empty when unset.
pub fn tuning_defines() -> Result<String, KernelError> {
    parse_defines(&std::env::var("AGENTRT_CUDA_DEFINES").unwrap_or_default())
}

/// The names the kernel sources leave open to a `#define` (`#ifndef NAME` at a line's start).
pub fn tunable_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = crate::table::ALL
        .iter()
        .flat_map(|s| s.text.lines())
        .filter_map(|l| l.strip_prefix("#ifndef "))
        .map(str::trim)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn parse_defines(spec: &str) -> Result<String, KernelError> {
    let open = tunable_names();
    let mut out = String::new();
    for item in spec.split_whitespace() {
        let bad = || KernelError::Defines(item.to_string(), open.join(", "));
        let (name, value) = item.split_once('=').ok_or_else(bad)?;
        // Only the sources' tuning constants: anything else (a fixed constant, `__CUDA_ARCH__`)
        // would be redefined or would silently change what the kernels assume.
        if !open.contains(&name) {
            return Err(bad());
        }
        // Counts and bounds all: zero or less would give zero-length arrays or loops that
        // never advance (a GPU hang), not a variant worth measuring.
        let value: i64 = value.parse().ok().filter(|v| *v >= 1).ok_or_else(bad)?;
        // The parsed number, so `010` does not reach C as octal.
        out.push_str(&format!("#define {name} {value}\n"));
    }
    Ok(out)
}

/// The cache key of `text` (a source as NVRTC compiles it) for `arch` under NVRTC `version`.
pub fn cache_key(text: &str, arch: Arch, version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update(format!("|nvrtc {}.{}|{}", version.0, version.1, arch.name()).as_bytes());
    let digest = h.finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// PTX of `source` for `arch`, with the tuning constants of `AGENTRT_CUDA_DEFINES`: from
/// `cache` when present, else compiled by NVRTC (and stored).
pub fn compile_ptx(
    source: &KernelSource,
    arch: Arch,
    cache: &PtxCache,
) -> Result<String, KernelError> {
    compile_ptx_with(source, arch, cache, &tuning_defines()?)
}

/// [`compile_ptx`] with `defines` (`#define` lines, see [`tuning_defines`]) in front.
pub fn compile_ptx_with(
    source: &KernelSource,
    arch: Arch,
    cache: &PtxCache,
    defines: &str,
) -> Result<String, KernelError> {
    let version = nvrtc_version()?;
    let text = format!("{defines}{}", source.full_text());
    let key = cache_key(&text, arch, version);
    let cached = cache.path(&key, source.name);
    if let Some(path) = &cached
        && let Ok(ptx) = std::fs::read_to_string(path)
        && ptx.contains(".entry")
    {
        return Ok(ptx);
    }
    let options = CompileOptions {
        // Exact division and square roots (the CPU engine's arithmetic), fused multiply-adds on.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(true),
        options: vec![
            format!("--gpu-architecture={}", arch.name()),
            "--std=c++17".into(),
        ],
        name: Some(format!("{}.cu", source.name)),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(text, options).map_err(|e| match e {
        CompileError::CompileError { log, .. } => KernelError::Compile {
            module: source.name,
            arch: arch.name(),
            log: log.to_string_lossy().into_owned(),
        },
        other => KernelError::Nvrtc(format!("{other:?}")),
    })?;
    let text = ptx.to_src();
    if let Some(path) = &cached {
        store(path, &text);
    }
    Ok(text)
}

/// Best effort: a cache that cannot be written only costs a recompile next time.
fn store(path: &Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_defines_become_define_lines() {
        assert_eq!(parse_defines("").expect("empty"), "");
        assert_eq!(
            parse_defines(" GEMV_UNROLL=4  GEMV_MIN_BLOCKS=8 ").expect("two"),
            "#define GEMV_UNROLL 4\n#define GEMV_MIN_BLOCKS 8\n"
        );
        assert_eq!(
            parse_defines("GEMV_MIN_BLOCKS=010").expect("decimal"),
            "#define GEMV_MIN_BLOCKS 10\n"
        );
    }

    #[test]
    fn the_open_constants_are_the_gemv_tunables() {
        assert_eq!(tunable_names(), ["GEMV_MIN_BLOCKS", "GEMV_UNROLL"]);
    }

    #[test]
    fn anything_but_name_equals_integer_is_refused() {
        // Anything else could splice arbitrary text into every kernel source.
        for bad in [
            "GEMV_UNROLL",
            "gemv=1",
            "A=1;",
            "A=x",
            "=3",
            "1A=2",
            "A=1\n#include",
            "GEMV_UNROLL=0",
            "GEMV_MIN_BLOCKS=-2",
        ] {
            assert!(
                matches!(parse_defines(bad), Err(KernelError::Defines(..))),
                "{bad:?} accepted"
            );
        }
    }
}
