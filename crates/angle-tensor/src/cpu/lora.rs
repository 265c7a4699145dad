//! The LoRA part of a linear layer (peft's `LoraLayer`): `y += s · (x·Aᵀ)·Bᵀ`, `s = alpha / r`,
//! `A [r, in]`, `B [out, r]`. The frozen base product `x·Wᵀ (+ b)` is the caller's (`linear_forward`);
//! this op only adds the low-rank branch, so the base weight gets no gradient. Input dropout, when
//! wanted, is applied by the caller to the `inp` handed in (peft drops `x` before `A` only).

use super::Float;
use super::gemm::{MatMut, MatRef, gemm};
use crate::error::{TensorError, check_len};

/// The dimensions of one adapted linear layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraShape {
    pub rows: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    pub r: usize,
    /// `alpha / r`
    pub scale: f64,
}

fn check(
    op: &'static str,
    s: LoraShape,
    inp: usize,
    xa: usize,
    a: usize,
    b: usize,
) -> Result<(), TensorError> {
    check_len(op, "inp", inp, s.rows * s.in_dim)?;
    check_len(op, "xa", xa, s.rows * s.r)?;
    check_len(op, "lora_a", a, s.r * s.in_dim)?;
    check_len(op, "lora_b", b, s.out_dim * s.r)?;
    Ok(())
}

/// `xa = inp·Aᵀ` (saved for backward) and `out += scale · xa·Bᵀ`.
pub fn lora_forward<T: Float>(
    out: &mut [T],
    xa: &mut [T],
    inp: &[T],
    a: &[T],
    b: &[T],
    s: LoraShape,
) -> Result<(), TensorError> {
    const OP: &str = "lora_forward";
    check(OP, s, inp.len(), xa.len(), a.len(), b.len())?;
    check_len(OP, "out", out.len(), s.rows * s.out_dim)?;
    gemm(
        T::one(),
        MatRef::new(inp, s.rows, s.in_dim),
        MatRef::new(a, s.r, s.in_dim).t(),
        T::zero(),
        MatMut::new(xa, s.rows, s.r),
    )?;
    gemm(
        T::of(s.scale),
        MatRef::new(xa, s.rows, s.r),
        MatRef::new(b, s.out_dim, s.r).t(),
        T::one(),
        MatMut::new(out, s.rows, s.out_dim),
    )
}

/// Adds `dB += scale · doutᵀ·xa`, `dA += dxaᵀ·inp` and (when given) `dinp += dxa·A`, with
/// `dxa = scale · dout·B` computed into `dxa` (`rows · r` scratch, overwritten).
pub fn lora_backward<T: Float>(
    dinp: Option<&mut [T]>,
    da: &mut [T],
    db: &mut [T],
    dxa: &mut [T],
    dout: &[T],
    inp: &[T],
    xa: &[T],
    a: &[T],
    b: &[T],
    s: LoraShape,
) -> Result<(), TensorError> {
    const OP: &str = "lora_backward";
    check(OP, s, inp.len(), xa.len(), a.len(), b.len())?;
    check_len(OP, "dout", dout.len(), s.rows * s.out_dim)?;
    check_len(OP, "dxa", dxa.len(), s.rows * s.r)?;
    check_len(OP, "dlora_a", da.len(), a.len())?;
    check_len(OP, "dlora_b", db.len(), b.len())?;
    if let Some(d) = &dinp {
        check_len(OP, "dinp", d.len(), s.rows * s.in_dim)?;
    }
    let scale = T::of(s.scale);
    let dy = MatRef::new(dout, s.rows, s.out_dim);
    gemm(
        scale,
        dy.t(),
        MatRef::new(xa, s.rows, s.r),
        T::one(),
        MatMut::new(db, s.out_dim, s.r),
    )?;
    gemm(
        scale,
        dy,
        MatRef::new(b, s.out_dim, s.r),
        T::zero(),
        MatMut::new(dxa, s.rows, s.r),
    )?;
    let dxa = MatRef::new(&*dxa, s.rows, s.r);
    gemm(
        T::one(),
        dxa.t(),
        MatRef::new(inp, s.rows, s.in_dim),
        T::one(),
        MatMut::new(da, s.r, s.in_dim),
    )?;
    if let Some(dinp) = dinp {
        gemm(
            T::one(),
            dxa,
            MatRef::new(a, s.r, s.in_dim),
            T::one(),
            MatMut::new(dinp, s.rows, s.in_dim),
        )?;
    }
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
        fn finite_differences(rows in 1usize..6, i in 1usize..7, o in 1usize..7, r in 1usize..4, seed: u64) {
            let s = LoraShape { rows, in_dim: i, out_dim: o, r, scale: 2.0 / r as f64 };
            let mut t = TestRng::new(seed);
            let (x, a, b, g) = (t.vec(rows * i), t.vec(r * i), t.vec(o * r), t.vec(rows * o));
            let f = |x: &[f64], a: &[f64], b: &[f64]| {
                let mut out = vec![0.5; rows * o];
                let mut xa = vec![0.0; rows * r];
                lora_forward(&mut out, &mut xa, x, a, b, s).unwrap();
                dot(&out, &g)
            };
            let mut out = vec![0.0; rows * o];
            let mut xa = vec![0.0; rows * r];
            lora_forward(&mut out, &mut xa, &x, &a, &b, s).unwrap();
            let (dx0, da0, db0) = (t.vec(rows * i), t.vec(r * i), t.vec(o * r));
            let (mut dx, mut da, mut db) = (dx0.clone(), da0.clone(), db0.clone());
            let mut dxa = vec![0.0; rows * r];
            lora_backward(Some(&mut dx), &mut da, &mut db, &mut dxa, &g, &x, &xa, &a, &b, s).unwrap();
            assert_close(&added(&dx, &dx0), &numeric_grad(&x, |x| f(x, &a, &b)), 1e-7);
            assert_close(&added(&da, &da0), &numeric_grad(&a, |a| f(&x, a, &b)), 1e-7);
            assert_close(&added(&db, &db0), &numeric_grad(&b, |b| f(&x, &a, b)), 1e-7);
        }
    }
}
