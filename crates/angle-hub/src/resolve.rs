//! From a hub id to files on this machine: the cache first, the hub (through `hf-hub`) when allowed.
//!
//! The cache is huggingface_hub's: `<cache>/models--ORG--NAME/refs/<revision>` holds a commit hash and
//! `snapshots/<commit>/` holds the repository's files (links into `blobs/`). A snapshot folder is an ordinary
//! model folder, so the loaders read it as they read a local path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hf_hub::api::sync::{Api, ApiBuilder};

use crate::id::is_commit;
use crate::select::{SHARD_INDEX, model_files, shard_files, split_files};
use crate::{DatasetId, HubEnv, HubError, RepoId};

/// A repository's files at one commit, on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub repo: RepoId,
    pub commit: String,
    /// `<cache>/<folder>/snapshots/<commit>`, laid out like the repository.
    pub dir: PathBuf,
    /// The files angle fetched or found, relative to `dir`.
    pub files: Vec<String>,
}

/// Resolves hub ids against one cache; the HTTP client is made on first use, never when offline.
pub struct Hub {
    env: HubEnv,
    api: OnceLock<Result<Api, String>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("env", &self.env).finish()
    }
}

const OFFLINE_ADVICE: &str = "HF_HUB_OFFLINE is set: unset it to download, or set HF_HUB_CACHE (or HF_HOME) to a \
                              cache that holds it";

impl Hub {
    pub fn new(env: HubEnv) -> Self {
        Hub {
            env,
            api: OnceLock::new(),
        }
    }

    pub fn from_env() -> Self {
        Hub::new(HubEnv::from_env())
    }

    pub fn env(&self) -> &HubEnv {
        &self.env
    }

    fn repo_folder(&self, repo: &RepoId) -> PathBuf {
        self.env.cache.join(repo.folder_name())
    }

    /// The files angle reads of a model (or LoRA adapter) repository.
    pub fn model(&self, repo: &RepoId) -> Result<Snapshot, HubError> {
        let (commit, listing, online) = self.listing(repo)?;
        let mut files =
            model_files(&listing).map_err(|m| self.missing(repo, &commit, online, &m.to_string()))?;
        self.fetch_all(repo, &commit, &files, online)?;
        if files.iter().any(|f| f == SHARD_INDEX) {
            let dir = self.snapshot_dir(repo, &commit);
            let index = dir.join(SHARD_INDEX);
            let text = std::fs::read_to_string(&index).map_err(|e| HubError::File {
                path: index.clone(),
                message: e.to_string(),
            })?;
            let shards = shard_files(&text).map_err(|message| HubError::File {
                path: index.clone(),
                message,
            })?;
            self.fetch_all(repo, &commit, &shards, online)?;
            files.extend(shards);
        }
        Ok(Snapshot {
            repo: repo.clone(),
            dir: self.snapshot_dir(repo, &commit),
            commit,
            files,
        })
    }

    /// The data files of one split of a dataset repository (see [`crate::select::split_files`]).
    pub fn dataset_split(&self, id: &DatasetId, split: &str) -> Result<(Snapshot, Vec<PathBuf>), HubError> {
        let repo = &id.repo;
        let (commit, listing, online) = self.listing(repo)?;
        let files = split_files(&listing, id.folder.as_deref(), split).map_err(|m| {
            let m = format!("{}: {m}", id.folder.as_deref().unwrap_or("the repository"));
            self.missing(repo, &commit, online, &m)
        })?;
        self.fetch_all(repo, &commit, &files, online)?;
        let dir = self.snapshot_dir(repo, &commit);
        let paths = files.iter().map(|f| dir.join(f)).collect();
        Ok((
            Snapshot {
                repo: repo.clone(),
                commit,
                dir,
                files,
            },
            paths,
        ))
    }

    /// Named files of a dataset repository (paths relative to its root, or to the id's folder), fetched into the
    /// snapshot: for layouts that are files rather than splits (a BEIR folder). The returned snapshot's `dir` is
    /// the folder they are in.
    pub fn dataset_files(&self, id: &DatasetId, names: &[&str]) -> Result<Snapshot, HubError> {
        let repo = &id.repo;
        let (commit, listing, online) = self.listing(repo)?;
        let prefix = id
            .folder
            .as_deref()
            .map(|f| format!("{}/", f.trim_matches('/')))
            .unwrap_or_default();
        let files: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
        if let Some(absent) = files.iter().find(|f| !listing.contains(f)) {
            let m = format!("no {absent} (a BEIR folder holds {})", names.join(", "));
            return Err(self.missing(repo, &commit, online, &m));
        }
        self.fetch_all(repo, &commit, &files, online)?;
        let root = self.snapshot_dir(repo, &commit);
        Ok(Snapshot {
            repo: repo.clone(),
            dir: root.join(prefix.trim_end_matches('/')),
            commit,
            files,
        })
    }

    fn snapshot_dir(&self, repo: &RepoId, commit: &str) -> PathBuf {
        self.repo_folder(repo).join("snapshots").join(commit)
    }

