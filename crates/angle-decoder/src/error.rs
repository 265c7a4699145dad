//! One error type for the crate: every variant names the file, key or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON at line {line}, column {column}: {msg}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A `config.json` / `adapter_config.json` key is missing, malformed or unsupported.
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    // Checkpoint files (shards, tensors, dtypes): `angle_models::ModelError`, wrapped as `Models`.
    /// An adapter that does not fit this base model.
    #[error("{path}: adapter does not match the base model: {msg}")]
    Adapter { path: PathBuf, msg: String },
    /// A LoRA setting that cannot be applied (e.g. a target module that matches nothing).
    #[error("LoRA: {0}")]
    Lora(String),
    /// A batch the model cannot run (token id out of range, sequence too long, ...).
    #[error("batch: {0}")]
    Batch(String),
    /// The operation needs state the model does not have (backward before forward, ...).
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Tensor(#[from] angle_tensor::TensorError),
    #[error(transparent)]
    Encoder(#[from] angle_encoder::EncoderError),
    #[error(transparent)]
    Models(#[from] angle_models::ModelError),
}

pub type Result<T, E = DecoderError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DecoderError {
    let path = path.into();
    move |source| DecoderError::Io { path, source }
}

pub(crate) fn json_err(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> DecoderError {
    let path = path.into();
    move |e| DecoderError::Json {
        path,
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    }
}

pub(crate) fn cfg_err(path: &std::path::Path, key: &str, msg: impl Into<String>) -> DecoderError {
    DecoderError::Config {
        path: path.to_path_buf(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(json_err(path))
}
