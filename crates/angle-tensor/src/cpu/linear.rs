//! Linear layer with PyTorch's weight layout: `out[rows, out_dim] = inp[rows, in_dim] · Wᵀ + b`,
//! `W` is `[out_dim, in_dim]`.

use rayon::prelude::*;

use super::Float;
use super::gemm::{MatMut, MatRef, gemm};
use crate::error::{TensorError, check_len};

/// `out = inp · weightᵀ + bias` (`bias` broadcast over rows; `None` means no bias).
pub fn linear_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<(), TensorError> {
    const OP: &str = "linear_forward";
    check_len(OP, "out", out.len(), rows * out_dim)?;
    check_len(OP, "inp", inp.len(), rows * in_dim)?;
    check_len(OP, "weight", weight.len(), out_dim * in_dim)?;
    let beta = if let Some(bias) = bias {
        check_len(OP, "bias", bias.len(), out_dim)?;
        if out_dim > 0 {
            out.par_chunks_mut(out_dim)
                .with_min_len(64)
                .for_each(|row| row.copy_from_slice(bias));
        }
        T::one()
    } else {
        T::zero()
    };
    gemm(
        T::one(),
        MatRef::new(inp, rows, in_dim),
        MatRef::new(weight, out_dim, in_dim).t(),
        beta,
        MatMut::new(out, rows, out_dim),
    )
}

/// Adds the gradients of a linear layer: `dinp += dout · W`, `dweight += doutᵀ · inp`,
/// `dbias += Σ_rows dout`. Pass `None` for `dinp` when the input needs no gradient (the first
/// layer) and for `dbias` when the layer has no bias.
pub fn linear_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<(), TensorError> {
    const OP: &str = "linear_backward";
    check_len(OP, "dout", dout.len(), rows * out_dim)?;
    check_len(OP, "inp", inp.len(), rows * in_dim)?;
    check_len(OP, "weight", weight.len(), out_dim * in_dim)?;
    check_len(OP, "dweight", dweight.len(), out_dim * in_dim)?;
    if let Some(d) = &dinp {
        check_len(OP, "dinp", d.len(), rows * in_dim)?;
    }
    if let Some(d) = &dbias {
        check_len(OP, "dbias", d.len(), out_dim)?;
    }
    // The two products have the same cost and share nothing written: run them side by side.
    let (r1, r2) = rayon::join(
        || match dinp {
            Some(dinp) => gemm(
                T::one(),
                MatRef::new(dout, rows, out_dim),
                MatRef::new(weight, out_dim, in_dim),
                T::one(),
                MatMut::new(dinp, rows, in_dim),
            ),
            None => Ok(()),
        },
        || {
            if let Some(dbias) = dbias {
                column_sums_add(dbias, dout, rows, out_dim);
            }
            gemm(
                T::one(),
                MatRef::new(dout, rows, out_dim).t(),
                MatRef::new(inp, rows, in_dim),
                T::one(),
                MatMut::new(dweight, out_dim, in_dim),
            )
        },
    );
    r1?;
    r2?;
    Ok(())
}

/// `acc[j] += Σ_r x[r, j]`, parallel over column blocks so the sum order is fixed.
pub(crate) fn column_sums_add<T: Float>(acc: &mut [T], x: &[T], rows: usize, cols: usize) {
    const BLOCK: usize = 64;
    acc.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, acc)| {
        let c0 = bi * BLOCK;
        for r in 0..rows {
            let row = &x[r * cols + c0..r * cols + c0 + acc.len()];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    fn loss(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        g: &[f64],
        rows: usize,
        i: usize,
        o: usize,
        use_bias: bool,
    ) -> f64 {
        let mut out = vec![0.0; rows * o];
        linear_forward(&mut out, x, w, use_bias.then_some(b), rows, i, o).unwrap();
        dot(&out, g)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn finite_differences(rows in 1usize..6, i in 1usize..7, o in 1usize..7, use_bias: bool, seed: u64) {
            let mut r = TestRng::new(seed);
            let (x, w, b, g) = (r.vec(rows * i), r.vec(o * i), r.vec(o), r.vec(rows * o));
            let (dx0, dw0, db0) = (r.vec(rows * i), r.vec(o * i), r.vec(o));
            let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
            linear_backward(Some(&mut dx), &mut dw, use_bias.then_some(&mut db[..]), &g, &x, &w, rows, i, o).unwrap();
            assert_close(&added(&dx, &dx0), &numeric_grad(&x, |x| loss(x, &w, &b, &g, rows, i, o, use_bias)), 1e-7);
            assert_close(&added(&dw, &dw0), &numeric_grad(&w, |w| loss(&x, w, &b, &g, rows, i, o, use_bias)), 1e-7);
            if use_bias {
                assert_close(&added(&db, &db0), &numeric_grad(&b, |b| loss(&x, &w, b, &g, rows, i, o, true)), 1e-7);
            } else {
                assert_eq!(db, db0);
            }
        }
    }

    #[test]
    fn forward_value() {
        // [1 2] · [[1 0] [0 1] [1 1]]ᵀ + [0 0 1] = [1 2 4]
        let mut out = [0.0f32; 3];
        linear_forward(
            &mut out,
            &[1.0, 2.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            Some(&[0.0, 0.0, 1.0]),
            1,
            2,
            3,
        )
        .unwrap();
        assert_eq!(out, [1.0, 2.0, 4.0]);
        assert!(linear_forward(&mut out, &[1.0], &[0.0; 6], None, 1, 2, 3).is_err());
    }
}
