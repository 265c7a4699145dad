//! The AnglE trainer: configuration, the training loop, checkpoints in Hugging Face layout, evaluation, and the
//! pieces the `angle` binary is made of.
//!
//! Data flows one way: `angle-data` batches → `angle-encoder` forward → pooling → `angle-loss` → encoder backward
//! → gradient norm and clipping → AdamW (`angle-tensor`) → the next step. Each step lives in the file named after
//! it: [`trainer`] runs the loop, [`checkpoint`] writes and reads checkpoints, [`evaluate`] scores STS data.

pub mod atomic;
pub mod backbone;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod cputime;
pub mod datasets;
pub mod decoder;
pub mod device;
pub mod distill;
pub mod embed;
pub mod embed_cache;
pub mod error;
pub mod ese;
pub mod evaluate;
pub mod grad_cache;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod mine;
pub mod npy;
pub mod plot;
pub mod precision;
pub mod preflight;
pub mod quantize;
pub mod retrieval;
pub mod saturation;
pub mod schedule;
pub mod search;
pub mod similarity;
pub mod stats;
pub mod suite;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{RunSummary, TrainOptions, train};
