//! Grouped-query attention over packed sequences (LLaMA, Mistral, Qwen): `n_heads` query heads share
//! `n_kv_heads` key/value heads (query head `h` reads key/value head `h / (n_heads / n_kv_heads)`),
//! `head_dim` free, causal or bidirectional, softmax scale `1/√head_dim`.
//!
//! `q[N, n_heads·d]`, `k`, `v[N, n_kv_heads·d]` are separate buffers (the BERT path's fused `qkv` op in
//! `attention.rs` is untouched). Sequence `b` owns rows `seq_offsets[b] .. seq_offsets[b+1]` and attends
//! within them; with `causal` token `i` sees tokens `0..=i` of its sequence. `probs` saves the softmax
//! with the same layout as [`super::attention_probs_len`] (masked entries are exactly 0).

use std::ops::Range;

use super::Float;
use super::gemm::{MatMut, MatRef, gemm};
use crate::error::{TensorError, arg_err, check_len};

/// The shape of a grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GqaShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    /// Sliding window: token `i` sees only tokens `j` with `|i - j| <= w` (ModernBERT's local
    /// attention, `w = local_attention / 2`; with `causal` also `j <= i`). `None`: the whole sequence.
    pub window: Option<usize>,
}

fn validate(op: &'static str, s: GqaShape, seq_offsets: &[usize]) -> Result<usize, TensorError> {
    if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return Err(arg_err(
            op,
            "n_kv_heads",
            format!(
                "{} key/value heads do not divide {} query heads",
                s.n_kv_heads, s.n_heads
            ),
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
    Ok(*seq_offsets.last().unwrap_or(&0))
}

/// Buffers that split at a sequence boundary: after `rows` token rows and `probs` softmax elements.
trait SeqSplit: Sized + Send {
    fn split(self, rows: usize, probs: usize) -> (Self, Self);
}

/// What forward writes: the output rows (`qw` wide) and the saved softmax.
struct FwdParts<'a, T> {
    out: &'a mut [T],
    probs: &'a mut [T],
    qw: usize,
}

impl<T: Send> SeqSplit for FwdParts<'_, T> {
    fn split(self, rows: usize, probs: usize) -> (Self, Self) {
        let (o0, o1) = self.out.split_at_mut(rows * self.qw);
        let (p0, p1) = self.probs.split_at_mut(probs);
        let qw = self.qw;
        (
            FwdParts {
                out: o0,
                probs: p0,
                qw,
            },
            FwdParts {
                out: o1,
                probs: p1,
                qw,
            },
        )
    }
}

/// What backward writes (the three gradients and the scratch) and the softmax it reads.
struct BwdParts<'a, T> {
    dq: &'a mut [T],
    dk: &'a mut [T],
    dv: &'a mut [T],
    scratch: &'a mut [T],
    probs: &'a [T],
    qw: usize,
    kw: usize,
}

impl<T: Send + Sync> SeqSplit for BwdParts<'_, T> {
    fn split(self, rows: usize, probs: usize) -> (Self, Self) {
        let (qw, kw) = (self.qw, self.kw);
        let (dq0, dq1) = self.dq.split_at_mut(rows * qw);
        let (dk0, dk1) = self.dk.split_at_mut(rows * kw);
        let (dv0, dv1) = self.dv.split_at_mut(rows * kw);
        let (s0, s1) = self.scratch.split_at_mut(probs);
        let (p0, p1) = self.probs.split_at(probs);
        let part = |dq, dk, dv, scratch, probs| BwdParts {
            dq,
            dk,
            dv,
            scratch,
            probs,
            qw,
            kw,
        };
        (part(dq0, dk0, dv0, s0, p0), part(dq1, dk1, dv1, s1, p1))
    }
}

