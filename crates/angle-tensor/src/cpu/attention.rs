//! Multi-head self-attention over packed sequences.
//!
//! `qkv[N, 3H]` holds each token's query, key and value side by side (`q | k | v`, head `h` in
//! columns `h*d .. (h+1)*d` of each, `d = H / n_heads`). Sequence `b` owns token rows
//! `seq_offsets[b] .. seq_offsets[b+1]` and attends only within them: the sequence lengths *are*
//! the padding mask (no padded positions exist, so none need masking).
//!
//! `probs` saves the softmax of each (sequence, head): sequence `b` occupies
//! `n_heads * len_b²` elements starting at `Σ_{b'<b} n_heads * len_b'²`, head-major, then
//! query row, then key column ([`attention_probs_len`] gives the total). Attention-probability
//! dropout (BERT's `attention_probs_dropout_prob`, train mode) drops element `i` of that buffer
//! with the counter-based mask `rng::keep(seed, i, ..)`; `probs` keeps the pre-dropout values.

use rayon::prelude::*;

use super::Float;
use super::gemm::{MatMut, MatRef, gemm};
use super::simd::multiversion;
use crate::error::{TensorError, arg_err, check_len};
use crate::rng;

/// Dropout on the attention probabilities (train mode); `None` or `p == 0` means none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
    /// Stream seed: use a fresh one per layer and step.
    pub seed: u64,
}

/// Elements of the `probs` (and `scratch`) buffer for these sequences: `Σ_b n_heads * len_b²`.
pub fn attention_probs_len(seq_offsets: &[usize], n_heads: usize) -> usize {
    seq_offsets
        .windows(2)
        .map(|w| n_heads * w[1].saturating_sub(w[0]).pow(2))
        .sum()
}

struct Geometry {
    rows: usize,
    d: usize,
    probs_len: usize,
}

fn validate(
    op: &'static str,
    qkv_len: usize,
    seq_offsets: &[usize],
    n_heads: usize,
    hidden: usize,
) -> Result<Geometry, TensorError> {
    if n_heads == 0 || !hidden.is_multiple_of(n_heads) {
        return Err(arg_err(
            op,
            "n_heads",
            format!("{n_heads} heads do not divide hidden size {hidden}"),
        ));
    }
    if seq_offsets.first() != Some(&0) {
        return Err(arg_err(op, "seq_offsets", "must start with 0"));
    }
    if let Some(w) = seq_offsets.windows(2).find(|w| w[1] < w[0]) {
        return Err(arg_err(
            op,
            "seq_offsets",
            format!("decreasing offsets {} then {}", w[0], w[1]),
        ));
    }
    let rows = *seq_offsets.last().unwrap_or(&0);
    check_len(op, "qkv", qkv_len, rows * 3 * hidden)?;
    Ok(Geometry {
        rows,
        d: hidden / n_heads,
        probs_len: attention_probs_len(seq_offsets, n_heads),
    })
}

fn check_dropout(
    op: &'static str,
    dropout: Option<AttentionDropout>,
) -> Result<Option<AttentionDropout>, TensorError> {
    match dropout {
        Some(dr) if !(0.0..1.0).contains(&dr.p) => Err(arg_err(
            op,
            "dropout",
            format!("drop probability {} is outside [0, 1)", dr.p),
        )),
        Some(dr) if dr.p > 0.0 => Ok(Some(dr)),
        _ => Ok(None),
    }
}

/// Splits `buf` into consecutive pieces of the given lengths.
fn split_by<T>(mut buf: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for len in lens {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        parts.push(head);
        buf = tail;
    }
    parts
}

