//! Row normalisation `x̂ = x / max(‖x‖, ε)`, as `torch.nn.functional.normalize` does, with ε = [`NORM_EPS`].
//!
//! The clamp is what keeps a zero embedding finite: its normalised row is 0 and its gradient `dx̂ / ε` (large, but
//! finite in both `f32` and `f64`).

use crate::dot::{dot, sum_sq};
use crate::par;
use crate::{NORM_EPS, Real};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Returns the normalised rows and each row's (unclamped) norm.
pub(crate) fn normalize_rows<F: Real>(y: &ArrayView2<'_, F>) -> (Array2<F>, Vec<f64>) {
    let (n, d) = y.dim();
    let flat = y.as_slice().expect("callers pass standard-layout views");
    let mut out = vec![F::zero(); n * d];
    let mut norms = vec![0.0f64; n];
    par::chunks_mut(&mut norms, 1, n * d, |i, nrm| {
        nrm[0] = sum_sq(&flat[i * d..(i + 1) * d]).sqrt();
    });
    par::chunks_mut(&mut out, d, n * d, |i, o| {
        let inv = 1.0 / norms[i].max(NORM_EPS);
        for (ov, xv) in o.iter_mut().zip(&flat[i * d..(i + 1) * d]) {
            *ov = F::of(xv.f64() * inv);
        }
    });
    let out = Array2::from_shape_vec((n, d), out).expect("n * d elements");
    (out, norms)
}

/// Adds `dL/dx` into `grad` given `dL/dx̂`: `(dx̂ − (dx̂·x̂) x̂) / ‖x‖`, or `dx̂ / ε` where the clamp is active.
pub(crate) fn normalize_backward<F: Real>(
    dxhat: &ArrayView2<'_, F>,
    xhat: &ArrayView2<'_, F>,
    norms: &[f64],
    grad: &mut ArrayViewMut2<'_, F>,
) {
    let d = xhat.ncols();
    let dh = dxhat.as_slice().expect("standard layout");
    let xh = xhat.as_slice().expect("standard layout");
    let apply = |i: usize, mut g: ndarray::ArrayViewMut1<'_, F>| {
        let dx = &dh[i * d..(i + 1) * d];
        let x = &xh[i * d..(i + 1) * d];
        let nrm = norms[i];
        if nrm >= NORM_EPS {
            let proj = dot(dx, x);
            let inv = 1.0 / nrm;
            for t in 0..d {
                g[t] += F::of((dx[t].f64() - proj * x[t].f64()) * inv);
            }
        } else {
            let inv = 1.0 / NORM_EPS;
            for t in 0..d {
                g[t] += F::of(dx[t].f64() * inv);
            }
        }
    };
    let work = dh.len();
    if let Some(gs) = grad.as_slice_mut() {
        par::chunks_mut(gs, d, work, |i, g| apply(i, ndarray::ArrayViewMut1::from(g)));
    } else {
        for (i, g) in grad.rows_mut().into_iter().enumerate() {
            apply(i, g);
        }
    }
}
