//! Matrix products through cuBLAS: TF32 tensor cores for f32 (or exact f32 for checks), bf16
//! inputs with f32 accumulation for mixed precision. Row-major callers, column-major cuBLAS: a
//! row-major `[r, c]` matrix is cuBLAS's column-major `c x r`, so every product below is written
//! for the transposes (see each function's derivation).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use super::context::{Gpu, GpuError, check_len, dim};
use super::memory::{DSlice, DType};

/// Whether f32 products may use TF32 tensor cores (default: yes; checks switch it off to
/// separate kernel error from TF32 rounding).
pub(crate) static TF32: AtomicBool = AtomicBool::new(true);

impl Gpu {
    /// Allows or forbids TF32 for f32 products (process-wide).
    pub fn set_tf32(&self, on: bool) {
        TF32.store(on, Ordering::Relaxed);
    }
}

/// Transpose flag of one operand, in cuBLAS's column-major terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatOp {
    N,
    T,
}

/// One (strided-batched) column-major product `C = alpha op(A) op(B) + beta C`, with `C`
/// `m x n`. Element types: A and B share one; C is f32 or the same as A.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub ta: MatOp,
    pub tb: MatOp,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub batch: usize,
}

fn data_type<T: DType>() -> cudaDataType {
    match T::NAME {
        "bf16" => cudaDataType::CUDA_R_16BF,
        _ => cudaDataType::CUDA_R_32F,
    }
}

fn op(o: MatOp) -> cublasOperation_t {
    match o {
        MatOp::N => cublasOperation_t::CUBLAS_OP_N,
        MatOp::T => cublasOperation_t::CUBLAS_OP_T,
    }
}

/// Runs `g` on raw views; checks that every operand holds the elements `g` touches.
pub fn gemm_strided_batched<A: DType, C: DType>(
    gpu: &Gpu,
    g: Gemm,
    a: DSlice<A>,
    b: DSlice<A>,
    c: DSlice<C>,
) -> Result<(), GpuError> {
    const OP: &str = "gemm";
    let (ar, ac) = if g.ta == MatOp::N { (g.m, g.k) } else { (g.k, g.m) };
    let (br, bc) = if g.tb == MatOp::N { (g.k, g.n) } else { (g.n, g.k) };
    let need = |ld: usize, rows: usize, cols: usize, stride: usize| {
        if cols == 0 {
            0
        } else {
            (g.batch - 1) * stride + (cols - 1) * ld + rows
        }
    };
    if g.batch == 0 || g.m == 0 || g.n == 0 {
        return Ok(());
    }
    if a.len() < need(g.lda, ar, ac, g.stride_a) {
        check_len(OP, "a", a.len(), need(g.lda, ar, ac, g.stride_a))?;
    }
    if b.len() < need(g.ldb, br, bc, g.stride_b) {
        check_len(OP, "b", b.len(), need(g.ldb, br, bc, g.stride_b))?;
    }
    if c.len() < need(g.ldc, g.m, g.n, g.stride_c) {
        check_len(OP, "c", c.len(), need(g.ldc, g.m, g.n, g.stride_c))?;
    }
    let compute = if A::NAME == "f32" && !TF32.load(Ordering::Relaxed) {
        cublasComputeType_t::CUBLAS_COMPUTE_32F
    } else if A::NAME == "f32" {
        cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let (alpha, beta) = (g.alpha, g.beta);
    let (m, n, k) = (dim(OP, "m", g.m)?, dim(OP, "n", g.n)?, dim(OP, "k", g.k)?);
    let (lda, ldb, ldc) = (
        dim(OP, "lda", g.lda)?,
        dim(OP, "ldb", g.ldb)?,
        dim(OP, "ldc", g.ldc)?,
    );
    let batch = dim(OP, "batch", g.batch)?;
    let algo = cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    // SAFETY: operand extents were checked above; alpha/beta are f32 as COMPUTE_32F* wants.
    let r = unsafe {
        if g.batch == 1 {
            blas::gemm_ex(
                *gpu.blas.handle(),
                op(g.ta),
                op(g.tb),
                m,
                n,
                k,
                (&alpha as *const f32).cast::<c_void>(),
                a.ptr as *const c_void,
                data_type::<A>(),
                lda,
                b.ptr as *const c_void,
                data_type::<A>(),
                ldb,
                (&beta as *const f32).cast::<c_void>(),
                c.ptr as *mut c_void,
                data_type::<C>(),
                ldc,
                compute,
                algo,
            )
        } else {
            blas::gemm_strided_batched_ex(
                *gpu.blas.handle(),
                op(g.ta),
                op(g.tb),
                m,
                n,
                k,
                (&alpha as *const f32).cast::<c_void>(),
                a.ptr as *const c_void,
                data_type::<A>(),
                lda,
                g.stride_a as i64,
                b.ptr as *const c_void,
                data_type::<A>(),
                ldb,
                g.stride_b as i64,
                (&beta as *const f32).cast::<c_void>(),
                c.ptr as *mut c_void,
                data_type::<C>(),
                ldc,
                g.stride_c as i64,
                batch,
                compute,
                algo,
            )
        }
    };
    r.map_err(|source| GpuError::Blas {
        what: "cublasGemmEx",
        source,
    })
}

/// `out[n, o] = inp[n, i] · weightᵀ (+ bias)`, weight `[o, i]` (PyTorch layout).
///
/// Column-major: out_c (o x n) = W_c(i x o)ᵀ · inp_c(i x n).
pub fn linear_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    inp: DSlice<T>,
    weight: DSlice<T>,
    bias: Option<DSlice<f32>>,
    n: usize,
    i: usize,
    o: usize,
) -> Result<(), GpuError> {
    const OP: &str = "linear_forward";
    check_len(OP, "out", out.len(), n * o)?;
    check_len(OP, "inp", inp.len(), n * i)?;
    check_len(OP, "weight", weight.len(), o * i)?;
    let g = Gemm {
        ta: MatOp::T,
        tb: MatOp::N,
        m: o,
        n,
        k: i,
        alpha: 1.0,
        beta: 0.0,
        lda: i,
        ldb: i,
        ldc: o,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        batch: 1,
    };
    gemm_strided_batched(gpu, g, weight, inp, out)?;
    if let Some(b) = bias {
        super::misc::add_bias(gpu, out, b, n, o)?;
    }
    Ok(())
}

