//! Residual + layer norm, fused (with the sublayer's bias and dropout); kernels in
//! `layernorm.cu`.

use super::context::{Gpu, GpuError, KernelSource, arg_err, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "layernorm.cu",
    src: include_str!("layernorm.cu"),
};

const THREADS: u32 = 256;
const MAX_DIM: usize = 256 * 8;
const ROWS_PER_BLOCK: usize = 32;

/// `sum = dropout(a + abias) + res; out = layernorm(sum)`: BERT's "Linear (bias) → dropout →
/// residual → LayerNorm" in one pass, equal to [`crate::cpu::linear_forward`]'s bias,
/// [`crate::cpu::dropout_forward`] (`p`, `seed`, element numbering over `rows x dim`),
/// [`crate::cpu::residual_forward`] and [`crate::cpu::layernorm_forward`]. `abias`, `res` and
/// dropout (`p == 0`) are optional; `sum` may be `a` itself. Saves `sum`, `mean`, `rstd`.
pub fn residual_layernorm_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    sum: DSlice<T>,
    mean: DSlice<f32>,
    rstd: DSlice<f32>,
    a: DSlice<T>,
    abias: Option<DSlice<f32>>,
    res: Option<DSlice<T>>,
    weight: DSlice<f32>,
    bias: DSlice<f32>,
    rows: usize,
    cols: usize,
    eps: f32,
    p: f32,
    seed: u64,
) -> Result<(), GpuError> {
    const OP: &str = "residual_layernorm_forward";
    let n = rows * cols;
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "sum", sum.len(), n)?;
    check_len(OP, "a", a.len(), n)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    check_len(OP, "weight", weight.len(), cols)?;
    check_len(OP, "bias", bias.len(), cols)?;
    if let Some(r) = res {
        check_len(OP, "res", r.len(), n)?;
    }
    if let Some(b) = abias {
        check_len(OP, "abias", b.len(), cols)?;
    }
    if cols > MAX_DIM {
        return Err(arg_err(OP, "cols", format!("{cols} > {MAX_DIM}")));
    }
    let (thr, scale) = super::dropout::params(OP, p)?;
    let name = super::kname::<T>(
        "residual_layernorm_forward_f32",
        "residual_layernorm_forward_bf16",
    );
    gpu.launch(
        &SRC,
        name,
        (dim(OP, "rows", rows)?.max(1) as u32, 1, 1),
        THREADS,
        (cols * 4) as u32,
        &mut kargs![
            out,
            sum,
            mean,
            rstd,
            a,
            abias.unwrap_or(DSlice::null()),
            res.unwrap_or(DSlice::null()),
            weight,
            bias,
            dim(OP, "rows", rows)?,
            dim(OP, "cols", cols)?,
            eps,
            thr,
            scale,
            seed,
            i32::from(p > 0.0)
        ],
    )
}

/// Backward of [`residual_layernorm_forward`]: `dres = ds` and `da = dropout'(ds)` where `ds`
/// is the layer-norm input gradient (each written, or added when `accumulate`; either may be
/// `None`), and `dweight`, `dbias += ...` (f32). The sublayer's bias gradient is
/// [`super::bias_grad`] of `da`.
pub fn residual_layernorm_backward<T: DType>(
    gpu: &Gpu,
    da: Option<DSlice<T>>,
    dres: Option<DSlice<T>>,
    dweight: DSlice<f32>,
    dbias: DSlice<f32>,
    dout: DSlice<T>,
    sum: DSlice<T>,
    mean: DSlice<f32>,
    rstd: DSlice<f32>,
    weight: DSlice<f32>,
    rows: usize,
    cols: usize,
    p: f32,
    seed: u64,
    accumulate: bool,
) -> Result<(), GpuError> {
    const OP: &str = "residual_layernorm_backward";
    let n = rows * cols;
    check_len(OP, "dout", dout.len(), n)?;
    check_len(OP, "sum", sum.len(), n)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    check_len(OP, "weight", weight.len(), cols)?;
    check_len(OP, "dweight", dweight.len(), cols)?;
    check_len(OP, "dbias", dbias.len(), cols)?;
    for (name, v) in [("da", da), ("dres", dres)] {
        if let Some(v) = v {
            check_len(OP, name, v.len(), n)?;
        }
    }
    if cols > MAX_DIM {
        return Err(arg_err(OP, "cols", format!("{cols} > {MAX_DIM}")));
    }
    let (thr, scale) = super::dropout::params(OP, p)?;
    let name = super::kname::<T>(
        "residual_layernorm_backward_f32",
        "residual_layernorm_backward_bf16",
    );
    gpu.launch(
        &SRC,
        name,
        (rows.div_ceil(ROWS_PER_BLOCK).max(1) as u32, 1, 1),
        THREADS,
        0,
        &mut kargs![
            da.unwrap_or(DSlice::null()),
            dres.unwrap_or(DSlice::null()),
            dweight,
            dbias,
            dout,
            sum,
            mean,
            rstd,
            weight,
            dim(OP, "rows", rows)?,
            dim(OP, "cols", cols)?,
            thr,
            scale,
            seed,
            i32::from(p > 0.0),
            i32::from(accumulate),
            ROWS_PER_BLOCK as i32
        ],
    )
}
