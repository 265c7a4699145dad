//! One error type for the crate: every variant names the file, key or tensor at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
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
    /// `model_type` names no family we have.
    #[error("{path}: model_type `{found}` is not supported; supported: {supported}")]
    UnknownFamily {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// A shard named by `model.safetensors.index.json` is not there.
    #[error("{index}: shard `{shard}` is missing")]
    MissingShard { index: PathBuf, shard: String },
    #[error("{path}: no `model.safetensors` or `model.safetensors.index.json`")]
    NoWeights { path: PathBuf },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype}; supported: F32, F16, BF16 (and F64 in adapters)")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
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
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}

pub fn json_err(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> ModelError {
    let path = path.into();
    move |e| ModelError::Json {
        path,
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    }
}

pub fn cfg_err(path: &Path, key: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(json_err(path))
}