/// Backward of [`linear_forward`]: `dinp (+)= dout · W` (added when `add_dinp`, else
/// overwritten), `dweight += doutᵀ · inp` (f32), `dbias += Σ_rows dout` (f32).
///
/// Column-major: dinp_c (i x n) = W_c(i x o) · dout_c(o x n);
/// dW_c (i x o) = inp_c(i x n) · dout_c(o x n)ᵀ.
pub fn linear_backward<T: DType>(
    gpu: &Gpu,
    dinp: Option<DSlice<T>>,
    add_dinp: bool,
    dweight: DSlice<f32>,
    dbias: Option<DSlice<f32>>,
    dout: DSlice<T>,
    inp: DSlice<T>,
    weight: DSlice<T>,
    n: usize,
    i: usize,
    o: usize,
) -> Result<(), GpuError> {
    const OP: &str = "linear_backward";
    check_len(OP, "dout", dout.len(), n * o)?;
    check_len(OP, "inp", inp.len(), n * i)?;
    check_len(OP, "weight", weight.len(), o * i)?;
    check_len(OP, "dweight", dweight.len(), o * i)?;
    if let Some(dinp) = dinp {
        check_len(OP, "dinp", dinp.len(), n * i)?;
        let g = Gemm {
            ta: MatOp::N,
            tb: MatOp::N,
            m: i,
            n,
            k: o,
            alpha: 1.0,
            beta: if add_dinp { 1.0 } else { 0.0 },
            lda: i,
            ldb: o,
            ldc: i,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batch: 1,
        };
        gemm_strided_batched(gpu, g, weight, dout, dinp)?;
    }
    let g = Gemm {
        ta: MatOp::N,
        tb: MatOp::T,
        m: i,
        n: o,
        k: n,
        alpha: 1.0,
        beta: 1.0,
        lda: i,
        ldb: o,
        ldc: i,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        batch: 1,
    };
    gemm_strided_batched(gpu, g, inp, dout, dweight)?;
    if let Some(db) = dbias {
        super::misc::bias_grad(gpu, db, dout, n, o)?;
    }
    Ok(())
}
