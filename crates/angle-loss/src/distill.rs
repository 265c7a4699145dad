//! Distillation from a teacher: terms that pull a student's embeddings towards a constant teacher's, with analytic
//! gradients w.r.t. the student. Each `*_into` adds `weight · dL/dstudent` into a caller's buffer and returns `L`.
//!
//! | term | reference | student and teacher rows |
//! | --- | --- | --- |
//! | [`kl_into`] | angle-emb 0.6.1 `AngleTrainer.compute_distillation_loss` (`mse_weight=0`) | `[m, d]` each, divisor `batch` |
//! | [`mse_into`] | `torch.nn.MSELoss()` | `[m, d]` each |
//! | [`margin_mse_into`] | sentence-transformers `MarginMSELoss` (dot product) | `group` rows per example |
//!
//! The teacher is a constant (no gradient). Everything is computed in `f64` (sums included) whatever `F` is, row by
//! row after the checks, and nothing is allocated. Bad input is a [`LossError`], never a panic.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2, Zip};

use crate::{LossError, Real, check};

/// angle-emb's alignment term (`angle_emb/angle.py`, `AngleTrainer.compute_distillation_loss` with
/// `mse_weight=0`): `KLDivLoss(reduction='batchmean')(log_softmax(s/T), softmax(t/T)) · T`, i.e.
///
/// ```text
/// L = T/batch · Σ_rows Σ_c q_c (log q_c − log p_c),   p = softmax(s/T), q = softmax(t/T)   (per row)
/// ```
///
/// Note the factor is `T`, as angle-emb has it, not the `T²` of Hinton et al. The gradient: with
/// `d log p_j / d s_c = (δ_jc − p_c)/T` and `Σ_j q_j = 1`, `d/ds_c Σ_j q_j (log q_j − log p_j) = (p_c − q_c)/T`, so
///
/// ```text
/// dL/ds = T/batch · (p − q)/T = (p − q)/batch
/// ```
///
/// `student` and `teacher` are `[m, d]` with the softmax over each row's `d` entries; `batch` is batchmean's divisor.
/// Pooled outputs: `m` rows and `batch = m`. angle-emb's `teacher_pooling_strategy='all'` (every token's hidden
/// state of the last layer, `[B, L, D]`, where batchmean divides by `B`): pass the real tokens' rows of both models
/// (row for row) and `batch = B`. angle-emb keeps the padding positions in that sum; here the caller leaves them out,
/// so a padded batch gives angle-emb's loss less the padding positions' KL terms (each ≥ 0); unpadded batches agree.
///
/// Log-softmaxes subtract the row maximum. Errors: empty input, shapes that differ, NaN or infinity in either
/// input, `temperature` not finite and positive (angle-emb skips the term for `T ≤ 0`; here it is an error),
/// `batch` 0, `weight` not finite.
pub fn kl_into<F: Real>(
    student: ArrayView2<'_, F>,
    teacher: ArrayView2<'_, F>,
    temperature: F,
    batch: usize,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    check_pair(&student, &teacher, grad)?;
    let t = temperature.f64();
    if !(t.is_finite() && t > 0.0) {
        return Err(LossError::BadParameter {
            name: "temperature",
            value: t,
            why: "must be finite and positive",
        });
    }
    if batch == 0 {
        return Err(LossError::BadParameter {
            name: "batch",
            value: 0.0,
            why: "batchmean's divisor must be at least 1",
        });
    }
    let weight = check::weight("weight", weight)?;
    let inv_t = 1.0 / t;
    let per_row = 1.0 / batch as f64;
    let mut kl = 0.0f64;
    Zip::from(student.rows())
        .and(teacher.rows())
        .and(grad.rows_mut())
        .for_each(|s, q, mut g| {
            let lse_s = log_sum_exp(s, inv_t);
            let lse_q = log_sum_exp(q, inv_t);
            let mut row = 0.0f64;
            for ((&sv, &qv), gv) in s.iter().zip(q.iter()).zip(g.iter_mut()) {
                let lp = sv.f64() * inv_t - lse_s;
                let lq = qv.f64() * inv_t - lse_q;
                let qc = lq.exp();
                // torch's xlogy: a target that underflows to 0 contributes 0.
                row += qc * (lq - lp);
                *gv += F::of(weight * per_row * (lp.exp() - qc));
            }
            kl += row;
        });
    Ok(F::of(t * per_row * kl))
}

/// `log Σ_c exp(x_c · inv_t)`, the maximum subtracted first.
fn log_sum_exp<F: Real>(x: ArrayView1<'_, F>, inv_t: f64) -> f64 {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64() * inv_t));
    m + x.iter().map(|v| (v.f64() * inv_t - m).exp()).sum::<f64>().ln()
}

/// `torch.nn.MSELoss()` (mean over all elements) between student and teacher rows, `[m, d]` each:
/// `L = Σ (s − t)² / (m·d)`, `dL/ds = 2 (s − t) / (m·d)`.
///
/// Errors: empty input, shapes that differ, NaN or infinity in either input, `weight` not finite.
pub fn mse_into<F: Real>(
    student: ArrayView2<'_, F>,
    teacher: ArrayView2<'_, F>,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    check_pair(&student, &teacher, grad)?;
    let weight = check::weight("weight", weight)?;
    let inv_n = 1.0 / student.len() as f64;
    let mut sum = 0.0f64;
    Zip::from(&student).and(&teacher).and(grad).for_each(|&s, &t, g| {
        let diff = s.f64() - t.f64();
        sum += diff * diff;
        *g += F::of(weight * 2.0 * inv_n * diff);
    });
    Ok(F::of(sum * inv_n))
}

