//! The four objectives as free functions. Each comes in two forms: `*_loss` returns the loss and a fresh gradient,
//! `*_loss_into` adds `weight · dL/dy_pred` into a caller's buffer (llm.c style: backward adds, one zero clears) and
//! returns the loss.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, CowArray, Ix2};
use serde::{Deserialize, Serialize};

use crate::ce::{CandidateMask, softmax_ce};
use crate::check;
use crate::norm::{normalize_backward, normalize_rows};
use crate::pairs::{AnglePooling, PairScore, pair_objective};
use crate::sym::{InBatch, in_batch_softmax};
use crate::{LossError, Real};

/// A loss and its gradient with respect to `y_pred` (same shape as `y_pred`).
#[derive(Clone, Debug, PartialEq)]
pub struct LossGrad<F> {
    pub loss: F,
    pub grad: Array2<F>,
}

/// How the rows of a contrastive batch are interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContrastiveLayout {
    /// `query_0, positive_0, query_1, positive_1, …` (format B).
    QueryPositive,
    /// `query_0, positive_0, negative_0, query_1, …` (format C).
    QueryPositiveNegative,
}

impl ContrastiveLayout {
    pub(crate) fn group(self) -> usize {
        match self {
            Self::QueryPositive => 2,
            Self::QueryPositiveNegative => 3,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::QueryPositive => "query, positive",
            Self::QueryPositiveNegative => "query, positive, negative",
        }
    }
}

pub(crate) fn standard<'a, F: Real>(y: &'a ArrayView2<'a, F>) -> CowArray<'a, F, Ix2> {
    y.as_standard_layout()
}

pub(crate) fn zigzag_pairs(n_pairs: usize) -> Vec<(usize, usize)> {
    (0..n_pairs).map(|k| (2 * k, 2 * k + 1)).collect()
}

fn labels_f64<F: Real>(labels: &[F]) -> Vec<f64> {
    labels.iter().map(|l| l.f64()).collect()
}

fn with_fresh_grad<F: Real>(
    y: &ArrayView2<'_, F>,
    f: impl FnOnce(&mut ArrayViewMut2<'_, F>) -> Result<F, LossError>,
) -> Result<LossGrad<F>, LossError> {
    let mut grad = Array2::zeros(y.dim());
    let loss = f(&mut grad.view_mut())?;
    Ok(LossGrad { loss, grad })
}

/// The cosine (CoSENT) objective: `log(1 + Σ_{l_i < l_j} exp(τ cos_i − τ cos_j))` over the pairs of a zigzag batch
/// (rows `2k`, `2k + 1` are pair `k`, `labels[k]` its label). The reference's default `τ` is 20.
pub fn cosine_loss<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    tau: F,
) -> Result<LossGrad<F>, LossError> {
    with_fresh_grad(&y_pred, |g| {
        cosine_loss_into(y_pred.view(), labels, tau, F::one(), g)
    })
}

/// [`cosine_loss`], adding `weight · dL/dy_pred` into `grad`.
pub fn cosine_loss_into<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    tau: F,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    pair_rank(y_pred, labels, tau, weight, grad, PairScore::Cosine)
}

/// The angle objective: each embedding is split into a real half and an imaginary half, the pair's complex numbers
/// are divided element-wise, normalised by the two norms, pooled (`sum` or `mean`), and `τ·|pool|` is ranked like the
/// cosine objective. The gradient is derived in `docs/angle-objective.md`. The reference's defaults are `τ` 20 (in
/// `AngleLoss`) and pooling `sum`.
pub fn angle_loss<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    tau: F,
    pooling: AnglePooling,
) -> Result<LossGrad<F>, LossError> {
    with_fresh_grad(&y_pred, |g| {
        angle_loss_into(y_pred.view(), labels, tau, pooling, F::one(), g)
    })
}

/// [`angle_loss`], adding `weight · dL/dy_pred` into `grad`.
pub fn angle_loss_into<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    tau: F,
    pooling: AnglePooling,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    check::non_empty(&y_pred)?;
    check::even_dim(&y_pred)?;
    pair_rank(y_pred, labels, tau, weight, grad, PairScore::Angle(pooling))
}

fn pair_rank<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    tau: F,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
    score: PairScore,
) -> Result<F, LossError> {
    check::pairs(&y_pred, labels)?;
    check::grad_shape(grad, &y_pred)?;
    let tau = check::scale("tau", tau)?;
    let weight = check::weight("weight", weight)?;
    let y = standard(&y_pred);
    Ok(F::of(pair_rank_core(&y.view(), labels, tau, weight, grad, score)))
}

