//! `metrics.jsonl`: one JSON object per line, `{"kind": "train", ...}` every log interval and `{"kind": "eval", ...}`
//! after each evaluation. The SVG plot is drawn from this file, so a resumed run plots its whole history.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError, io_err};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train(TrainRecord),
    Eval(EvalRecord),
    /// `--valid-retrieval`: the BEIR set's metrics (× 100) after an evaluation.
    Retrieval(RetrievalRecord),
    /// Per-objective gradients and saturation shares at a logged step (`crate::saturation`).
    Saturation(crate::saturation::SaturationRecord),
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Eval(r) => r.step,
            Record::Retrieval(r) => r.step,
            Record::Saturation(r) => r.step,
        }
    }
}

/// Means over the optimizer steps since the previous record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    /// Each objective's weighted part of the loss, by name (`cosine`, `ibn`, `angle`, `contrastive`).
    pub parts: BTreeMap<String, f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Several datasets (`--train NAME=PATH ...`): each one's mean loss over its micro-batches since the previous
    /// record (absent with one dataset, and for a dataset that had no batch in the window).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datasets: BTreeMap<String, f64>,
    /// `--teacher`: the distillation term's mean (weighted), also part of `loss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub epoch: f64,
    /// Spearman and Pearson correlation × 100 of cosine similarity against the gold scores.
    pub spearman: f64,
    pub pearson: f64,
    pub pairs: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalRecord {
    pub step: u64,
    pub epoch: f64,
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub map_at_100: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub queries: usize,
    pub documents: usize,
    pub seconds: f64,
}

/// Appends records, flushing each line so a killed run leaves a readable file.
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Start a fresh file.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Continue a resumed run: keep the records up to `step` (a killed run may have logged steps past its last
    /// checkpoint; those steps are about to be replayed) and append after them.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        let kept: Vec<Record> = if path.exists() {
            read_records(path)?
                .into_iter()
                .filter(|r| r.step() <= step)
                .collect()
        } else {
            Vec::new()
        };
        let mut w = Self::create(path)?;
        for r in &kept {
            w.write(r)?;
        }
        Ok(w)
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|source| TrainError::Json {
            path: self.path.clone(),
            source,
        })?;
        writeln!(self.out, "{line}").map_err(io_err(&self.path))?;
        self.out.flush().map_err(io_err(&self.path))
    }
}

/// Read a metrics file. A torn last line (the process was killed mid-write) is ignored; any other bad line is an
/// error naming its line number.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let file = OpenOptions::new().read(true).open(path).map_err(io_err(path))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(io_err(path))?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() => break,
            Err(source) => {
                return Err(TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("line {}: {source}", i + 1),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> Record {
        Record::Train(TrainRecord {
            step,
            epoch: step as f64 / 10.0,
            loss: 1.5,
            parts: [("cosine".to_string(), 1.0), ("angle".to_string(), 0.5)].into(),
            lr: 1e-5,
            grad_norm: 2.0,
            pairs_per_s: 30.0,
            tokens_per_s: 900.0,
            elapsed_s: 1.0,
            datasets: BTreeMap::new(),
            distill: None,
        })
    }

    #[test]
    fn round_trip_and_resume_truncates_replayed_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::create(&path).unwrap();
        for s in 1..=5 {
            w.write(&train(s)).unwrap();
        }
        let ev = Record::Eval(EvalRecord {
            step: 5,
            epoch: 0.5,
            spearman: 80.0,
            pearson: 79.0,
            pairs: 10,
            seconds: 0.1,
        });
        w.write(&ev).unwrap();
        drop(w);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .starts_with(r#"{"kind":"train","step":1"#)
        );
        assert_eq!(read_records(&path).unwrap().len(), 6);

        let mut w = MetricsWriter::resume(&path, 3).unwrap();
        w.write(&train(4)).unwrap();
        drop(w);
        let steps: Vec<u64> = read_records(&path).unwrap().iter().map(Record::step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }

    #[test]
    fn torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let good = serde_json::to_string(&train(1)).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"kind\":\"tr")).unwrap();
        assert_eq!(read_records(&path).unwrap().len(), 1);
        std::fs::write(&path, format!("garbage\n{good}\n")).unwrap();
        let err = read_records(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