/// sentence-transformers' `MarginMSELoss` with its default similarity, the dot product (`pairwise_dot_score`), and
/// the teacher's margins computed from teacher rows.
///
/// Rows are interleaved `group` per example: row `group·k` is query `k`, row `group·k + 1` its positive, rows
/// `group·k + 2 … group·k + group − 1` its negatives (`group − 2 ≥ 1` of them; `group = 3` is format C's
/// `query, positive, negative`). `student` is `[B·group, d]`; `teacher` is `[B·group, d_t]`, the same texts in the
/// same order, and its width `d_t` may differ from the student's (only teacher dot products enter). With
/// `n = group − 2` negatives and `j = 1..n`:
///
/// ```text
/// m_kj = q_k·p_k − q_k·n_kj     (student)         t_kj = the same with teacher rows
/// L    = Σ_kj (m_kj − t_kj)² / (B·n)              (MSELoss over the [B, n] margins, as ST stacks them)
/// r_kj = 2 (m_kj − t_kj) / (B·n):   dL/dq_k = Σ_j r_kj (p_k − n_kj),   dL/dp_k = Σ_j r_kj q_k,   dL/dn_kj = −r_kj q_k
/// ```
///
/// Errors: empty input, row counts that differ, rows not a multiple of `group`, `group < 3`, NaN or infinity in
/// either input, `weight` not finite, `grad` not the student's shape.
pub fn margin_mse_into<F: Real>(
    student: ArrayView2<'_, F>,
    teacher: ArrayView2<'_, F>,
    group: usize,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    matrix("student", &student)?;
    matrix("teacher", &teacher)?;
    if teacher.nrows() != student.nrows() {
        return Err(LossError::RowCount {
            tensor: "teacher",
            got: teacher.nrows(),
            of: "student",
            expected: student.nrows(),
        });
    }
    same_shape("grad", &grad.view(), &student)?;
    if group < 3 {
        return Err(LossError::BadParameter {
            name: "group",
            value: group as f64,
            why: "an example is a query, a positive and at least one negative: group must be at least 3",
        });
    }
    let rows = student.nrows();
    if !rows.is_multiple_of(group) {
        return Err(LossError::RowsNotMultiple {
            rows,
            group,
            layout: "query, positive, negatives",
        });
    }
    let weight = check::weight("weight", weight)?;
    let n_neg = group - 2;
    let inv_n = 1.0 / ((rows / group) * n_neg) as f64;
    let mut sum = 0.0f64;
    for k in 0..rows / group {
        let (q, p) = (group * k, group * k + 1);
        let s_qp = dot(student.row(q), student.row(p));
        let t_qp = dot(teacher.row(q), teacher.row(p));
        // Σ_j r_kj, for the positive's gradient; each negative's and the query's terms are added per negative.
        let mut r_sum = 0.0f64;
        for neg in q + 2..q + group {
            let margin = s_qp - dot(student.row(q), student.row(neg));
            let target = t_qp - dot(teacher.row(q), teacher.row(neg));
            let diff = margin - target;
            sum += diff * diff;
            let r = weight * 2.0 * inv_n * diff;
            r_sum += r;
            // dL/dq_k gets −r_kj · n_kj here and (Σ_j r_kj) · p_k below; dL/dn_kj = −r_kj · q_k.
            for c in 0..student.ncols() {
                let (qv, nv) = (student[[q, c]].f64(), student[[neg, c]].f64());
                grad[[q, c]] += F::of(-r * nv);
                grad[[neg, c]] += F::of(-r * qv);
            }
        }
        for c in 0..student.ncols() {
            let (qv, pv) = (student[[q, c]].f64(), student[[p, c]].f64());
            grad[[q, c]] += F::of(r_sum * pv);
            grad[[p, c]] += F::of(r_sum * qv);
        }
    }
    Ok(F::of(sum * inv_n))
}

fn dot<F: Real>(a: ArrayView1<'_, F>, b: ArrayView1<'_, F>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x.f64() * y.f64()).sum()
}

/// Non-empty and finite, the tensor named in the error.
fn matrix<F: Real>(tensor: &'static str, x: &ArrayView2<'_, F>) -> Result<(), LossError> {
    let (rows, dim) = x.dim();
    if rows == 0 || dim == 0 {
        return Err(LossError::Empty { tensor, rows, dim });
    }
    // One branch-free pass first (it vectorises); the position is only searched for when something is wrong.
    if x.fold(true, |ok, v| ok & v.is_finite()) {
        return Ok(());
    }
    if let Some(((row, col), &v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(LossError::NonFinite {
            tensor,
            row,
            col,
            value: v.f64(),
        });
    }
    Ok(())
}

fn same_shape<F: Real>(
    tensor: &'static str,
    x: &ArrayView2<'_, F>,
    student: &ArrayView2<'_, F>,
) -> Result<(), LossError> {
    if x.dim() != student.dim() {
        return Err(LossError::ShapeMismatch {
            tensor,
            got: x.dim(),
            of: "student",
            expected: student.dim(),
        });
    }
    Ok(())
}

/// Student and teacher of one shape, both non-empty and finite, and a gradient buffer of that shape.
fn check_pair<F: Real>(
    student: &ArrayView2<'_, F>,
    teacher: &ArrayView2<'_, F>,
    grad: &ArrayViewMut2<'_, F>,
) -> Result<(), LossError> {
    matrix("student", student)?;
    same_shape("teacher", teacher, student)?;
    matrix("teacher", teacher)?;
    same_shape("grad", &grad.view(), student)
}
