//! Espresso (ESE, "2D Matryoshka", arXiv 2402.14776) over the pooled embeddings of every layer, with analytic
//! gradients w.r.t. each layer's pooled embedding. The objective and where it departs from angle-emb's code are
//! derived in `docs/ese.md`:
//!
//! ```text
//! loss = L(p_n) + L(p_n[:, :k]) + D(p_n[:, :k], PCA(p_n))
//!      + 1/(n-1) · Σ_{l=1}^{n-1} [ L(p_l[:, :k]) + D(p_l[:, :k], PCA(p_l)) ] / (1 + ln l)
//! D(x, y) = mean((x - y)²) + T · KL(softmax(y/T) ‖ softmax(x/T))   (KL summed over columns, averaged over rows)
//! PCA(x)  = x · U_k · diag(S_k),  U S Vᵀ = SVD(row-softmax(xᵀx / √H)),  a constant
//! ```

use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};
use serde::{Deserialize, Serialize};

use crate::{LossError, Real, check, eig};

/// ESE settings; the defaults are angle-emb's (`ese_compression_size` 128, `ese_kl_temperature` 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EseConfig {
    /// `k`: the leading dimensions the truncated terms see.
    pub compression_size: usize,
    /// `T` of the distillation's softmaxes.
    pub kl_temperature: f64,
}

impl Default for EseConfig {
    fn default() -> Self {
        EseConfig {
            compression_size: 128,
            kl_temperature: 1.0,
        }
    }
}

/// Every part of the ESE loss, unweighted; `student[l - 1]` and `student_distill[l - 1]` belong to layer `l`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EseParts {
    pub teacher: f64,
    pub teacher_slim: f64,
    pub teacher_distill: f64,
    pub student: Vec<f64>,
    pub student_distill: Vec<f64>,
}

/// The loss, `d loss / d pooled_l` for every layer handed in (same order), and the parts.
#[derive(Clone, Debug, PartialEq)]
pub struct EseOutput<F> {
    pub loss: F,
    pub grads: Vec<Array2<F>>,
    pub parts: EseParts,
}

/// The base objective `L`: its value on `y`, with `d L / d y` added into the buffer (e.g.
/// [`AngleLoss::compute_into`](crate::AngleLoss::compute_into) with the batch's format and labels bound).
pub trait BaseObjective<F: Real> {
    fn loss_into(&self, y: ArrayView2<'_, F>, grad: &mut ArrayViewMut2<'_, F>) -> Result<f64, LossError>;
}

impl<F: Real, T> BaseObjective<F> for T
where
    T: Fn(ArrayView2<'_, F>, &mut ArrayViewMut2<'_, F>) -> Result<f64, LossError>,
{
    fn loss_into(&self, y: ArrayView2<'_, F>, grad: &mut ArrayViewMut2<'_, F>) -> Result<f64, LossError> {
        self(y, grad)
    }
}