    /// What a file is missing from: offline, the cached snapshot (so the advice is about the cache).
    fn missing(&self, repo: &RepoId, commit: &str, online: bool, message: &str) -> HubError {
        if online {
            HubError::MissingFile {
                repo: repo.to_string(),
                commit: commit.to_string(),
                message: message.to_string(),
            }
        } else {
            HubError::NotCached {
                what: format!("{repo} ({message})"),
                cache: self.snapshot_dir(repo, commit),
                advice: self.offline_advice(),
            }
        }
    }

    fn offline_advice(&self) -> String {
        if self.env.offline {
            OFFLINE_ADVICE.to_string()
        } else {
            "the hub is unreachable: connect, or set HF_HUB_CACHE (or HF_HOME) to a cache that holds it"
                .to_string()
        }
    }

    /// The commit the revision points at in the cache, if any.
    fn cached_commit(&self, repo: &RepoId) -> Option<String> {
        let folder = self.repo_folder(repo);
        if let Ok(c) = std::fs::read_to_string(folder.join("refs").join(&repo.revision)) {
            let c = c.trim().to_string();
            if !c.is_empty() {
                return Some(c);
            }
        }
        (is_commit(&repo.revision) && folder.join("snapshots").join(&repo.revision).is_dir())
            .then(|| repo.revision.clone())
    }

    /// The commit and the file list: from the hub when online (one API call), else from the cached snapshot.
    /// Online but unreachable, a cached snapshot is used with a warning, as huggingface_hub does.
    fn listing(&self, repo: &RepoId) -> Result<(String, Vec<String>, bool), HubError> {
        if !self.env.offline {
            match self
                .api()
                .and_then(|api| api.repo(repo.hf_hub_repo()).info().map_err(|e| e.to_string()))
            {
                Ok(info) => {
                    let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
                    return Ok((info.sha, files, true));
                }
                Err(message) => {
                    if self.cached_commit(repo).is_none() {
                        return Err(HubError::Request {
                            repo: repo.to_string(),
                            message,
                            advice: format!(
                                "; nothing cached in {} either (set HF_HUB_CACHE or HF_HOME to a cache that \
                                 holds it, and HF_HUB_OFFLINE=1 to skip the network)",
                                self.repo_folder(repo).display()
                            ),
                        });
                    }
                    eprintln!(
                        "warning: {repo}: the hub is unreachable ({message}); using the cached snapshot"
                    );
                }
            }
        }
        let Some(commit) = self.cached_commit(repo) else {
            return Err(HubError::NotCached {
                what: repo.to_string(),
                cache: self.repo_folder(repo),
                advice: format!("no refs/{} there; {}", repo.revision, self.offline_advice()),
            });
        };
        let dir = self.snapshot_dir(repo, &commit);
        let mut files = Vec::new();
        list_files(&dir, "", &mut files);
        files.sort();
        Ok((commit, files, false))
    }

    fn api(&self) -> Result<&Api, String> {
        let api = self.api.get_or_init(|| {
            let mut b = ApiBuilder::from_cache(hf_hub::Cache::new(self.env.cache.clone()))
                .with_token(self.env.token.clone())
                .with_progress(true);
            if let Some(e) = &self.env.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build().map_err(|e| e.to_string())
        });
        api.as_ref().map_err(Clone::clone)
    }

    /// Makes every file present in the snapshot: already there, or downloaded at exactly `commit`.
    fn fetch_all(&self, repo: &RepoId, commit: &str, files: &[String], online: bool) -> Result<(), HubError> {
        let dir = self.snapshot_dir(repo, commit);
        let absent: Vec<&String> = files.iter().filter(|f| !dir.join(f).is_file()).collect();
        if absent.is_empty() {
            return if online {
                write_ref(&self.repo_folder(repo), &repo.revision, commit)
            } else {
                Ok(())
            };
        }
        if !online {
            let names: Vec<&str> = absent.iter().map(|s| s.as_str()).collect();
            return Err(HubError::NotCached {
                what: format!("{} of {repo}", names.join(", ")),
                cache: dir,
                advice: self.offline_advice(),
            });
        }
        let api = self.api().map_err(|message| HubError::Request {
            repo: repo.to_string(),
            message,
            advice: String::new(),
        })?;
        // Downloading at the commit pins every file to the listing's snapshot; hf-hub records the commit as a ref
        // named after itself, which is removed again unless the user asked for that commit.
        let pinned = RepoId {
            revision: commit.to_string(),
            ..repo.clone()
        };
        let self_ref = self.repo_folder(repo).join("refs").join(commit);
        let had_self_ref = self_ref.exists();
        let remote = api.repo(pinned.hf_hub_repo());
        for f in absent {
            remote.download(f).map_err(|e| HubError::Request {
                repo: repo.to_string(),
                message: format!("downloading {f}: {e}"),
                advice: String::new(),
            })?;
        }
        if !had_self_ref && repo.revision != commit {
            let _ = std::fs::remove_file(&self_ref);
        }
        write_ref(&self.repo_folder(repo), &repo.revision, commit)
    }
}

fn write_ref(folder: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    if is_commit(revision) {
        return Ok(());
    }
    let path = folder.join("refs").join(revision);
    let io = |e: std::io::Error| HubError::File {
        path: path.clone(),
        message: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, commit).map_err(io)
}

/// Files under `dir` (following the cache's links to blobs), as `/`-separated paths relative to it.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        if path.is_dir() {
            list_files(&path, &rel, out);
        } else if path.is_file() {
            out.push(rel);
        }
    }
}
