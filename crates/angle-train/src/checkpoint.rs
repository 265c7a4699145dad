//! Checkpoints in Hugging Face / sentence-transformers layout, plus the trainer state a resumed run needs.
//!
//! A model directory holds `config.json`, `model.safetensors`, the tokenizer files copied from the source model,
//! `modules.json` + `1_Pooling/config.json` (our pooling), `sentence_bert_config.json` (our maximum length) and
//! `angle_config.json` (the AnglE training configuration). `checkpoint-last` adds `trainer_state.json` (step, epoch,
//! position in the epoch, seed, best score, counters) and `optimizer.safetensors` (the AdamW moments, flat, in the
//! encoder's parameter layout). Every directory is written atomically ([`crate::atomic`]).

use std::collections::HashMap;
use std::path::Path;

use angle_encoder::{Encoder, Pooling};
use angle_models::weights::TensorSpec;

use crate::backbone::Backbone;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::atomic::{resolve, write_dir_atomic};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError, io_err};

pub const ANGLE_CONFIG: &str = "angle_config.json";
pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// Files copied from the source model when present, beside its tokenizer files: the sentence-transformers config
/// that names the library version.
const COPIED: &[&str] = &["config_sentence_transformers.json"];

/// Where the trainer is, and what it has counted; everything else a resumed run needs is in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    pub total_steps: u64,
    /// The epoch the next batch comes from, and its index in that epoch's plan.
    pub epoch: u64,
    pub batch_in_epoch: usize,
    /// Seeds the data order, the alternatives drawn from list-valued fields, and dropout.
    pub seed: u64,
    pub best_spearman: Option<f64>,
    /// `--valid-retrieval`: the best NDCG@10 × 100 so far (it, not Spearman, decides `best/` then).
    #[serde(default)]
    pub best_ndcg: Option<f64>,
    pub best_step: Option<u64>,
    /// Seconds of training (evaluation and checkpoint writing excluded) and examples/tokens seen, over all runs.
    pub train_seconds: f64,
    /// CPU seconds (all threads) of the training steps, over all runs; 0 where the platform does not say.
    #[serde(default)]
    pub train_cpu_seconds: f64,
    pub examples_seen: u64,
    pub tokens_seen: u64,
    /// Number of examples of the training file, to catch a resume against a different file.
    pub train_examples: usize,
}

/// What `angle_config.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AngleConfigFile {
    pub pooling: String,
    pub max_length: usize,
    pub text_prompt: Option<String>,
    pub query_prompt: Option<String>,
    pub doc_prompt: Option<String>,
    pub step: u64,
    /// The hub repository the trained model started from (`{"id", "revision", "commit"}`); absent for a folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<serde_json::Value>,
    /// Encode-time defaults of `--layers` and `--dim` (`angle export`); absent: the whole model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Why the folder has no sentence-transformers pooling files (a pooling they cannot express); absent
    /// when `modules.json` and `1_Pooling/config.json` describe `pooling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence_transformers: Option<String>,
    pub train: TrainConfig,
}

