//! Residual + layer norm, fused (with the sublayer's bias and dropout); kernels in
//! `layernorm.cu`.

use super::context::{Gpu, GpuError, KernelSource, arg_err, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "layernorm.cu",
    src: include_str!("layernorm.cu"),
};

/// The vectorised warp kernels (names `residual_layernorm_{forward,backward}_v*`).
pub(crate) const SRC_VEC: KernelSource = KernelSource {
    file: "layernorm_vec.cu",
    src: include_str!("layernorm_vec.cu"),
};

const THREADS: u32 = 256;
/// Rows per warp in the warp-per-row backward (its dw, db partials amortise over these).
const ROWS_PER_WARP: usize = 4;

/// `(forward, backward)` kernel names for 4, 8, 12, 16, 24 and 32 values per lane; `kind` is
/// `w` (scalar accesses) or `v` (4-element accesses).
macro_rules! warp_names {
    ($kind:literal, $s:literal) => {
        [
            warp_names!(@one $kind, "4", $s),
            warp_names!(@one $kind, "8", $s),
            warp_names!(@one $kind, "12", $s),
            warp_names!(@one $kind, "16", $s),
            warp_names!(@one $kind, "24", $s),
            warp_names!(@one $kind, "32", $s),
        ]
    };
    (@one $kind:literal, $v:literal, $s:literal) => {
        (
            concat!("residual_layernorm_forward_", $kind, $v, "_", $s),
            concat!("residual_layernorm_backward_", $kind, $v, "_", $s),
        )
    };
}

/// By [scalar, vectorised][f32, bf16][values per lane].
type Names = [(&'static str, &'static str); 6];
pub(crate) const WARP_NAMES: [[Names; 2]; 2] = [
    [warp_names!("w", "f32"), warp_names!("w", "bf16")],
    [warp_names!("v", "f32"), warp_names!("v", "bf16")],
];

/// The warp-per-row kernels (forward, backward) for `cols <= 1024`, by values per lane, and
/// their file; `vectorised`: the 4-element-access versions (see [`vectorised`]).
fn warp_kernels<T: DType>(
    cols: usize,
    vectorised: bool,
) -> Option<(&'static str, &'static str, &'static KernelSource)> {
    let per_lane = match cols.div_ceil(32) {
        0..=4 => 0,
        5..=8 => 1,
        9..=12 => 2,
        13..=16 => 3,
        17..=24 => 4,
        25..=32 => 5,
        _ => return None,
    };
    let bf = usize::from(T::NAME == "bf16");
    let (f, b) = WARP_NAMES[usize::from(vectorised)][bf][per_lane];
    Some((f, b, if vectorised { &SRC_VEC } else { &SRC }))
}

/// Whether the warp kernels may use 4-element accesses: whole groups of 4 per row and every
/// activation view aligned for them.
pub(crate) fn vectorised<T: DType>(cols: usize, views: &[Option<DSlice<T>>]) -> bool {
    cols.is_multiple_of(4) && views.iter().flatten().all(|&v| super::gelu::aligned4(v))
}

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
    let vec = vectorised(cols, &[Some(out), Some(sum), Some(a), res]);
    let (name, grid, shared, src) = match warp_kernels::<T>(cols, vec) {
        // one warp per row, 8 rows per block
        Some((f, _, src)) => (f, rows.div_ceil(8).max(1) as u32, 0, src),
        None => (
            super::kname::<T>(
                "residual_layernorm_forward_f32",
                "residual_layernorm_forward_bf16",
            ),
            dim(OP, "rows", rows)?.max(1) as u32,
            (cols * 4) as u32,
            &SRC,
        ),
    };
    gpu.launch(
        src,
        name,
        (grid, 1, 1),
        THREADS,
        shared,
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
    let vec = vectorised(cols, &[da, dres, Some(dout), Some(sum)]);
    let (name, grid, shared, per, src) = match warp_kernels::<T>(cols, vec) {
        // 8 warps per block, ROWS_PER_WARP rows per warp; the block sums dw, db in shared memory
        Some((_, b, src)) => (
            b,
            rows.div_ceil(8 * ROWS_PER_WARP).max(1) as u32,
            (2 * cols * 4) as u32,
            ROWS_PER_WARP,
            src,
        ),
        None => (
            super::kname::<T>(
                "residual_layernorm_backward_f32",
                "residual_layernorm_backward_bf16",
            ),
            rows.div_ceil(ROWS_PER_BLOCK).max(1) as u32,
            0,
            ROWS_PER_BLOCK,
            &SRC,
        ),
    };
    gpu.launch(
        src,
        name,
        (grid, 1, 1),
        THREADS,
        shared,
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
            per as i32
        ],
    )
}
