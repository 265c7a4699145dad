//! The training configuration: what `angle train` takes, what `angle_config.json` records in every checkpoint, and
//! what `--resume` reads back. Defaults are the project's default recipe (see the README).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use angle_loss::AngleLossConfig;

use crate::error::{Result, TrainError};

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// A model folder or a hub id (`ORG/NAME[@REVISION]`), as given.
    pub model: PathBuf,
    /// Training data: files, folders of files (shards) or hub datasets (`hf://datasets/ORG/NAME`), read as one.
    /// (A single path in checkpoints written before several were allowed.)
    #[serde(deserialize_with = "one_or_many")]
    pub train: Vec<PathBuf>,
    /// Validation data (scored pairs), the same kinds of source; empty: no validation.
    #[serde(deserialize_with = "one_or_many")]
    pub valid: Vec<PathBuf>,
    /// The split of a hub dataset in `train` / `valid`.
    pub train_split: String,
    pub valid_split: String,
    pub output: PathBuf,

    /// Force the data format (`A`, `B`, `C`) instead of detecting it from the columns; with several named datasets
    /// also per dataset, `NAME=B,OTHER=C` (crate::datasets).
    pub format: Option<String>,
    /// Several named datasets (`--train NAME=PATH ...`): how their batches interleave, `proportional` (every
    /// batch of every dataset once per epoch, shuffled) or `round-robin` (one of each in turn).
    pub sampler: String,
    /// Per-dataset objective weights, `NAME=cosine:1,ibn:1,angle:0.02` (each overrides `loss` for that dataset).
    pub objectives: Vec<String>,
    /// `--teacher`: an alignment term to a frozen teacher's embeddings (angle-emb's distillation).
    pub teacher: Option<TeacherSettings>,
    /// `--valid-retrieval`: a BEIR folder scored during training (NDCG@10 decides `best/`).
    pub valid_retrieval: Option<PathBuf>,
    /// Column renames, `from:to,...` (e.g. `sentence1:text1,sentence2:text2,score:label`).
    pub columns: Option<String>,
    pub text_prompt: Option<String>,
    pub query_prompt: Option<String>,
    pub doc_prompt: Option<String>,
    pub max_length: usize,
    /// Skip malformed rows (counted in the summary) instead of failing on the first one.
    pub skip_invalid: bool,
    /// Group examples of similar length into batches (less padding work; changes batch composition).
    pub group_by_length: bool,
    /// Drop examples whose texts already occur in the batch (angle-emb's `filter_duplicate`) instead of masking.
    pub drop_duplicates: bool,

    /// Objective weights and scales (angle-emb's names).
    pub loss: AngleLossConfig,
    /// Sentence pooling, angle-emb's names: `mean`, `cls`, `max`, `cls_avg`, `last`, or a token index.
    pub pooling: String,
    /// Dropout as the model's config.json says (true) or none (false).
    pub dropout: bool,
    /// GradCache: embed each micro-batch in chunks of this many texts, compute the objective on all of
    /// them, then backpropagate chunk by chunk (`crate::grad_cache`). `None`: one forward per micro-batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_cache: Option<usize>,
    /// Keep each layer's input only and recompute the layer inside backward (the families of `angle-models`).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Full and merged saves above this size are split into shards (`5GB`, `500MB`, bytes; transformers'
    /// `max_shard_size`). `None`: 5GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shard_size: Option<String>,

    pub epochs: u32,
    /// Stop after this many optimizer steps (overrides `epochs` when set).
    pub max_steps: Option<u64>,
    /// Examples (pairs for format A) per micro-batch.
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f32,
    pub warmup_steps: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub max_grad_norm: f32,
    pub seed: u64,

    /// Evaluate every N optimizer steps (0: at the end of each epoch). The end of training is always evaluated.
    pub eval_steps: u64,
    /// Save `checkpoint-last` every N steps (0: at the end of each epoch). The end of training is always saved.
    pub save_steps: u64,
    pub log_steps: u64,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Batch size (texts) when encoding the validation set.
    pub eval_batch_size: usize,
    /// `--ese`: the Espresso objective over every layer (docs/ese.md).
    pub ese: Option<angle_loss::EseConfig>,
    /// `--matryoshka-dims`: the objective summed over leading-dimension truncations.
    pub matryoshka: Option<crate::ese::MatryoshkaConfig>,

    /// Decoder family: LoRA on a frozen base (`None`: the whole model trains).
    pub lora: Option<LoraSettings>,
    /// Decoder family: every real token attends to every real token of its sequence (BiLLM / LLM2Vec style).
    pub bidirectional: bool,
    /// Decoder family: BiLLM (angle-emb's `BiLLM_START_INDEX`): layers from this index on attend
    /// bidirectionally, the ones before causally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bidirectional_from: Option<usize>,
    /// Append the tokenizer's EOS token to every text after truncation (LLM embedders pool it).
    pub append_eos: bool,
    /// LoRA: also write `merged/`, the adapter folded into the base weights (a full checkpoint).
    pub merge_lora: bool,
    /// LoRA: hold the frozen base's linear weights in this many bits (`8`: int8 per output channel, forward
    /// products on the int8 kernels); `None`: the checkpoint's dtype (f32 products, or bf16 copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_kbit: Option<u8>,
    /// On the CPU: the products the run trains with, `f32`, `bf16` or (`--load-kbit 8`) `int8` (chosen once, at
    /// the start, by [`crate::precision::for_training`]: a resumed run keeps it unless `--precision` says
    /// otherwise). `None` in checkpoints written before it was recorded (those runs resume in f32, as they
    /// trained unless asked).
    #[serde(default, with = "crate::precision::by_name")]
    pub cpu_precision: Option<crate::precision::Precision>,
    /// On the CPU: the products of validation's embeddings (`--valid-precision`; `None`: f32, or the training
    /// products where one set serves both, [`crate::precision::for_validation`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::precision::by_name"
    )]
    pub valid_precision: Option<crate::precision::Precision>,
}

