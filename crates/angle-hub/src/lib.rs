//! Models and datasets from the Hugging Face Hub, the way transformers and sentence-transformers find them.
//!
//! `--model ORG/NAME[@REVISION]` and `--train hf://datasets/ORG/NAME[@REVISION][/FOLDER]` resolve to folders of
//! huggingface_hub's cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), which the loaders
//! read like any local folder. Only the files angle reads are fetched: `config.json`, `tokenizer.json` and the small
//! tokenizer files, `model.safetensors` or a sharded `model.safetensors.index.json` with its shards, the
//! sentence-transformers files, and `adapter_config.json` + `adapter_model.safetensors` for a peft adapter; of a
//! dataset, the data files of the split asked for. `HF_HUB_OFFLINE=1` reads the cache only; `HF_TOKEN` (or the
//! token file of `huggingface-cli login`) authenticates gated repositories. A local path always wins over a hub id.
//!
//! ```no_run
//! let m = angle_hub::resolve_model("sentence-transformers/all-MiniLM-L6-v2").unwrap();
//! println!("{} from {:?}", m.dir.display(), m.hub.map(|s| s.commit));
//! ```

mod env;
mod error;
mod id;
mod resolve;
pub mod select;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use env::HubEnv;
pub use error::HubError;
pub use id::{DATASET_SCHEME, DEFAULT_REVISION, DatasetId, RepoId, RepoKind};
pub use resolve::{Hub, Snapshot};

/// A model argument made local: the folder to load, and the hub snapshot it came from (if it did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedModel {
    pub dir: PathBuf,
    pub hub: Option<Snapshot>,
}

/// A model folder, or a hub id resolved through the process's cache (once per id and process: every later
/// call returns the same snapshot, so a run reads one commit throughout).
pub fn resolve_model(spec: impl AsRef<Path>) -> Result<ResolvedModel, HubError> {
    let spec = spec.as_ref();
    if spec.exists() {
        return Ok(ResolvedModel {
            dir: spec.to_path_buf(),
            hub: None,
        });
    }
    let text = spec.to_string_lossy();
    let repo = match RepoId::parse_model(&text) {
        Some(r) => r?,
        None => {
            return Err(HubError::NotFound {
                spec: text.into_owned(),
                hint: "",
            });
        }
    };
    let memo = memo();
    if let Some(s) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&repo) {
        return Ok(ResolvedModel {
            dir: s.dir.clone(),
            hub: Some(s.clone()),
        });
    }
    let snap = process_hub().model(&repo)?;
    memo.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(repo, snap.clone());
    Ok(ResolvedModel {
        dir: snap.dir.clone(),
        hub: Some(snap),
    })
}

/// The models resolved from the hub in this process.
fn memo() -> &'static Mutex<HashMap<RepoId, Snapshot>> {
    static MEMO: OnceLock<Mutex<HashMap<RepoId, Snapshot>>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The hub snapshot this process resolved to the folder `dir`, if any: how a checkpoint or an adapter names its
/// base by hub id rather than by a cache path.
pub fn snapshot_of_dir(dir: impl AsRef<Path>) -> Option<Snapshot> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = canon(dir.as_ref());
    let memo = memo().lock().unwrap_or_else(|e| e.into_inner());
    memo.values().find(|s| canon(&s.dir) == dir).cloned()
}

/// The data files of a `hf://datasets/...` argument's split, through the process's cache; `None` when `spec` is
/// not a hub dataset (a local file or folder, which always wins).
pub fn resolve_dataset(
    spec: impl AsRef<Path>,
    split: &str,
) -> Option<Result<(Snapshot, Vec<PathBuf>), HubError>> {
    let id = dataset_id_of(spec.as_ref())?;
    Some(id.and_then(|id| process_hub().dataset_split(&id, split)))
}

/// The folder holding `names` of a `hf://datasets/ORG/NAME[/FOLDER]` argument (a BEIR folder: `corpus.jsonl`,
/// `queries.jsonl`, `qrels/<split>.tsv`), through the process's cache; `None` when `spec` is not a hub dataset.
pub fn resolve_dataset_files(spec: impl AsRef<Path>, names: &[&str]) -> Option<Result<PathBuf, HubError>> {
    let id = dataset_id_of(spec.as_ref())?;
    Some(id.and_then(|id| process_hub().dataset_files(&id, names).map(|s| s.dir)))
}

/// The dataset id a `hf://datasets/...` argument names; `None` for anything else, and for an existing local path
/// (which always wins).
fn dataset_id_of(spec: &Path) -> Option<Result<DatasetId, HubError>> {
    if spec.exists() {
        return None;
    }
    DatasetId::parse(&spec.to_string_lossy())
}

/// The hub settings read from the environment at first use.
fn process_hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::from_env)
}
