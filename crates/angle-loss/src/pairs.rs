//! Pair scores ranked by CoSENT: the cosine objective (`v = τ·cos`) and the angle objective (`v = τ·|s|`, `s` the
//! pooled normalised complex quotient). Both scores have the form `s = c · xᵀ V y / (‖x‖ ‖y‖)` with `V = I` for the
//! cosine and `V = [[I, −I], [I, I]]` for the angle (see `docs/angle-objective.md`), so one backward serves both.

use ndarray::{ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use crate::dot::{angle_numerator, dot, sum_sq};
use crate::par;
use crate::rank::rank_loss;
use crate::{NORM_EPS, Real};

/// How the angle objective pools the `dim` components of the normalised quotient into one number per pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnglePooling {
    /// Sum of the real and imaginary parts (the reference's default).
    #[default]
    Sum,
    /// Mean of the real and imaginary parts (the sum divided by the embedding dimension).
    Mean,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum PairScore {
    Cosine,
    Angle(AnglePooling),
}

/// What the backward needs of one pair: the score and the two (clamped) norms.
#[derive(Clone, Copy)]
struct Geom {
    s: f64,
    nx: f64,
    ny: f64,
    sx: f64,
    sy: f64,
}

fn geom<F: Real>(x: &[F], y: &[F], score: PairScore) -> Geom {
    let (sx, sy) = (sum_sq(x), sum_sq(y));
    let (num, pool) = match score {
        PairScore::Cosine => (dot(x, y), 1.0),
        PairScore::Angle(AnglePooling::Sum) => (angle_numerator(x, y), 1.0),
        PairScore::Angle(AnglePooling::Mean) => (angle_numerator(x, y), 1.0 / x.len() as f64),
    };
    let nx = sx.sqrt().max(NORM_EPS);
    let ny = sy.sqrt().max(NORM_EPS);
    Geom {
        s: pool * num / (nx * ny),
        nx,
        ny,
        sx,
        sy,
    }
}

fn pool_scale(score: PairScore, dim: usize) -> f64 {
    match score {
        PairScore::Angle(AnglePooling::Mean) => 1.0 / dim as f64,
        _ => 1.0,
    }
}

/// Ranks the scores of `pairs` (row indices into `y`) by `labels`, returns the loss and adds `weight · dL/dy` into
/// `grad`. Rows may occur in several pairs (format C pairs each query with its positive and its negative).
pub(crate) fn pair_objective<F: Real>(
    y: &ArrayView2<'_, F>,
    pairs: &[(usize, usize)],
    labels: &[f64],
    score: PairScore,
    tau: f64,
    weight: f64,
    grad: &mut ArrayViewMut2<'_, F>,
) -> f64 {
    let dim = y.ncols();
    let flat = y.as_slice().expect("callers pass standard-layout views");
    let row = |i: usize| &flat[i * dim..(i + 1) * dim];

    let work = pairs.len() * dim;
    let geoms: Vec<Geom> = par::map_collect(pairs.len(), work, |k| {
        geom(row(pairs[k].0), row(pairs[k].1), score)
    });
    let v: Vec<f64> = geoms
        .iter()
        .map(|g| match score {
            PairScore::Cosine => tau * g.s,
            PairScore::Angle(_) => tau * g.s.abs(),
        })
        .collect();
    let mut dv = vec![0.0f64; pairs.len()];
    let loss = rank_loss(&v, labels, &mut dv);
    if weight == 0.0 {
        return loss;
    }

    let c = pool_scale(score, dim);
    let h = dim / 2;
    // dL/dx and dL/dy of pair k, added into `dx`, `dy`.
    let pair_grad = |k: usize, dx: &mut [F], dy: &mut [F]| {
        let g = geoms[k];
        // dL/ds: the ranking gradient through the scale (and, for the angle, through |s|, whose slope at 0 is 0).
        let ds = weight
            * dv[k]
            * match score {
                PairScore::Cosine => tau,
                PairScore::Angle(_) => tau * sign(g.s),
            };
        if ds == 0.0 {
            return;
        }
        let (x, y) = (row(pairs[k].0), row(pairs[k].1));
        let inv = c / (g.nx * g.ny);
        // −s·x/‖x‖² is the derivative of the norm; below the clamp the norm is a constant and it drops out.
        let rx = if g.sx.sqrt() >= NORM_EPS { g.s / g.sx } else { 0.0 };
        let ry = if g.sy.sqrt() >= NORM_EPS { g.s / g.sy } else { 0.0 };
        match score {
            PairScore::Cosine => {
                for t in 0..dim {
                    let (xt, yt) = (x[t].f64(), y[t].f64());
                    dx[t] += F::of(ds * (inv * yt - rx * xt));
                    dy[t] += F::of(ds * (inv * xt - ry * yt));
                }
            }
            PairScore::Angle(_) => {
                for t in 0..h {
                    let (a, b) = (x[t].f64(), x[h + t].f64());
                    let (cc, d) = (y[t].f64(), y[h + t].f64());
                    // V y = [c − d, c + d], Vᵀ x = [a + b, b − a].
                    dx[t] += F::of(ds * (inv * (cc - d) - rx * a));
                    dx[h + t] += F::of(ds * (inv * (cc + d) - rx * b));
                    dy[t] += F::of(ds * (inv * (a + b) - ry * cc));
                    dy[h + t] += F::of(ds * (inv * (b - a) - ry * d));
                }
            }
        }
    };
    let zigzag = pairs
        .iter()
        .enumerate()
        .all(|(k, &(i, j))| i == 2 * k && j == 2 * k + 1);
    match grad.as_slice_mut() {
        // Zigzag pairs own disjoint, contiguous rows: write straight into the gradient.
        Some(gs) if zigzag => par::chunks_mut(gs, 2 * dim, work, |k, out| {
            let (dx, dy) = out.split_at_mut(dim);
            pair_grad(k, dx, dy);
        }),
        // Rows shared between pairs (format C) or a strided buffer: per-pair rows, then added in pair order.
        _ => {
            let mut buf = vec![F::zero(); pairs.len() * 2 * dim];
            par::chunks_mut(&mut buf, 2 * dim, work, |k, out| {
                let (dx, dy) = out.split_at_mut(dim);
                pair_grad(k, dx, dy);
            });
            for (k, &(i, j)) in pairs.iter().enumerate() {
                let chunk = &buf[k * 2 * dim..(k + 1) * 2 * dim];
                for (g, &d) in grad.row_mut(i).iter_mut().zip(&chunk[..dim]) {
                    *g += d;
                }
                for (g, &d) in grad.row_mut(j).iter_mut().zip(&chunk[dim..]) {
                    *g += d;
                }
            }
        }
    }
    loss
}

/// The slope of |s|: torch's `abs` backward uses sign(0) = 0, and so do we.
fn sign(s: f64) -> f64 {
    if s > 0.0 {
        1.0
    } else if s < 0.0 {
        -1.0
    } else {
        0.0
    }
}
