//! `AngleLoss`: the combination angle-emb's `AngleLoss` computes for its three data formats.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use crate::check;
use crate::norm::normalize_rows;
use crate::objectives::{
    ContrastiveLayout, check_grouped, contrastive_core, in_batch_core, pair_rank_core, standard,
};
use crate::pairs::{AnglePooling, PairScore, pair_objective};
use crate::{LossError, Real};

/// Weights and scales of [`AngleLoss`]; the defaults are angle-emb 0.6.1's. A weight enters only when it is `> 0`,
/// as in the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AngleLossConfig {
    /// Weight of the cosine (CoSENT) objective. Default 0.
    pub cosine_w: f64,
    /// Weight of the in-batch-negative objective (format A) / of the query–positive contrastive term (format C).
    /// Default 1.
    pub ibn_w: f64,
    /// Weight of the query–positive–negative contrastive term (format C). Default 1.
    pub cln_w: f64,
    /// Weight of the angle objective. Default 0.02.
    pub angle_w: f64,
    /// Scale of the cosine objective. Default 20.
    pub cosine_tau: f64,
    /// Scale of the in-batch-negative and contrastive objectives. Default 20.
    pub ibn_tau: f64,
    /// Scale of the angle objective. Default 20.
    pub angle_tau: f64,
    /// Pooling of the angle objective. Default `sum`.
    #[serde(alias = "angle_pooling_strategy")]
    pub angle_pooling: AnglePooling,
}

impl Default for AngleLossConfig {
    fn default() -> Self {
        Self {
            cosine_w: 0.0,
            ibn_w: 1.0,
            cln_w: 1.0,
            angle_w: 0.02,
            cosine_tau: 20.0,
            ibn_tau: 20.0,
            angle_tau: 20.0,
            angle_pooling: AnglePooling::Sum,
        }
    }
}

/// The three batch layouts of angle-emb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    /// `text1, text2, label`: zigzag pairs, one label per pair.
    A,
    /// `query, positive`: rows interleaved query, positive.
    B,
    /// `query, positive, negative`: rows interleaved query, positive, negative.
    C,
    /// Unsupervised (SimCSE): rows `2k`, `2k + 1` are two dropout views of text `k`.
    U,
}

/// Each objective's own (unweighted) value, for logging; `None` where the objective did not run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts<F> {
    pub cosine: Option<F>,
    pub in_batch_negative: Option<F>,
    pub angle: Option<F>,
    /// Query against positives (format B, and format C's `ibn_w` term).
    pub contrastive: Option<F>,
    /// Query against positives and negatives (format C's `cln_w` term).
    pub contrastive_negative: Option<F>,
}

/// The combined loss, its gradient with respect to `y_pred`, and the parts.
#[derive(Clone, Debug, PartialEq)]
pub struct AngleLossOutput<F> {
    pub loss: F,
    pub grad: Array2<F>,
    pub parts: LossParts<F>,
}

/// angle-emb's `AngleLoss`:
///
/// - format A: `cosine_w·cosine + ibn_w·in_batch_negative + angle_w·angle` on zigzag pairs;
/// - format B: `contrastive(query, positive)` with `ibn_tau` (no weights, as in the reference);
/// - format C: `(ibn_w·contrastive(q, p) + cln_w·contrastive(q, p, n)) / 2` (added only when positive), plus
///   `angle_w·angle` and `cosine_w·cosine` over the pairs `(q_k, p_k)` labelled 1 followed by `(q_k, n_k)` labelled 0;
/// - format U (unsupervised, not in angle-emb): `ibn_w·contrastive(a, b)` over the two views `a_k`, `b_k` of each
///   text (SimCSE's InfoNCE, sentence-transformers' `MultipleNegativesRankingLoss` on `(s, s)`), plus `angle_w·angle`
///   and `cosine_w·cosine` over the pairs `(a_k, b_k)` labelled 1 and every in-batch pair `(a_i, b_j)`, `i ≠ j`,
///   of different texts labelled 0 ([`unsupervised_pairs`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AngleLoss {
    config: AngleLossConfig,
}