/// Distillation from a frozen teacher (`crate::distill`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TeacherSettings {
    /// A model folder or hub id, any family.
    pub model: PathBuf,
    /// The teacher's pooling (angle-emb's `teacher_pooling_strategy`; default `cls` as there).
    pub pooling: String,
    /// `kl` (angle-emb's alignment term), `mse` or `margin-mse` (format C).
    pub kind: String,
    pub weight: f64,
    pub temperature: f64,
    /// Embed every training text with the teacher once, before the first step, instead of every batch.
    pub cache: bool,
}

impl Default for TeacherSettings {
    fn default() -> Self {
        TeacherSettings {
            model: PathBuf::new(),
            pooling: "cls".into(),
            kind: "kl".into(),
            weight: 1.0,
            temperature: 1.0,
            cache: false,
        }
    }
}

/// LoRA hyper-parameters as angle-emb's defaults: r 32, alpha 32, dropout 0.1, every linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj,v_proj`) or `all-linear`.
    pub targets: String,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            r: 32,
            alpha: 32.0,
            dropout: 0.1,
            targets: "all-linear".into(),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            train: Vec::new(),
            valid: Vec::new(),
            train_split: "train".into(),
            valid_split: "validation".into(),
            output: PathBuf::new(),
            format: None,
            sampler: "proportional".into(),
            objectives: Vec::new(),
            teacher: None,
            valid_retrieval: None,
            columns: None,
            text_prompt: None,
            query_prompt: None,
            doc_prompt: None,
            max_length: 64,
            skip_invalid: false,
            group_by_length: false,
            drop_duplicates: false,
            loss: default_recipe_loss(),
            pooling: "mean".into(),
            dropout: true,
            epochs: 3,
            max_steps: None,
            batch_size: 32,
            grad_accum: 1,
            lr: 5e-5,
            warmup_steps: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 0.0,
            seed: 42,
            eval_steps: 0,
            save_steps: 0,
            log_steps: 10,
            threads: 0,
            eval_batch_size: 64,
            lora: None,
            bidirectional: false,
            grad_cache: None,
            gradient_checkpointing: false,
            max_shard_size: None,
            bidirectional_from: None,
            append_eos: false,
            merge_lora: false,
            load_kbit: None,
            ese: None,
            matryoshka: None,
            cpu_precision: None,
            valid_precision: None,
        }
    }
}

/// The default recipe's objective: cosine 1 + angle 1, no in-batch negatives, all scales 20, angle pooling sum.
pub fn default_recipe_loss() -> AngleLossConfig {
    AngleLossConfig {
        cosine_w: 1.0,
        ibn_w: 0.0,
        angle_w: 1.0,
        ..AngleLossConfig::default()
    }
}

/// Keys a resumed run may change: where and how often it reports, not what it computes.
pub const RESUME_MUTABLE: &[&str] = &[
    "output",
    "valid",
    "valid_split",
    "valid_retrieval",
    "eval_steps",
    "save_steps",
    "log_steps",
    "threads",
    "eval_batch_size",
    "skip_invalid",
];

