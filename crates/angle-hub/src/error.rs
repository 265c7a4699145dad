//! What can go wrong finding a hub repository's files.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Neither a local path nor something that reads as a hub id.
    #[error(
        "{spec:?} is not a folder or file here, and not a Hugging Face Hub id (ORG/NAME[@REVISION]{hint})"
    )]
    NotFound { spec: String, hint: &'static str },
    #[error("{spec:?}: {message}")]
    BadId { spec: String, message: String },
    /// Offline (or the hub unreachable) and the cache lacks what is needed.
    #[error("{what} is not in the Hugging Face cache {cache}: {advice}")]
    NotCached {
        what: String,
        cache: PathBuf,
        advice: String,
    },
    /// The repository exists but lacks a file angle needs.
    #[error("{repo} (commit {commit}): {message}")]
    MissingFile {
        repo: String,
        commit: String,
        message: String,
    },
    #[error("{repo}: the hub request failed: {message}{advice}")]
    Request {
        repo: String,
        message: String,
        advice: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}
