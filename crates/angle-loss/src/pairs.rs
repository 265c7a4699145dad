//! Pair scores ranked by CoSENT: the cosine objective (`v = τ·cos`) and the angle objective (`v = τ·|s|`, `s` the
//! pooled normalised complex quotient). Both scores have the form `s = c · xᵀ V y / (‖x‖ ‖y‖)` with `V = I` for the
//! cosine and `V = [[I, −I], [I, I]]` for the angle (see `docs/angle-objective.md`), so one backward serves both.

use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
    let (mut sx, mut sy, mut num) = (0.0f64, 0.0f64, 0.0f64);
    for k in 0..x.len() {
        let (xk, yk) = (x[k].f64(), y[k].f64());
        sx += xk * xk;
        sy += yk * yk;
    }
    let pool = match score {
        PairScore::Cosine => {
            for k in 0..x.len() {
                num += x[k].f64() * y[k].f64();
            }
            1.0
        }
        PairScore::Angle(pooling) => {
            // (a + bi) / (c + di) summed over real and imaginary parts: Σ (ac + bd) + (bc − ad).
            let h = x.len() / 2;
            for k in 0..h {
                let (a, b) = (x[k].f64(), x[h + k].f64());
                let (c, d) = (y[k].f64(), y[h + k].f64());
                num += a * c + b * d + b * c - a * d;
            }
            match pooling {
                AnglePooling::Sum => 1.0,
                AnglePooling::Mean => 1.0 / x.len() as f64,
            }
        }
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

    let geoms: Vec<Geom> = pairs
        .par_iter()
        .with_min_len(64)
        .map(|&(i, j)| geom(row(i), row(j), score))
        .collect();
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
    // Per-pair gradient rows [dx | dy], computed in parallel, then added in pair order (rows may repeat).
    let mut buf = vec![F::zero(); pairs.len() * 2 * dim];
    buf.par_chunks_mut(2 * dim)
        .with_min_len(16)
        .enumerate()
        .for_each(|(k, out)| {
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
            let (dx, dy) = out.split_at_mut(dim);
            match score {
                PairScore::Cosine => {
                    for t in 0..dim {
                        let (xt, yt) = (x[t].f64(), y[t].f64());
                        dx[t] = F::of(ds * (inv * yt - rx * xt));
                        dy[t] = F::of(ds * (inv * xt - ry * yt));
                    }
                }
                PairScore::Angle(_) => {
                    for t in 0..h {
                        let (a, b) = (x[t].f64(), x[h + t].f64());
                        let (cc, d) = (y[t].f64(), y[h + t].f64());
                        // V y = [c − d, c + d], Vᵀ x = [a + b, b − a].
                        dx[t] = F::of(ds * (inv * (cc - d) - rx * a));
                        dx[h + t] = F::of(ds * (inv * (cc + d) - rx * b));
                        dy[t] = F::of(ds * (inv * (a + b) - ry * cc));
                        dy[h + t] = F::of(ds * (inv * (b - a) - ry * d));
                    }
                }
            }
        });
    for (k, &(i, j)) in pairs.iter().enumerate() {
        let chunk = &buf[k * 2 * dim..(k + 1) * 2 * dim];
        let mut gi = grad.row_mut(i);
        for (g, &d) in gi.iter_mut().zip(&chunk[..dim]) {
            *g += d;
        }
        let mut gj = grad.row_mut(j);
        for (g, &d) in gj.iter_mut().zip(&chunk[dim..]) {
            *g += d;
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
