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