multiversion! {
    /// Row-wise in-place softmax of a `len x len` block.
    fn softmax_rows<T: Float>(p: &mut [T], len: usize) {
        for row in p.chunks_exact_mut(len) {
            let max = row.iter().copied().fold(T::neg_infinity(), T::max);
            // Separate loops: the exp loop vectorises only without the sum's dependency chain.
            for v in row.iter_mut() {
                *v = (*v - max).exp_();
            }
            let inv = T::one() / row.iter().copied().sum::<T>();
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// `out[N, H] = softmax(Q Kᵀ / √d) V` per sequence and head; saves the softmax in `probs`.
/// `scratch` (`attention_probs_len` elements) holds the dropped-out probabilities when dropout
/// is on; without dropout it is not touched and may be empty.
pub fn attention_forward<T: Float>(
    out: &mut [T],
    probs: &mut [T],
    scratch: &mut [T],
    qkv: &[T],
    seq_offsets: &[usize],
    n_heads: usize,
    hidden: usize,
    dropout: Option<AttentionDropout>,
) -> Result<(), TensorError> {
    const OP: &str = "attention_forward";
    let g = validate(OP, qkv.len(), seq_offsets, n_heads, hidden)?;
    check_len(OP, "out", out.len(), g.rows * hidden)?;
    check_len(OP, "probs", probs.len(), g.probs_len)?;
    let dropout = check_dropout(OP, dropout)?;
    let scratch: &mut [T] = if dropout.is_some() {
        check_len(OP, "scratch", scratch.len(), g.probs_len)?;
        scratch
    } else {
        &mut []
    };
    let (h3, d) = (3 * hidden, g.d);
    let scale = T::of(1.0 / (d as f64).sqrt());
    let lens = || seq_offsets.windows(2).map(|w| w[1] - w[0]);
    let outs = split_by(out, lens().map(|l| l * hidden));
    let ps = split_by(probs, lens().map(|l| n_heads * l * l));
    let mut ss = if dropout.is_some() {
        split_by(scratch, lens().map(|l| n_heads * l * l))
    } else {
        Vec::new()
    };
    ss.resize_with(outs.len(), || &mut []);
    let pbase: Vec<usize> = lens()
        .scan(0, |acc, l| {
            let b = *acc;
            *acc += n_heads * l * l;
            Some(b)
        })
        .collect();
    outs.into_par_iter()
        .zip(ps)
        .zip(ss)
        .enumerate()
        .try_for_each(|(b, ((out, probs), scratch))| {
            let len = seq_offsets[b + 1] - seq_offsets[b];
            let qkv = &qkv[seq_offsets[b] * h3..seq_offsets[b + 1] * h3];
            for h in 0..n_heads {
                let q = MatRef::strided(&qkv[h * d..], len, d, h3, 1);
                let k = MatRef::strided(&qkv[hidden + h * d..], len, d, h3, 1);
                let v = MatRef::strided(&qkv[2 * hidden + h * d..], len, d, h3, 1);
                let p = &mut probs[h * len * len..(h + 1) * len * len];
                gemm(scale, q, k.t(), T::zero(), MatMut::new(p, len, len))?;
                softmax_rows(p, len);
                let o = MatMut::strided(&mut out[h * d..], len, d, hidden, 1);
                if let Some(dr) = dropout {
                    let thr = rng::keep_threshold(dr.p);
                    let s = T::one() / (T::one() - T::of(dr.p));
                    let w = &mut scratch[h * len * len..(h + 1) * len * len];
                    let base = (pbase[b] + h * len * len) as u64;
                    for (i, (w, &p)) in w.iter_mut().zip(p.iter()).enumerate() {
                        *w = if rng::keep(dr.seed, base + i as u64, thr) {
                            p * s
                        } else {
                            T::zero()
                        };
                    }
                    gemm(T::one(), MatRef::new(w, len, len), v, T::zero(), o)?;
                } else {
                    gemm(T::one(), MatRef::new(p, len, len), v, T::zero(), o)?;
                }
            }
            Ok(())
        })
}

/// Adds the gradient with respect to `qkv` into `dqkv[N, 3H]`, from `dout[N, H]`, the forward's
/// `qkv`, `probs` and `dropout`. `scratch` (`attention_probs_len` elements) is overwritten.
pub fn attention_backward<T: Float>(
    dqkv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    qkv: &[T],
    probs: &[T],
    seq_offsets: &[usize],
    n_heads: usize,
    hidden: usize,
    dropout: Option<AttentionDropout>,
) -> Result<(), TensorError> {
    const OP: &str = "attention_backward";
    let g = validate(OP, qkv.len(), seq_offsets, n_heads, hidden)?;
    check_len(OP, "dqkv", dqkv.len(), g.rows * 3 * hidden)?;
    check_len(OP, "dout", dout.len(), g.rows * hidden)?;
    check_len(OP, "probs", probs.len(), g.probs_len)?;
    check_len(OP, "scratch", scratch.len(), g.probs_len)?;
    let dropout = check_dropout(OP, dropout)?;
    let (h3, d) = (3 * hidden, g.d);
    let scale = T::of(1.0 / (d as f64).sqrt());
    let lens = || seq_offsets.windows(2).map(|w| w[1] - w[0]);
    let dqs = split_by(dqkv, lens().map(|l| l * h3));
    let ss = split_by(scratch, lens().map(|l| n_heads * l * l));
    let pbase: Vec<usize> = lens()
        .scan(0, |acc, l| {
            let b = *acc;
            *acc += n_heads * l * l;
            Some(b)
        })
        .collect();
    dqs.into_par_iter()
        .zip(ss)
        .enumerate()
        .try_for_each(|(b, (dqkv, scratch))| {
            let (r0, r1) = (seq_offsets[b], seq_offsets[b + 1]);
            let len = r1 - r0;
            let qkv = &qkv[r0 * h3..r1 * h3];
            let dout = &dout[r0 * hidden..r1 * hidden];
            let probs = &probs[pbase[b]..pbase[b] + n_heads * len * len];
            for h in 0..n_heads {
                let q = MatRef::strided(&qkv[h * d..], len, d, h3, 1);
                let k = MatRef::strided(&qkv[hidden + h * d..], len, d, h3, 1);
                let v = MatRef::strided(&qkv[2 * hidden + h * d..], len, d, h3, 1);
                let dy = MatRef::strided(&dout[h * d..], len, d, hidden, 1);
                let p = &probs[h * len * len..(h + 1) * len * len];
                let w = &mut scratch[h * len * len..(h + 1) * len * len];
                let base = (pbase[b] + h * len * len) as u64;
                let drop = dropout.map(|dr| {
                    (
                        dr.seed,
                        rng::keep_threshold(dr.p),
                        T::one() / (T::one() - T::of(dr.p)),
                    )
                });
                // dV += P_dropᵀ dY
                let dv = MatMut::strided(&mut dqkv[2 * hidden + h * d..], len, d, h3, 1);
                if let Some((seed, thr, s)) = drop {
                    for (i, (w, &p)) in w.iter_mut().zip(p).enumerate() {
                        *w = if rng::keep(seed, base + i as u64, thr) {
                            p * s
                        } else {
                            T::zero()
                        };
                    }
                    gemm(T::one(), MatRef::new(w, len, len).t(), dy, T::one(), dv)?;
                } else {
                    gemm(T::one(), MatRef::new(p, len, len).t(), dy, T::one(), dv)?;
                }
                // dP_drop = dY Vᵀ, then through the mask, the softmax and the 1/√d scale.
                gemm(T::one(), dy, v.t(), T::zero(), MatMut::new(w, len, len))?;
                for (r, (wr, pr)) in w.chunks_exact_mut(len).zip(p.chunks_exact(len)).enumerate() {
                    if let Some((seed, thr, s)) = drop {
                        let rb = base + (r * len) as u64;
                        for (j, wv) in wr.iter_mut().enumerate() {
                            *wv = if rng::keep(seed, rb + j as u64, thr) {
                                *wv * s
                            } else {
                                T::zero()
                            };
                        }
                    }
                    let c: T = wr.iter().zip(pr).map(|(&w, &p)| w * p).sum();
                    for (wv, &p) in wr.iter_mut().zip(pr) {
                        *wv = p * (*wv - c) * scale;
                    }
                }
                let ds = MatRef::new(&*w, len, len);
                gemm(
                    T::one(),
                    ds,
                    k,
                    T::one(),
                    MatMut::strided(&mut dqkv[h * d..], len, d, h3, 1),
                )?;
                gemm(
                    T::one(),
                    ds.t(),
                    q,
                    T::one(),
                    MatMut::strided(&mut dqkv[hidden + h * d..], len, d, h3, 1),
                )?;
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::*;
    use proptest::prelude::*;

    fn offsets(lens: &[usize]) -> Vec<usize> {
        std::iter::once(0)
            .chain(lens.iter().scan(0, |a, &l| {
                *a += l;
                Some(*a)
            }))
            .collect()
    }

    fn loss(
        qkv: &[f64],
        g: &[f64],
        offs: &[usize],
        nh: usize,
        hidden: usize,
        dr: Option<AttentionDropout>,
    ) -> f64 {
        let rows = *offs.last().unwrap();
        let plen = attention_probs_len(offs, nh);
        let (mut out, mut p, mut s) = (vec![0.0; rows * hidden], vec![0.0; plen], vec![0.0; plen]);
        attention_forward(&mut out, &mut p, &mut s, qkv, offs, nh, hidden, dr).unwrap();
        dot(&out, g)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn finite_differences(lens in proptest::collection::vec(1usize..6, 1..4), nh in 1usize..3, d in 1usize..4, drop: bool, seed: u64) {
            let hidden = nh * d;
            let offs = offsets(&lens);
            let rows = *offs.last().unwrap();
            let dr = drop.then_some(AttentionDropout { p: 0.25, seed });
            let mut r = TestRng::new(seed);
            let qkv: Vec<f64> = r.vec(rows * 3 * hidden).iter().map(|v| v * 2.0).collect();
            let g = r.vec(rows * hidden);
            let plen = attention_probs_len(&offs, nh);
            let (mut out, mut p, mut s) = (vec![0.0; rows * hidden], vec![0.0; plen], vec![0.0; plen]);
            attention_forward(&mut out, &mut p, &mut s, &qkv, &offs, nh, hidden, dr).unwrap();
            let d0 = r.vec(rows * 3 * hidden);
            let mut dq = d0.clone();
            attention_backward(&mut dq, &mut s, &g, &qkv, &p, &offs, nh, hidden, dr).unwrap();
            assert_close(&added(&dq, &d0), &numeric_grad(&qkv, |x| loss(x, &g, &offs, nh, hidden, dr)), 1e-7);
        }
    }

    #[test]
    fn single_key_copies_value_and_probs_sum_to_one() {
        // Two sequences of lengths 1 and 3, one head of size 2.
        let offs = [0, 1, 4];
        let mut r = TestRng::new(1);
        let qkv = r.vec(4 * 6);
        let plen = attention_probs_len(&offs, 1);
        assert_eq!(plen, 1 + 9);
        let (mut out, mut p) = (vec![0.0; 8], vec![0.0; plen]);
        attention_forward(&mut out, &mut p, &mut [], &qkv, &offs, 1, 2, None).unwrap();
        assert_eq!(&out[0..2], &qkv[4..6]);
        for row in p[1..].chunks(3) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        }
        assert!(attention_forward(&mut out, &mut p, &mut [], &qkv, &[0, 1, 5], 1, 2, None).is_err());
    }
}