impl AngleLoss {
    pub fn new(config: AngleLossConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &AngleLossConfig {
        &self.config
    }

    /// Dispatches on `format`. `labels` are used by format A only (formats B and C carry their targets in the row
    /// order, and the reference ignores their labels). `text_ids` (one per row, in the format's row order) keep
    /// duplicate texts out of each other's negatives: in format A's in-batch softmax (see
    /// [`in_batch_negative_loss`](crate::in_batch_negative_loss)) and in the contrastive softmaxes of formats B and C
    /// (see [`contrastive_loss_with_ids`](crate::contrastive_loss_with_ids)); the cosine and angle terms ignore them.
    pub fn compute<F: Real>(
        &self,
        format: DataFormat,
        y_pred: ArrayView2<'_, F>,
        labels: &[F],
        text_ids: Option<&[u64]>,
    ) -> Result<AngleLossOutput<F>, LossError> {
        let mut grad = Array2::zeros(y_pred.dim());
        let (loss, parts) = self.compute_into(format, y_pred, labels, text_ids, &mut grad.view_mut())?;
        Ok(AngleLossOutput { loss, grad, parts })
    }

    /// [`AngleLoss::compute`], adding the gradient into `grad` instead of allocating it.
    pub fn compute_into<F: Real>(
        &self,
        format: DataFormat,
        y_pred: ArrayView2<'_, F>,
        labels: &[F],
        text_ids: Option<&[u64]>,
        grad: &mut ArrayViewMut2<'_, F>,
    ) -> Result<(F, LossParts<F>), LossError> {
        match format {
            DataFormat::A => self.format_a_into(y_pred, labels, text_ids, grad),
            DataFormat::B => self.format_b_into(y_pred, text_ids, grad),
            DataFormat::C => self.format_c_into(y_pred, text_ids, grad),
            DataFormat::U => self.format_u_into(y_pred, text_ids, grad),
        }
    }

    /// Format A on zigzag pairs (`labels[k]` belongs to rows `2k`, `2k + 1`).
    pub fn format_a<F: Real>(
        &self,
        y_pred: ArrayView2<'_, F>,
        labels: &[F],
        text_ids: Option<&[u64]>,
    ) -> Result<AngleLossOutput<F>, LossError> {
        self.compute(DataFormat::A, y_pred, labels, text_ids)
    }

    /// Format B on interleaved query, positive rows.
    pub fn format_b<F: Real>(&self, y_pred: ArrayView2<'_, F>) -> Result<AngleLossOutput<F>, LossError> {
        self.compute(DataFormat::B, y_pred, &[], None)
    }

    /// Format C on interleaved query, positive, negative rows.
    pub fn format_c<F: Real>(&self, y_pred: ArrayView2<'_, F>) -> Result<AngleLossOutput<F>, LossError> {
        self.compute(DataFormat::C, y_pred, &[], None)
    }

    fn checked(&self) -> Result<(), LossError> {
        let c = &self.config;
        for (name, v) in [
            ("cosine_w", c.cosine_w),
            ("ibn_w", c.ibn_w),
            ("cln_w", c.cln_w),
            ("angle_w", c.angle_w),
        ] {
            check::weight(name, v)?;
        }
        for (name, v) in [
            ("cosine_tau", c.cosine_tau),
            ("ibn_tau", c.ibn_tau),
            ("angle_tau", c.angle_tau),
        ] {
            check::scale(name, v)?;
        }
        Ok(())
    }

    fn format_a_into<F: Real>(
        &self,
        y_pred: ArrayView2<'_, F>,
        labels: &[F],
        text_ids: Option<&[u64]>,
        grad: &mut ArrayViewMut2<'_, F>,
    ) -> Result<(F, LossParts<F>), LossError> {
        self.checked()?;
        let c = &self.config;
        check::pairs(&y_pred, labels)?;
        check::text_ids(text_ids, y_pred.nrows())?;
        check::grad_shape(grad, &y_pred)?;
        if c.angle_w > 0.0 {
            check::even_dim(&y_pred)?;
        }
        // Validated once above; the objectives run on the same standard-layout view.
        let y = standard(&y_pred);
        let yv = y.view();
        let mut parts = LossParts::default();
        let mut loss = 0.0f64;
        if c.cosine_w > 0.0 {
            let l = pair_rank_core(&yv, labels, c.cosine_tau, c.cosine_w, grad, PairScore::Cosine);
            loss += c.cosine_w * l;
            parts.cosine = Some(F::of(l));
        }
        if c.ibn_w > 0.0 {
            let l = in_batch_core(&yv, labels, text_ids, c.ibn_tau, c.ibn_w, grad);
            loss += c.ibn_w * l;
            parts.in_batch_negative = Some(F::of(l));
        }
        if c.angle_w > 0.0 {
            let score = PairScore::Angle(c.angle_pooling);
            let l = pair_rank_core(&yv, labels, c.angle_tau, c.angle_w, grad, score);
            loss += c.angle_w * l;
            parts.angle = Some(F::of(l));
        }
        Ok((F::of(loss), parts))
    }

    fn format_b_into<F: Real>(
        &self,
        y_pred: ArrayView2<'_, F>,
        text_ids: Option<&[u64]>,
        grad: &mut ArrayViewMut2<'_, F>,
    ) -> Result<(F, LossParts<F>), LossError> {
        self.checked()?;
        let layout = ContrastiveLayout::QueryPositive;
        check_grouped(&y_pred, layout)?;
        check::text_ids(text_ids, y_pred.nrows())?;
        check::grad_shape(grad, &y_pred)?;
        let y = standard(&y_pred);
        let (xhat, norms) = normalize_rows(&y.view());
        let l = contrastive_core(&xhat, &norms, layout, text_ids, self.config.ibn_tau, 1.0, grad);
        let parts = LossParts {
            contrastive: Some(F::of(l)),
            ..LossParts::default()
        };
        Ok((F::of(l), parts))
    }

    fn format_c_into<F: Real>(
        &self,
        y_pred: ArrayView2<'_, F>,
        text_ids: Option<&[u64]>,
        grad: &mut ArrayViewMut2<'_, F>,
    ) -> Result<(F, LossParts<F>), LossError> {
        self.checked()?;
        let c = &self.config;
        check_grouped(&y_pred, ContrastiveLayout::QueryPositiveNegative)?;
        check::text_ids(text_ids, y_pred.nrows())?;
        check::grad_shape(grad, &y_pred)?;
        if c.angle_w > 0.0 {
            check::even_dim(&y_pred)?;
        }
        let y = standard(&y_pred);
        let yv = y.view();
        let mut parts = LossParts::default();
        let mut loss = 0.0f64;

        // Contrastive terms: halved, and added only when their weighted sum is positive (as the reference does).
        if c.ibn_w > 0.0 || c.cln_w > 0.0 {
            let (xhat, norms) = normalize_rows(&yv);
            let (n, d) = yv.dim();
            let b = n / 3;
            let mut tmp = Array2::<F>::zeros((n, d));
            let mut cll = 0.0f64;
            if c.ibn_w > 0.0 {
                // Query against positives only: the rows of the negatives play no part.
                let qp_rows: Vec<usize> = (0..b).flat_map(|k| [3 * k, 3 * k + 1]).collect();
                let xq = xhat.select(ndarray::Axis(0), &qp_rows);
                let nq: Vec<f64> = qp_rows.iter().map(|&i| norms[i]).collect();
                let idq: Option<Vec<u64>> = text_ids.map(|ids| qp_rows.iter().map(|&i| ids[i]).collect());
                let mut g = Array2::<F>::zeros((2 * b, d));
                let l = contrastive_core(
                    &xq,
                    &nq,
                    ContrastiveLayout::QueryPositive,
                    idq.as_deref(),
                    c.ibn_tau,
                    c.ibn_w / 2.0,
                    &mut g.view_mut(),
                );
                for (k, &i) in qp_rows.iter().enumerate() {
                    let mut r = tmp.row_mut(i);
                    r += &g.row(k);
                }
                cll += c.ibn_w * l;
                parts.contrastive = Some(F::of(l));
            }
            if c.cln_w > 0.0 {
                let l = contrastive_core(
                    &xhat,
                    &norms,
                    ContrastiveLayout::QueryPositiveNegative,
                    text_ids,
                    c.ibn_tau,
                    c.cln_w / 2.0,
                    &mut tmp.view_mut(),
                );
                cll += c.cln_w * l;
                parts.contrastive_negative = Some(F::of(l));
            }
            if cll > 0.0 {
                loss += cll / 2.0;
                *grad += &tmp;
            }
        }

        if c.angle_w > 0.0 || c.cosine_w > 0.0 {
            let b = yv.nrows() / 3;
            let pairs: Vec<(usize, usize)> = (0..b)
                .map(|k| (3 * k, 3 * k + 1))
                .chain((0..b).map(|k| (3 * k, 3 * k + 2)))
                .collect();
            let labels: Vec<f64> = (0..2 * b).map(|k| if k < b { 1.0 } else { 0.0 }).collect();
            loss += self.pair_terms(&yv, &pairs, &labels, grad, &mut parts);
        }
        Ok((F::of(loss), parts))
    }

    fn format_u_into<F: Real>(
        &self,
        y_pred: ArrayView2<'_, F>,
        text_ids: Option<&[u64]>,
        grad: &mut ArrayViewMut2<'_, F>,
    ) -> Result<(F, LossParts<F>), LossError> {
        self.checked()?;
        let c = &self.config;
        let layout = ContrastiveLayout::QueryPositive;
        check_grouped(&y_pred, layout)?;
        check::text_ids(text_ids, y_pred.nrows())?;
        check::grad_shape(grad, &y_pred)?;
        if c.angle_w > 0.0 {
            check::even_dim(&y_pred)?;
        }
        let y = standard(&y_pred);
        let yv = y.view();
        let mut parts = LossParts::default();
        let mut loss = 0.0f64;
        if c.ibn_w > 0.0 {
            // The view's own copy is the target; other copies of the same text elsewhere in the batch are masked.
            let (xhat, norms) = normalize_rows(&yv);
            let l = contrastive_core(&xhat, &norms, layout, text_ids, c.ibn_tau, c.ibn_w, grad);
            loss += c.ibn_w * l;
            parts.in_batch_negative = Some(F::of(l));
        }
        if c.angle_w > 0.0 || c.cosine_w > 0.0 {
            let (pairs, labels) = unsupervised_pairs(yv.nrows() / 2, text_ids);
            loss += self.pair_terms(&yv, &pairs, &labels, grad, &mut parts);
        }
        Ok((F::of(loss), parts))
    }

    /// `angle_w·angle + cosine_w·cosine` ranked over `pairs` (rows of `y`) by `labels`; adds the gradients into
    /// `grad` and records the parts.
    fn pair_terms<F: Real>(
        &self,
        y: &ArrayView2<'_, F>,
        pairs: &[(usize, usize)],
        labels: &[f64],
        grad: &mut ArrayViewMut2<'_, F>,
        parts: &mut LossParts<F>,
    ) -> f64 {
        let c = &self.config;
        let mut loss = 0.0;
        if c.angle_w > 0.0 {
            let score = PairScore::Angle(c.angle_pooling);
            let l = pair_objective(y, pairs, labels, score, c.angle_tau, c.angle_w, grad);
            loss += c.angle_w * l;
            parts.angle = Some(F::of(l));
        }
        if c.cosine_w > 0.0 {
            let l = pair_objective(
                y,
                pairs,
                labels,
                PairScore::Cosine,
                c.cosine_tau,
                c.cosine_w,
                grad,
            );
            loss += c.cosine_w * l;
            parts.cosine = Some(F::of(l));
        }
        loss
    }
}

/// Format U's pairs for the angle and cosine terms, over `texts` texts in two views (rows `2k`, `2k + 1`): first
/// `(2k, 2k + 1)` for every `k`, labelled 1, then `(2i, 2j + 1)` for every `i ≠ j` (row-major) whose texts differ
/// (by `text_ids`, one per row), labelled 0.
pub fn unsupervised_pairs(texts: usize, text_ids: Option<&[u64]>) -> (Vec<(usize, usize)>, Vec<f64>) {
    let same = |i: usize, j: usize| text_ids.is_some_and(|ids| ids[2 * i] == ids[2 * j + 1]);
    let positives = (0..texts).map(|k| (2 * k, 2 * k + 1));
    let negatives = (0..texts)
        .flat_map(|i| (0..texts).map(move |j| (i, j)))
        .filter(|&(i, j)| i != j && !same(i, j))
        .map(|(i, j)| (2 * i, 2 * j + 1));
    let pairs: Vec<(usize, usize)> = positives.chain(negatives).collect();
    let labels = (0..pairs.len())
        .map(|k| if k < texts { 1.0 } else { 0.0 })
        .collect();
    (pairs, labels)
}