/// Runs `f(b, parts_b)` for every sequence `b` in `seqs`, in parallel, where `parts_b` is sequence `b`'s
/// piece of the buffers. Halving with `rayon::join` keeps the pieces on the stack, so a call allocates
/// nothing (a list of per-sequence slices would be an allocation per call, every layer and step).
fn par_seqs<P, F>(
    seq_offsets: &[usize],
    n_heads: usize,
    seqs: Range<usize>,
    parts: P,
    f: &F,
) -> Result<(), TensorError>
where
    P: SeqSplit,
    F: Fn(usize, P) -> Result<(), TensorError> + Sync,
{
    match seqs.len() {
        0 => Ok(()),
        1 => f(seqs.start, parts),
        len => {
            let mid = seqs.start + len / 2;
            let rows = seq_offsets[mid] - seq_offsets[seqs.start];
            let probs = (seqs.start..mid)
                .map(|b| n_heads * (seq_offsets[b + 1] - seq_offsets[b]).pow(2))
                .sum();
            let (lo, hi) = parts.split(rows, probs);
            let (a, b) = rayon::join(
                || par_seqs(seq_offsets, n_heads, seqs.start..mid, lo, f),
                || par_seqs(seq_offsets, n_heads, mid..seqs.end, hi, f),
            );
            a.and(b)
        }
    }
}

/// Row-wise softmax of a `len x len` block, row `i` over the columns its mask leaves (the rest 0):
/// `0..=i` when causal, within `window` of `i` when windowed.
fn softmax_rows<T: Float>(p: &mut [T], len: usize, causal: bool, window: Option<usize>) {
    for (i, row) in p.chunks_exact_mut(len).enumerate() {
        let lo = window.map_or(0, |w| i.saturating_sub(w));
        let hi = match (causal, window) {
            (true, _) => i + 1,
            (false, Some(w)) => (i + w + 1).min(len),
            (false, None) => len,
        };
        let (head, rest) = row.split_at_mut(hi);
        rest.fill(T::zero());
        let (masked, live) = head.split_at_mut(lo);
        masked.fill(T::zero());
        let max = live.iter().copied().fold(T::neg_infinity(), T::max);
        for v in live.iter_mut() {
            *v = (*v - max).exp_();
        }
        let inv = T::one() / live.iter().copied().sum::<T>();
        for v in live.iter_mut() {
            *v *= inv;
        }
    }
}

/// `out[N, n_heads·d] = softmax(Q Kᵀ/√d (+ causal mask)) V` per sequence and head; saves the softmax in
/// `probs` (`attention_probs_len(seq_offsets, n_heads)` elements).
pub fn gqa_attention_forward<T: Float>(
    out: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    seq_offsets: &[usize],
    shape: GqaShape,
) -> Result<(), TensorError> {
    const OP: &str = "gqa_attention_forward";
    let rows = validate(OP, shape, seq_offsets)?;
    let GqaShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
        causal,
        window,
    } = shape;
    let (qw, kw) = (n_heads * d, n_kv_heads * d);
    check_len(OP, "q", q.len(), rows * qw)?;
    check_len(OP, "k", k.len(), rows * kw)?;
    check_len(OP, "v", v.len(), rows * kw)?;
    check_len(OP, "out", out.len(), rows * qw)?;
    check_len(
        OP,
        "probs",
        probs.len(),
        super::attention_probs_len(seq_offsets, n_heads),
    )?;
    if qw == 0 {
        return Ok(());
    }
    let group = n_heads / n_kv_heads;
    let scale = T::of(1.0 / (d as f64).sqrt());
    let seqs = 0..seq_offsets.len() - 1;
    let parts = FwdParts { out, probs, qw };
    par_seqs(
        seq_offsets,
        n_heads,
        seqs,
        parts,
        &|b, FwdParts { out, probs, .. }| {
            let (r0, r1) = (seq_offsets[b], seq_offsets[b + 1]);
            let len = r1 - r0;
            let (q, k, v) = (&q[r0 * qw..r1 * qw], &k[r0 * kw..r1 * kw], &v[r0 * kw..r1 * kw]);
            for h in 0..n_heads {
                let g = h / group;
                let qh = MatRef::strided(&q[h * d..], len, d, qw, 1);
                let kh = MatRef::strided(&k[g * d..], len, d, kw, 1);
                let vh = MatRef::strided(&v[g * d..], len, d, kw, 1);
                let p = &mut probs[h * len * len..(h + 1) * len * len];
                gemm(scale, qh, kh.t(), T::zero(), MatMut::new(p, len, len))?;
                softmax_rows(p, len, causal, window);
                let o = MatMut::strided(&mut out[h * d..], len, d, qw, 1);
                gemm(T::one(), MatRef::new(p, len, len), vh, T::zero(), o)?;
            }
            Ok(())
        },
    )
}

