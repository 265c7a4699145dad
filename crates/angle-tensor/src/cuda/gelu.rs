//! Bias + GELU (erf), fused; kernels in `gelu.cu`.

use super::context::{Gpu, GpuError, KernelSource, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "gelu.cu",
    src: include_str!("gelu.cu"),
};

/// `pre += bias` (in place, kept for backward) and `out = gelu(pre)` over `rows x cols`:
/// [`crate::cpu::linear_forward`]'s bias then [`crate::cpu::gelu_forward`] (erf form).
pub fn bias_gelu_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    pre: DSlice<T>,
    bias: Option<DSlice<f32>>,
    rows: usize,
    cols: usize,
) -> Result<(), GpuError> {
    const OP: &str = "bias_gelu_forward";
    let n = rows * cols;
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "pre", pre.len(), n)?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), cols)?;
    }
    if fwd_vectorised(out, pre, cols) {
        let name = super::kname::<T>("bias_gelu_forward4_f32", "bias_gelu_forward4_bf16");
        // A block per row (grid-striding past 65 535 rows), threads over groups of 4 columns.
        let threads = (cols / 4).next_multiple_of(32).clamp(32, 256) as u32;
        return gpu.launch(
            &SRC,
            name,
            (rows.clamp(1, 65_535) as u32, 1, 1),
            threads,
            0,
            &mut kargs![
                out,
                pre,
                bias.unwrap_or(DSlice::null()),
                dim(OP, "rows", rows)?,
                dim(OP, "cols", cols)?
            ],
        );
    }
    let name = super::kname::<T>("bias_gelu_forward_f32", "bias_gelu_forward_bf16");
    gpu.launch(
        &SRC,
        name,
        (super::grid_1d(n), 1, 1),
        256,
        0,
        &mut kargs![
            out,
            pre,
            bias.unwrap_or(DSlice::null()),
            n as u64,
            dim(OP, "cols", cols)?
        ],
    )
}

/// `dpre = dout · gelu'(pre)` (added when `accumulate`), as [`crate::cpu::gelu_backward`].
pub fn bias_gelu_backward<T: DType>(
    gpu: &Gpu,
    dpre: DSlice<T>,
    pre: DSlice<T>,
    dout: DSlice<T>,
    n: usize,
    accumulate: bool,
) -> Result<(), GpuError> {
    const OP: &str = "bias_gelu_backward";
    check_len(OP, "dpre", dpre.len(), n)?;
    check_len(OP, "pre", pre.len(), n)?;
    check_len(OP, "dout", dout.len(), n)?;
    if bwd_vectorised(&[dpre, pre, dout]) {
        let name = super::kname::<T>("bias_gelu_backward4_f32", "bias_gelu_backward4_bf16");
        return gpu.launch(
            &SRC,
            name,
            (super::grid_1d(n / 4), 1, 1),
            256,
            0,
            &mut kargs![dpre, pre, dout, n as u64, i32::from(accumulate)],
        );
    }
    let name = super::kname::<T>("bias_gelu_backward_f32", "bias_gelu_backward_bf16");
    gpu.launch(
        &SRC,
        name,
        (super::grid_1d(n), 1, 1),
        256,
        0,
        &mut kargs![dpre, pre, dout, n as u64, i32::from(accumulate)],
    )
}

/// Whether an address allows 4-element accesses of `T` (16 bytes for f32, 8 for bf16).
pub(crate) fn aligned4<T: DType>(x: DSlice<T>) -> bool {
    x.ptr.is_multiple_of(4 * std::mem::size_of::<T>() as u64)
}

/// Whether [`bias_gelu_forward`] takes the vectorised kernel: whole groups of 4 per row and
/// aligned rows (the bias is read per element: its offset in the parameter buffer is arbitrary).
pub(crate) fn fwd_vectorised<T: DType>(out: DSlice<T>, pre: DSlice<T>, cols: usize) -> bool {
    cols.is_multiple_of(4) && aligned4(out) && aligned4(pre)
}

/// Whether [`bias_gelu_backward`] takes the vectorised kernel (any length: it does the tail).
pub(crate) fn bwd_vectorised<T: DType>(views: &[DSlice<T>]) -> bool {
    views.iter().all(|&v| aligned4(v))
}
