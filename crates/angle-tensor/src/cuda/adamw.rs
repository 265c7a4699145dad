//! Global gradient norm, clipping and fused AdamW over the flat f32 buffers; kernels in
//! `adamw.cu`.

use super::context::{Gpu, GpuError, KernelSource, arg_err, check_len, kargs};
use super::memory::DSlice;

pub(crate) const SRC: KernelSource = KernelSource {
    file: "adamw.cu",
    src: include_str!("adamw.cu"),
};

fn grid(gpu: &Gpu, n: usize) -> u32 {
    let _ = gpu;
    super::grid_1d(n).min(132 * 8)
}

/// `out[0] = Σ g²` (out is zeroed first; stays on the device).
pub fn grad_norm_sq(gpu: &Gpu, out: DSlice<f32>, grads: DSlice<f32>) -> Result<(), GpuError> {
    check_len("grad_norm_sq", "out", out.len(), 1)?;
    gpu.zero(out)?;
    gpu.launch(
        &SRC,
        "grad_norm_sq",
        (grid(gpu, grads.len()), 1, 1),
        256,
        0,
        &mut kargs![out, grads, grads.len() as u64],
    )
}

/// Clips like `torch.nn.utils.clip_grad_norm_` from the device-side `norm_sq`.
pub fn scale_by_norm(
    gpu: &Gpu,
    grads: DSlice<f32>,
    norm_sq: DSlice<f32>,
    max_norm: f32,
) -> Result<(), GpuError> {
    gpu.launch(
        &SRC,
        "scale_by_norm",
        (grid(gpu, grads.len()), 1, 1),
        256,
        0,
        &mut kargs![grads, grads.len() as u64, norm_sq, max_norm],
    )
}

/// One AdamW step `t` (from 1), as [`crate::cpu::adamw_update_masked`], over the whole flat buffer;
/// clips first when `clip` = (device `norm_sq`, max norm) is given, and refreshes the bf16
/// weight copy `pcopy` when given. `no_decay` holds the undecayed ranges as `[start, end)` pairs
/// (sorted, disjoint; from [`no_decay_bounds`]), on the device.
pub fn adamw_update(
    gpu: &Gpu,
    params: DSlice<f32>,
    grads: DSlice<f32>,
    m: DSlice<f32>,
    v: DSlice<f32>,
    pcopy: Option<DSlice<half::bf16>>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    no_decay: DSlice<i64>,
    t: u64,
    clip: Option<(DSlice<f32>, f32)>,
) -> Result<(), GpuError> {
    const OP: &str = "adamw_update";
    let n = params.len();
    check_len(OP, "grads", grads.len(), n)?;
    check_len(OP, "m", m.len(), n)?;
    check_len(OP, "v", v.len(), n)?;
    if let Some(c) = pcopy {
        check_len(OP, "pcopy", c.len(), n)?;
    }
    if t == 0 {
        return Err(arg_err(OP, "t", "steps count from 1"));
    }
    if !no_decay.len().is_multiple_of(2) {
        return Err(arg_err(OP, "no_decay", "holds [start, end) pairs"));
    }
    let n_nd = i32::try_from(no_decay.len() / 2).map_err(|_| arg_err(OP, "no_decay", "too many ranges"))?;
    let ti = i32::try_from(t).unwrap_or(i32::MAX);
    let bc1 = 1.0 - beta1.powi(ti);
    let bc2 = 1.0 - beta2.powi(ti);
    let (norm, max_norm) = match clip {
        Some((ns, mx)) => (ns, mx),
        None => (DSlice::null(), 0.0),
    };
    gpu.launch(
        &SRC,
        "adamw_update",
        (grid(gpu, n), 1, 1),
        256,
        0,
        &mut kargs![
            params,
            grads,
            m,
            v,
            pcopy.unwrap_or(DSlice::null()),
            n as u64,
            (1.0 - lr * weight_decay) as f32,
            (lr / bc1) as f32,
            (1.0 / bc2.sqrt()) as f32,
            beta1 as f32,
            beta2 as f32,
            (1.0 - beta1) as f32,
            (1.0 - beta2) as f32,
            eps as f32,
            norm,
            max_norm,
            no_decay,
            n_nd
        ],
    )
}

/// The device form of undecayed ranges for [`adamw_update`]: `[start, end)` pairs, flattened.
pub fn no_decay_bounds(ranges: &[std::ops::Range<usize>]) -> Vec<i64> {
    ranges
        .iter()
        .flat_map(|r| [r.start as i64, r.end as i64])
        .collect()
}
