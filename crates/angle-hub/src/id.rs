//! Hub ids: `ORG/NAME[@REVISION]` for models, `hf://datasets/ORG/NAME[@REVISION][/FOLDER]` for datasets.

use std::fmt;

use crate::HubError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// A repository at a revision (a branch, a tag or a commit hash; `main` when none is given).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoId {
    pub kind: RepoKind,
    /// `ORG/NAME`.
    pub id: String,
    pub revision: String,
}

impl RepoId {
    /// `ORG/NAME[@REVISION]`; `None` when `spec` does not look like a hub id at all (a path, say).
    pub fn parse_model(spec: &str) -> Option<Result<RepoId, HubError>> {
        let (id, revision) = split_revision(spec);
        let (org, name) = id.split_once('/')?;
        if name.contains('/') || !is_part(org) || !is_part(name) {
            return None;
        }
        Some(check_revision(spec, revision).map(|revision| RepoId {
            kind: RepoKind::Model,
            id: id.to_string(),
            revision,
        }))
    }

    /// The cache folder name: `models--ORG--NAME` or `datasets--ORG--NAME`.
    pub fn folder_name(&self) -> String {
        let prefix = match self.kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        format!("{prefix}--{}", self.id.replace('/', "--"))
    }

    pub(crate) fn hf_hub_repo(&self) -> hf_hub::Repo {
        let kind = match self.kind {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        };
        hf_hub::Repo::with_revision(self.id.clone(), kind, self.revision.clone())
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RepoKind::Dataset {
            write!(f, "{DATASET_SCHEME}")?;
        }
        write!(f, "{}", self.id)?;
        if self.revision != DEFAULT_REVISION {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

pub const DEFAULT_REVISION: &str = "main";
pub const DATASET_SCHEME: &str = "hf://datasets/";

/// A hub dataset and, optionally, the folder of it to read (a configuration's folder, say).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DatasetId {
    pub repo: RepoId,
    pub folder: Option<String>,
}

impl DatasetId {
    /// `hf://datasets/ORG/NAME[@REVISION][/FOLDER]`; `None` when `spec` does not start with `hf://datasets/`.
    pub fn parse(spec: &str) -> Option<Result<DatasetId, HubError>> {
        let rest = spec.strip_prefix(DATASET_SCHEME)?;
        Some(parse_dataset(spec, rest))
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(folder) = &self.folder {
            write!(f, "/{folder}")?;
        }
        Ok(())
    }
}

fn parse_dataset(spec: &str, rest: &str) -> Result<DatasetId, HubError> {
    let bad = |message: &str| HubError::BadId {
        spec: spec.to_string(),
        message: format!("{message}; expected hf://datasets/ORG/NAME[@REVISION][/FOLDER]"),
    };
    let (org, rest) = rest.split_once('/').ok_or_else(|| bad("no NAME after ORG"))?;
    let end = rest.find(['@', '/']).unwrap_or(rest.len());
    let (name, mut rest) = rest.split_at(end);
    if !is_part(org) || !is_part(name) {
        return Err(bad("ORG and NAME take letters, digits, `-`, `_` and `.`"));
    }
    let mut revision = DEFAULT_REVISION.to_string();
    if let Some(r) = rest.strip_prefix('@') {
        let end = r.find('/').unwrap_or(r.len());
        revision = check_revision(spec, Some(&r[..end]))?;
        rest = &r[end..];
    }
    let folder = rest.trim_matches('/');
    if folder.split('/').any(|p| p == "..") {
        return Err(bad("FOLDER may not contain `..`"));
    }
    Ok(DatasetId {
        repo: RepoId {
            kind: RepoKind::Dataset,
            id: format!("{org}/{name}"),
            revision,
        },
        folder: (!folder.is_empty()).then(|| folder.to_string()),
    })
}

fn split_revision(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (spec, None),
    }
}

fn check_revision(spec: &str, revision: Option<&str>) -> Result<String, HubError> {
    match revision {
        None => Ok(DEFAULT_REVISION.to_string()),
        Some(r) if !r.is_empty() && !r.split('/').any(|p| p.is_empty() || p == "..") => Ok(r.to_string()),
        Some(_) => Err(HubError::BadId {
            spec: spec.to_string(),
            message: "empty or malformed revision after `@`".into(),
        }),
    }
}

/// The hub's rule for an ORG or NAME: letters, digits, `-`, `_`, `.`, not starting or ending with `-` or `.`.
fn is_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// Whether a revision names a commit (40 hex digits) rather than a branch or tag.
pub(crate) fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids() {
        let r = RepoId::parse_model("WhereIsAI/UAE-Large-V1").unwrap().unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("WhereIsAI/UAE-Large-V1", "main")
        );
        assert_eq!(r.folder_name(), "models--WhereIsAI--UAE-Large-V1");
        let r = RepoId::parse_model("Qwen/Qwen3-0.6B@v1.0").unwrap().unwrap();
        assert_eq!(r.revision, "v1.0");
        assert_eq!(r.to_string(), "Qwen/Qwen3-0.6B@v1.0");
        for path in [
            "./model",
            "/abs/path",
            "a/b/c",
            "model",
            "../shared/models/x",
            "a/.b",
        ] {
            assert!(RepoId::parse_model(path).is_none(), "{path}");
        }
        assert!(RepoId::parse_model("org/name@").unwrap().is_err());
    }

    #[test]
    fn dataset_ids() {
        let d = DatasetId::parse("hf://datasets/SeanLee97/all_nli_angle_format_a")
            .unwrap()
            .unwrap();
        assert_eq!(d.repo.id, "SeanLee97/all_nli_angle_format_a");
        assert_eq!(
            d.repo.folder_name(),
            "datasets--SeanLee97--all_nli_angle_format_a"
        );
        assert_eq!(d.folder, None);
        let d = DatasetId::parse("hf://datasets/mteb/stsbenchmark-sts@abc/data/")
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.repo.revision.as_str(), d.folder.as_deref()),
            ("abc", Some("data"))
        );
        assert_eq!(d.to_string(), "hf://datasets/mteb/stsbenchmark-sts@abc/data");
        assert!(DatasetId::parse("data/train.csv").is_none());
        assert!(DatasetId::parse("hf://datasets/justname").unwrap().is_err());
        assert!(DatasetId::parse("hf://datasets/a/b/../c").unwrap().is_err());
    }
}
