//! The AnglE objectives ([arXiv 2309.12871](https://arxiv.org/abs/2309.12871), angle-emb 0.6.1
//! `angle_emb/loss.py`) with exact analytic gradients: pure math on embeddings, no model, no I/O.
//!
//! Every objective takes the batch's embeddings `y_pred` (`[rows, dim]`, an ndarray view of `f32` or `f64`) and
//! returns the loss and `dL/dy_pred`, so any trainer can use it: run its encoder, hand the pooled embeddings here,
//! and back-propagate the returned gradient through its own encoder.
//!
//! | objective | function | rows |
//! | --- | --- | --- |
//! | cosine (CoSENT) | [`cosine_loss`] | zigzag pairs, one label per pair |
//! | angle | [`angle_loss`] | zigzag pairs, one label per pair, even `dim` |
//! | in-batch negatives | [`in_batch_negative_loss`] | zigzag pairs, optional text ids |
//! | contrastive (InfoNCE) | [`contrastive_loss`], [`contrastive_loss_with_ids`] | q, p(, n) rows; text ids |
//! | angle-emb's `AngleLoss` | [`AngleLoss`] | formats A, B, C |
//! | Espresso (ESE) over every layer | [`ese_loss`] | any base objective ([`BaseObjective`]) |
//! | Matryoshka truncations | [`Matryoshka`] | any base objective |
//! | distillation from a teacher: KL (angle-emb's), MSE, margin MSE | [`distill::kl_into`], [`distill::mse_into`], [`distill::margin_mse_into`] | student and teacher rows |
//!
//! Each `*_loss` has an `*_into` twin that adds `weight · dL/dy_pred` into a caller's buffer instead of allocating;
//! the distillation terms come only as `*_into` (adding `weight · dL/dstudent`; the teacher gets no gradient).
//!
//! # A foreign trainer
//!
//! ```
//! use angle_loss::{AngleLoss, AngleLossConfig, DataFormat};
//! use ndarray::Array2;
//!
//! // Pooled embeddings of a batch of 2 sentence pairs (zigzag: rows 0, 1 are pair 0; rows 2, 3 pair 1), as some
//! // encoder produced them.
//! let embeddings: Array2<f32> = ndarray::array![
//!     [1.0, 0.2, -0.3, 0.5],
//!     [0.1, 0.9, 0.4, -0.2],
//!     [0.8, 0.1, -0.2, 0.6],
//!     [-0.5, 0.3, 0.9, 0.1],
//! ];
//! let labels = [1.0f32, 0.0]; // pair 0 similar, pair 1 not
//!
//! // angle-emb's defaults, with the cosine term switched on; the config serialises for checkpoints.
//! let config = AngleLossConfig { cosine_w: 1.0, ..AngleLossConfig::default() };
//! let json = serde_json::to_string(&config).unwrap();
//! let loss_fn = AngleLoss::new(serde_json::from_str(&json).unwrap());
//!
//! let out = loss_fn.compute(DataFormat::A, embeddings.view(), &labels, None).unwrap();
//! assert!(out.loss.is_finite() && out.loss > 0.0);
//! assert_eq!(out.grad.dim(), embeddings.dim()); // dL/d embeddings: back-propagate it through the encoder
//! println!("loss {} = cosine {:?} + ibn {:?} + 0.02 angle {:?}",
//!          out.loss, out.parts.cosine, out.parts.in_batch_negative, out.parts.angle);
//!
//! // One step of plain gradient descent on the embeddings themselves lowers the loss.
//! let stepped = &embeddings - &(0.01f32 * &out.grad);
//! let after = loss_fn.compute(DataFormat::A, stepped.view(), &labels, None).unwrap();
//! assert!(after.loss < out.loss);
//! ```
//!
//! # Numerics
//!
//! - Rows are normalised as `x / max(‖x‖, ε)` with ε = [`NORM_EPS`] (`torch.nn.functional.normalize`'s), in the angle
//!   objective too, so a zero embedding gives a finite loss and gradient.
//! - Masked entries are left out of the sums, never pushed down with `−1e12`; every log-sum-exp subtracts its maximum,
//!   and long sums (norms, dot products of the pair scores, softmax denominators, the ranking sum) are accumulated in
//!   `f64`. The similarity matrices are `f32` GEMMs on the `f32` path.
//! - The pair ranking is `O(n log n)` (sorted prefix sums) instead of the reference's `n × n` matrix; the
//!   in-batch and contrastive softmaxes stream over blocks of rows, so no `n × n` matrix is ever held whole.
//! - Bad input (NaN or infinity, label count, odd rows, odd dimension for the angle, empty batch) is a
//!   [`LossError`], never a panic.

mod ce;
mod check;
mod combined;
pub mod distill;
mod dot;
mod eig;
mod error;
pub mod ese;
pub mod matryoshka;
mod norm;
mod objectives;
mod pairs;
mod par;
mod rank;
mod real;
mod score;
mod sym;

pub use combined::{AngleLoss, AngleLossConfig, AngleLossOutput, DataFormat, LossParts, unsupervised_pairs};
pub use error::LossError;
pub use ese::{
    BaseObjective, EseConfig, EseOutput, EseParts, distill_loss_into, ese_loss, ese_loss_with_targets,
    pca_target,
};
pub use matryoshka::{Matryoshka, MatryoshkaObjective};
pub use objectives::{
    ContrastiveLayout, LossGrad, angle_loss, angle_loss_into, contrastive_loss, contrastive_loss_into,
    contrastive_loss_with_ids, contrastive_loss_with_ids_into, cosine_loss, cosine_loss_into,
    in_batch_negative_loss, in_batch_negative_loss_into,
};
pub use pairs::AnglePooling;
pub use real::Real;
pub use score::{angle_score, angle_slope, cosine_score, cosine_slope};

/// The floor of a row norm, as in `torch.nn.functional.normalize`: rows are divided by `max(‖x‖, NORM_EPS)`.
pub const NORM_EPS: f64 = 1e-12;
