//! GELU in the two forms BERT checkpoints use, and the error function it needs.

use rayon::prelude::*;

use super::Float;
use super::simd::multiversion;

use crate::error::{TensorError, check_len};

/// Which GELU: Hugging Face `hidden_act: "gelu"` is [`GeluKind::Erf`] (exact);
/// `"gelu_new"`, `"gelu_pytorch_tanh"` are [`GeluKind::Tanh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GeluKind {
    /// `0.5 x (1 + erf(x / √2))`.
    Erf,
    /// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    Tanh,
}

const CHUNK: usize = 1 << 13;
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const TANH_C: f64 = 0.044_715;

/// `out = gelu(inp)` elementwise over `n` elements.
pub fn gelu_forward<T: Float>(out: &mut [T], inp: &[T], n: usize, kind: GeluKind) -> Result<(), TensorError> {
    const OP: &str = "gelu_forward";
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "inp", inp.len(), n)?;
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| forward_chunk(o, x, kind));
    Ok(())
}

multiversion! {
    fn forward_chunk<T: Float>(out: &mut [T], inp: &[T], kind: GeluKind) {
    let half = T::of(0.5);
    match kind {
        GeluKind::Erf => {
            let s = T::of(std::f64::consts::FRAC_1_SQRT_2);
            for (o, &x) in out.iter_mut().zip(inp) {
                *o = half * x * (T::one() + (x * s).erf_gauss().0);
            }
        }
        GeluKind::Tanh => {
            let (k, c) = (T::of(SQRT_2_OVER_PI), T::of(TANH_C));
            for (o, &x) in out.iter_mut().zip(inp) {
                *o = half * x * (T::one() + (k * (x + c * x * x * x)).tanh_());
            }
        }
    }
    }
}

/// `x = gelu(x)` in place on this thread: a product's epilogue runs it on a block of its output while the
/// block is still in L1 (`linear_forward_bf16_gelu`). Same arithmetic as [`gelu_forward`].
pub(crate) fn gelu_in_place(x: &mut [f32], kind: GeluKind) {
    let mut copy = [0.0f32; 64];
    for seg in x.chunks_mut(64) {
        let c = &mut copy[..seg.len()];
        c.copy_from_slice(seg);
        forward_chunk(seg, c, kind);
    }
}

/// `dinp += gelu'(inp) * dout`.
pub fn gelu_backward<T: Float>(
    dinp: &mut [T],
    inp: &[T],
    dout: &[T],
    n: usize,
    kind: GeluKind,
) -> Result<(), TensorError> {
    const OP: &str = "gelu_backward";
    check_len(OP, "dinp", dinp.len(), n)?;
    check_len(OP, "inp", inp.len(), n)?;
    check_len(OP, "dout", dout.len(), n)?;
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| backward_chunk(dx, x, dy, kind));
    Ok(())
}

multiversion! {
    fn backward_chunk<T: Float>(dinp: &mut [T], inp: &[T], dout: &[T], kind: GeluKind) {
    let half = T::of(0.5);
    match kind {
        GeluKind::Erf => {
            let s = T::of(std::f64::consts::FRAC_1_SQRT_2);
            let p = T::of(FRAC_1_SQRT_2PI);
            for ((dx, &x), &dy) in dinp.iter_mut().zip(inp).zip(dout) {
                // d/dx [0.5 x (1 + erf(x/√2))] = 0.5 (1 + erf(x/√2)) + x φ(x), φ(x) = p e^{-(x/√2)²}
                let (erf, gauss) = (x * s).erf_gauss();
                *dx += dy * (half * (T::one() + erf) + x * p * gauss);
            }
        }
        GeluKind::Tanh => {
            let (k, c) = (T::of(SQRT_2_OVER_PI), T::of(TANH_C));
            let c3 = T::of(3.0 * TANH_C);
            for ((dx, &x), &dy) in dinp.iter_mut().zip(inp).zip(dout) {
                let t = (k * (x + c * x * x * x)).tanh_();
                let du = k * (T::one() + c3 * x * x);
                *dx += dy * (half * (T::one() + t) + half * x * (T::one() - t * t) * du);
            }
        }
    }
    }
}

/// erf for f64, accurate to a few ulps: Maclaurin series for |x| < 2.5 (terms peak near
/// e^{x²} ≈ 500, costing under 3 digits), the erfc continued fraction beyond.
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf x = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = a * a;
        let mut term = a; // (-1)^n x^(2n+1) / n!
        let mut sum = a;
        let mut n = 0.0;
        while n < 200.0 {
            n += 1.0;
            term *= -x2 / n;
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a < 6.0 {
        // erfc x = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
        let mut f = a;
        for k in (1..=80).rev() {
            f = a + (k as f64 * 0.5) / f;
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    } else {
        1.0
    };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::erf_f32;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    #[test]
    fn erf_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (2.5, 0.999_593_047_982_555),
            (3.0, 0.999_977_909_503_001_4),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!(
                (erf_f64(x) - want).abs() <= 2e-15 * want.abs(),
                "erf({x}) = {}",
                erf_f64(x)
            );
            let e32 = erf_f32(x as f32);
            assert!(
                (f64::from(e32) - want).abs() <= 2e-7 * want.abs() + 1e-30,
                "erf_f32({x}) = {e32}"
            );
        }
        // erfc(3) through the continued fraction branch
        assert!(((1.0 - erf_f64(3.0)) - 2.209_049_699_858_544e-5).abs() < 1e-15);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn finite_differences(n in 1usize..50, erf: bool, seed: u64) {
            let kind = if erf { GeluKind::Erf } else { GeluKind::Tanh };
            let mut r = TestRng::new(seed);
            let x: Vec<f64> = r.vec(n).iter().map(|v| v * 4.0).collect();
            let g = r.vec(n);
            let d0 = r.vec(n);
            let mut d = d0.clone();
            gelu_backward(&mut d, &x, &g, n, kind).unwrap();
            let f = |x: &[f64]| { let mut o = vec![0.0; n]; gelu_forward(&mut o, x, n, kind).unwrap(); dot(&o, &g) };
            assert_close(&added(&d, &d0), &numeric_grad(&x, f), 1e-7);
        }
    }

    #[test]
    fn tanh_close_to_erf() {
        let x: Vec<f64> = (-40..=40).map(|i| f64::from(i) * 0.1).collect();
        let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        gelu_forward(&mut a, &x, x.len(), GeluKind::Erf).unwrap();
        gelu_forward(&mut b, &x, x.len(), GeluKind::Tanh).unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-3);
        }
        assert!((a[50] - 0.841_344_746_068_542_9).abs() < 1e-15); // gelu(1) = Φ(1)
    }
}
