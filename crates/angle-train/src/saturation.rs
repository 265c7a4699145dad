//! The saturation zone, measured: at logged steps, each objective's gradient with respect to the pooled embeddings
//! of the step's (last) micro-batch, computed alone with angle-loss's public per-objective functions.
//!
//! For the cosine and angle objectives it also records the share of the batch's ranked pairs in their saturation
//! zone, two ways (`docs/angle-objective.md`):
//! - `saturated`: the pair's gradient of the objective (its two rows of `dL/dy`, ranking weights included) is below
//!   1% of the batch's largest: what training actually sees;
//! - `score_saturated`: the slope of the pair's score alone (`‖∂s/∂(x, y)‖`, no ranking weights) is below 1% of the
//!   batch's largest: the cosine's own flattening near ±1, the paper's argument.
//!
//! Both objectives are measured whatever their weights (`active` says which ones the run trains with), so runs of
//! every ablation variant are comparable. In-batch negatives get a gradient norm when the run uses them. Only
//! logged steps pay for this (a few ms); format A only (the objectives are defined on scored pairs).

use std::collections::BTreeMap;

use angle_loss::{AngleLossConfig, LossError, angle_slope, cosine_slope};
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

/// Below this fraction of the batch's largest, a pair's gradient counts as saturated.
pub const SATURATION_FRACTION: f64 = 0.01;

/// One objective at one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveSaturation {
    /// Whether the run's loss includes this objective (weight > 0).
    pub active: bool,
    /// `‖dL/dy‖` (Frobenius) of the objective alone, unweighted, over the micro-batch's pooled embeddings.
    pub grad_norm: f64,
    /// Share of pairs whose gradient is below 1% of the largest pair's (`None`: no pair has a gradient, e.g. all
    /// labels tie; in-batch negatives have no per-pair ranking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturated: Option<f64>,
    /// Share of pairs whose score slope is below 1% of the largest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_saturated: Option<f64>,
}

/// A `{"kind": "saturation"}` record of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaturationRecord {
    pub step: u64,
    pub epoch: f64,
    /// Pairs in the measured micro-batch.
    pub pairs: usize,
    /// By objective name: `cosine`, `angle`, and `ibn` when the run uses it.
    pub objectives: BTreeMap<String, ObjectiveSaturation>,
}

/// Measures a format-A micro-batch (`y`: zigzag pooled embeddings, one label per pair; `ids`: text identities for
/// the in-batch term, as the trainer passes them). `step` and `epoch` are filled in by the caller.
pub fn measure(
    config: &AngleLossConfig,
    y: ArrayView2<'_, f32>,
    labels: &[f32],
    ids: Option<&[u64]>,
) -> Result<SaturationRecord, LossError> {
    let (rows, dim) = y.dim();
    let pairs = rows / 2;
    let mut objectives = BTreeMap::new();
    let flat = y.as_standard_layout();
    let row = |i: usize| &flat.as_slice().expect("standard layout")[i * dim..(i + 1) * dim];

    let cos = angle_loss::cosine_loss(y, labels, config.cosine_tau as f32)?;
    let slopes: Vec<f64> = (0..pairs)
        .map(|k| cosine_slope(row(2 * k), row(2 * k + 1)))
        .collect();
    objectives.insert(
        "cosine".to_string(),
        ranked(config.cosine_w > 0.0, &cos.grad, pairs, &slopes),
    );
    if dim % 2 == 0 {
        let ang = angle_loss::angle_loss(y, labels, config.angle_tau as f32, config.angle_pooling)?;
        let slopes: Vec<f64> = (0..pairs)
            .map(|k| angle_slope(row(2 * k), row(2 * k + 1), config.angle_pooling))
            .collect();
        objectives.insert(
            "angle".to_string(),
            ranked(config.angle_w > 0.0, &ang.grad, pairs, &slopes),
        );
    }
    if config.ibn_w > 0.0 {
        let ibn = angle_loss::in_batch_negative_loss(y, labels, ids, config.ibn_tau as f32)?;
        objectives.insert(
            "ibn".to_string(),
            ObjectiveSaturation {
                active: true,
                grad_norm: frobenius(ibn.grad.iter().copied()),
                saturated: None,
                score_saturated: None,
            },
        );
    }
    Ok(SaturationRecord {
        step: 0,
        epoch: 0.0,
        pairs,
        objectives,
    })
}

fn frobenius(v: impl Iterator<Item = f32>) -> f64 {
    v.map(|x| x as f64 * x as f64).sum::<f64>().sqrt()
}

/// Share of `values` below [`SATURATION_FRACTION`] of their maximum (`None` when the maximum is 0 or not finite).
pub fn share_below(values: &[f64]) -> Option<f64> {
    let max = values.iter().copied().fold(0.0f64, f64::max);
    if !(max > 0.0 && max.is_finite()) || values.is_empty() {
        return None;
    }
    let cut = SATURATION_FRACTION * max;
    Some(values.iter().filter(|&&v| v < cut).count() as f64 / values.len() as f64)
}

fn ranked(active: bool, grad: &ndarray::Array2<f32>, pairs: usize, slopes: &[f64]) -> ObjectiveSaturation {
    let per_pair: Vec<f64> = (0..pairs)
        .map(|k| frobenius(grad.row(2 * k).iter().chain(grad.row(2 * k + 1).iter()).copied()))
        .collect();
    ObjectiveSaturation {
        active,
        grad_norm: frobenius(grad.iter().copied()),
        saturated: share_below(&per_pair),
        score_saturated: share_below(slopes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_counts_values_below_one_percent_of_the_largest() {
        assert_eq!(share_below(&[1.0, 0.5, 0.009, 0.0]), Some(0.5));
        assert_eq!(share_below(&[0.0, 0.0]), None);
        assert_eq!(share_below(&[]), None);
    }

    #[test]
    fn a_pair_near_cosine_one_is_saturated_for_the_score() {
        // Pair 0 nearly parallel (cosine ≈ 1), pairs 1 and 2 far from it.
        let y = ndarray::array![
            [1.0f32, 2.0, 3.0, 4.0],
            [1.0, 2.0, 3.0, 4.0001],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, -1.0],
        ];
        let config = AngleLossConfig {
            cosine_w: 1.0,
            ibn_w: 0.0,
            angle_w: 1.0,
            ..AngleLossConfig::default()
        };
        let r = measure(&config, y.view(), &[5.0, 1.0, 3.0], None).unwrap();
        assert_eq!(r.pairs, 3);
        let cos = r.objectives["cosine"];
        assert!(cos.active && cos.grad_norm > 0.0);
        assert_eq!(cos.score_saturated, Some(1.0 / 3.0));
        let direct = angle_loss::cosine_loss(y.view(), &[5.0, 1.0, 3.0], 20.0).unwrap();
        assert!((cos.grad_norm - frobenius(direct.grad.iter().copied())).abs() < 1e-9);
        assert!(r.objectives.contains_key("angle") && !r.objectives.contains_key("ibn"));
    }
}
