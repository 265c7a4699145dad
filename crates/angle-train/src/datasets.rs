//! Several training datasets in one run: `--train NAME=PATH ...`, each batch from one of them (angle-data's
//! `mix`), each with its own format and, optionally, its own objective weights (`--objective NAME=cosine:1,...`).
//!
//! Without names, every `--train` path is read as one dataset, as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use angle_data::Format;
use angle_loss::AngleLossConfig;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// One training dataset: its name (`None`: the unnamed single dataset) and its paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: Option<String>,
    pub paths: Vec<PathBuf>,
}

impl Source {
    /// The name in logs and `metrics.jsonl`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("train")
    }
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(TrainError::Config(msg))
}

/// `NAME=REST` when `NAME` is a plain name (letters, digits, `_`, `-`, `.`) and the whole item is not an existing
/// path (a file may have `=` in its name).
fn split_name(item: &str) -> Option<(&str, &str)> {
    if Path::new(item).exists() {
        return None;
    }
    let (name, rest) = item.split_once('=')?;
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain.then_some((name, rest))
}

/// The datasets `--train` names: all entries named (`NAME=PATH`, one dataset each) or none (one dataset).
pub fn sources(train: &[PathBuf]) -> Result<Vec<Source>> {
    let items: Vec<(String, Option<(String, PathBuf)>)> = train
        .iter()
        .map(|p| {
            let s = p.to_string_lossy().into_owned();
            let named = split_name(&s).map(|(n, rest)| (n.to_string(), PathBuf::from(rest)));
            (s, named)
        })
        .collect();
    if items.iter().all(|(_, n)| n.is_none()) {
        return Ok(vec![Source {
            name: None,
            paths: train.to_vec(),
        }]);
    }
    let mut out: Vec<Source> = Vec::new();
    for (raw, named) in items {
        let Some((name, path)) = named else {
            return refuse(format!(
                "--train {raw}: give every dataset a name (NAME=PATH) when one has a name, or none"
            ));
        };
        if path.as_os_str().is_empty() {
            return refuse(format!("--train {raw}: no path after {name}="));
        }
        if out.iter().any(|s| s.name.as_deref() == Some(&name)) {
            return refuse(format!(
                "--train: the dataset name {name} is given twice (one path per name: a file, a folder of shards \
                 or hf://datasets/ORG/NAME)"
            ));
        }
        out.push(Source {
            name: Some(name),
            paths: vec![path],
        });
    }
    Ok(out)
}

fn names(sources: &[Source]) -> String {
    sources.iter().map(Source::label).collect::<Vec<_>>().join(", ")
}

fn index_of(sources: &[Source], name: &str, flag: &str) -> Result<usize> {
    match sources.iter().position(|s| s.name.as_deref() == Some(name)) {
        Some(i) => Ok(i),
        None if sources.len() == 1 && sources[0].name.is_none() => refuse(format!(
            "{flag} names the dataset {name}, but --train gives no names (use --train {name}=PATH)"
        )),
        None => refuse(format!(
            "{flag}: no training dataset is named {name} (--train gives {})",
            names(sources)
        )),
    }
}

/// Each dataset's forced format: `--format B` for all, or `NAME=B,OTHER=C` per dataset (`None`: detected).
pub fn formats(format: Option<&str>, sources: &[Source]) -> Result<Vec<Option<Format>>> {
    let mut out = vec![None; sources.len()];
    let Some(spec) = format else { return Ok(out) };
    let parse = |f: &str| -> Result<Format> {
        f.trim()
            .parse::<Format>()
            .map_err(|e| TrainError::Config(format!("--format {spec:?}: {e}")))
    };
    if !spec.contains('=') {
        out.fill(Some(parse(spec)?));
        return Ok(out);
    }
    for entry in spec.split(',').filter(|e| !e.trim().is_empty()) {
        let Some((name, f)) = entry.split_once('=') else {
            return refuse(format!("--format {entry:?}: NAME=FORMAT, as the other entries"));
        };
        let i = index_of(sources, name.trim(), "--format")?;
        if out[i].is_some() {
            return refuse(format!("--format: the dataset {} is given twice", name.trim()));
        }
        out[i] = Some(parse(f)?);
    }
    Ok(out)
}

