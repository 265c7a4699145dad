//! Softmax cross-entropy of scaled cosines, `Σ_i −log softmax(τ · q̂_i · T̂ᵀ)[target_i]`: the engine of the
//! contrastive objective (queries against positives and negatives).
//!
//! The `r × m` logit matrix is never held whole: query rows are processed in blocks of [`BLOCK`] rows, each block's
//! logits come from one GEMM, are turned into `dL/dlogits` in place (a full row is in the block, so its log-sum-exp is
//! exact), and feed the two backward GEMMs at once (`dQ̂_b = τ G_b T̂`, `dT̂ += τ G_bᵀ Q̂_b`). Memory is `BLOCK × m` per
//! thread. Threads take contiguous runs of blocks, each with its own `dT̂` accumulator, summed in a fixed order.
//! A row's exponentials are summed in `f64` after subtracting its maximum.
//!
//! A [`CandidateMask`] leaves some candidates out of some queries' softmaxes (texts known to be positives of the
//! query, other than its target): they are skipped in the maximum and the sum and get a zero gradient. Queries with
//! nothing to leave out take exactly the unmasked path, so a batch without duplicates gives the same bits.

use std::collections::HashMap;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;

use crate::Real;

const BLOCK: usize = 256;
/// Below this many multiply-adds per GEMM the problem runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 21;

/// Which candidates each query leaves out of its softmax, from text identities. Query `k` leaves out every candidate
/// (other than its target) whose text is the query's own text or a positive of a query holding that same text (its
/// own positive's text included): such a candidate is a known positive, not a negative.
pub(crate) struct CandidateMask {
    /// Text identity of each candidate column.
    cand: Vec<u64>,
    /// Per query: the index of its query-text group in `sets`, or `None` when it leaves nothing out.
    group: Vec<Option<usize>>,
    /// Per query-text group: the sorted, deduplicated identities its queries leave out.
    sets: Vec<Vec<u64>>,
}

impl CandidateMask {
    /// `query[k]`, `positive[k]`: the text identities of query `k` and of its target (candidate column `k`);
    /// `cand`: those of all candidate columns. `None` when no query has anything to leave out.
    pub(crate) fn new(query: &[u64], positive: &[u64], cand: Vec<u64>) -> Option<Self> {
        let mut group_of: HashMap<u64, usize> = HashMap::new();
        let mut sets: Vec<Vec<u64>> = Vec::new();
        let group: Vec<usize> = query
            .iter()
            .zip(positive)
            .map(|(&q, &p)| {
                let g = *group_of.entry(q).or_insert_with(|| {
                    sets.push(vec![q]);
                    sets.len() - 1
                });
                sets[g].push(p);
                g
            })
            .collect();
        for s in &mut sets {
            s.sort_unstable();
            s.dedup();
        }
        let mut count: HashMap<u64, usize> = HashMap::new();
        for &c in &cand {
            *count.entry(c).or_insert(0) += 1;
        }
        // The target is one candidate whose identity is in the query's set; anything beyond it is left out.
        let group: Vec<Option<usize>> = group
            .into_iter()
            .map(|g| {
                let hits: usize = sets[g].iter().map(|id| count.get(id).copied().unwrap_or(0)).sum();
                (hits > 1).then_some(g)
            })
            .collect();
        group
            .iter()
            .any(Option::is_some)
            .then_some(Self { cand, group, sets })
    }

    fn set(&self, query: usize) -> Option<&[u64]> {
        self.group[query].map(|g| &self.sets[g][..])
    }
}

