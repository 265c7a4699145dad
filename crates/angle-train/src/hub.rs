//! Hub ids (`ORG/NAME[@REVISION]`, `hf://datasets/ORG/NAME`) made local through `angle-hub` before anything is
//! loaded, so the loaders, the trainer and checkpoints only ever see folders and files.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Result, TrainError};

fn hub_err(e: angle_hub::HubError) -> TrainError {
    TrainError::Hub(e.to_string())
}

/// The folder of a model argument: itself when it exists here, else the hub snapshot of the id.
pub fn model_dir(spec: &Path) -> Result<PathBuf> {
    angle_hub::resolve_model(spec).map(|m| m.dir).map_err(hub_err)
}

/// How a checkpoint names a base model that came from the hub: `{"id", "revision", "commit"}`; `None` for a
/// local folder.
pub fn hub_record(model_dir: &Path) -> Option<Value> {
    let s = angle_hub::snapshot_of_dir(model_dir)?;
    Some(json!({"id": s.repo.id, "revision": s.repo.revision, "commit": s.commit}))
}

/// A base model's name for files other tools read (`adapter_config.json`'s `base_model_name_or_path`): the hub id
/// when it came from the hub, else the folder.
pub fn model_name(model_dir: &Path) -> String {
    match angle_hub::snapshot_of_dir(model_dir) {
        Some(s) => s.repo.to_string(),
        None => model_dir.to_string_lossy().into_owned(),
    }
}

/// The data files of `--train`/`--valid` sources: a file is itself, a folder its data files (shards), a
/// `hf://datasets/ORG/NAME` id the files of `split` in the cache.
pub fn data_files(specs: &[PathBuf], split: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for spec in specs {
        match angle_hub::resolve_dataset(spec, split) {
            Some(r) => files.extend(r.map_err(hub_err)?.1),
            None => files.extend(angle_data::data_files(spec).map_err(|e| TrainError::Data(e.to_string()))?),
        }
    }
    Ok(files)
}

/// A BEIR folder argument: a local folder is itself, `hf://datasets/ORG/NAME[/FOLDER]` the cached snapshot folder
/// holding its `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv` (fetched when online).
pub fn beir_dir(spec: &Path, split: &str) -> Result<PathBuf> {
    let qrels = format!("qrels/{split}.tsv");
    match angle_hub::resolve_dataset_files(spec, &["corpus.jsonl", "queries.jsonl", &qrels]) {
        Some(r) => r.map_err(hub_err),
        None => Ok(spec.to_path_buf()),
    }
}

/// How sources read in messages: `a.csv`, or `a.csv (+3 more)`.
pub fn describe(specs: &[PathBuf]) -> String {
    match specs {
        [] => "(none)".into(),
        [one] => one.display().to_string(),
        [first, rest @ ..] => format!("{} (+{} more)", first.display(), rest.len()),
    }
}
