//! Input validation shared by every objective: bad input is an error, never a panic.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::{LossError, Real};

pub(crate) fn non_empty<F: Real>(y: &ArrayView2<'_, F>) -> Result<(), LossError> {
    let (rows, dim) = y.dim();
    if rows == 0 || dim == 0 {
        return Err(LossError::Empty {
            tensor: "y_pred",
            rows,
            dim,
        });
    }
    Ok(())
}

pub(crate) fn finite_matrix<F: Real>(y: &ArrayView2<'_, F>) -> Result<(), LossError> {
    // Fast path: one branch-free pass (it vectorises); the position is only searched for when something is wrong.
    if let Some(s) = y.as_slice_memory_order()
        && s.iter().fold(true, |ok, v| ok & v.is_finite())
    {
        return Ok(());
    }
    for ((row, col), &v) in y.indexed_iter() {
        if !v.is_finite() {
            return Err(LossError::NonFinite {
                tensor: "y_pred",
                row,
                col,
                value: v.f64(),
            });
        }
    }
    Ok(())
}

pub(crate) fn finite_labels<F: Real>(labels: &[F]) -> Result<(), LossError> {
    if let Some((row, &v)) = labels.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(LossError::NonFinite {
            tensor: "labels",
            row,
            col: 0,
            value: v.f64(),
        });
    }
    Ok(())
}

pub(crate) fn scale<F: Real>(name: &'static str, tau: F) -> Result<f64, LossError> {
    let value = tau.f64();
    if !value.is_finite() {
        return Err(LossError::BadParameter {
            name,
            value,
            why: "a scale must be finite",
        });
    }
    Ok(value)
}

pub(crate) fn weight<F: Real>(name: &'static str, w: F) -> Result<f64, LossError> {
    let value = w.f64();
    if !value.is_finite() {
        return Err(LossError::BadParameter {
            name,
            value,
            why: "a weight must be finite",
        });
    }
    Ok(value)
}

/// Zigzag pairs with one label per pair.
pub(crate) fn pairs<F: Real>(y: &ArrayView2<'_, F>, labels: &[F]) -> Result<(), LossError> {
    non_empty(y)?;
    let rows = y.nrows();
    if !rows.is_multiple_of(2) {
        return Err(LossError::OddRows { rows });
    }
    if labels.len() != rows / 2 {
        return Err(LossError::LabelCount {
            got: labels.len(),
            rows,
            expected: rows / 2,
        });
    }
    finite_labels(labels)?;
    finite_matrix(y)
}

pub(crate) fn even_dim<F: Real>(y: &ArrayView2<'_, F>) -> Result<(), LossError> {
    let dim = y.ncols();
    if !dim.is_multiple_of(2) {
        return Err(LossError::OddDim { dim });
    }
    Ok(())
}

pub(crate) fn text_ids(ids: Option<&[u64]>, rows: usize) -> Result<(), LossError> {
    match ids {
        Some(ids) if ids.len() != rows => Err(LossError::TextIdCount { got: ids.len(), rows }),
        _ => Ok(()),
    }
}

pub(crate) fn grad_shape<F: Real>(
    grad: &ArrayViewMut2<'_, F>,
    y: &ArrayView2<'_, F>,
) -> Result<(), LossError> {
    if grad.dim() != y.dim() {
        return Err(LossError::GradShape {
            got: grad.dim(),
            expected: y.dim(),
        });
    }
    Ok(())
}
