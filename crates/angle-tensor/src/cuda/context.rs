//! The device context: library probe, stream, cuBLAS handle and the per-process kernel cache.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{Ptx, result as nvrtc, sys as nvrtc_sys};

/// Errors of the CUDA backend: each names the op, kernel file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable GPU: a library is missing or no device is present. Not a bug; callers fall
    /// back to the CPU or skip.
    #[error("CUDA unavailable: {reason}")]
    Unavailable { reason: String },
    /// A driver call failed.
    #[error("CUDA driver error in {what}: {source}")]
    Driver {
        what: String,
        source: cudarc::driver::DriverError,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler's output.
    #[error("NVRTC failed to compile {file} for {arch}:\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error in {what}: {source}")]
    Blas {
        what: &'static str,
        source: cudarc::cublas::result::CublasError,
    },
    /// A view does not have the length the dimensions imply.
    #[error("{op}: tensor `{tensor}` has {got} elements, expected {expected}")]
    Len {
        op: &'static str,
        tensor: &'static str,
        expected: usize,
        got: usize,
    },
    /// A dimension or hyper-parameter is invalid.
    #[error("{op}: invalid `{arg}`: {reason}")]
    Arg {
        op: &'static str,
        arg: &'static str,
        reason: String,
    },
}

pub(crate) fn drv(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> GpuError {
    let what = what.into();
    move |source| GpuError::Driver { what, source }
}

pub(crate) fn check_len(
    op: &'static str,
    tensor: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), GpuError> {
    if got == expected {
        Ok(())
    } else {
        Err(GpuError::Len {
            op,
            tensor,
            expected,
            got,
        })
    }
}

pub(crate) fn arg_err(op: &'static str, arg: &'static str, reason: impl Into<String>) -> GpuError {
    GpuError::Arg {
        op,
        arg,
        reason: reason.into(),
    }
}

/// Dimensions travel to kernels as `int`: refuse what does not fit instead of wrapping.
pub(crate) fn dim(op: &'static str, arg: &'static str, v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| arg_err(op, arg, format!("{v} does not fit in i32")))
}

/// One kernel source file: its name (for errors) and text.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub file: &'static str,
    pub src: &'static str,
}

/// Helpers every kernel file uses (bf16 as raw bits, warp reductions, the dropout RNG);
/// prepended to each source so that no file needs a header from a CUDA installation.
const COMMON: &str = include_str!("common.cuh");

/// Every kernel source of the backend: the CI test compiles them all.
pub const SOURCES: &[KernelSource] = &[
    super::embedding::SRC,
    super::gelu::SRC,
    super::layernorm::SRC,
    super::layernorm::SRC_VEC,
    super::attention::SRC,
    super::dropout::SRC,
    super::pooling::SRC,
    super::loss::SRC,
    super::adamw::SRC,
    super::misc::SRC,
];

fn full_source(k: &KernelSource) -> String {
    format!("{COMMON}\n#line 1 \"{}\"\n{}", k.file, k.src)
}

/// Compiles one kernel file to a CUBIN for `arch` (e.g. `sm_90`). NVRTC needs no GPU.
pub fn compile_cubin(k: &KernelSource, arch: &str) -> Result<Vec<u8>, GpuError> {
    probe_nvrtc()?;
    let src = CString::new(full_source(k))
        .map_err(|_| arg_err("compile", "src", format!("{} holds a NUL byte", k.file)))?;
    let name = CString::new(k.file).map_err(|_| arg_err("compile", "file", "NUL in name"))?;
    let fail = |log: String| GpuError::Compile {
        file: k.file,
        arch: arch.to_string(),
        log,
    };
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // IEEE division and square root (no fast math): layer norm and the objectives are
        // checked against the CPU at tight tolerances; kernels call fast intrinsics by name.
        "--fmad=true".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ftz=false".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed exactly once below.
    let result = unsafe { nvrtc::compile_program(prog, &opts) };
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let out = match result {
        Err(e) => Err(fail(format!("{e:?}\n{log}"))),
        Ok(()) if log.contains("warning") => Err(fail(format!("warnings are errors:\n{log}"))),
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: the program compiled; NVRTC fills `size` and then `size` bytes.
            unsafe {
                match nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(fail(format!("no CUBIN: {e:?}"))),
                    Ok(()) => {
                        let mut buf = vec![0u8; size];
                        match nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()).result() {
                            Err(e) => Err(fail(format!("no CUBIN: {e:?}"))),
                            Ok(()) => Ok(buf),
                        }
                    }
                }
            }
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// Compiles every kernel file for `arch`; returns (file, CUBIN bytes) or the first failure.
pub fn compile_all_for_arch(arch: &str) -> Result<Vec<(&'static str, usize)>, GpuError> {
    SOURCES
        .iter()
        .map(|k| compile_cubin(k, arch).map(|c| (k.file, c.len())))
        .collect()
}

