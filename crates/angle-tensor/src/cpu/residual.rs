//! Residual connection: `out = a + b`.

use rayon::prelude::*;

use super::Float;
use crate::error::{TensorError, check_len};

const CHUNK: usize = 1 << 14;

/// `out = a + b` over `n` elements.
pub fn residual_forward<T: Float>(out: &mut [T], a: &[T], b: &[T], n: usize) -> Result<(), TensorError> {
    const OP: &str = "residual_forward";
    check_len(OP, "out", out.len(), n)?;
    check_len(OP, "a", a.len(), n)?;
    check_len(OP, "b", b.len(), n)?;
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
    Ok(())
}

/// `da += dout`, `db += dout`.
pub fn residual_backward<T: Float>(
    da: &mut [T],
    db: &mut [T],
    dout: &[T],
    n: usize,
) -> Result<(), TensorError> {
    const OP: &str = "residual_backward";
    check_len(OP, "da", da.len(), n)?;
    check_len(OP, "db", db.len(), n)?;
    check_len(OP, "dout", dout.len(), n)?;
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(da, (db, d))| {
            for ((a, b), &d) in da.iter_mut().zip(db.iter_mut()).zip(d) {
                *a += d;
                *b += d;
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
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn finite_differences(n in 1usize..40, seed: u64) {
            let mut r = TestRng::new(seed);
            let (a, b, g) = (r.vec(n), r.vec(n), r.vec(n));
            let (da0, db0) = (r.vec(n), r.vec(n));
            let (mut da, mut db) = (da0.clone(), db0.clone());
            residual_backward(&mut da, &mut db, &g, n).unwrap();
            let f = |a: &[f64], b: &[f64]| { let mut o = vec![0.0; n]; residual_forward(&mut o, a, b, n).unwrap(); dot(&o, &g) };
            assert_close(&added(&da, &da0), &numeric_grad(&a, |a| f(a, &b)), 1e-7);
            assert_close(&added(&db, &db0), &numeric_grad(&b, |b| f(&a, b)), 1e-7);
        }
    }
}
