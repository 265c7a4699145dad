//! Per-pair scores and their slopes, public for evaluation and diagnostics: the very numbers the cosine and angle
//! objectives rank (before the scale `τ`), and how strongly each responds to its two embeddings.
//!
//! The slope of a pair is `‖(∂s/∂x, ∂s/∂y)‖`. For the cosine it is `sin θ · sqrt(1/‖x‖² + 1/‖y‖²)`: it vanishes as
//! the cosine approaches ±1, the saturation zone of `docs/angle-objective.md`; the angle score's slope is computed
//! the same way from `s = c · xᵀ V y / (‖x‖ ‖y‖)`.

use crate::dot::{angle_numerator, dot, sum_sq};
use crate::pairs::AnglePooling;
use crate::{NORM_EPS, Real};

/// The cosine objective's pair score: `xᵀy / (max(‖x‖, ε) max(‖y‖, ε))`.
pub fn cosine_score<F: Real>(x: &[F], y: &[F]) -> f64 {
    let (nx, ny) = (sum_sq(x).sqrt().max(NORM_EPS), sum_sq(y).sqrt().max(NORM_EPS));
    dot(x, y) / (nx * ny)
}

/// The angle objective's pair score `|s|`, `s` the pooled normalised complex quotient of `x = [re | im]` by
/// `y` (the objective ranks `τ·|s|`; higher means more similar). `x.len()` must be even (the rest is ignored).
pub fn angle_score<F: Real>(x: &[F], y: &[F], pooling: AnglePooling) -> f64 {
    angle_signed(x, y, pooling).abs()
}

fn angle_signed<F: Real>(x: &[F], y: &[F], pooling: AnglePooling) -> f64 {
    let (nx, ny) = (sum_sq(x).sqrt().max(NORM_EPS), sum_sq(y).sqrt().max(NORM_EPS));
    angle_pool(pooling, x.len()) * angle_numerator(x, y) / (nx * ny)
}

fn angle_pool(pooling: AnglePooling, dim: usize) -> f64 {
    match pooling {
        AnglePooling::Sum => 1.0,
        AnglePooling::Mean => 1.0 / dim.max(1) as f64,
    }
}

/// `‖(∂cos/∂x, ∂cos/∂y)‖` of [`cosine_score`].
pub fn cosine_slope<F: Real>(x: &[F], y: &[F]) -> f64 {
    let s = cosine_score(x, y);
    slope(x, y, s, 1.0, |x, y, t| (y[t].f64(), x[t].f64()))
}

/// `‖(∂|s|/∂x, ∂|s|/∂y)‖` of [`angle_score`] (the sign of `s` does not change the norm).
pub fn angle_slope<F: Real>(x: &[F], y: &[F], pooling: AnglePooling) -> f64 {
    let s = angle_signed(x, y, pooling);
    let h = x.len() / 2;
    // (V y)_t and (Vᵀ x)_t for V = [[I, −I], [I, I]]: V y = [c − d, c + d], Vᵀ x = [a + b, b − a].
    slope(x, y, s, angle_pool(pooling, x.len()), move |x, y, t| {
        if t < h {
            (y[t].f64() - y[h + t].f64(), x[t].f64() + x[h + t].f64())
        } else {
            let k = t - h;
            (y[k].f64() + y[t].f64(), x[t].f64() - x[k].f64())
        }
    })
}

/// `‖∂s/∂x‖² + ‖∂s/∂y‖²` under the root, for `s = c·xᵀVy/(‖x‖‖y‖)`: `∂s/∂x = c·Vy/(‖x‖‖y‖) − s·x/‖x‖²` (the norm
/// term drops out below the clamp), and symmetrically for `y`. `vy(x, y, t)` gives `((V y)_t, (Vᵀ x)_t)`.
fn slope<F: Real>(x: &[F], y: &[F], s: f64, c: f64, vy: impl Fn(&[F], &[F], usize) -> (f64, f64)) -> f64 {
    let (sx, sy) = (sum_sq(x), sum_sq(y));
    let (nx, ny) = (sx.sqrt().max(NORM_EPS), sy.sqrt().max(NORM_EPS));
    let inv = c / (nx * ny);
    let rx = if sx.sqrt() >= NORM_EPS { s / sx } else { 0.0 };
    let ry = if sy.sqrt() >= NORM_EPS { s / sy } else { 0.0 };
    let n = x.len().min(y.len()) / 2 * 2;
    let mut acc = 0.0f64;
    for t in 0..n {
        let (vyt, vtx) = vy(x, y, t);
        let gx = inv * vyt - rx * x[t].f64();
        let gy = inv * vtx - ry * y[t].f64();
        acc += gx * gx + gy * gy;
    }
    acc.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of a score in f64.
    fn fd_slope(x: &[f64], y: &[f64], f: impl Fn(&[f64], &[f64]) -> f64) -> f64 {
        let h = 1e-6;
        let mut acc = 0.0;
        for side in 0..2 {
            for t in 0..x.len() {
                let (mut xp, mut yp, mut xm, mut ym) = (x.to_vec(), y.to_vec(), x.to_vec(), y.to_vec());
                if side == 0 {
                    xp[t] += h;
                    xm[t] -= h;
                } else {
                    yp[t] += h;
                    ym[t] -= h;
                }
                let d = (f(&xp, &yp) - f(&xm, &ym)) / (2.0 * h);
                acc += d * d;
            }
        }
        acc.sqrt()
    }

    #[test]
    fn slopes_match_finite_differences() {
        let x = [0.3, -1.2, 0.7, 0.25, -0.4, 0.9];
        let y = [1.1, 0.2, -0.5, 0.6, 0.3, -0.8];
        let c = cosine_slope(&x, &y);
        assert!((c - fd_slope(&x, &y, cosine_score)).abs() < 1e-7, "{c}");
        for p in [AnglePooling::Sum, AnglePooling::Mean] {
            let a = angle_slope(&x, &y, p);
            let fd = fd_slope(&x, &y, |x, y| angle_score(x, y, p));
            assert!((a - fd).abs() < 1e-7, "{p:?}: {a} vs {fd}");
        }
    }

    #[test]
    fn cosine_slope_vanishes_at_saturation() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [2.0, 4.0, 6.0, 8.0];
        assert!((cosine_score(&x, &y) - 1.0).abs() < 1e-12);
        assert!(cosine_slope(&x, &y) < 1e-12);
    }
}
