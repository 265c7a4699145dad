//! The STS evaluation suite behind `angle eval`: several files in one call (one model load), every similarity
//! measure of [`crate::similarity`], a table per file and the mean over files, as text, markdown or JSON.
//!
//! Every distinct text of all the files is embedded once (STS files repeat sentences, and files may share them),
//! in batches sorted by length ([`Embedder::embed`]). Files are read by angle-data ([`load_sts`]): a format
//! angle-data learns to read (e.g. a parquet reader) is picked up here, for files and for folders, with no change.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use angle_data::{Dataset, Prompts, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::backbone::Backbone;
use crate::embed::Embedder;
use crate::error::{Result, TrainError};
use crate::evaluate::load_sts;
use crate::quantize::Quantization;
use crate::similarity::Measure;
use crate::stats::{pearson, spearman};

/// Spearman and Pearson × 100 of one measure against the gold scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    pub spearman: f64,
    pub pearson: f64,
}

/// One correlation per measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeasureTable {
    pub cosine: Correlation,
    pub dot: Correlation,
    pub euclidean: Correlation,
    pub manhattan: Correlation,
    pub angle: Correlation,
}

impl MeasureTable {
    pub fn get(&self, m: Measure) -> Correlation {
        match m {
            Measure::Cosine => self.cosine,
            Measure::Dot => self.dot,
            Measure::Euclidean => self.euclidean,
            Measure::Manhattan => self.manhattan,
            Measure::Angle => self.angle,
        }
    }

    fn from_fn(mut f: impl FnMut(Measure) -> Result<Correlation>) -> Result<Self> {
        Ok(MeasureTable {
            cosine: f(Measure::Cosine)?,
            dot: f(Measure::Dot)?,
            euclidean: f(Measure::Euclidean)?,
            manhattan: f(Measure::Manhattan)?,
            angle: f(Measure::Angle)?,
        })
    }
}

/// The scores of one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileScores {
    pub data: PathBuf,
    pub pairs: usize,
    pub skipped: usize,
    pub scores: MeasureTable,
    /// `--quantize`: the cosine correlations of the quantized embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedScores>,
}

/// The cosine correlations of quantized embeddings, as sentence-transformers' `EmbeddingSimilarityEvaluator` with
/// `precision` computes them: embeddings normalised, then quantized (the 8-bit kinds with ranges calibrated on the
/// file's own texts, both sides together), then compared as floats ([`crate::quantize`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedScores {
    pub quantization: String,
    pub cosine: Correlation,
}

/// The scores of every file and their mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteReport {
    pub files: Vec<FileScores>,
    /// The unweighted mean over files of each measure's correlations.
    pub mean: MeasureTable,
    /// `--quantize`: the mean over files of the quantized cosine correlations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_mean: Option<QuantizedScores>,
    /// Distinct texts embedded (over all files).
    pub texts: usize,
    pub seconds: f64,
}

