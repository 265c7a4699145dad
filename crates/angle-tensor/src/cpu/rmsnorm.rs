//! RMSNorm over the last dimension, as LLaMA / Qwen / Mistral: `y = w ⊙ x · r`, `r = 1/√(mean(x²) + eps)`.
//!
//! Qwen3's per-head `q_norm` / `k_norm` are the same op on `[N · heads, head_dim]` rows (the weight,
//! `head_dim` long, is shared by every head). Derivation of the backward: `docs/decoder.md`.

use rayon::prelude::*;

use super::Float;
use crate::error::{TensorError, check_len};

/// `out = inp · rstd · weight` per row; saves `rstd[rows] = 1/√(mean(inp²) + eps)` for backward.
pub fn rmsnorm_forward<T: Float>(
    out: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: &[T],
    rows: usize,
    dim: usize,
    eps: T,
) -> Result<(), TensorError> {
    const OP: &str = "rmsnorm_forward";
    check_len(OP, "out", out.len(), rows * dim)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    check_len(OP, "inp", inp.len(), rows * dim)?;
    check_len(OP, "weight", weight.len(), dim)?;
    if dim == 0 {
        return Ok(());
    }
    let inv_dim = T::one() / T::of(dim as f64);
    out.par_chunks_mut(dim)
        .zip(inp.par_chunks(dim))
        .zip(rstd.par_iter_mut())
        .with_min_len(16)
        .for_each(|((o, x), s)| {
            let ms = x.iter().map(|&v| v * v).sum::<T>() * inv_dim;
            let r = T::one() / (ms + eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(weight) {
                *o = w * (x * r);
            }
            *s = r;
        });
    Ok(())
}

/// Adds the RMSNorm gradients: `dinp += r·(dy⊙w) − x · r³ · mean(dy⊙w⊙x)`, `dweight += Σ_rows dy ⊙ x · r`.
/// `dweight` may be `None` (a frozen weight gets no gradient).
pub fn rmsnorm_backward<T: Float>(
    dinp: &mut [T],
    dweight: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    rstd: &[T],
    rows: usize,
    dim: usize,
) -> Result<(), TensorError> {
    const OP: &str = "rmsnorm_backward";
    check_len(OP, "dinp", dinp.len(), rows * dim)?;
    check_len(OP, "dout", dout.len(), rows * dim)?;
    check_len(OP, "inp", inp.len(), rows * dim)?;
    check_len(OP, "weight", weight.len(), dim)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    if let Some(d) = &dweight {
        check_len(OP, "dweight", d.len(), dim)?;
    }
    if dim == 0 {
        return Ok(());
    }
    let inv_dim = T::one() / T::of(dim as f64);
    dinp.par_chunks_mut(dim)
        .zip(dout.par_chunks(dim).zip(inp.par_chunks(dim)))
        .zip(rstd.par_iter())
        .with_min_len(16)
        .for_each(|((dx, (dy, x)), &r)| {
            let c = dy
                .iter()
                .zip(x)
                .zip(weight)
                .map(|((&dy, &x), &w)| dy * w * x)
                .sum::<T>()
                * inv_dim
                * r
                * r
                * r;
            for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
                *dx += r * dy * w - x * c;
            }
        });
    if let Some(dweight) = dweight {
        // column blocks, each summing over all rows in order (deterministic)
        const BLOCK: usize = 64;
        dweight.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, dw)| {
            let c0 = bi * BLOCK;
            for (row, &r) in rstd.iter().enumerate() {
                let dy = &dout[row * dim + c0..row * dim + c0 + dw.len()];
                let x = &inp[row * dim + c0..row * dim + c0 + dw.len()];
                for ((dw, &dy), &x) in dw.iter_mut().zip(dy).zip(x) {
                    *dw += dy * x * r;
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    fn loss(x: &[f64], w: &[f64], g: &[f64], rows: usize, dim: usize) -> f64 {
        let mut out = vec![0.0; rows * dim];
        let mut s = vec![0.0; rows];
        rmsnorm_forward(&mut out, &mut s, x, w, rows, dim, 1e-6).unwrap();
        dot(&out, g)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn finite_differences(rows in 1usize..6, dim in 1usize..70, seed: u64) {
            let mut r = TestRng::new(seed);
            let (x, w, g) = (r.vec(rows * dim), r.vec(dim), r.vec(rows * dim));
            let (mut out, mut s) = (vec![0.0; rows * dim], vec![0.0; rows]);
            rmsnorm_forward(&mut out, &mut s, &x, &w, rows, dim, 1e-6).unwrap();
            let (dx0, dw0) = (r.vec(rows * dim), r.vec(dim));
            let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
            rmsnorm_backward(&mut dx, Some(&mut dw), &g, &x, &w, &s, rows, dim).unwrap();
            assert_close(&added(&dx, &dx0), &numeric_grad(&x, |x| loss(x, &w, &g, rows, dim)), 1e-6);
            assert_close(&added(&dw, &dw0), &numeric_grad(&w, |w| loss(&x, w, &g, rows, dim)), 1e-6);
            let mut dx2 = dx0.clone();
            rmsnorm_backward(&mut dx2, None, &g, &x, &w, &s, rows, dim).unwrap();
            assert_eq!(dx2, dx);
        }
    }

    #[test]
    fn unit_rms() {
        let x = [3.0f64, -4.0];
        let (mut out, mut s) = ([0.0; 2], [0.0]);
        rmsnorm_forward(&mut out, &mut s, &x, &[1.0, 2.0], 1, 2, 0.0).unwrap();
        let r = 1.0 / 12.5f64.sqrt();
        assert!((s[0] - r).abs() < 1e-15);
        assert!((out[0] - 3.0 * r).abs() < 1e-15 && (out[1] + 8.0 * r).abs() < 1e-15);
    }
}