/// The ESE objective. `pooled[l - 1]` is the pooled output of layer `l` for `l = 1..=n` (the last entry is the
/// teacher, the last layer); the embedding output (layer 0) plays no part. With one layer there are no students.
pub fn ese_loss<F: Real>(
    base: &impl BaseObjective<F>,
    config: &EseConfig,
    pooled: &[ArrayView2<'_, F>],
) -> Result<EseOutput<F>, LossError> {
    let Some(last) = pooled.last() else {
        return Err(LossError::Empty {
            tensor: "pooled layers",
            rows: 0,
            dim: 0,
        });
    };
    let (rows, dim) = last.dim();
    for p in pooled {
        check::non_empty(p)?;
        check::finite_matrix(p)?;
        if p.dim() != (rows, dim) {
            return Err(LossError::GradShape {
                got: p.dim(),
                expected: (rows, dim),
            });
        }
    }
    let k = config.compression_size;
    if k == 0 || k > dim {
        return Err(LossError::BadParameter {
            name: "ese_compression_size",
            value: k as f64,
            why: "must be between 1 and the embedding width",
        });
    }
    let t = config.kl_temperature;
    if !(t.is_finite() && t > 0.0) {
        return Err(LossError::BadParameter {
            name: "ese_kl_temperature",
            value: t,
            why: "must be finite and positive",
        });
    }

    let targets = pooled
        .iter()
        .map(|p| pca_target(p, k))
        .collect::<Result<Vec<_>, _>>()?;
    let views: Vec<ArrayView2<'_, F>> = targets.iter().map(|t| t.view()).collect();
    ese_loss_with_targets(base, config, pooled, &views)
}

/// [`ese_loss`] with the distillation targets given (`targets[l - 1]` `[rows, k]` for layer `l`, normally
/// [`pca_target`] of that layer): the objective as a function of the pooled outputs with the targets held
/// constant, which is what the gradient is of (and what a finite-difference check perturbs).
pub fn ese_loss_with_targets<F: Real>(
    base: &impl BaseObjective<F>,
    config: &EseConfig,
    pooled: &[ArrayView2<'_, F>],
    targets: &[ArrayView2<'_, F>],
) -> Result<EseOutput<F>, LossError> {
    let n = pooled.len();
    let Some(last) = pooled.last() else {
        return Err(LossError::Empty {
            tensor: "pooled layers",
            rows: 0,
            dim: 0,
        });
    };
    let k = config.compression_size;
    let t = config.kl_temperature;
    if targets.len() != n {
        return Err(LossError::BadParameter {
            name: "targets",
            value: targets.len() as f64,
            why: "needs one distillation target per pooled layer",
        });
    }
    if let Some(tg) = targets.iter().find(|tg| tg.dim() != (last.nrows(), k)) {
        return Err(LossError::GradShape {
            got: tg.dim(),
            expected: (last.nrows(), k),
        });
    }
    let mut grads: Vec<Array2<F>> = pooled.iter().map(|p| Array2::zeros(p.dim())).collect();
    let mut parts = EseParts::default();
    let mut loss = 0.0f64;
    // teacher: the full objective, then the truncated one and its distillation
    {
        let g = &mut grads[n - 1];
        parts.teacher = base.loss_into(last.view(), &mut g.view_mut())?;
        loss += parts.teacher;
        let (slim, distill) = truncated_terms(base, last, &targets[n - 1], k, t, 1.0, g)?;
        parts.teacher_slim = slim;
        parts.teacher_distill = distill;
        loss += slim + distill;
    }
    if n > 1 {
        for l in 1..n {
            let w = 1.0 / ((n - 1) as f64 * (1.0 + (l as f64).ln()));
            let (slim, distill) =
                truncated_terms(base, &pooled[l - 1], &targets[l - 1], k, t, w, &mut grads[l - 1])?;
            parts.student.push(slim);
            parts.student_distill.push(distill);
            loss += w * (slim + distill);
        }
    }
    Ok(EseOutput {
        loss: F::of(loss),
        grads,
        parts,
    })
}

/// `L(p[:, :k])` and `D(p[:, :k], target)`, unweighted; `weight ·` their gradients added into `grad[:, :k]`.
fn truncated_terms<F: Real>(
    base: &impl BaseObjective<F>,
    p: &ArrayView2<'_, F>,
    target: &ArrayView2<'_, F>,
    k: usize,
    temperature: f64,
    weight: f64,
    grad: &mut Array2<F>,
) -> Result<(f64, f64), LossError> {
    let slim = p.slice(s![.., ..k]).to_owned();
    let mut g = Array2::<F>::zeros(slim.dim());
    let l = base.loss_into(slim.view(), &mut g.view_mut())?;
    let d = distill_loss_into(slim.view(), target.view(), temperature, 1.0, &mut g.view_mut())?;
    let w = F::of(weight);
    grad.slice_mut(s![.., ..k]).zip_mut_with(&g, |a, &b| *a += w * b);
    Ok((l, d))
}

/// The distillation term `D(x, y) = mean((x − y)²) + T · KL(softmax(y/T) ‖ softmax(x/T))` (the KL summed over
/// columns and averaged over rows, as torch's `kl_div(log_softmax(x/T), softmax(y/T), reduction="batchmean")`),
/// with `y` a constant: adds `weight · dD/dx` into `grad` and returns `D`.
pub fn distill_loss_into<F: Real>(
    x: ArrayView2<'_, F>,
    y: ArrayView2<'_, F>,
    temperature: f64,
    weight: f64,
    grad: &mut ArrayViewMut2<'_, F>,
) -> Result<f64, LossError> {
    check::non_empty(&x)?;
    check::finite_matrix(&x)?;
    check::grad_shape(grad, &x)?;
    if y.dim() != x.dim() {
        return Err(LossError::GradShape {
            got: y.dim(),
            expected: x.dim(),
        });
    }
    let (rows, cols) = x.dim();
    let t = temperature;
    let inv_bk = 1.0 / (rows * cols) as f64;
    let mut mse = 0.0f64;
    let mut kl = 0.0f64;
    let mut lp = vec![0.0f64; cols];
    let mut lq = vec![0.0f64; cols];
    for r in 0..rows {
        log_softmax(x.row(r).iter().map(|v| v.f64() / t), &mut lp);
        log_softmax(y.row(r).iter().map(|v| v.f64() / t), &mut lq);
        let mut g = grad.row_mut(r);
        for c in 0..cols {
            let (xv, yv) = (x[[r, c]].f64(), y[[r, c]].f64());
            let diff = xv - yv;
            mse += diff * diff;
            let (p, q) = (lp[c].exp(), lq[c].exp());
            kl += q * (lq[c] - lp[c]);
            // d/dx [mean (x−y)²] = 2(x−y)/(B·k);  d/dx [T · KL / B] = (p − q)/B
            let d = 2.0 * diff * inv_bk + (p - q) / rows as f64;
            g[c] += F::of(weight * d);
        }
    }
    Ok(mse * inv_bk + t * kl / rows as f64)
}

fn log_softmax(z: impl Iterator<Item = f64> + Clone, out: &mut [f64]) {
    let m = z.clone().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.clone().map(|v| (v - m).exp()).sum::<f64>().ln();
    for (o, v) in out.iter_mut().zip(z) {
        *o = v - lse;
    }
}

/// The distillation target `PCA(x) = x · U_k · diag(S_k)` (`[rows, k]`), `U S Vᵀ` the exact SVD of
/// `A = row-softmax(xᵀx / √H)`, each column of `U_k` signed so that its largest-magnitude entry is positive.
/// Computed in `f64`.
pub fn pca_target<F: Real>(x: &ArrayView2<'_, F>, k: usize) -> Result<Array2<F>, LossError> {
    let (rows, h) = x.dim();
    if k == 0 || k > h {
        return Err(LossError::BadParameter {
            name: "ese_compression_size",
            value: k as f64,
            why: "must be between 1 and the embedding width",
        });
    }
    let x64 = x.mapv(|v| v.f64());
    let gram = x64.t().dot(&x64);
    let scale = 1.0 / (h as f64).sqrt();
    let mut a = vec![0.0f64; h * h];
    for i in 0..h {
        let row = &mut a[i * h..(i + 1) * h];
        let m = (0..h)
            .map(|j| gram[[i, j]] * scale)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for (j, v) in row.iter_mut().enumerate() {
            *v = (gram[[i, j]] * scale - m).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    let (u, s) = eig::left_singular(&a, h, k).ok_or(LossError::BadParameter {
        name: "ese_compression_size",
        value: k as f64,
        why: "the SVD of the PCA target did not converge",
    })?;
    let mut out = Array2::<F>::zeros((rows, k));
    for r in 0..rows {
        for j in 0..k {
            let v: f64 = (0..h).map(|i| x64[[r, i]] * u[i * k + j]).sum();
            out[[r, j]] = F::of(v * s[j]);
        }
    }
    Ok(out)
}
