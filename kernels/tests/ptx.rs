//! Every kernel compiles to PTX through NVRTC, without a GPU (CI installs NVRTC from PyPI).

use agentrt_kernels::table::{ALL, PROBE};
use agentrt_kernels::{Arch, PtxCache, compile_ptx, nvrtc_available, nvrtc_version};

/// NVRTC must be present where CI runs (AGENTRT_REQUIRE_NVRTC=1, set by scripts/test.sh);
/// elsewhere the test says why it skipped.
fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    assert!(
        std::env::var_os("AGENTRT_REQUIRE_NVRTC").is_none(),
        "AGENTRT_REQUIRE_NVRTC is set but NVRTC (libnvrtc.so.12/.13) cannot be loaded; LD_LIBRARY_PATH={:?}",
        std::env::var_os("LD_LIBRARY_PATH")
    );
    eprintln!("skipped: NVRTC is not installed (scripts/setup.sh installs it from PyPI)");
    false
}

#[test]
fn every_kernel_compiles_for_ampere_and_hopper() {
    if !nvrtc_or_skip() {
        return;
    }
    eprintln!("NVRTC {:?}", nvrtc_version().expect("version"));
    for arch in [Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 }] {
        // The benchmark's probes too: a GPU session must not find them broken.
        for source in ALL.into_iter().chain([PROBE]) {
            let ptx = compile_ptx(&source, arch, &PtxCache::default())
                .unwrap_or_else(|e| panic!("{}: {e}", source.name));
            assert!(ptx.contains(&format!(".target sm_{}{}", arch.major, arch.minor)));
            for f in source.functions {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "{}.cu has no kernel {f} in its PTX",
                    source.name
                );
            }
        }
    }
}

/// The GEMV reads weights with 128-bit loads through the read-only path, as designed: a
/// regression to narrower loads would cost a large share of memory bandwidth.
#[test]
fn gemv_reads_weights_16_bytes_at_a_time() {
    if !nvrtc_or_skip() {
        return;
    }
    let ptx = compile_ptx(
        &agentrt_kernels::table::GEMV,
        Arch { major: 9, minor: 0 },
        &PtxCache::default(),
    )
    .expect("gemv compiles");
    assert!(
        ptx.contains("ld.global.nc.L1::no_allocate.v4.u32"),
        "no 128-bit streaming weight loads in gemv PTX"
    );
}

/// The GEMV's tuning constants are open to AGENTRT_CUDA_DEFINES, and reach the PTX.
#[test]
fn gemv_tuning_constants_can_be_set() {
    if !nvrtc_or_skip() {
        return;
    }
    let ptx = agentrt_kernels::compile::compile_ptx_with(
        &agentrt_kernels::table::GEMV,
        Arch { major: 9, minor: 0 },
        &PtxCache::default(),
        "#define GEMV_UNROLL 4\n#define GEMV_MIN_BLOCKS 8\n",
    )
    .expect("gemv variant compiles");
    assert!(
        ptx.contains(".minnctapersm 8"),
        "GEMV_MIN_BLOCKS did not reach the PTX"
    );
    let default = compile_ptx(
        &agentrt_kernels::table::GEMV,
        Arch { major: 9, minor: 0 },
        &PtxCache::default(),
    )
    .expect("gemv compiles");
    assert!(!default.contains(".minnctapersm 8"));
}

/// The Rust mirror of `struct GemvArgs` has the size of the parameter NVRTC lays out.
#[test]
fn gemv_args_match_the_c_struct() {
    if !nvrtc_or_skip() {
        return;
    }
    let ptx = compile_ptx(
        &agentrt_kernels::table::GEMV,
        Arch { major: 9, minor: 0 },
        &PtxCache::default(),
    )
    .expect("gemv compiles");
    let size = std::mem::size_of::<agentrt_kernels::args::GemvArgs>();
    assert!(
        ptx.contains(&format!(".param .align 8 .b8 gemv_param_0[{size}]")),
        "gemv's parameter is not {size} bytes"
    );
}

/// The fused decode step's argument structs match their Rust mirrors: the parameter's size
/// in the PTX, the layer array's element by a static_assert in the source.
#[test]
fn decode_step_args_match_the_c_structs() {
    if !nvrtc_or_skip() {
        return;
    }
    let layer = std::mem::size_of::<agentrt_kernels::args::LayerArgs>();
    let ptx = agentrt_kernels::compile::compile_ptx_with(
        &agentrt_kernels::table::DECODE,
        Arch { major: 9, minor: 0 },
        &PtxCache::default(),
        &format!("#define LAYER_ARGS_BYTES {layer}\n"),
    )
    .expect("decode compiles with the Rust LayerArgs size");
    let size = std::mem::size_of::<agentrt_kernels::args::StepArgs>();
    assert!(
        ptx.contains(&format!(
            ".param .align 8 .b8 decode_layers_param_0[{size}]"
        )),
        "decode_layers' parameter is not {size} bytes"
    );
    // Only weights (and the maths library's constant tables) may come through the read-only
    // cache: everything else the step reads (residual stream, queries, keys and values,
    // attention output) it writes itself.
    let body = ptx
        .split(".entry decode_layers")
        .nth(1)
        .expect("decode_layers in the PTX");
    let body: Vec<&str> = body
        .split(".entry ")
        .next()
        .unwrap_or(body)
        .lines()
        .collect();
    for (i, line) in body.iter().enumerate() {
        if !line.contains("ld.global.nc") || line.contains("ld.global.nc.L1::no_allocate.v4") {
            continue;
        }
        let table = body[i.saturating_sub(3)..i]
            .iter()
            .any(|l| l.contains("__cudart_"));
        assert!(
            table,
            "a non-weight load through the read-only cache: {line}"
        );
    }
    // A wrong size must fail the compile, or the check above proves nothing.
    let wrong = agentrt_kernels::compile::compile_ptx_with(
        &agentrt_kernels::table::DECODE,
        Arch { major: 9, minor: 0 },
        &PtxCache::default(),
        &format!("#define LAYER_ARGS_BYTES {}\n", layer + 8),
    );
    assert!(wrong.is_err(), "a wrong LayerArgs size compiled");
}

#[test]
fn the_disk_cache_is_used_and_keyed_by_architecture() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("agentrt-ptx-test-{}", std::process::id()));
    let cache = PtxCache::at(&dir);
    let source = agentrt_kernels::table::EMBED;
    let a80 = compile_ptx(&source, Arch { major: 8, minor: 0 }, &cache).expect("compile");
    let a90 = compile_ptx(&source, Arch { major: 9, minor: 0 }, &cache).expect("compile");
    let entries: Vec<_> = std::fs::read_dir(&dir).expect("cache dir").collect();
    assert_eq!(entries.len(), 2, "one file per architecture");
    // A planted entry is what the cache returns: proof it is read, not recompiled.
    let version = nvrtc_version().expect("version");
    let key = agentrt_kernels::compile::cache_key(
        &source.full_text(),
        Arch { major: 8, minor: 0 },
        version,
    );
    let path = dir.join(format!("embed-{key}.ptx"));
    let marked = format!("{a80}\n// planted\n");
    std::fs::write(&path, &marked).expect("write");
    let again = compile_ptx(&source, Arch { major: 8, minor: 0 }, &cache).expect("cached");
    assert_eq!(again, marked);
    assert_ne!(a80, a90);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_missing_driver_is_an_error_not_a_panic() {
    match agentrt_kernels::cuda_available() {
        Ok(n) => eprintln!("CUDA sees {n} device(s)"),
        Err(why) => eprintln!("no CUDA here: {why}"),
    }
}
