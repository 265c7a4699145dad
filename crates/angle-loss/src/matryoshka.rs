//! Matryoshka: the base objective summed over leading-dimension truncations of the embedding, as
//! sentence-transformers' `MatryoshkaLoss` does: `Σ_i w_i · L(y[:, :d_i])` (docs/ese.md).

use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};

use crate::ese::BaseObjective;
use crate::{LossError, Real};

/// Truncation widths and their weights (default 1 each).
#[derive(Clone, Debug, PartialEq)]
pub struct Matryoshka {
    dims: Vec<usize>,
    weights: Vec<f64>,
}

impl Matryoshka {
    /// `weights` empty means 1 for every width.
    pub fn new(dims: Vec<usize>, weights: Vec<f64>) -> Result<Self, LossError> {
        if dims.is_empty() {
            return Err(LossError::BadParameter {
                name: "matryoshka_dims",
                value: 0.0,
                why: "needs at least one width",
            });
        }
        if let Some(&d) = dims.iter().find(|&&d| d == 0) {
            return Err(LossError::BadParameter {
                name: "matryoshka_dims",
                value: d as f64,
                why: "a width must be positive",
            });
        }
        let weights = if weights.is_empty() {
            vec![1.0; dims.len()]
        } else {
            weights
        };
        if weights.len() != dims.len() {
            return Err(LossError::BadParameter {
                name: "matryoshka_weights",
                value: weights.len() as f64,
                why: "needs one weight per width of matryoshka_dims",
            });
        }
        if let Some(&w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(LossError::BadParameter {
                name: "matryoshka_weights",
                value: w,
                why: "a weight must be finite and non-negative",
            });
        }
        Ok(Matryoshka { dims, weights })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// `Σ_i w_i · L(y[:, :d_i])` over the widths `d_i ≤ y`'s width (a narrower `y`, such as ESE's truncated
    /// terms, uses the widths that fit); the gradient is added into `grad`. Returns the loss and each used
    /// width's unweighted value.
    pub fn loss_into<F: Real>(
        &self,
        base: &impl BaseObjective<F>,
        y: ArrayView2<'_, F>,
        grad: &mut ArrayViewMut2<'_, F>,
    ) -> Result<(f64, Vec<(usize, f64)>), LossError> {
        let width = y.ncols();
        let mut used = Vec::new();
        let mut loss = 0.0;
        for (&d, &w) in self.dims.iter().zip(&self.weights) {
            if d > width {
                continue;
            }
            let slim = y.slice(s![.., ..d]).to_owned();
            let mut g = Array2::<F>::zeros(slim.dim());
            let l = base.loss_into(slim.view(), &mut g.view_mut())?;
            let wf = F::of(w);
            grad.slice_mut(s![.., ..d]).zip_mut_with(&g, |a, &b| *a += wf * b);
            loss += w * l;
            used.push((d, l));
        }
        if used.is_empty() {
            return Err(LossError::BadParameter {
                name: "matryoshka_dims",
                value: *self.dims.iter().min().unwrap_or(&0) as f64,
                why: "no width fits the embedding",
            });
        }
        Ok((loss, used))
    }
}

/// A [`Matryoshka`] over a base objective, itself a base objective (so ESE can run on it).
#[derive(Debug)]
pub struct MatryoshkaObjective<'a, B> {
    pub matryoshka: &'a Matryoshka,
    pub base: &'a B,
}

impl<F: Real, B: BaseObjective<F>> BaseObjective<F> for MatryoshkaObjective<'_, B> {
    fn loss_into(&self, y: ArrayView2<'_, F>, grad: &mut ArrayViewMut2<'_, F>) -> Result<f64, LossError> {
        self.matryoshka.loss_into(self.base, y, grad).map(|(l, _)| l)
    }
}