/// The cosine or angle objective on validated, standard-layout zigzag pairs.
pub(crate) fn pair_rank_core<F: Real>(
    y: &ArrayView2<'_, F>,
    labels: &[F],
    tau: f64,
    weight: f64,
    grad: &mut ArrayViewMut2<'_, F>,
    score: PairScore,
) -> f64 {
    let pairs = zigzag_pairs(labels.len());
    pair_objective(y, &pairs, &labels_f64(labels), score, tau, weight, grad)
}

/// Whether pair `k` is a positive for the in-batch-negative objective: its label truncated to an integer is non-zero
/// (the reference's `y_true.int()`).
pub(crate) fn is_positive<F: Real>(label: F) -> bool {
    label.f64().trunc() != 0.0
}

/// The in-batch-negative objective: for every row whose pair is positive (label truncated to an integer ≠ 0), the
/// cross-entropy of its pair partner among the scaled cosines `τ cos(row, ·)` to every other row of the batch (never
/// itself); rows of negative pairs contribute 0 and the mean is over all rows, as in the reference.
///
/// The target is always the row's own pair partner. The reference builds its targets from products `label × index`,
/// which for 0/1 labels gives the same targets but for graded labels (STS-B scores 0–5) marks unrelated rows whose
/// products coincide as extra positives; here they stay negatives.
///
/// `text_ids` (one per row, any identity such as a hash of the text or its dataset index): rows holding the same
/// text as the query row are left out of its softmax, so a text is never its own negative; its partner is kept when
/// it is the target. The reference drops such examples in its collator instead.
pub fn in_batch_negative_loss<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    text_ids: Option<&[u64]>,
    tau: F,
) -> Result<LossGrad<F>, LossError> {
    with_fresh_grad(&y_pred, |g| {
        in_batch_negative_loss_into(y_pred.view(), labels, text_ids, tau, F::one(), g)
    })
}

/// [`in_batch_negative_loss`], adding `weight · dL/dy_pred` into `grad`.
pub fn in_batch_negative_loss_into<F: Real>(
    y_pred: ArrayView2<'_, F>,
    labels: &[F],
    text_ids: Option<&[u64]>,
    tau: F,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    check::pairs(&y_pred, labels)?;
    check::text_ids(text_ids, y_pred.nrows())?;
    check::grad_shape(grad, &y_pred)?;
    let tau = check::scale("tau", tau)?;
    let weight = check::weight("weight", weight)?;
    let y = standard(&y_pred);
    Ok(F::of(in_batch_core(
        &y.view(),
        labels,
        text_ids,
        tau,
        weight,
        grad,
    )))
}

/// The in-batch-negative objective on validated, standard-layout zigzag pairs.
pub(crate) fn in_batch_core<F: Real>(
    y: &ArrayView2<'_, F>,
    labels: &[F],
    text_ids: Option<&[u64]>,
    tau: f64,
    weight: f64,
    grad: &mut ArrayViewMut2<'_, F>,
) -> f64 {
    let n = y.nrows();
    let positive: Vec<bool> = (0..n).map(|i| is_positive(labels[i / 2])).collect();
    if !positive.contains(&true) {
        return 0.0;
    }
    let (xhat, norms) = normalize_rows(y);
    let rows = InBatch {
        positive: &positive,
        ids: text_ids,
    };
    let mut dxhat = Array2::zeros(xhat.dim());
    let sum = in_batch_softmax(&xhat.view(), &rows, tau, weight / n as f64, &mut dxhat);
    if weight != 0.0 {
        normalize_backward(&dxhat.view(), &xhat.view(), &norms, grad);
    }
    sum / n as f64
}

/// The contrastive objective (InfoNCE): each query against all positives of the batch (and all negatives, for
/// [`ContrastiveLayout::QueryPositiveNegative`]) with scaled cosines `τ cos`; the target is the query's own positive
/// and the loss is the mean over queries (the reference's `contrastive_with_negative_loss`).
pub fn contrastive_loss<F: Real>(
    y_pred: ArrayView2<'_, F>,
    layout: ContrastiveLayout,
    tau: F,
) -> Result<LossGrad<F>, LossError> {
    contrastive_loss_with_ids(y_pred, layout, None, tau)
}

/// [`contrastive_loss`], adding `weight · dL/dy_pred` into `grad`.
pub fn contrastive_loss_into<F: Real>(
    y_pred: ArrayView2<'_, F>,
    layout: ContrastiveLayout,
    tau: F,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    contrastive_loss_with_ids_into(y_pred, layout, None, tau, weight, grad)
}

