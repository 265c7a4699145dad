//! Inverted dropout with a counter-based mask ([`crate::rng`]): element `i` is kept when
//! `rng::keep(seed, i, rng::keep_threshold(p))`, and kept elements are scaled by `1 / (1 - p)`.
//! `p == 0` is the identity (use it for eval mode); backward regenerates the mask from
//! `(seed, p)`, so nothing is stored. Use a distinct seed per dropout site and step
//! (e.g. [`crate::rng::derive_seed`]).

use rayon::prelude::*;

use super::Float;
use super::simd::multiversion;
use crate::error::{TensorError, arg_err, check_len};
use crate::rng;

const CHUNK: usize = 1 << 13;

fn check_p<T: Float>(op: &'static str, p: T) -> Result<(), TensorError> {
    let pf = p.as_f64();
    if (0.0..1.0).contains(&pf) {
        Ok(())
    } else {
        Err(arg_err(
            op,
            "p",
            format!("drop probability {pf} is outside [0, 1)"),
        ))
    }
}

/// The mask factor of element `i`: `scale` when kept, 0 when dropped.
#[inline(always)]
fn factor<T: Float>(seed: u64, i: u64, thr: u32, scale: T) -> T {
    if rng::keep(seed, i, thr) { scale } else { T::zero() }
}

multiversion! {
    fn mask_copy<T: Float>(out: &mut [T], inp: &[T], seed: u64, base: u64, thr: u32, scale: T) {
        for (j, (o, &x)) in out.iter_mut().zip(inp).enumerate() {
            *o = x * factor(seed, base + j as u64, thr, scale);
        }
    }
}

multiversion! {
    fn mask_inplace<T: Float>(x: &mut [T], seed: u64, base: u64, thr: u32, scale: T) {
        for (j, x) in x.iter_mut().enumerate() {
            *x *= factor(seed, base + j as u64, thr, scale);
        }
    }
}

multiversion! {
    fn mask_add<T: Float>(dinp: &mut [T], dout: &[T], seed: u64, base: u64, thr: u32, scale: T) {
        for (j, (dx, &dy)) in dinp.iter_mut().zip(dout).enumerate() {
            *dx += dy * factor(seed, base + j as u64, thr, scale);
        }
    }
}

/// `out[i] = keep(i) ? inp[i] / (1 - p) : 0` over `n` elements.
pub fn dropout_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    n: usize,
    p: T,
    seed: u64,
) -> Result<(), TensorError> {
    const OP: &str = "dropout_forward";
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "inp", inp.len(), n)?;
    check_p(OP, p)?;
    if p == T::zero() {
        out.par_chunks_mut(CHUNK)
            .zip(inp.par_chunks(CHUNK))
            .for_each(|(o, x)| o.copy_from_slice(x));
        return Ok(());
    }
    let thr = rng::keep_threshold(p.as_f64());
    let scale = T::one() / (T::one() - p);
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(ci, (o, x))| {
            let base = (ci * CHUNK) as u64;
            mask_copy(o, x, seed, base, thr, scale)
        });
    Ok(())
}

/// [`dropout_forward`] in place on `x`.
pub fn dropout_forward_inplace<T: Float>(x: &mut [T], n: usize, p: T, seed: u64) -> Result<(), TensorError> {
    const OP: &str = "dropout_forward_inplace";
    check_len(OP, "x", x.len(), n)?;
    check_p(OP, p)?;
    if p == T::zero() {
        return Ok(());
    }
    let thr = rng::keep_threshold(p.as_f64());
    let scale = T::one() / (T::one() - p);
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, x)| {
        let base = (ci * CHUNK) as u64;
        mask_inplace(x, seed, base, thr, scale)
    });
    Ok(())
}

/// `dinp[i] += keep(i) ? dout[i] / (1 - p) : 0`, with the forward's `(p, seed)`.
pub fn dropout_backward<T: Float>(
    dinp: &mut [T],
    dout: &[T],
    n: usize,
    p: T,
    seed: u64,
) -> Result<(), TensorError> {
    const OP: &str = "dropout_backward";
    check_len(OP, "dinp", dinp.len(), n)?;
    check_len(OP, "dout", dout.len(), n)?;
    check_p(OP, p)?;
    let thr = rng::keep_threshold(p.as_f64());
    let scale = T::one() / (T::one() - p);
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(ci, (dx, dy))| {
            let base = (ci * CHUNK) as u64;
            mask_add(dx, dy, seed, base, thr, scale)
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    #[test]
    fn deterministic_and_rate() {
        let n = 100_000;
        let x = vec![1.0f32; n];
        let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
        dropout_forward(&mut a, &x, n, 0.1, 42).unwrap();
        dropout_forward(&mut b, &x, n, 0.1, 42).unwrap();
        assert_eq!(a, b);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.9).abs() < 0.005, "keep rate {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Mean is preserved (inverted scaling).
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01);
        dropout_forward(&mut b, &x, n, 0.1, 43).unwrap();
        assert_ne!(a, b);
        let mut c = x.clone();
        dropout_forward_inplace(&mut c, n, 0.1, 42).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn p_zero_is_identity() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 - 3.5).collect();
        let mut o = vec![0.0; 1000];
        dropout_forward(&mut o, &x, 1000, 0.0, 9).unwrap();
        assert_eq!(o, x);
        let mut d = vec![1.0; 1000];
        dropout_backward(&mut d, &x, 1000, 0.0, 9).unwrap();
        assert!(d.iter().zip(&x).all(|(d, x)| *d == 1.0 + x));
        assert!(dropout_forward(&mut o, &x, 1000, 1.0, 9).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn finite_differences(n in 1usize..60, seed: u64) {
            let mut r = TestRng::new(seed);
            let (x, g, d0) = (r.vec(n), r.vec(n), r.vec(n));
            let mut d = d0.clone();
            dropout_backward(&mut d, &g, n, 0.3, seed).unwrap();
            let f = |x: &[f64]| { let mut o = vec![0.0; n]; dropout_forward(&mut o, x, n, 0.3, seed).unwrap(); dot(&o, &g) };
            assert_close(&added(&d, &d0), &numeric_grad(&x, f), 1e-7);
        }
    }
}
