//! BERT embeddings: `out[t] = word[ids[t]] + pos[positions[t]] + typ[type_ids[t]]` over the
//! `n` packed tokens (positions restart at 0 in each sequence; the caller supplies them).
//! The layer norm and dropout that follow in BERT are separate ops.

use rayon::prelude::*;

use super::Float;
use crate::error::{TensorError, check_len};

fn check_ids(
    op: &'static str,
    tensor: &'static str,
    ids: &[u32],
    n: usize,
    table_len: usize,
    hidden: usize,
) -> Result<(), TensorError> {
    check_len(op, tensor, ids.len(), n)?;
    let size = table_len.checked_div(hidden).unwrap_or(0);
    if let Some((pos, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= size) {
        return Err(TensorError::Index {
            op,
            tensor,
            pos,
            index: id as usize,
            size,
        });
    }
    Ok(())
}

fn check_table(op: &'static str, tensor: &'static str, len: usize, hidden: usize) -> Result<(), TensorError> {
    if hidden == 0 || len.is_multiple_of(hidden) {
        Ok(())
    } else {
        Err(TensorError::Len {
            op,
            tensor,
            expected: len / hidden * hidden,
            got: len,
        })
    }
}

/// Sums the three embeddings of each token into `out[n, hidden]`. Tables are row-major
/// `[vocab, hidden]`, `[max_positions, hidden]`, `[type_vocab, hidden]`.
pub fn embedding_forward<T: Float>(
    out: &mut [T],
    ids: &[u32],
    positions: &[u32],
    type_ids: &[u32],
    word: &[T],
    pos: &[T],
    typ: &[T],
    n: usize,
    hidden: usize,
) -> Result<(), TensorError> {
    const OP: &str = "embedding_forward";
    check_len(OP, "out", out.len(), n * hidden)?;
    check_table(OP, "word", word.len(), hidden)?;
    check_table(OP, "pos", pos.len(), hidden)?;
    check_table(OP, "typ", typ.len(), hidden)?;
    check_ids(OP, "ids", ids, n, word.len(), hidden)?;
    check_ids(OP, "positions", positions, n, pos.len(), hidden)?;
    check_ids(OP, "type_ids", type_ids, n, typ.len(), hidden)?;
    if hidden == 0 {
        return Ok(());
    }
    out.par_chunks_mut(hidden)
        .enumerate()
        .with_min_len(16)
        .for_each(|(t, o)| {
            let w = &word[ids[t] as usize * hidden..][..hidden];
            let p = &pos[positions[t] as usize * hidden..][..hidden];
            let y = &typ[type_ids[t] as usize * hidden..][..hidden];
            for (((o, &w), &p), &y) in o.iter_mut().zip(w).zip(p).zip(y) {
                *o = w + p + y;
            }
        });
    Ok(())
}

/// Scatter-adds `dout[n, hidden]` into the three tables' gradients. Tokens are visited in
/// order, so repeated ids accumulate deterministically.
pub fn embedding_backward<T: Float>(
    dword: &mut [T],
    dpos: &mut [T],
    dtyp: &mut [T],
    dout: &[T],
    ids: &[u32],
    positions: &[u32],
    type_ids: &[u32],
    n: usize,
    hidden: usize,
) -> Result<(), TensorError> {
    const OP: &str = "embedding_backward";
    check_len(OP, "dout", dout.len(), n * hidden)?;
    check_table(OP, "dword", dword.len(), hidden)?;
    check_table(OP, "dpos", dpos.len(), hidden)?;
    check_table(OP, "dtyp", dtyp.len(), hidden)?;
    check_ids(OP, "ids", ids, n, dword.len(), hidden)?;
    check_ids(OP, "positions", positions, n, dpos.len(), hidden)?;
    check_ids(OP, "type_ids", type_ids, n, dtyp.len(), hidden)?;
    if hidden == 0 {
        return Ok(());
    }
    for (table, index) in [(dword, ids), (dpos, positions), (dtyp, type_ids)] {
        for (t, &id) in index.iter().enumerate() {
            let d = &dout[t * hidden..][..hidden];
            for (g, &v) in table[id as usize * hidden..][..hidden].iter_mut().zip(d) {
                *g += v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn finite_differences(n in 1usize..12, hidden in 1usize..6, seed: u64) {
            let (vocab, maxpos, ntype) = (5, 12, 2);
            let mut r = TestRng::new(seed);
            let ids: Vec<u32> = (0..n).map(|_| r.below(vocab) as u32).collect();
            let positions: Vec<u32> = (0..n).map(|t| (t % 7) as u32).collect();
            let types: Vec<u32> = (0..n).map(|_| r.below(ntype) as u32).collect();
            let (w, p, y, g) = (r.vec(vocab * hidden), r.vec(maxpos * hidden), r.vec(ntype * hidden), r.vec(n * hidden));
            let (dw0, dp0, dy0) = (r.vec(vocab * hidden), r.vec(maxpos * hidden), r.vec(ntype * hidden));
            let (mut dw, mut dp, mut dy) = (dw0.clone(), dp0.clone(), dy0.clone());
            embedding_backward(&mut dw, &mut dp, &mut dy, &g, &ids, &positions, &types, n, hidden).unwrap();
            let f = |w: &[f64], p: &[f64], y: &[f64]| {
                let mut o = vec![0.0; n * hidden];
                embedding_forward(&mut o, &ids, &positions, &types, w, p, y, n, hidden).unwrap();
                dot(&o, &g)
            };
            assert_close(&added(&dw, &dw0), &numeric_grad(&w, |w| f(w, &p, &y)), 1e-7);
            assert_close(&added(&dp, &dp0), &numeric_grad(&p, |p| f(&w, p, &y)), 1e-7);
            assert_close(&added(&dy, &dy0), &numeric_grad(&y, |y| f(&w, &p, y)), 1e-7);
        }
    }

    #[test]
    fn rejects_out_of_range_id() {
        let mut out = [0.0f32; 2];
        let e =
            embedding_forward(&mut out, &[3], &[0], &[0], &[0.0; 6], &[0.0; 2], &[0.0; 2], 1, 2).unwrap_err();
        assert!(
            matches!(
                e,
                TensorError::Index {
                    tensor: "ids",
                    index: 3,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
    }
}