/// [`contrastive_loss`] with optional text identities, one per row of `y_pred` in its interleaved order (any
/// identity such as a hash of the text; equal ids mean the same text). A candidate that is a known positive of a
/// query is left out of that query's softmax instead of counting as a negative: a candidate whose text is the
/// query's own positive's (e.g. the same positive under another query, or another query's negative), the query's own
/// text, or the positive of another query holding the same query text. The query's own positive stays the target.
/// The reference drops such examples in its collator instead. With `None` or all-distinct ids this is exactly
/// [`contrastive_loss`].
pub fn contrastive_loss_with_ids<F: Real>(
    y_pred: ArrayView2<'_, F>,
    layout: ContrastiveLayout,
    text_ids: Option<&[u64]>,
    tau: F,
) -> Result<LossGrad<F>, LossError> {
    with_fresh_grad(&y_pred, |g| {
        contrastive_loss_with_ids_into(y_pred.view(), layout, text_ids, tau, F::one(), g)
    })
}

/// [`contrastive_loss_with_ids`], adding `weight · dL/dy_pred` into `grad`.
pub fn contrastive_loss_with_ids_into<F: Real>(
    y_pred: ArrayView2<'_, F>,
    layout: ContrastiveLayout,
    text_ids: Option<&[u64]>,
    tau: F,
    weight: F,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<F, LossError> {
    check_grouped(&y_pred, layout)?;
    check::text_ids(text_ids, y_pred.nrows())?;
    check::grad_shape(grad, &y_pred)?;
    let tau = check::scale("tau", tau)?;
    let weight = check::weight("weight", weight)?;
    let y = standard(&y_pred);
    let (xhat, norms) = normalize_rows(&y.view());
    Ok(F::of(contrastive_core(
        &xhat, &norms, layout, text_ids, tau, weight, grad,
    )))
}

pub(crate) fn check_grouped<F: Real>(
    y_pred: &ArrayView2<'_, F>,
    layout: ContrastiveLayout,
) -> Result<(), LossError> {
    check::non_empty(y_pred)?;
    let (rows, group) = (y_pred.nrows(), layout.group());
    if rows % group != 0 {
        return Err(LossError::RowsNotMultiple {
            rows,
            group,
            layout: layout.name(),
        });
    }
    check::finite_matrix(y_pred)
}

/// The contrastive loss on already normalised rows (`ids`: one text identity per row, validated); adds
/// `weight · dL/dy` into `grad`.
pub(crate) fn contrastive_core<F: Real>(
    xhat: &Array2<F>,
    norms: &[f64],
    layout: ContrastiveLayout,
    ids: Option<&[u64]>,
    tau: f64,
    weight: f64,
    grad: &mut ArrayViewMut2<'_, F>,
) -> f64 {
    let (n, d) = xhat.dim();
    let group = layout.group();
    let b = n / group;
    let q_rows: Vec<usize> = (0..b).map(|k| group * k).collect();
    // torch.cat((pos, neg)): all positives first, then all negatives.
    let t_rows: Vec<usize> = (1..group)
        .flat_map(|o| (0..b).map(move |k| group * k + o))
        .collect();
    let q = xhat.select(ndarray::Axis(0), &q_rows);
    let t = xhat.select(ndarray::Axis(0), &t_rows);
    // Candidate k < b is query k's own positive, its target.
    let mask = ids.and_then(|ids| {
        let of = |rows: &[usize]| -> Vec<u64> { rows.iter().map(|&i| ids[i]).collect() };
        let cand = of(&t_rows);
        CandidateMask::new(&of(&q_rows), &cand[..b], cand.clone())
    });
    let mut dq = Array2::zeros((b, d));
    let mut dt = Array2::zeros((t_rows.len(), d));
    let sum = softmax_ce(
        &q.view(),
        &t.view(),
        mask.as_ref(),
        tau,
        weight / b as f64,
        &mut dq,
        &mut dt,
    );
    if weight != 0.0 {
        let mut dxhat = Array2::zeros((n, d));
        for (k, &i) in q_rows.iter().enumerate() {
            dxhat.row_mut(i).assign(&dq.row(k));
        }
        for (k, &i) in t_rows.iter().enumerate() {
            dxhat.row_mut(i).assign(&dt.row(k));
        }
        normalize_backward(&dxhat.view(), &xhat.view(), norms, grad);
    }
    sum / b as f64
}
