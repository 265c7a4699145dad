//! Bias add, bias gradient, casts and fills; kernels in `misc.cu`.

use super::context::{Gpu, GpuError, KernelSource, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "misc.cu",
    src: include_str!("misc.cu"),
};

const BIAS_ROWS_PER_BLOCK: usize = 256;

/// `out[r, c] += bias[c]`.
pub fn add_bias<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    bias: DSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<(), GpuError> {
    const OP: &str = "add_bias";
    check_len(OP, "out", out.len(), rows * cols)?;
    check_len(OP, "bias", bias.len(), cols)?;
    gpu.launch(
        &SRC,
        super::kname::<T>("add_bias_f32", "add_bias_bf16"),
        (super::grid_1d(rows * cols), 1, 1),
        256,
        0,
        &mut kargs![out, bias, (rows * cols) as u64, dim(OP, "cols", cols)?],
    )
}

/// `dbias[c] += Σ_r dout[r, c]` (f32).
pub fn bias_grad<T: DType>(
    gpu: &Gpu,
    dbias: DSlice<f32>,
    dout: DSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<(), GpuError> {
    const OP: &str = "bias_grad";
    check_len(OP, "dbias", dbias.len(), cols)?;
    check_len(OP, "dout", dout.len(), rows * cols)?;
    if bias_grad_vectorised(dout, cols) {
        return gpu.launch(
            &SRC,
            super::kname::<T>("bias_grad4_f32", "bias_grad4_bf16"),
            (
                cols.div_ceil(128).max(1) as u32,
                rows.div_ceil(BIAS_ROWS_PER_BLOCK).max(1) as u32,
                1,
            ),
            256,
            0,
            &mut kargs![
                dbias,
                dout,
                dim(OP, "rows", rows)?,
                dim(OP, "cols", cols)?,
                BIAS_ROWS_PER_BLOCK as i32
            ],
        );
    }
    gpu.launch(
        &SRC,
        super::kname::<T>("bias_grad_f32", "bias_grad_bf16"),
        (
            cols.div_ceil(32).max(1) as u32,
            rows.div_ceil(BIAS_ROWS_PER_BLOCK).max(1) as u32,
            1,
        ),
        256,
        0,
        &mut kargs![
            dbias,
            dout,
            dim(OP, "rows", rows)?,
            dim(OP, "cols", cols)?,
            BIAS_ROWS_PER_BLOCK as i32
        ],
    )
}

/// Sets every element to `v` (poisoning outputs before checks, or initialisation).
pub fn fill<T: DType>(gpu: &Gpu, out: DSlice<T>, v: f32) -> Result<(), GpuError> {
    gpu.launch(
        &SRC,
        super::kname::<T>("fill_f32", "fill_bf16"),
        (super::grid_1d(out.len()), 1, 1),
        256,
        0,
        &mut kargs![out, out.len() as u64, v],
    )
}

/// bf16 copy of f32 values (round to nearest even).
pub fn cast_f32_to_bf16(gpu: &Gpu, out: DSlice<half::bf16>, inp: DSlice<f32>) -> Result<(), GpuError> {
    check_len("cast_f32_to_bf16", "out", out.len(), inp.len())?;
    gpu.launch(
        &SRC,
        "cast_f32_to_bf16",
        (super::grid_1d(inp.len()), 1, 1),
        256,
        0,
        &mut kargs![out, inp, inp.len() as u64],
    )
}

/// f32 copy of bf16 values.
pub fn cast_bf16_to_f32(gpu: &Gpu, out: DSlice<f32>, inp: DSlice<half::bf16>) -> Result<(), GpuError> {
    check_len("cast_bf16_to_f32", "out", out.len(), inp.len())?;
    gpu.launch(
        &SRC,
        "cast_bf16_to_f32",
        (super::grid_1d(inp.len()), 1, 1),
        256,
        0,
        &mut kargs![out, inp, inp.len() as u64],
    )
}

/// Whether [`bias_grad`] takes the 4-column kernel (rows of whole groups, aligned view).
pub(crate) fn bias_grad_vectorised<T: DType>(dout: DSlice<T>, cols: usize) -> bool {
    cols.is_multiple_of(4) && super::gelu::aligned4(dout)
}
