//! Tests that run without a GPU: every kernel file compiles with NVRTC for sm_90 (CI installs
//! NVRTC with `.ci/install-nvrtc.sh`); GPU checks say they were skipped and why.

use super::context::compile_cubin;
use super::{Gpu, GpuError, compile_all_for_arch};

const TEST_NAME: &str = "cuda::tests::every_kernel_compiles_for_sm90";
const CHILD_ENV: &str = "ANGLE_NVRTC_CHILD";

/// Where `.ci/install-nvrtc.sh` puts libnvrtc, unless `ANGLE_NVRTC_DIR` says otherwise.
fn nvrtc_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("ANGLE_NVRTC_DIR") {
        return d.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.angle-cache/nvrtc/13.0.88/nvidia/cu13/lib")
}

#[test]
fn every_kernel_compiles_for_sm90() {
    // SAFETY: only tries dlopen on candidate names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let compiled = compile_all_for_arch("sm_90").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.len(), super::SOURCES.len());
        for (file, bytes) in compiled {
            assert!(bytes > 0, "{file}: empty CUBIN");
            println!("compiled {file} for sm_90: {bytes} bytes of CUBIN");
        }
        launched_names_are_in_their_cubins();
        return;
    }
    // The loader reads LD_LIBRARY_PATH only at process start: run this test again in a child
    // process that has NVRTC's folder on it. Never passes without compiling.
    assert!(
        std::env::var_os(CHILD_ENV).is_none(),
        "libnvrtc.so.13 not loadable even with {} on LD_LIBRARY_PATH",
        nvrtc_dir().display()
    );
    let dir = nvrtc_dir();
    assert!(
        dir.join("libnvrtc.so.13").is_file(),
        "NVRTC not found: no libnvrtc.so.13 on LD_LIBRARY_PATH nor in {} \
         (run .ci/install-nvrtc.sh, or set ANGLE_NVRTC_DIR to the folder holding libnvrtc.so.13)",
        dir.display()
    );
    let mut path = dir.into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env("LD_LIBRARY_PATH", path)
        .env(CHILD_ENV, "1")
        .output()
        .expect("rerun the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(out.status.success(), "kernel compile failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child process did not run the compile test:\n{stdout}"
    );
}

/// Names the launchers build (layer-norm tables, `kname` pairs) against the kernels each file
/// really defines: a misspelt name would only fail at launch, on a GPU.
fn launched_names_are_in_their_cubins() {
    // [scalar, vectorised] names, each in its own file
    let mut ln: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
    for (names, per_kind) in ln.iter_mut().zip(super::layernorm::WARP_NAMES) {
        for per_type in per_kind {
            for (f, b) in per_type {
                names.extend([f, b]);
            }
        }
    }
    let gelu = [
        "bias_gelu_forward_f32",
        "bias_gelu_forward_bf16",
        "bias_gelu_backward_f32",
        "bias_gelu_backward_bf16",
        "bias_gelu_forward4_f32",
        "bias_gelu_forward4_bf16",
        "bias_gelu_backward4_f32",
        "bias_gelu_backward4_bf16",
    ];
    let misc = [
        "bias_grad_f32",
        "bias_grad_bf16",
        "bias_grad4_f32",
        "bias_grad4_bf16",
    ];
    let attn: Vec<String> = [
        "qkv_permute",
        "qkv_permute_backward",
        "attn_unpermute",
        "attn_unpermute_backward",
    ]
    .iter()
    .flat_map(|base| ["_f32", "_bf16", "4_f32", "4_bf16"].map(|s| format!("{base}{s}")))
    .collect();
    let attn: Vec<&str> = attn.iter().map(String::as_str).collect();
    for (src, names) in [
        (super::layernorm::SRC, &ln[0][..]),
        (super::layernorm::SRC_VEC, &ln[1][..]),
        (super::gelu::SRC, &gelu[..]),
        (super::misc::SRC, &misc[..]),
        (super::loss::SRC, &["angle_objective"][..]),
        (super::attention::SRC, &attn[..]),
    ] {
        let t0 = std::time::Instant::now();
        let cubin = compile_cubin(&src, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let secs = t0.elapsed().as_secs_f64();
        for name in names {
            let needle = format!("{name}\0");
            assert!(
                cubin.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{}: no kernel {name} in its CUBIN",
                src.file
            );
        }
        println!(
            "{}: {} launched names present (compiled in {secs:.1} s)",
            src.file,
            names.len()
        );
    }
}

#[test]
fn gpu_kernels_match_cpu_or_skip() {
    match Gpu::new(0) {
        Err(GpuError::Unavailable { reason }) => {
            println!("skipped: no CUDA device ({reason})");
        }
        Err(e) => panic!("{e}"),
        Ok(gpu) => {
            let results = super::check::run_kernel_checks(&gpu).unwrap_or_else(|e| panic!("{e}"));
            let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
            for r in &results {
                println!("{r}");
            }
            assert!(failed.is_empty(), "{} kernel checks failed", failed.len());
        }
    }
}

#[test]
fn attention_geometry_on_the_host() {
    let offs = [0usize, 3, 10, 11];
    let s = super::AttentionShape::new(&offs, 4, 32);
    assert_eq!(
        (s.batch, s.t_max, s.n_heads, s.head_dim, s.rows),
        (3, 7, 4, 8, 11)
    );
    // the dropout numbering base equals the CPU op's probs layout
    assert_eq!(super::attention_pbase(&offs, 4), vec![0, 4 * 9, 4 * 9 + 4 * 49]);
    assert_eq!(
        crate::cpu::attention_probs_len(&offs, 4),
        (4 * 9 + 4 * 49 + 4) as usize
    );
    let (pad, scores) = super::attention_scratch_len(&s);
    assert_eq!((pad, scores), (3 * 4 * 7 * 8, 3 * 4 * 7 * 7));
}

#[test]
fn views_refuse_out_of_range_slices() {
    let v = super::DSlice::<f32>::null();
    assert!(v.slice(0..0).is_ok());
    assert!(matches!(v.slice(0..1), Err(GpuError::Arg { .. })));
}

#[test]
fn dropout_parameters_match_the_cpu_rng() {
    for p in [0.0f32, 0.1, 0.5, 0.9] {
        let (thr, scale) = super::dropout::params("test", p).expect("valid p");
        assert_eq!(thr as u32, crate::rng::keep_threshold(f64::from(p)));
        assert_eq!(scale, 1.0f32 / (1.0f32 - p));
    }
    assert!(super::dropout::params("test", 1.0).is_err());
    assert!(super::dropout::params("test", -0.1).is_err());
}