/// Each dataset's objective: the run's `loss`, with the weights its `--objective NAME=cosine:1,ibn:1,angle:0.02`
/// entry gives (the other weights and every scale stay the run's).
pub fn objectives(config: &TrainConfig, sources: &[Source]) -> Result<Vec<AngleLossConfig>> {
    let mut out = vec![config.loss.clone(); sources.len()];
    let mut seen = BTreeMap::new();
    for entry in &config.objectives {
        let Some((name, weights)) = entry.split_once('=') else {
            return refuse(format!(
                "--objective {entry:?}: NAME=cosine:W,ibn:W,angle:W (NAME a dataset of --train)"
            ));
        };
        let i = index_of(sources, name, "--objective")?;
        if seen.insert(i, ()).is_some() {
            return refuse(format!("--objective: the dataset {name} is given twice"));
        }
        for part in weights.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, w) = part.split_once(':').unwrap_or((part, ""));
            let w: f64 = w.trim().parse().map_err(|_| {
                TrainError::Config(format!("--objective {entry:?}: {part:?} is not OBJECTIVE:WEIGHT"))
            })?;
            if !(w.is_finite() && w >= 0.0) {
                return refuse(format!(
                    "--objective {entry:?}: the weight of {key} must be finite and non-negative"
                ));
            }
            let l = &mut out[i];
            match key.trim() {
                "cosine" => l.cosine_w = w,
                "ibn" => l.ibn_w = w,
                "angle" => l.angle_w = w,
                "cln" | "contrastive" => l.cln_w = w,
                other => {
                    return refuse(format!(
                        "--objective {entry:?}: unknown objective {other:?} (cosine, ibn, angle, cln)"
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Everything about the datasets that can be checked before any file is read.
pub fn check(config: &TrainConfig) -> Result<()> {
    let s = sources(&config.train)?;
    formats(config.format.as_deref(), &s)?;
    objectives(config, &s)?;
    config
        .sampler
        .parse::<angle_data::Sampler>()
        .map_err(|e| TrainError::Config(format!("--sampler: {e}")))?;
    Ok(())
}

/// The flags of several datasets and of retrieval validation (flattened into `angle train`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DatasetArgs {
    /// Several named datasets (`--train NAME=PATH ...`): proportional (every batch of every dataset once an
    /// epoch, in a shuffled order) or round-robin (one batch of each in turn, until the smallest runs out); every
    /// batch comes from one dataset [default: proportional].
    #[arg(long)]
    pub sampler: Option<String>,
    /// A dataset's own objective weights, NAME=cosine:W,ibn:W,angle:W,cln:W (the others stay the run's); one
    /// entry per dataset, repeatable.
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append)]
    pub objective: Vec<String>,
    /// A BEIR folder (corpus.jsonl, queries.jsonl, qrels/dev.tsv) scored at each evaluation: NDCG@10, MRR@10,
    /// MAP@100, Recall@10/100 in metrics.jsonl; NDCG@10 decides best/. Queries take --query-prompt, documents
    /// --doc-prompt (else --text-prompt).
    #[arg(long)]
    pub valid_retrieval: Option<PathBuf>,
}

impl DatasetArgs {
    /// Writes the flags into the configuration; `set` gets the keys given.
    pub fn apply(&self, c: &mut TrainConfig, set: &mut Vec<String>) {
        if let Some(s) = &self.sampler {
            c.sampler = s.clone();
            set.push("sampler".into());
        }
        if !self.objective.is_empty() {
            c.objectives = self.objective.clone();
            set.push("objectives".into());
        }
        if let Some(d) = &self.valid_retrieval {
            c.valid_retrieval = Some(d.clone());
            set.push("valid_retrieval".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn unnamed_paths_are_one_dataset_and_named_ones_several() {
        let s = sources(&paths(&["a.csv", "b.csv"])).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].label(), s[0].paths.len()), ("train", 2));
        let s = sources(&paths(&["nli=data/nli.jsonl", "sts=hf://datasets/x/y"])).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name.as_deref(), Some("sts"));
        assert_eq!(s[1].paths, paths(&["hf://datasets/x/y"]));
    }

    #[test]
    fn bad_dataset_lists_are_named() {
        let e = sources(&paths(&["a=x.csv", "a=y.csv"])).unwrap_err().to_string();
        assert!(e.contains("a is given twice"), "{e}");
        let e = sources(&paths(&["a=x.csv", "y.csv"])).unwrap_err().to_string();
        assert!(e.contains("y.csv") && e.contains("NAME=PATH"), "{e}");
        let e = sources(&paths(&["a="])).unwrap_err().to_string();
        assert!(e.contains("no path"), "{e}");
    }

    #[test]
    fn formats_for_all_or_per_dataset() {
        let s = sources(&paths(&["a=x", "b=y"])).unwrap();
        assert_eq!(formats(Some("B"), &s).unwrap(), vec![Some(Format::B); 2]);
        assert_eq!(formats(Some("b=C"), &s).unwrap(), vec![None, Some(Format::C)]);
        let e = formats(Some("c=A"), &s).unwrap_err().to_string();
        assert!(
            e.contains("no training dataset is named c") && e.contains("a, b"),
            "{e}"
        );
        let one = sources(&paths(&["x"])).unwrap();
        assert!(
            formats(Some("a=B"), &one)
                .unwrap_err()
                .to_string()
                .contains("gives no names")
        );
    }

    #[test]
    fn objective_overrides_touch_only_their_dataset() {
        let c = TrainConfig {
            train: paths(&["a=x", "b=y"]),
            objectives: vec!["b=cosine:0,ibn:1,angle:0.02".into()],
            ..Default::default()
        };
        let s = sources(&c.train).unwrap();
        let o = objectives(&c, &s).unwrap();
        assert_eq!(o[0], c.loss);
        assert_eq!((o[1].cosine_w, o[1].ibn_w, o[1].angle_w), (0.0, 1.0, 0.02));
        assert_eq!(o[1].cosine_tau, c.loss.cosine_tau);
        for (bad, says) in [
            ("b=cosine:x", "OBJECTIVE:WEIGHT"),
            ("b=focal:1", "unknown objective"),
            ("b=angle:-1", "non-negative"),
            ("z=angle:1", "no training dataset is named z"),
        ] {
            let c = TrainConfig {
                objectives: vec![bad.into()],
                ..c.clone()
            };
            let e = objectives(&c, &s).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
