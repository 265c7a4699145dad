//! The AnglE format-A objective on the device (forward and gradient, no host round trip per
//! step); kernel in `loss.cu`.

use super::context::{Gpu, GpuError, KernelSource, arg_err, check_len, dim, kargs};
use super::memory::{DSlice, DeviceBuffer};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "loss.cu",
    src: include_str!("loss.cu"),
};

/// Weights and temperatures of `cosine_w·CoSENT(cos) + angle_w·CoSENT(angle) +
/// ibn_w·in-batch-negatives` (angle-emb 0.6.1's format A), with the scratch its in-batch term
/// needs (allocated once for up to `max_pairs`).
#[derive(Debug)]
pub struct AngleObjective {
    pub cosine_w: f32,
    pub cosine_tau: f32,
    pub angle_w: f32,
    pub angle_tau: f32,
    /// Angle pooling: mean (true) or sum (false, the default).
    pub angle_mean: bool,
    pub ibn_w: f32,
    pub ibn_tau: f32,
    max_pairs: usize,
    work: DeviceBuffer<f32>,
}

impl AngleObjective {
    /// angle-emb's defaults for format A: cosine 1 (τ 20), in-batch 1 (τ 20), angle 0.02
    /// (τ 20, sum pooling). Change the public fields for other mixes.
    pub fn new(gpu: &Gpu, max_pairs: usize) -> Result<Self, GpuError> {
        let r = 2 * max_pairs.max(1);
        Ok(Self {
            cosine_w: 1.0,
            cosine_tau: 20.0,
            angle_w: 0.02,
            angle_tau: 20.0,
            angle_mean: false,
            ibn_w: 1.0,
            ibn_tau: 20.0,
            max_pairs,
            work: gpu.alloc::<f32>(2 * r * r)?,
        })
    }
}

/// `loss[0] = objective(y, labels)` and `dy = d loss / d y` (overwritten), for `pairs` pairs of
/// `dim`-wide embeddings in zigzag rows. `loss` holds 1 value, or 4: then `loss[1..4]` are the
/// unweighted cosine, angle and in-batch values (0 where the weight is 0), for logging.
pub fn angle_objective(
    gpu: &Gpu,
    obj: &AngleObjective,
    loss: DSlice<f32>,
    dy: DSlice<f32>,
    y: DSlice<f32>,
    labels: DSlice<f32>,
    pairs: usize,
    width: usize,
) -> Result<(), GpuError> {
    const OP: &str = "angle_objective";
    if pairs > obj.max_pairs {
        return Err(arg_err(
            OP,
            "pairs",
            format!("{pairs} > {} allocated", obj.max_pairs),
        ));
    }
    if !width.is_multiple_of(2) && obj.angle_w != 0.0 {
        return Err(arg_err(
            OP,
            "dim",
            "the angle objective splits embeddings in halves: odd width",
        ));
    }
    if loss.len() != 1 && loss.len() != 4 {
        return Err(arg_err(
            OP,
            "loss",
            format!("{} values (1, or 4 with the parts)", loss.len()),
        ));
    }
    let nout = loss.len() as i32;
    check_len(OP, "y", y.len(), 2 * pairs * width)?;
    check_len(OP, "dy", dy.len(), 2 * pairs * width)?;
    check_len(OP, "labels", labels.len(), pairs)?;
    let shared = (12 * pairs.max(1) * 4) as u32;
    gpu.launch(
        &SRC,
        "angle_objective",
        (1, 1, 1),
        1024,
        shared,
        &mut kargs![
            loss,
            dy,
            obj.work.view(),
            y,
            labels,
            dim(OP, "pairs", pairs)?,
            dim(OP, "dim", width)?,
            obj.cosine_w,
            obj.cosine_tau,
            obj.angle_w,
            obj.angle_tau,
            i32::from(obj.angle_mean),
            obj.ibn_w,
            obj.ibn_tau,
            nout
        ],
    )
}
