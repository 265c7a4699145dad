//! The AnglE trainer: configuration, the training loop, checkpoints in Hugging Face layout, evaluation, and the
//! pieces the `angle` binary is made of.
//!
//! Data flows one way: `angle-data` batches → `angle-encoder` forward → pooling → `angle-loss` → encoder backward
//! → gradient norm and clipping → AdamW (`angle-tensor`) → the next step. Each step lives in the file named after
//! it: [`trainer`] runs the loop, [`checkpoint`] writes and reads checkpoints, [`evaluate`] scores STS data.

pub mod atomic;
pub mod config;
pub mod error;
pub mod metrics;
pub mod npy;
pub mod plot;
pub mod schedule;
pub mod stats;

pub use config::{AnglePooling, LossConfig, PoolingMode, TrainConfig};
pub use error::{Result, TrainError};
