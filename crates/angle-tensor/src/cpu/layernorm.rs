//! Layer norm over the last dimension (biased variance, as PyTorch).

use rayon::prelude::*;

use super::Float;
use super::simd::multiversion;
use crate::error::{TensorError, check_len};

const LANES: usize = 8;

/// `Σ f(x_i)` with eight independent accumulators, so the loop vectorises.
#[inline(always)]
fn lane_sum<T: Float>(x: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(T::zero(), |s, &v| s + f(v));
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().copied().sum::<T>() + tail
}

multiversion! {
    fn row_forward<T: Float>(o: &mut [T], x: &[T], m: &mut T, s: &mut T, weight: &[T], bias: &[T], inv_dim: T, eps: T) {
        let mu = lane_sum(x, |v| v) * inv_dim;
        let var = lane_sum(x, |v| (v - mu) * (v - mu)) * inv_dim;
        let r = T::one() / (var + eps).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
            *o = (x - mu) * r * w + b;
        }
        *m = mu;
        *s = r;
    }
}

multiversion! {
    /// dnorm = dy * w; dx += r * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)).
    fn row_backward<T: Float>(dx: &mut [T], dy: &[T], x: &[T], mu: T, r: T, weight: &[T], inv_dim: T) {
        let (mut a1, mut a2) = ([T::zero(); LANES], [T::zero(); LANES]);
        let mut tail = (T::zero(), T::zero());
        let body = dy.len() / LANES * LANES;
        for ((dy, x), w) in dy[..body]
            .chunks_exact(LANES)
            .zip(x[..body].chunks_exact(LANES))
            .zip(weight[..body].chunks_exact(LANES))
        {
            for l in 0..LANES {
                let dn = dy[l] * w[l];
                a1[l] += dn;
                a2[l] += dn * (x[l] - mu);
            }
        }
        for ((&dy, &x), &w) in dy[body..].iter().zip(&x[body..]).zip(&weight[body..]) {
            tail.0 += dy * w;
            tail.1 += dy * w * (x - mu);
        }
        let s1 = (a1.iter().copied().sum::<T>() + tail.0) * inv_dim;
        let s2 = (a2.iter().copied().sum::<T>() + tail.1) * r * inv_dim;
        for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
            let xhat = (x - mu) * r;
            *dx += r * (dy * w - s1 - xhat * s2);
        }
    }
}

multiversion! {
    /// Columns `c0 ..` of dweight and dbias, summed over every row in order (deterministic).
    fn param_grads<T: Float>(dw: &mut [T], db: &mut [T], dout: &[T], inp: &[T], mean: &[T], rstd: &[T], dim: usize, c0: usize) {
        let c1 = c0 + dw.len();
        for (r, (&mu, &rs)) in mean.iter().zip(rstd).enumerate() {
            let dy = &dout[r * dim + c0..r * dim + c1];
            let x = &inp[r * dim + c0..r * dim + c1];
            for (((dw, db), &dy), &x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
                *dw += dy * (x - mu) * rs;
                *db += dy;
            }
        }
    }
}

/// `out = (inp - mean) * rstd * weight + bias` per row; saves `mean[rows]` and
/// `rstd[rows] = 1 / sqrt(var + eps)` for backward.
pub fn layernorm_forward<T: Float>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: &[T],
    rows: usize,
    dim: usize,
    eps: T,
) -> Result<(), TensorError> {
    const OP: &str = "layernorm_forward";
    check_len(OP, "out", out.len(), rows * dim)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    check_len(OP, "inp", inp.len(), rows * dim)?;
    check_len(OP, "weight", weight.len(), dim)?;
    check_len(OP, "bias", bias.len(), dim)?;
    if dim == 0 {
        return Ok(());
    }
    let inv_dim = T::one() / T::of(dim as f64);
    out.par_chunks_mut(dim)
        .zip(inp.par_chunks(dim))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(16)
        .for_each(|((o, x), (m, s))| row_forward(o, x, m, s, weight, bias, inv_dim, eps));
    Ok(())
}

/// Adds the layer-norm gradients into `dinp`, `dweight`, `dbias`.
pub fn layernorm_backward<T: Float>(
    dinp: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
    dout: &[T],
    inp: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    rows: usize,
    dim: usize,
) -> Result<(), TensorError> {
    const OP: &str = "layernorm_backward";
    check_len(OP, "dinp", dinp.len(), rows * dim)?;
    check_len(OP, "dweight", dweight.len(), dim)?;
    check_len(OP, "dbias", dbias.len(), dim)?;
    check_len(OP, "dout", dout.len(), rows * dim)?;
    check_len(OP, "inp", inp.len(), rows * dim)?;
    check_len(OP, "weight", weight.len(), dim)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    if dim == 0 {
        return Ok(());
    }
    let inv_dim = T::one() / T::of(dim as f64);
    // dinp: rows are independent.
    dinp.par_chunks_mut(dim)
        .zip(dout.par_chunks(dim).zip(inp.par_chunks(dim)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(16)
        .for_each(|((dx, (dy, x)), (&mu, &r))| row_backward(dx, dy, x, mu, r, weight, inv_dim));
    // dweight, dbias: column blocks, each summing over all rows in order (deterministic).
    const BLOCK: usize = 64;
    dweight
        .par_chunks_mut(BLOCK)
        .zip(dbias.par_chunks_mut(BLOCK))
        .enumerate()
        .for_each(|(bi, (dw, db))| param_grads(dw, db, dout, inp, mean, rstd, dim, bi * BLOCK));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    fn loss(x: &[f64], w: &[f64], b: &[f64], g: &[f64], rows: usize, dim: usize) -> f64 {
        let mut out = vec![0.0; rows * dim];
        let (mut m, mut s) = (vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(&mut out, &mut m, &mut s, x, w, b, rows, dim, 1e-5).unwrap();
        dot(&out, g)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn finite_differences(rows in 1usize..5, dim in 2usize..70, seed: u64) {
            let mut r = TestRng::new(seed);
            let (x, w, b, g) = (r.vec(rows * dim), r.vec(dim), r.vec(dim), r.vec(rows * dim));
            let (mut out, mut m, mut s) = (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows]);
            layernorm_forward(&mut out, &mut m, &mut s, &x, &w, &b, rows, dim, 1e-5).unwrap();
            let (dx0, dw0, db0) = (r.vec(rows * dim), r.vec(dim), r.vec(dim));
            let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
            layernorm_backward(&mut dx, &mut dw, &mut db, &g, &x, &w, &m, &s, rows, dim).unwrap();
            assert_close(&added(&dx, &dx0), &numeric_grad(&x, |x| loss(x, &w, &b, &g, rows, dim)), 1e-6);
            assert_close(&added(&dw, &dw0), &numeric_grad(&w, |w| loss(&x, w, &b, &g, rows, dim)), 1e-6);
            assert_close(&added(&db, &db0), &numeric_grad(&b, |b| loss(&x, &w, b, &g, rows, dim)), 1e-6);
        }
    }

    #[test]
    fn normalises() {
        let x = [1.0f64, 2.0, 3.0, 4.0];
        let mut out = [0.0; 4];
        let (mut m, mut s) = ([0.0], [0.0]);
        layernorm_forward(&mut out, &mut m, &mut s, &x, &[1.0; 4], &[0.0; 4], 1, 4, 0.0).unwrap();
        assert!((m[0] - 2.5).abs() < 1e-15);
        assert!((s[0] - 1.0 / 1.25f64.sqrt()).abs() < 1e-15);
        assert!(out.iter().sum::<f64>().abs() < 1e-12);
    }
}