/// Returns `Σ_i loss_i` (unweighted), query `i`'s target being candidate `i`; writes `weight · dL/dq̂` into `dq`
/// (overwriting) and adds `weight · dL/dt̂` into `dt`. `q`, `t`, `dq` are standard layout.
pub(crate) fn softmax_ce<F: Real>(
    q: &ArrayView2<'_, F>,
    t: &ArrayView2<'_, F>,
    mask: Option<&CandidateMask>,
    tau: f64,
    weight: f64,
    dq: &mut Array2<F>,
    dt: &mut Array2<F>,
) -> f64 {
    let (r, d) = q.dim();
    let m = t.nrows();
    if r == 0 {
        return 0.0;
    }
    let threads = if r * m * d < PARALLEL_MIN_WORK {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    let rows_per = r.div_ceil(threads);
    let dq_flat = dq.as_slice_mut().expect("fresh array");
    let tau_f = F::of(tau);

    let process = |c: usize, dq_chunk: &mut [F]| -> (f64, Array2<F>) {
        let r0 = c * rows_per;
        let rn = dq_chunk.len() / d;
        let mut acc = Array2::<F>::zeros((m, d));
        let mut logits = Array2::<F>::zeros((BLOCK.min(rn), m));
        let mut loss = 0.0f64;
        for b0 in (0..rn).step_by(BLOCK) {
            let bn = BLOCK.min(rn - b0);
            let qb = q.slice(s![r0 + b0..r0 + b0 + bn, ..]);
            let mut sb = logits.slice_mut(s![..bn, ..]);
            general_mat_mul(tau_f, &qb, &t.t(), F::zero(), &mut sb);
            for (li, mut srow) in sb.rows_mut().into_iter().enumerate() {
                let row = srow.as_slice_mut().expect("rows of a standard-layout block");
                let r = r0 + b0 + li;
                let tr = r;
                loss += match mask.and_then(|m| m.set(r).map(|set| (m, set))) {
                    Some((m, set)) => ce_row(row, tr, weight, |c| {
                        c != tr && set.binary_search(&m.cand[c]).is_ok()
                    }),
                    None => ce_row(row, tr, weight, |_| false),
                };
            }
            let mut dqb = ArrayViewMut2::from_shape((bn, d), &mut dq_chunk[b0 * d..(b0 + bn) * d])
                .expect("bn * d elements");
            general_mat_mul(tau_f, &sb, t, F::zero(), &mut dqb);
            general_mat_mul(tau_f, &sb.t(), &qb, F::one(), &mut acc);
        }
        (loss, acc)
    };
    let parts: Vec<(f64, Array2<F>)> = if threads == 1 {
        vec![process(0, dq_flat)]
    } else {
        dq_flat
            .par_chunks_mut(rows_per * d)
            .enumerate()
            .map(|(c, chunk)| process(c, chunk))
            .collect()
    };

    let mut total = 0.0;
    for (l, acc) in parts {
        total += l;
        *dt += &acc;
    }
    total
}

/// One query row: turns its logits into `weight · (softmax − onehot(target))` in place and returns
/// `logsumexp − logit[target]`. Columns `excluded` (never the target) are left out of the softmax and get 0.
#[inline]
fn ce_row<F: Real>(row: &mut [F], target: usize, weight: f64, excluded: impl Fn(usize) -> bool) -> f64 {
    let st = row[target];
    let mut mx = F::neg_infinity();
    for (c, &v) in row.iter().enumerate() {
        if v > mx && !excluded(c) {
            mx = v;
        }
    }
    let mut sum = 0.0f64;
    for (c, v) in row.iter_mut().enumerate() {
        if excluded(c) {
            *v = F::zero();
            continue;
        }
        let e = (*v - mx).exp();
        *v = e;
        sum += e.f64();
    }
    let scale = F::of(weight / sum);
    for v in row.iter_mut() {
        *v *= scale;
    }
    row[target] -= F::of(weight);
    mx.f64() + sum.ln() - st.f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    fn unit_rows(rows: usize, d: usize, seed: u64) -> Array2<f64> {
        let mut s = seed;
        let x = Array2::from_shape_fn((rows, d), |_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        });
        let n: Vec<f64> = x.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
        Array2::from_shape_fn((rows, d), |(i, k)| x[[i, k]] / n[i])
    }

    /// For one query, masking a candidate is the same as removing it: same loss and gradients, and none for it.
    #[test]
    fn masking_a_candidate_equals_removing_it() {
        let (m, d) = (7, 5);
        let q = unit_rows(1, d, 3);
        let t = unit_rows(m, d, 4);
        // Candidates 2 and 5 hold the target's text; 4 holds the query's.
        let cand = vec![10u64, 11, 10, 12, 20, 10, 13];
        let mask = CandidateMask::new(&[20], &[10], cand).expect("something to leave out");
        let removed = [2usize, 4, 5];
        let kept: Vec<usize> = (0..m).filter(|c| !removed.contains(c)).collect();
        let t_kept = t.select(Axis(0), &kept);

        let (mut dq, mut dt) = (Array2::zeros((1, d)), Array2::zeros((m, d)));
        let masked = softmax_ce(&q.view(), &t.view(), Some(&mask), 20.0, 0.7, &mut dq, &mut dt);
        let (mut dq2, mut dt2) = (Array2::zeros((1, d)), Array2::zeros((kept.len(), d)));
        let plain = softmax_ce(&q.view(), &t_kept.view(), None, 20.0, 0.7, &mut dq2, &mut dt2);

        assert!(
            (masked - plain).abs() <= 1e-13 * plain.abs(),
            "{masked} vs {plain}"
        );
        assert!((&dq - &dq2).iter().all(|e| e.abs() < 1e-13));
        for (k, &c) in kept.iter().enumerate() {
            assert!((&dt.row(c) - &dt2.row(k)).iter().all(|e| e.abs() < 1e-13));
        }
        for &c in &removed {
            assert!(dt.row(c).iter().all(|&e| e == 0.0));
        }
    }

    #[test]
    fn distinct_texts_give_no_mask() {
        assert!(CandidateMask::new(&[1, 2], &[3, 4], vec![3, 4, 5, 6]).is_none());
        // A query that repeats its own positive's text leaves nothing out when no other candidate holds it.
        assert!(CandidateMask::new(&[3, 2], &[3, 4], vec![3, 4]).is_none());
        // Two queries with the same text: each one's positive is the other's known positive.
        let m = CandidateMask::new(&[1, 1], &[3, 4], vec![3, 4]).unwrap();
        assert_eq!(m.set(0), Some(&[1, 3, 4][..]));
        assert_eq!(m.set(1), Some(&[1, 3, 4][..]));
    }
}