/// A list of paths, or one path or `null` (checkpoints from before `train`/`valid` took several).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Paths {
        Many(Vec<PathBuf>),
        One(PathBuf),
        None(()),
    }
    Ok(match Paths::deserialize(d)? {
        Paths::Many(v) => v,
        Paths::One(p) => vec![p],
        Paths::None(()) => Vec::new(),
    })
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));

        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum must be at least 1".into());
        }
        if self.max_length < 2 {
            return bad(format!(
                "max_length {} is too short for [CLS] and [SEP]",
                self.max_length
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!(
                "learning rate {} must be a finite non-negative number",
                self.lr
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay {} must be finite and non-negative",
                self.weight_decay
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "max_grad_norm {} must be finite and non-negative",
                self.max_grad_norm
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || self.eps <= 0.0 {
            return bad("AdamW needs 0 <= beta < 1 and eps > 0".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs is 0 and no max_steps: nothing to train".into());
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size must be at least 1".into());
        }
        if angle_encoder::Pooling::parse(&self.pooling).is_none() {
            return bad(format!(
                "unknown pooling {:?}: expected mean, cls, max, cls_avg, last or a token index",
                self.pooling
            ));
        }
        let l = &self.loss;
        for (name, w) in [
            ("cosine_w", l.cosine_w),
            ("ibn_w", l.ibn_w),
            ("angle_w", l.angle_w),
            ("cln_w", l.cln_w),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("{name} {w} must be finite and non-negative"));
            }
        }
        for (name, t) in [
            ("cosine_tau", l.cosine_tau),
            ("ibn_tau", l.ibn_tau),
            ("angle_tau", l.angle_tau),
        ] {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("{name} {t} must be finite and positive"));
            }
        }
        Ok(())
    }

    /// Merge a resumed run's saved configuration with the keys given anew on the command line (`explicit`, as JSON
    /// key paths of this struct). Keys outside [`RESUME_MUTABLE`] must keep their saved value: a resumed run that
    /// computes something else would not be the same run.
    pub fn merge_for_resume(
        saved: &TrainConfig,
        given: &TrainConfig,
        explicit: &[String],
    ) -> Result<TrainConfig> {
        let to_map = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let mut merged = to_map(saved);
        let new = to_map(given);
        let mut refused = Vec::new();
        for key in explicit {
            let (top, sub) = match key.split_once('.') {
                Some((t, s)) => (t, Some(s)),
                None => (key.as_str(), None),
            };
            let new_v = match sub {
                Some(s) => new.get(top).and_then(|v| v.get(s)).cloned(),
                None => new.get(top).cloned(),
            };
            let Some(new_v) = new_v else { continue };
            let old_v = match sub {
                Some(s) => merged.get(top).and_then(|v| v.get(s)).cloned(),
                None => merged.get(top).cloned(),
            };
            if old_v.as_ref() == Some(&new_v) {
                continue;
            }
            if !RESUME_MUTABLE.contains(&top) {
                refused.push(format!(
                    "{key} (saved {}, given {new_v})",
                    old_v.unwrap_or_default()
                ));
                continue;
            }
            merged.insert(top.to_string(), new_v);
        }
        if !refused.is_empty() {
            return Err(TrainError::Config(format!(
                "--resume continues the saved run; these options differ from it: {}",
                refused.join(", ")
            )));
        }
        serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| TrainError::Config(format!("saved configuration: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_default_recipe_and_validate() {
        let c = TrainConfig::default();
        assert_eq!((c.loss.cosine_w, c.loss.ibn_w, c.loss.angle_w), (1.0, 0.0, 1.0));
        assert_eq!(
            (c.lr, c.batch_size, c.max_length, c.epochs, c.seed),
            (5e-5, 32, 64, 3, 42)
        );
        assert_eq!((c.warmup_steps, c.weight_decay), (0, 0.0));
        c.validate().unwrap();
    }

    #[test]
    fn train_and_valid_read_one_path_or_several() {
        let old: TrainConfig = serde_json::from_str(r#"{"train": "a.csv", "valid": null}"#).unwrap();
        assert_eq!((old.train, old.valid), (vec![PathBuf::from("a.csv")], vec![]));
        let new: TrainConfig = serde_json::from_str(r#"{"train": ["a", "b"], "valid": "v.csv"}"#).unwrap();
        assert_eq!((new.train.len(), new.valid.len()), (2, 1));
        assert_eq!(new.train_split, "train");
    }

    #[test]
    fn json_round_trip_and_missing_keys_take_defaults() {
        let c = TrainConfig {
            lr: 1e-4,
            ..Default::default()
        };
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let partial: TrainConfig = serde_json::from_str(r#"{"lr": 0.001, "max_length": 32}"#).unwrap();
        assert_eq!((partial.lr, partial.max_length), (0.001, 32));
        assert_eq!(partial.loss, default_recipe_loss());
    }

    #[test]
    fn validation_names_the_bad_option() {
        let c = TrainConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        let mut c = TrainConfig::default();
        c.loss.angle_tau = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("angle_tau"));
        let c = TrainConfig {
            pooling: "median".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("median"));
    }

    #[test]
    fn resume_merge_allows_reporting_changes_and_refuses_others() {
        let saved = TrainConfig {
            lr: 1e-4,
            ..Default::default()
        };
        let given = TrainConfig {
            lr: 1e-4,
            threads: 2,
            eval_steps: 7,
            ..Default::default()
        };
        let m =
            TrainConfig::merge_for_resume(&saved, &given, &["threads".into(), "eval_steps".into()]).unwrap();
        assert_eq!((m.threads, m.eval_steps, m.lr), (2, 7, 1e-4));

        let given = TrainConfig {
            lr: 3e-4,
            ..Default::default()
        };
        let err = TrainConfig::merge_for_resume(&saved, &given, &["lr".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lr"), "{err}");
        // Not given explicitly: the saved value wins silently.
        let m = TrainConfig::merge_for_resume(&saved, &given, &[]).unwrap();
        assert_eq!(m.lr, 1e-4);
        let mut given = saved.clone();
        given.loss.ibn_w = 5.0;
        assert!(TrainConfig::merge_for_resume(&saved, &given, &["loss.ibn_w".into()]).is_err());
    }
}
