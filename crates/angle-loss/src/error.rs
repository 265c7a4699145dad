//! What can be wrong with a batch handed to an objective.

use thiserror::Error;

/// Bad input to an objective. Each variant names the tensor (`y_pred`, `labels`, `text_ids`) or parameter involved.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LossError {
    /// No rows (or no columns): there is nothing to compute a loss of.
    #[error("{tensor}: empty batch ({rows} rows x {dim} columns)")]
    Empty {
        tensor: &'static str,
        rows: usize,
        dim: usize,
    },
    /// A NaN or infinite value in an input tensor.
    #[error("{tensor}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        tensor: &'static str,
        row: usize,
        col: usize,
        value: f64,
    },
    /// A NaN, infinite or otherwise unusable parameter (a scale, a weight).
    #[error("parameter `{name}` = {value} is not usable: {why}")]
    BadParameter {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    /// Pair objectives need rows `2k` and `2k + 1` to be the two texts of pair `k`.
    #[error(
        "y_pred: {rows} rows cannot be split into pairs (rows 2k and 2k+1 form pair k): the row count must be even"
    )]
    OddRows { rows: usize },
    /// Format B (query, positive) needs a multiple of 2 rows, format C (query, positive, negative) a multiple of 3.
    #[error("y_pred: {rows} rows is not a multiple of {group} (rows are interleaved {layout} per example)")]
    RowsNotMultiple {
        rows: usize,
        group: usize,
        layout: &'static str,
    },
    /// The angle objective splits each embedding into a real and an imaginary half.
    #[error(
        "y_pred: the angle objective needs an even embedding dimension (real half, imaginary half), got {dim}"
    )]
    OddDim { dim: usize },
    /// One label per pair (the label of pair `k` belongs to rows `2k`, `2k + 1`).
    #[error("labels: {got} labels for {rows} rows; expected one label per pair ({expected})")]
    LabelCount {
        got: usize,
        rows: usize,
        expected: usize,
    },
    /// One text identity per row of `y_pred`.
    #[error("text_ids: {got} identities for {rows} rows; expected one per row")]
    TextIdCount { got: usize, rows: usize },
    /// Two tensors that must have one shape do not (distillation: the teacher's rows and the student's, or a gradient
    /// buffer and the student).
    #[error("{tensor}: shape {got:?} differs from {of}'s {expected:?}")]
    ShapeMismatch {
        tensor: &'static str,
        got: (usize, usize),
        of: &'static str,
        expected: (usize, usize),
    },
    /// Two tensors whose rows correspond one to one (the same texts) have different row counts.
    #[error("{tensor}: {got} rows for {of}'s {expected}; the rows must correspond one to one")]
    RowCount {
        tensor: &'static str,
        got: usize,
        of: &'static str,
        expected: usize,
    },
    /// The gradient buffer must have the shape of `y_pred`.
    #[error("grad: shape {got:?} differs from y_pred's {expected:?}")]
    GradShape {
        got: (usize, usize),
        expected: (usize, usize),
    },
}
