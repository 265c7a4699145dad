//! STS evaluation: Spearman and Pearson (× 100) of the cosine similarity of each pair's embeddings against the gold
//! scores, as angle-emb and sentence-transformers report them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use angle_data::{Dataset, Format, Prompts, ReadOptions, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::backbone::Backbone;
use crate::embed::Embedder;
use crate::error::{Result, TrainError};
use crate::stats::{cosine, pearson, spearman};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StsScores {
    pub spearman: f64,
    pub pearson: f64,
    pub pairs: usize,
    pub seconds: f64,
}

/// The column names of the Hugging Face / MTEB STS datasets (`mteb/stsbenchmark-sts`, `sentence-transformers/stsb`).
const HF_STS_COLUMNS: &str = "sentence1:text1,sentence2:text2,score:label";

/// Reads an STS file for evaluation: STS-B CSV, SentEval STS TSV, the Hugging Face/MTEB layout (`sentence1,
/// sentence2, score`, e.g. a published parquet file), or any format-A file (detected by angle-data).
pub fn load_sts(path: &Path, tok: &TextTokenizer, prompts: &Prompts, skip_invalid: bool) -> Result<Dataset> {
    load_sts_files(&[path.to_path_buf()], tok, prompts, skip_invalid)
}

/// [`load_sts`] of several files (the shards of one set) read as one set.
pub fn load_sts_files(
    paths: &[PathBuf],
    tok: &TextTokenizer,
    prompts: &Prompts,
    skip_invalid: bool,
) -> Result<Dataset> {
    let opts = ReadOptions {
        skip_invalid,
        columns: HF_STS_COLUMNS
            .parse()
            .map_err(|e: angle_data::DataError| TrainError::Data(e.to_string()))?,
        ..ReadOptions::default()
    };
    let data = Dataset::load_all(paths, &opts, prompts, tok).map_err(|e| TrainError::Data(e.to_string()))?;
    let name = crate::hub::describe(paths);
    if data.format() != Format::A {
        return Err(TrainError::Data(format!(
            "{name}: evaluation needs scored pairs (format A: text1, text2, label); this data is format {:?}",
            data.format()
        )));
    }
    if data.len() < 2 {
        return Err(TrainError::Data(format!(
            "{name}: fewer than 2 pairs to correlate"
        )));
    }
    Ok(data)
}

/// Scores a format-A dataset. `scratch` holds the embeddings of the distinct texts (reused across evaluations).
pub fn evaluate(
    model: &mut dyn Backbone,
    emb: &mut Embedder,
    data: &Dataset,
    scratch: &mut Vec<f32>,
) -> Result<StsScores> {
    let started = Instant::now();
    emb.embed_dataset(model, data, scratch)?;
    let h = emb.out_dim(model);
    let row = |t: usize| &scratch[t * h..(t + 1) * h];
    let sims: Vec<f64> = (0..data.len())
        .map(|e| cosine(row(data.text_of(e, 0, 0, 0)), row(data.text_of(e, 1, 0, 0))))
        .collect();
    let gold: Vec<f64> = data.labels().iter().map(|&l| l as f64).collect();
    let undefined = || {
        TrainError::Data(format!(
            "{}: correlation undefined (constant scores)",
            data.path().display()
        ))
    };
    Ok(StsScores {
        spearman: 100.0 * spearman(&sims, &gold).ok_or_else(undefined)?,
        pearson: 100.0 * pearson(&sims, &gold).ok_or_else(undefined)?,
        pairs: data.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_sts_parquet_reads_as_scored_pairs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tok = root.join("../../../shared/models/all-MiniLM-L6-v2/tokenizer.json");
        let tok = TextTokenizer::from_file(tok, 32).unwrap();
        let file = root.join("../angle-data/tests/data/pyarrow-a.parquet");
        let data = load_sts(&file, &tok, &Prompts::default(), false).unwrap();
        assert_eq!(data.format(), Format::A);
        assert_eq!(data.labels(), &[5.0, 3.8, 0.5, 4.2, 0.0]);
    }
}
