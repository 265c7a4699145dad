//! The SiLU-gated unit of LLaMA-family MLPs: `out = silu(gate) ⊙ up`, `silu(g) = g · σ(g)`.

use rayon::prelude::*;

use super::Float;
use crate::error::{TensorError, check_len};

const CHUNK: usize = 4096;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_())
}

/// `out[i] = silu(gate[i]) · up[i]` over `n` elements.
pub fn swiglu_forward<T: Float>(out: &mut [T], gate: &[T], up: &[T], n: usize) -> Result<(), TensorError> {
    const OP: &str = "swiglu_forward";
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "gate", gate.len(), n)?;
    check_len(OP, "up", up.len(), n)?;
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    Ok(())
}

/// Adds `dgate += dout · up · σ(g)(1 + g(1 − σ(g)))` and `dup += dout · silu(g)`.
pub fn swiglu_backward<T: Float>(
    dgate: &mut [T],
    dup: &mut [T],
    dout: &[T],
    gate: &[T],
    up: &[T],
    n: usize,
) -> Result<(), TensorError> {
    const OP: &str = "swiglu_backward";
    check_len(OP, "dgate", dgate.len(), n)?;
    check_len(OP, "dup", dup.len(), n)?;
    check_len(OP, "dout", dout.len(), n)?;
    check_len(OP, "gate", gate.len(), n)?;
    check_len(OP, "up", up.len(), n)?;
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(
            dout.par_chunks(CHUNK)
                .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))),
        )
        .for_each(|((dg, du), (dy, (g, u)))| {
            for ((((dg, du), &dy), &g), &u) in dg.iter_mut().zip(du).zip(dy).zip(g).zip(u) {
                let s = sigmoid(g);
                *du += dy * g * s;
                *dg += dy * u * s * (T::one() + g * (T::one() - s));
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn finite_differences(n in 1usize..40, seed: u64) {
            let mut r = TestRng::new(seed);
            let gate: Vec<f64> = r.vec(n).iter().map(|v| v * 4.0).collect();
            let (up, g) = (r.vec(n), r.vec(n));
            let f = |gate: &[f64], up: &[f64]| {
                let mut o = vec![0.0; n];
                swiglu_forward(&mut o, gate, up, n).unwrap();
                dot(&o, &g)
            };
            let (dg0, du0) = (r.vec(n), r.vec(n));
            let (mut dg, mut du) = (dg0.clone(), du0.clone());
            swiglu_backward(&mut dg, &mut du, &g, &gate, &up, n).unwrap();
            assert_close(&added(&dg, &dg0), &numeric_grad(&gate, |x| f(x, &up)), 1e-7);
            assert_close(&added(&du, &du0), &numeric_grad(&up, |x| f(&gate, x)), 1e-7);
        }
    }
}
