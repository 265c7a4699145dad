//! One error type for the crate: every variant names the file, key or tensor at fault.

use std::path::PathBuf;

/// What went wrong while loading, saving or running the encoder.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
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
    /// A `config.json` (or `1_Pooling/config.json`) key is missing, malformed or unsupported.
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, the config says {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: unexpected tensor `{name}` (not a parameter of a BERT encoder)")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// The parameter buffer handed to `save` does not match the layout.
    #[error("parameter buffer has {found} floats, the layout needs {expected}")]
    BufferSize { found: usize, expected: usize },
    /// A batch that the model cannot run (token id out of range, sequence too long, ...).
    #[error("batch: {0}")]
    Batch(String),
    /// The batch needs more activation memory than the arena was sized for.
    #[error("activation arena: {0}")]
    Capacity(String),
    /// An op rejected its input (names the op and tensor); a bug or an inconsistent arena.
    #[error(transparent)]
    Tensor(#[from] angle_tensor::TensorError),
    #[error("pooling: {0}")]
    Pooling(String),
}

pub type Result<T, E = EncoderError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EncoderError {
    let path = path.into();
    move |source| EncoderError::Io { path, source }
}

pub(crate) fn json_err(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> EncoderError {
    let path = path.into();
    move |e| EncoderError::Json {
        path,
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    }
}
