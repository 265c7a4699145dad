//! Row reductions accumulated in `f64` with eight independent partial sums, so that the compiler can vectorise them
//! (a single running `f64` sum is a serial dependency chain).

use crate::Real;

const LANES: usize = 8;

/// `Σ a_k b_k` in `f64`.
#[inline]
pub(crate) fn dot<F: Real>(a: &[F], b: &[F]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k].f64() * y[k].f64();
        }
    }
    let mut s: f64 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x.f64() * y.f64();
    }
    s
}

/// `‖a‖²` in `f64`.
#[inline]
pub(crate) fn sum_sq<F: Real>(a: &[F]) -> f64 {
    dot(a, a)
}

/// The angle objective's numerator `Σ_k (a_k c_k + b_k d_k) + (b_k c_k − a_k d_k)` for `x = [a | b]`, `y = [c | d]`,
/// i.e. `a·(c − d) + b·(c + d)`.
#[inline]
pub(crate) fn angle_numerator<F: Real>(x: &[F], y: &[F]) -> f64 {
    let h = x.len() / 2;
    let (a, b) = x.split_at(h);
    let (c, d) = y.split_at(h);
    let mut acc = [0.0f64; LANES];
    let mut k = 0;
    while k + LANES <= h {
        for l in 0..LANES {
            let (ak, bk, ck, dk) = (a[k + l].f64(), b[k + l].f64(), c[k + l].f64(), d[k + l].f64());
            acc[l] += ak * (ck - dk) + bk * (ck + dk);
        }
        k += LANES;
    }
    let mut s: f64 = acc.iter().sum();
    while k < h {
        let (ak, bk, ck, dk) = (a[k].f64(), b[k].f64(), c[k].f64(), d[k].f64());
        s += ak * (ck - dk) + bk * (ck + dk);
        k += 1;
    }
    s
}
