//! The trainer's error type: every variant names the file, key or step it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("data: {0}")]
    Data(String),
    /// A hub id that does not resolve (offline without the files, a repository without safetensors, ...).
    #[error("{0}")]
    Hub(String),
    #[error("encoder: {0}")]
    Encoder(String),
    #[error("loss at step {step}: {msg}")]
    Loss { step: u64, msg: String },
    #[error("step {step}: {msg}")]
    Numeric { step: u64, msg: String },
    /// `--device cuda`: no `cuda` feature, no driver or device, or a model the GPU path lacks.
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// Attach a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
