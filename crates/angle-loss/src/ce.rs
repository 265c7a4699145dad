//! Softmax cross-entropy of scaled cosines, `Σ_i −log softmax(τ · q̂_i · T̂ᵀ)[target_i]`: the engine of the
//! contrastive objective (queries against positives and negatives).
//!
//! The `r × m` logit matrix is never held whole: query rows are processed in blocks of [`BLOCK`] rows, each block's
//! logits come from one GEMM, are turned into `dL/dlogits` in place (a full row is in the block, so its log-sum-exp is
//! exact), and feed the two backward GEMMs at once (`dQ̂_b = τ G_b T̂`, `dT̂ += τ G_bᵀ Q̂_b`). Memory is `BLOCK × m` per
//! thread. Threads take contiguous runs of blocks, each with its own `dT̂` accumulator, summed in a fixed order.
//! A row's exponentials are summed in `f64` after subtracting its maximum.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;

use crate::Real;

const BLOCK: usize = 256;
/// Below this many multiply-adds per GEMM the problem runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 21;

/// Returns `Σ_i loss_i` (unweighted); writes `weight · dL/dq̂` into `dq` (overwriting) and adds `weight · dL/dt̂` into
/// `dt`. `q`, `t`, `dq` are standard layout.
pub(crate) fn softmax_ce<F: Real>(
    q: &ArrayView2<'_, F>,
    t: &ArrayView2<'_, F>,
    target: &[usize],
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
                loss += ce_row(row, target[r0 + b0 + li], weight);
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
/// `logsumexp − logit[target]`.
fn ce_row<F: Real>(row: &mut [F], target: usize, weight: f64) -> f64 {
    let st = row[target];
    let mx = row
        .iter()
        .fold(F::neg_infinity(), |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
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