/// The files named by `inputs`: each file as given, each folder's files that angle-data can read (by extension,
/// sorted by name; hidden files skipped). An input that is neither, or a folder with no such file, is an error.
pub fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            out.extend(angle_data::data_files(p).map_err(|e| TrainError::Data(e.to_string()))?);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(TrainError::Data(format!(
                "{}: no such file or folder",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// Reads every file as scored pairs (see [`load_sts`]).
pub fn load_all(
    files: &[PathBuf],
    tok: &TextTokenizer,
    prompts: &Prompts,
    skip_invalid: bool,
) -> Result<Vec<Dataset>> {
    files
        .iter()
        .map(|f| load_sts(f, tok, prompts, skip_invalid))
        .collect()
}

/// Scores every dataset under every measure, embedding each distinct text once.
pub fn evaluate_all(model: &mut dyn Backbone, emb: &mut Embedder, sets: &[Dataset]) -> Result<SuiteReport> {
    evaluate_suite(model, emb, sets, None)
}

/// [`evaluate_all`], and with `quantize` also the cosine correlations of quantized embeddings.
pub fn evaluate_suite(
    model: &mut dyn Backbone,
    emb: &mut Embedder,
    sets: &[Dataset],
    quantize: Option<Quantization>,
) -> Result<SuiteReport> {
    if sets.is_empty() {
        return Err(TrainError::Data("no STS file to evaluate".into()));
    }
    let started = Instant::now();
    // Global text numbers: the first file's texts in its own order, then each later file's new ones (so a single
    // file is embedded exactly as the trainer's validation embeds it).
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut seqs: Vec<(usize, usize)> = Vec::new();
    let mut maps: Vec<Vec<usize>> = Vec::with_capacity(sets.len());
    for (d, set) in sets.iter().enumerate() {
        let map = (0..set.num_texts())
            .map(|t| {
                let next = seqs.len();
                *index.entry(set.text(t)).or_insert_with(|| {
                    seqs.push((d, t));
                    next
                })
            })
            .collect();
        maps.push(map);
    }
    let mut vecs = Vec::new();
    emb.embed(
        model,
        seqs.len(),
        |g| sets[seqs[g].0].tokens(seqs[g].1),
        &mut vecs,
    )?;
    let h = emb.out_dim(model);
    let row = |g: usize| &vecs[g * h..(g + 1) * h];

    let mut files = Vec::with_capacity(sets.len());
    for (set, map) in sets.iter().zip(&maps) {
        let gold: Vec<f64> = set.labels().iter().map(|&l| l as f64).collect();
        let scores = MeasureTable::from_fn(|m| {
            if m == Measure::Angle && !h.is_multiple_of(2) {
                return Err(TrainError::Data(format!(
                    "the angle measure needs an even embedding size; this model's is {h}"
                )));
            }
            let sims: Vec<f64> = (0..set.len())
                .map(|e| {
                    m.score(
                        row(map[set.text_of(e, 0, 0, 0)]),
                        row(map[set.text_of(e, 1, 0, 0)]),
                    )
                })
                .collect();
            correlate(set.path(), m, &sims, &gold)
        })?;
        let quantized = match quantize {
            Some(q) => Some(quantized_scores(set, map, &vecs, h, q, &gold)?),
            None => None,
        };
        files.push(FileScores {
            data: set.path().to_path_buf(),
            pairs: set.len(),
            skipped: set.skip_counts().total,
            scores,
            quantized,
        });
    }
    let n = files.len() as f64;
    let mean = MeasureTable::from_fn(|m| {
        Ok(Correlation {
            spearman: files.iter().map(|f| f.scores.get(m).spearman).sum::<f64>() / n,
            pearson: files.iter().map(|f| f.scores.get(m).pearson).sum::<f64>() / n,
        })
    })?;
    let quantized_mean = quantize.map(|q| {
        let per: Vec<&Correlation> = files
            .iter()
            .filter_map(|f| f.quantized.as_ref().map(|x| &x.cosine))
            .collect();
        QuantizedScores {
            quantization: q.name().into(),
            cosine: Correlation {
                spearman: per.iter().map(|c| c.spearman).sum::<f64>() / n,
                pearson: per.iter().map(|c| c.pearson).sum::<f64>() / n,
            },
        }
    });
    Ok(SuiteReport {
        files,
        mean,
        quantized_mean,
        texts: seqs.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One file's cosine correlations after quantizing its texts' normalised embeddings (`map`: the file's text
/// numbers into the rows of `vecs`).
fn quantized_scores(
    set: &Dataset,
    map: &[usize],
    vecs: &[f32],
    h: usize,
    q: Quantization,
    gold: &[f64],
) -> Result<QuantizedScores> {
    let mut own = Vec::with_capacity(map.len() * h);
    for &g in map {
        let row = &vecs[g * h..(g + 1) * h];
        let norm = row
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        own.extend(row.iter().map(|&x| (x as f64 / norm) as f32));
    }
    let quantized = crate::quantize::quantize(&own, h, q, None)?;
    let (floats, w) = quantized.to_f32();
    let row = |t: usize| &floats[t * w..(t + 1) * w];
    let sims: Vec<f64> = (0..set.len())
        .map(|e| crate::stats::cosine(row(set.text_of(e, 0, 0, 0)), row(set.text_of(e, 1, 0, 0))))
        .collect();
    Ok(QuantizedScores {
        quantization: q.name().into(),
        cosine: correlate(set.path(), Measure::Cosine, &sims, gold)?,
    })
}

/// Spearman and Pearson × 100; an error naming the file and measure when undefined (constant scores).
pub fn correlate(path: &Path, m: Measure, sims: &[f64], gold: &[f64]) -> Result<Correlation> {
    let undefined = || {
        TrainError::Data(format!(
            "{}: {} correlation undefined (constant scores)",
            path.display(),
            m.name()
        ))
    };
    Ok(Correlation {
        spearman: 100.0 * spearman(sims, gold).ok_or_else(undefined)?,
        pearson: 100.0 * pearson(sims, gold).ok_or_else(undefined)?,
    })
}

fn file_label(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Plain text: a block per file, then the mean (when there are several files).
pub fn render_text(r: &SuiteReport) -> String {
    let mut s = String::new();
    let block = |s: &mut String, title: String, t: &MeasureTable| {
        let _ = writeln!(s, "{title}");
        let _ = writeln!(s, "  {:<10} {:>9} {:>9}", "measure", "Spearman", "Pearson");
        for m in Measure::ALL {
            let c = t.get(m);
            let _ = writeln!(s, "  {:<10} {:>9.2} {:>9.2}", m.name(), c.spearman, c.pearson);
        }
    };
    let quantized = |s: &mut String, f32_cosine: Correlation, q: &Option<QuantizedScores>| {
        if let Some(q) = q {
            let _ = writeln!(
                s,
                "  {:<10} {:>9.2} {:>9.2}   (cosine of {} embeddings; {:+.2} Spearman against float32)",
                q.quantization,
                q.cosine.spearman,
                q.cosine.pearson,
                q.quantization,
                q.cosine.spearman - f32_cosine.spearman
            );
        }
    };
    for f in &r.files {
        block(
            &mut s,
            format!("{} ({} pairs, {} skipped)", f.data.display(), f.pairs, f.skipped),
            &f.scores,
        );
        quantized(&mut s, f.scores.cosine, &f.quantized);
    }
    if r.files.len() > 1 {
        block(&mut s, format!("mean over {} files", r.files.len()), &r.mean);
        quantized(&mut s, r.mean.cosine, &r.quantized_mean);
    }
    let _ = writeln!(s, "{} distinct texts embedded, {:.1} s", r.texts, r.seconds);
    s
}

/// Markdown: one row per file (and the mean), Spearman / Pearson per measure.
pub fn render_markdown(r: &SuiteReport) -> String {
    let q_name = r.quantized_mean.as_ref().map(|q| q.quantization.clone());
    let mut s = String::from("| data | pairs |");
    for m in Measure::ALL {
        let _ = write!(s, " {} |", m.name());
    }
    if let Some(q) = &q_name {
        let _ = write!(s, " cosine, {q} |");
    }
    s.push_str("\n| --- | --- |");
    s.push_str(&" --- |".repeat(Measure::ALL.len() + usize::from(q_name.is_some())));
    s.push('\n');
    let row = |s: &mut String, name: String, pairs: String, t: &MeasureTable, q: &Option<QuantizedScores>| {
        let _ = write!(s, "| {name} | {pairs} |");
        for m in Measure::ALL {
            let c = t.get(m);
            let _ = write!(s, " {:.2} / {:.2} |", c.spearman, c.pearson);
        }
        if let Some(q) = q {
            let _ = write!(s, " {:.2} / {:.2} |", q.cosine.spearman, q.cosine.pearson);
        }
        s.push('\n');
    };
    for f in &r.files {
        row(
            &mut s,
            file_label(&f.data),
            f.pairs.to_string(),
            &f.scores,
            &f.quantized,
        );
    }
    if r.files.len() > 1 {
        row(
            &mut s,
            "**mean**".into(),
            String::new(),
            &r.mean,
            &r.quantized_mean,
        );
    }
    s.push_str("\nSpearman / Pearson × 100 per similarity measure.\n");
    s
}

/// JSON: the report, plus top-level `spearman`/`pearson` (the mean cosine scores, i.e. the file's own for one
/// file) and, for a single file, its `data`, `pairs` and `skipped`, as `angle eval --json` printed before.
pub fn to_json(r: &SuiteReport, pooling: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "spearman": r.mean.cosine.spearman,
        "pearson": r.mean.cosine.pearson,
        "files": r.files,
        "mean": r.mean,
        "quantized_mean": r.quantized_mean,
        "texts": r.texts,
        "seconds": r.seconds,
        "pooling": pooling,
    });
    if let [f] = &r.files[..] {
        v["data"] = serde_json::json!(f.data);
        v["pairs"] = serde_json::json!(f.pairs);
        v["skipped"] = serde_json::json!(f.skipped);
    }
    v
}