/// Adds the gradients with respect to `q`, `k`, `v` from `dout[N, n_heads·d]` and the forward's `probs`.
/// `scratch` (`attention_probs_len` elements) is overwritten.
pub fn gqa_attention_backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    seq_offsets: &[usize],
    shape: GqaShape,
) -> Result<(), TensorError> {
    const OP: &str = "gqa_attention_backward";
    let rows = validate(OP, shape, seq_offsets)?;
    let GqaShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
        ..
    } = shape;
    let (qw, kw) = (n_heads * d, n_kv_heads * d);
    for (name, len, want) in [
        ("q", q.len(), rows * qw),
        ("k", k.len(), rows * kw),
        ("v", v.len(), rows * kw),
        ("dq", dq.len(), rows * qw),
        ("dk", dk.len(), rows * kw),
        ("dv", dv.len(), rows * kw),
        ("dout", dout.len(), rows * qw),
    ] {
        check_len(OP, name, len, want)?;
    }
    let plen = super::attention_probs_len(seq_offsets, n_heads);
    check_len(OP, "probs", probs.len(), plen)?;
    check_len(OP, "scratch", scratch.len(), plen)?;
    if qw == 0 {
        return Ok(());
    }
    let group = n_heads / n_kv_heads;
    let scale = T::of(1.0 / (d as f64).sqrt());
    let seqs = 0..seq_offsets.len() - 1;
    let parts = BwdParts {
        dq,
        dk,
        dv,
        scratch,
        probs,
        qw,
        kw,
    };
    par_seqs(seq_offsets, n_heads, seqs, parts, &|b, p: BwdParts<'_, T>| {
        let BwdParts {
            dq,
            dk,
            dv,
            scratch,
            probs,
            ..
        } = p;
        let (r0, r1) = (seq_offsets[b], seq_offsets[b + 1]);
        let len = r1 - r0;
        let (q, k, v) = (&q[r0 * qw..r1 * qw], &k[r0 * kw..r1 * kw], &v[r0 * kw..r1 * kw]);
        let dout = &dout[r0 * qw..r1 * qw];
        for h in 0..n_heads {
            let g = h / group;
            let qh = MatRef::strided(&q[h * d..], len, d, qw, 1);
            let kh = MatRef::strided(&k[g * d..], len, d, kw, 1);
            let vh = MatRef::strided(&v[g * d..], len, d, kw, 1);
            let dy = MatRef::strided(&dout[h * d..], len, d, qw, 1);
            let p = &probs[h * len * len..(h + 1) * len * len];
            let w = &mut scratch[h * len * len..(h + 1) * len * len];
            // dV += Pᵀ dY
            gemm(
                T::one(),
                MatRef::new(p, len, len).t(),
                dy,
                T::one(),
                MatMut::strided(&mut dv[g * d..], len, d, kw, 1),
            )?;
            // dP = dY Vᵀ; dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d (masked entries have P = 0)
            gemm(T::one(), dy, vh.t(), T::zero(), MatMut::new(w, len, len))?;
            for (wr, pr) in w.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
                let c: T = wr.iter().zip(pr).map(|(&w, &p)| w * p).sum();
                for (wv, &p) in wr.iter_mut().zip(pr) {
                    *wv = p * (*wv - c) * scale;
                }
            }
            let ds = MatRef::new(&*w, len, len);
            gemm(
                T::one(),
                ds,
                kh,
                T::one(),
                MatMut::strided(&mut dq[h * d..], len, d, qw, 1),
            )?;
            gemm(
                T::one(),
                ds.t(),
                qh,
                T::one(),
                MatMut::strided(&mut dk[g * d..], len, d, kw, 1),
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::attention_probs_len;
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn finite_differences(lens in proptest::collection::vec(1usize..6, 1..4), nkv in 1usize..3, group in 1usize..3, d in 1usize..5, causal: bool, window in proptest::option::of(0usize..4), seed: u64) {
            let shape = GqaShape { n_heads: nkv * group, n_kv_heads: nkv, head_dim: d, causal, window };
            let offs = offsets(&lens);
            let rows = *offs.last().unwrap();
            let (qw, kw) = (shape.n_heads * d, nkv * d);
            let mut r = TestRng::new(seed);
            let q: Vec<f64> = r.vec(rows * qw).iter().map(|x| 2.0 * x).collect();
            let k: Vec<f64> = r.vec(rows * kw).iter().map(|x| 2.0 * x).collect();
            let v = r.vec(rows * kw);
            let g = r.vec(rows * qw);
            let plen = attention_probs_len(&offs, shape.n_heads);
            let f = |q: &[f64], k: &[f64], v: &[f64]| {
                let (mut o, mut p) = (vec![0.0; rows * qw], vec![0.0; plen]);
                gqa_attention_forward(&mut o, &mut p, q, k, v, &offs, shape).unwrap();
                dot(&o, &g)
            };
            let (mut o, mut p) = (vec![0.0; rows * qw], vec![0.0; plen]);
            gqa_attention_forward(&mut o, &mut p, &q, &k, &v, &offs, shape).unwrap();
            let (dq0, dk0, dv0) = (r.vec(rows * qw), r.vec(rows * kw), r.vec(rows * kw));
            let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
            let mut s = vec![0.0; plen];
            gqa_attention_backward(&mut dq, &mut dk, &mut dv, &mut s, &g, &q, &k, &v, &p, &offs, shape).unwrap();
            assert_close(&added(&dq, &dq0), &numeric_grad(&q, |x| f(x, &k, &v)), 1e-7);
            assert_close(&added(&dk, &dk0), &numeric_grad(&k, |x| f(&q, x, &v)), 1e-7);
            assert_close(&added(&dv, &dv0), &numeric_grad(&v, |x| f(&q, &k, x)), 1e-7);
        }

        /// With one key/value head per query head and no mask it is the BERT op.
        #[test]
        fn equals_multi_head_attention(lens in proptest::collection::vec(1usize..6, 1..4), nh in 1usize..3, d in 1usize..4, seed: u64) {
            let hidden = nh * d;
            let offs = offsets(&lens);
            let rows = *offs.last().unwrap();
            let mut r = TestRng::new(seed);
            let qkv = r.vec(rows * 3 * hidden);
            let plen = attention_probs_len(&offs, nh);
            let (mut o1, mut p1) = (vec![0.0; rows * hidden], vec![0.0; plen]);
            crate::cpu::attention_forward(&mut o1, &mut p1, &mut [], &qkv, &offs, nh, hidden, None).unwrap();
            let split = |c: usize| -> Vec<f64> { qkv.chunks(3 * hidden).flat_map(|row| row[c * hidden..(c + 1) * hidden].to_vec()).collect() };
            let (mut o2, mut p2) = (vec![0.0; rows * hidden], vec![0.0; plen]);
            let shape = GqaShape { n_heads: nh, n_kv_heads: nh, head_dim: d, causal: false, window: None };
            gqa_attention_forward(&mut o2, &mut p2, &split(0), &split(1), &split(2), &offs, shape).unwrap();
            assert_close(&o2, &o1, 1e-12);
        }
    }

    #[test]
    fn causal_first_token_copies_its_value() {
        let shape = GqaShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
            causal: true,
            window: None,
        };
        let mut r = TestRng::new(3);
        let (q, k, v) = (r.vec(3 * 4), r.vec(3 * 2), r.vec(3 * 2));
        let offs = [0, 3];
        let (mut o, mut p) = (vec![0.0; 12], vec![0.0; attention_probs_len(&offs, 2)]);
        gqa_attention_forward(&mut o, &mut p, &q, &k, &v, &offs, shape).unwrap();
        assert_eq!(&o[0..2], &v[0..2]);
        assert_eq!(&o[2..4], &v[0..2]);
        assert_eq!(p[1], 0.0);
        let bad = GqaShape {
            n_kv_heads: 3,
            ..shape
        };
        assert!(gqa_attention_forward(&mut o, &mut p, &q, &k, &v, &offs, bad).is_err());
    }

    #[test]
    fn sliding_window_masks_by_distance() {
        let shape = GqaShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
            causal: false,
            window: Some(1),
        };
        let mut r = TestRng::new(5);
        let (q, k, v) = (r.vec(5 * 2), r.vec(5 * 2), r.vec(5 * 2));
        let offs = [0, 5];
        let (mut o, mut p) = (vec![0.0; 10], vec![0.0; 25]);
        gqa_attention_forward(&mut o, &mut p, &q, &k, &v, &offs, shape).unwrap();
        for i in 0..5 {
            let row = &p[i * 5..(i + 1) * 5];
            for (j, &x) in row.iter().enumerate() {
                assert_eq!(x == 0.0, i.abs_diff(j) > 1, "row {i} col {j}: {x}");
            }
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}
