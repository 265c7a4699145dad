//! Standalone dropout with the counter-based mask of [`crate::rng`]; kernels in `dropout.cu`.

use super::context::{Gpu, GpuError, KernelSource, check_len, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "dropout.cu",
    src: include_str!("dropout.cu"),
};

/// The keep threshold and the inverted-dropout scale, computed as the CPU ops do.
pub(crate) fn params(op: &'static str, p: f32) -> Result<(i32, f32), GpuError> {
    if !(0.0..1.0).contains(&p) {
        return Err(super::context::arg_err(op, "p", format!("{p} is outside [0, 1)")));
    }
    Ok((
        crate::rng::keep_threshold(f64::from(p)) as i32,
        1.0f32 / (1.0f32 - p),
    ))
}

/// `out[i] = keep(seed, i) ? inp[i] / (1 - p) : 0`, as [`crate::cpu::dropout_forward`].
pub fn dropout_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    inp: DSlice<T>,
    n: usize,
    p: f32,
    seed: u64,
) -> Result<(), GpuError> {
    const OP: &str = "dropout_forward";
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "inp", inp.len(), n)?;
    if p == 0.0 {
        return if out.ptr == inp.ptr {
            Ok(())
        } else {
            gpu.copy(out, inp)
        };
    }
    let (thr, scale) = params(OP, p)?;
    let name = super::kname::<T>("dropout_forward_f32", "dropout_forward_bf16");
    gpu.launch(
        &SRC,
        name,
        (super::grid_1d(n), 1, 1),
        256,
        0,
        &mut kargs![out, inp, n as u64, thr, scale, seed],
    )
}

/// `dinp (+)= keep(seed, i) ? dout[i] / (1 - p) : 0`, as [`crate::cpu::dropout_backward`].
pub fn dropout_backward<T: DType>(
    gpu: &Gpu,
    dinp: DSlice<T>,
    dout: DSlice<T>,
    n: usize,
    p: f32,
    seed: u64,
    accumulate: bool,
) -> Result<(), GpuError> {
    const OP: &str = "dropout_backward";
    check_len(OP, "dinp", dinp.len(), n)?;
    check_len(OP, "dout", dout.len(), n)?;
    let (thr, scale) = params(OP, p)?;
    let name = super::kname::<T>("dropout_backward_f32", "dropout_backward_bf16");
    gpu.launch(
        &SRC,
        name,
        (super::grid_1d(n), 1, 1),
        256,
        0,
        &mut kargs![dinp, dout, n as u64, thr, scale, seed, i32::from(accumulate)],
    )
}