/// CUBINs compiled so far in this process, by (file, arch): a second [`Gpu`] (or a context
/// re-created between benchmarks) loads them without compiling again.
fn cached_cubin(k: &KernelSource, arch: &str) -> Result<Vec<u8>, GpuError> {
    type Cache = Mutex<HashMap<(&'static str, String), Vec<u8>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (k.file, arch.to_string());
    if let Some(c) = cache.lock().expect("CUBIN cache poisoned").get(&key) {
        return Ok(c.clone());
    }
    let c = compile_cubin(k, arch)?;
    cache.lock().expect("CUBIN cache poisoned").insert(key, c.clone());
    Ok(c)
}

fn probe_nvrtc() -> Result<(), GpuError> {
    // SAFETY: only tries dlopen on the candidate names; nothing is called.
    if unsafe { nvrtc_sys::is_culib_present() } {
        Ok(())
    } else {
        Err(GpuError::Unavailable {
            reason: "libnvrtc (CUDA 13) not found by the dynamic loader (LD_LIBRARY_PATH)".into(),
        })
    }
}

/// Checks that the driver, NVRTC and cuBLAS libraries can be loaded, *before* cudarc touches
/// them (cudarc panics on a missing library).
pub fn driver_probe() -> Result<(), GpuError> {
    // SAFETY: each probe only tries dlopen on candidate names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(GpuError::Unavailable {
            reason: "libcuda.so (the NVIDIA driver) not found".into(),
        });
    }
    probe_nvrtc()?;
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(GpuError::Unavailable {
            reason: "libcublas (CUDA 13) not found by the dynamic loader".into(),
        });
    }
    Ok(())
}

/// One device, one stream, one cuBLAS handle, and the kernels compiled so far.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    pub(crate) allocated: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("arch", &self.arch).finish()
    }
}

/// The most arguments a kernel of ours takes (the layer-norm kernels: 17).
const MAX_KERNEL_ARGS: usize = 24;

/// A kernel argument: a device address, an int, a 64-bit int or a float.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KArg {
    U64(u64),
    I32(i32),
    F32(f32),
}

impl From<i32> for KArg {
    fn from(v: i32) -> Self {
        KArg::I32(v)
    }
}
impl From<f32> for KArg {
    fn from(v: f32) -> Self {
        KArg::F32(v)
    }
}
impl From<u64> for KArg {
    fn from(v: u64) -> Self {
        KArg::U64(v)
    }
}
impl<T> From<super::DSlice<T>> for KArg {
    fn from(v: super::DSlice<T>) -> Self {
        KArg::U64(v.ptr)
    }
}

macro_rules! kargs {
    ($($a:expr),* $(,)?) => { [$($crate::cuda::context::KArg::from($a)),*] };
}
pub(crate) use kargs;

impl Gpu {
    /// Opens device `ordinal`; errors (never panics) when the driver, a library or the device
    /// is missing.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        driver_probe()?;
        let count = CudaContext::device_count().map_err(|e| GpuError::Unavailable {
            reason: format!("cuDeviceGetCount failed: {e}"),
        })?;
        if count <= 0 {
            return Err(GpuError::Unavailable {
                reason: "the driver reports no CUDA device".into(),
            });
        }
        if ordinal >= count as usize {
            return Err(GpuError::Unavailable {
                reason: format!("device {ordinal} requested, {count} present"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        // One stream, so cudarc's cross-stream event tracking only costs time.
        // SAFETY: no allocation exists yet on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|source| GpuError::Blas {
            what: "cublasCreate",
            source,
        })?;
        let (major, minor) = ctx.compute_capability().map_err(drv("compute capability"))?;
        Ok(Self {
            ctx,
            stream,
            blas,
            arch: format!("sm_{major}{minor}"),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            allocated: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The device's name and architecture, e.g. "NVIDIA H100 80GB HBM3 (sm_90)".
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown device".into());
        format!("{name} ({})", self.arch)
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Bytes allocated through [`Gpu::alloc`] so far.
    pub fn allocated_bytes(&self) -> usize {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), GpuError> {
        self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// Compiles (once per process) the file holding `name`, and returns the kernel.
    fn function(&self, k: &KernelSource, name: &'static str) -> Result<CudaFunction, GpuError> {
        if let Some(f) = self.functions.lock().expect("kernel cache poisoned").get(name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().expect("module cache poisoned");
            match modules.get(k.file) {
                Some(m) => m.clone(),
                None => {
                    let cubin = cached_cubin(k, &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_binary(cubin))
                        .map_err(drv(format!("cuModuleLoadData({})", k.file)))?;
                    modules.insert(k.file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(drv(format!("cuModuleGetFunction({}:{name})", k.file)))?;
        self.functions
            .lock()
            .expect("kernel cache poisoned")
            .insert(name, f.clone());
        Ok(f)
    }

    /// Launches kernel `name` of file `k` on the stream.
    pub(crate) fn launch(
        &self,
        k: &KernelSource,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &mut [KArg],
    ) -> Result<(), GpuError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let f = self.function(k, name)?;
        // On the stack: launches happen hundreds of times per training step.
        let mut slots = [std::ptr::null_mut::<c_void>(); MAX_KERNEL_ARGS];
        if args.len() > MAX_KERNEL_ARGS {
            return Err(GpuError::Arg {
                op: "launch",
                arg: "args",
                reason: format!("{name}: {} arguments > {MAX_KERNEL_ARGS}", args.len()),
            });
        }
        for (slot, a) in slots.iter_mut().zip(args.iter_mut()) {
            *slot = match a {
                KArg::U64(v) => (v as *mut u64).cast::<c_void>(),
                KArg::I32(v) => (v as *mut i32).cast::<c_void>(),
                KArg::F32(v) => (v as *mut f32).cast::<c_void>(),
            };
        }
        let ptrs = &mut slots[..args.len()];
        // SAFETY: the argument list matches the kernel's signature (each launcher is written
        // beside its kernel), and every pointer is a live device allocation of the length the
        // launcher checked.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                grid,
                (block, 1, 1),
                shared,
                self.stream.cu_stream(),
                ptrs,
            )
        }
        // The message is formatted only on failure (no allocation per launch).
        .map_err(|e| drv(format!("launch {}:{name}", k.file))(e))
    }
}

/// Blocks of `threads` covering `n` items.
pub(crate) fn blocks(n: usize, threads: usize) -> u32 {
    n.div_ceil(threads).max(1) as u32
}