/// A sentence-transformers pooling config for `pooling`; `None` for poolings sentence-transformers lacks
/// (`cls_avg`, a fixed token index), which only `angle_config.json` can express.
fn st_pooling(pooling: Pooling, dim: usize) -> Option<serde_json::Value> {
    let mode = match pooling {
        Pooling::Cls => "pooling_mode_cls_token",
        Pooling::Mean => "pooling_mode_mean_tokens",
        Pooling::Max => "pooling_mode_max_tokens",
        Pooling::Last => "pooling_mode_lasttoken",
        Pooling::ClsAvg | Pooling::Token(_) => return None,
    };
    let mut v = json!({
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": false,
        "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false,
        "pooling_mode_weightedmean_tokens": false,
        "pooling_mode_lasttoken": false,
    });
    v[mode] = json!(true);
    Some(v)
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|source| TrainError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a BERT-family encoder's `config.json` and `model.safetensors` into `dir`.
/// The weights go tensor by tensor into `model.safetensors`, or into shards above `max_shard_bytes` with
/// `model.safetensors.index.json` (`angle_models::weights::write_sharded`: one tensor of extra memory).
pub fn write_bert_weights(dir: &Path, enc: &Encoder, files_from: &Path, max_shard_bytes: u64) -> Result<()> {
    // config.json is copied when the source has one, so keys we do not model (`_name_or_path`,
    // `architectures`, ...) survive; the weights keep the layout it describes.
    let src_cfg = files_from.join("config.json");
    if src_cfg.is_file() {
        let mut cfg: serde_json::Value = read_json(&src_cfg)?;
        // A truncated encoder (`--layers N`) is a valid smaller checkpoint: its depth is the saved one.
        if cfg.get("num_hidden_layers").and_then(|v| v.as_u64()) != Some(enc.config.num_hidden_layers as u64)
        {
            cfg["num_hidden_layers"] = json!(enc.config.num_hidden_layers);
        }
        write_json(&dir.join("config.json"), &cfg)?;
    } else {
        let p = dir.join("config.json");
        std::fs::write(&p, enc.config.to_json_string()).map_err(io_err(&p))?;
    }
    // Tensors the encoder does not train (BERT's pooler, heads) come along unchanged, so that transformers
    // finds every weight it expects and reports none as newly initialised.
    let err = |e: angle_encoder::EncoderError| TrainError::Encoder(e.to_string());
    let mut carried = Vec::new();
    for src in angle_encoder::checkpoint::weight_files(files_from).map_err(err)? {
        if src.is_file() {
            carried.extend(
                angle_encoder::checkpoint::untrained_tensors(&src, &enc.layout, &enc.name_prefix)
                    .map_err(err)?,
            );
        }
    }
    let entries = &enc.layout.entries;
    let specs: Vec<TensorSpec> = entries
        .iter()
        .map(|e| TensorSpec {
            name: format!("{}{}", enc.name_prefix, e.name),
            dtype: Dtype::F32,
            shape: e.shape.clone(),
        })
        .chain(carried.iter().map(|c| TensorSpec {
            name: c.name.clone(),
            dtype: c.dtype,
            shape: c.shape.clone(),
        }))
        .collect();
    let params = &enc.buffers.params;
    angle_models::weights::write_sharded(dir, &specs, max_shard_bytes, |i, buf| {
        match entries.get(i) {
            // safetensors is little-endian, as every target we build for
            Some(e) => buf.extend_from_slice(bytemuck::cast_slice(&params[e.range()])),
            None => buf.extend_from_slice(&carried[i - entries.len()].data),
        }
        Ok(())
    })
    .map_err(|e| TrainError::Encoder(e.to_string()))?;
    Ok(())
}

/// Writes the model files of a checkpoint into `dir` (which exists and is empty): the backbone's own
/// weight files, then the tokenizer, the sentence-transformers files and `angle_config.json`.
pub fn write_model_files(
    dir: &Path,
    model: &mut dyn Backbone,
    files_from: &Path,
    config: &TrainConfig,
    step: u64,
) -> Result<()> {
    model.write_weights(dir, files_from)?;
    let pooling = model.pooling();
    for name in angle_models::weights::TOKENIZER_FILES.iter().chain(COPIED) {
        let src = files_from.join(name);
        if src.is_file() {
            std::fs::copy(&src, dir.join(name)).map_err(io_err(&src))?;
        }
    }
    let st_note = write_st_pooling(dir, pooling, model.hidden_size())?;
    write_json(
        &dir.join("sentence_bert_config.json"),
        &json!({"max_seq_length": config.max_length, "do_lower_case": false}),
    )?;
    let angle = AngleConfigFile {
        pooling: pooling.name(),
        max_length: config.max_length,
        text_prompt: config.text_prompt.clone(),
        query_prompt: config.query_prompt.clone(),
        doc_prompt: config.doc_prompt.clone(),
        step,
        base_model: base_model_record(config, files_from),
        layers: None,
        dim: None,
        sentence_transformers: st_note,
        train: config.clone(),
    };
    write_json(&dir.join(ANGLE_CONFIG), &angle)
}

/// Writes sentence-transformers' pooling files for `pooling` into `dir` (`modules.json`: Transformer then
/// Pooling; `1_Pooling/config.json`). For a pooling sentence-transformers lacks, removes any that are there
/// (a base model's, copied along, would claim another pooling) and returns the note for `angle_config.json`.
pub fn write_st_pooling(dir: &Path, pooling: Pooling, dim: usize) -> Result<Option<String>> {
    let pdir = dir.join("1_Pooling");
    match st_pooling(pooling, dim) {
        Some(pool) => {
            let modules = json!([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]);
            write_json(&dir.join("modules.json"), &modules)?;
            std::fs::create_dir_all(&pdir).map_err(io_err(&pdir))?;
            write_json(&pdir.join("config.json"), &pool)?;
            Ok(None)
        }
        None => {
            for f in [dir.join("modules.json"), pdir.join("config.json")] {
                if f.is_file() {
                    std::fs::remove_file(&f).map_err(io_err(&f))?;
                }
            }
            if pdir.is_dir() {
                // only when empty: anything else in it is not ours to delete
                let _ = std::fs::remove_dir(&pdir);
            }
            tracing::warn!(
                "pooling {} has no sentence-transformers equivalent; only {ANGLE_CONFIG} records it",
                pooling.name()
            );
            Ok(Some(format!(
                "no modules.json or 1_Pooling: pooling `{}` has no sentence-transformers equivalent \
                 (angle encode reads it from here)",
                pooling.name()
            )))
        }
    }
}

/// The encode settings of a checkpoint, beside its weights, that a merged model takes from its adapter:
/// what `angle encode` (`angle_config.json`) and sentence-transformers (`sentence_bert_config.json`, ...)
/// read. The pooling files are written for the pooling instead ([`write_st_pooling`]).
const SETTINGS_FILES: &[&str] = &[
    ANGLE_CONFIG,
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Copies the encode settings of the checkpoint `from` (a LoRA adapter folder) into `to` (its merged model),
/// so the merged model truncates and appends EOS as the adapter does, and writes the sentence-transformers
/// pooling files of `pooling` (the one it was trained with), or none with the note in `angle_config.json`.
/// Files `from` lacks are skipped.
pub fn copy_settings(from: &Path, to: &Path, pooling: Pooling, dim: usize) -> Result<()> {
    for name in SETTINGS_FILES {
        let src = from.join(name);
        if !src.is_file() {
            continue;
        }
        let dst = to.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(&src, &dst).map_err(io_err(&src))?;
    }
    let note = write_st_pooling(to, pooling, dim)?;
    let path = to.join(ANGLE_CONFIG);
    if path.is_file() {
        let mut v: serde_json::Value = read_json(&path)?;
        if let Some(o) = v.as_object_mut() {
            match note {
                Some(n) => o.insert("sentence_transformers".into(), json!(n)),
                None => o.remove("sentence_transformers"),
            };
        }
        write_json(&path, &v)?;
    }
    Ok(())
}

/// The hub record of the run's base model: resolved in this process, or carried from the checkpoint resumed from.
fn base_model_record(config: &TrainConfig, files_from: &Path) -> Option<serde_json::Value> {
    if let Some(r) = angle_hub::resolve_model(&config.model)
        .ok()
        .and_then(|m| crate::hub::hub_record(&m.dir))
    {
        return Some(r);
    }
    let saved: AngleConfigFile = read_json(&files_from.join(ANGLE_CONFIG)).ok()?;
    saved.base_model.filter(|_| saved.train.model == config.model)
}

/// `angle export`: the model as loaded (e.g. its first N layers) in a new folder, with `dim` (when given) as the
/// encode-time default of `--dim` in `angle_config.json`.
pub fn export_model_dir(
    dest: &Path,
    model: &mut dyn Backbone,
    files_from: &Path,
    config: &TrainConfig,
    dim: Option<usize>,
) -> Result<()> {
    if dest.exists() {
        return Err(TrainError::Checkpoint {
            path: dest.to_path_buf(),
            msg: "exists already: export writes a new folder".into(),
        });
    }
    write_dir_atomic(dest, |dir| {
        write_model_files(dir, model, files_from, config, 0)?;
        let path = dir.join(ANGLE_CONFIG);
        let mut v: AngleConfigFile = read_json(&path)?;
        v.dim = dim;
        write_json(&path, &v)
    })
}

/// Writes a model-only checkpoint (e.g. `best`) atomically.
pub fn save_model_dir(
    dest: &Path,
    model: &mut dyn Backbone,
    files_from: &Path,
    config: &TrainConfig,
    step: u64,
) -> Result<()> {
    write_dir_atomic(dest, |dir| {
        write_model_files(dir, model, files_from, config, step)
    })
}

/// Writes a resumable checkpoint (model files, trainer state, optimizer moments) atomically.
pub fn save_training_checkpoint(
    dest: &Path,
    model: &mut dyn Backbone,
    files_from: &Path,
    config: &TrainConfig,
    state: &TrainerState,
) -> Result<()> {
    write_dir_atomic(dest, |dir| {
        write_model_files(dir, model, files_from, config, state.step)?;
        write_json(&dir.join(TRAINER_STATE), state)?;
        let (m, v) = model.moments()?;
        save_moments(&dir.join(OPTIMIZER), m, v)
    })
}

fn save_moments(path: &Path, m: &[f32], v: &[f32]) -> Result<()> {
    let st_err = |e: safetensors::SafeTensorError| TrainError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    // safetensors is little-endian, as every target we build for (the encoder crate refuses big-endian ones).
    let (mb, vb): (&[u8], &[u8]) = (bytemuck::cast_slice(m), bytemuck::cast_slice(v));
    let tensors = [
        (
            "adam_m",
            TensorView::new(Dtype::F32, vec![m.len()], mb).map_err(st_err)?,
        ),
        (
            "adam_v",
            TensorView::new(Dtype::F32, vec![v.len()], vb).map_err(st_err)?,
        ),
    ];
    let meta = HashMap::from([(
        "layout".to_string(),
        "angle-encoder ParamLayout, flat".to_string(),
    )]);
    safetensors::serialize_to_file(tensors, Some(meta), path).map_err(st_err)
}

/// A resumable checkpoint read back.
#[derive(Debug)]
pub struct Resumed {
    pub dir: std::path::PathBuf,
    pub config: TrainConfig,
    pub state: TrainerState,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
}

/// Reads `trainer_state.json`, `angle_config.json` and the moments of a `checkpoint-last` directory (or the
/// `.old` copy a kill between renames left). The weights are loaded by the caller with the encoder.
pub fn load_training_checkpoint(path: &Path, params: usize) -> Result<Resumed> {
    let dir = resolve(path)?;
    let state: TrainerState = read_json(&dir.join(TRAINER_STATE))?;
    let angle: AngleConfigFile = read_json(&dir.join(ANGLE_CONFIG))?;
    let opt = dir.join(OPTIMIZER);
    let bytes = std::fs::read(&opt).map_err(io_err(&opt))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Safetensors {
        path: opt.clone(),
        msg: e.to_string(),
    })?;
    let take = |name: &str| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|e| TrainError::Safetensors {
            path: opt.clone(),
            msg: format!("{name}: {e}"),
        })?;
        if t.dtype() != Dtype::F32 || t.shape() != [params] {
            return Err(TrainError::Checkpoint {
                path: opt.clone(),
                msg: format!(
                    "{name}: expected f32 [{params}], found {:?} {:?}",
                    t.dtype(),
                    t.shape()
                ),
            });
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let adam_m = take("adam_m")?;
    let adam_v = take("adam_v")?;
    Ok(Resumed {
        dir,
        config: angle.train,
        state,
        adam_m,
        adam_v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_configs_name_exactly_one_mode() {
        for (p, key) in [
            (Pooling::Mean, "pooling_mode_mean_tokens"),
            (Pooling::Cls, "pooling_mode_cls_token"),
            (Pooling::Max, "pooling_mode_max_tokens"),
        ] {
            let v = st_pooling(p, 8).unwrap();
            let on: Vec<&str> = v
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(on, vec![key]);
            // The encoder crate reads it back as the same pooling.
            let back = Pooling::from_sentence_transformers_json(&v.to_string(), Path::new("x")).unwrap();
            assert_eq!(back, p);
        }
        assert!(st_pooling(Pooling::ClsAvg, 8).is_none());
    }

    #[test]
    fn moments_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(OPTIMIZER);
        save_moments(&p, &[1.0, -2.5, 3.25], &[0.5, 0.0, 1e-20]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("adam_v").unwrap().shape(), [3]);
    }
}
