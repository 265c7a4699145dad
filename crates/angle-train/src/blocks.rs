//! The encoder families built from `angle-models`' blocks (ELECTRA, ALBERT, ModernBERT, and the BERT
//! family when it trains a LoRA adapter) behind the [`Backbone`] interface, on the CPU.
//!
//! A full fine-tune writes `config.json` and `model.safetensors` under the names transformers uses
//! (tensors the encoder does not train, such as BERT's pooler, carried along). A LoRA run writes a peft
//! adapter (`adapter_config.json`, `adapter_model.safetensors`: `base_model.model.<module>.lora_A.weight`)
//! whose `base_model_name_or_path` names the base; `angle merge` folds it into a full checkpoint.

use std::path::{Path, PathBuf};

use angle_encoder::{AdamW, Batch, Pooler, Pooling};
use angle_models::weights::{Checkpoint, TensorSpec, write_safetensors, write_sharded};
use angle_models::{LoraSpec, Model, ModelOptions};
use safetensors::tensor::Dtype;
use serde_json::json;

use crate::backbone::{Backbone, Packed, Sizes, clip_or_norm, moments_of, set_moments_of};
use crate::decoder::ADAPTER_CONFIG;
use crate::error::{Result, TrainError, io_err};

/// The encoder families only `angle-models` builds.
pub const BLOCK_TYPES: [&str; 3] = ["electra", "albert", "modernbert"];

fn model_err(e: angle_models::ModelError) -> TrainError {
    TrainError::Encoder(e.to_string())
}

/// The encoder families of `angle-models` on the CPU.
pub struct BlocksCpu {
    pub model: Model,
    pooler: Pooler,
    /// The base model folder (what an adapter names).
    base: PathBuf,
    /// `d loss / d hidden`, reused across steps.
    dhidden: Vec<f32>,
    /// Full and merged saves are split into shards above this size.
    pub max_shard_bytes: u64,
    /// Activation and work bytes of one training sequence of the longest length, and those that do not
    /// grow with the batch ([`Backbone::reserve`]).
    bytes_per_seq: usize,
    bytes_fixed: usize,
}

/// `config.json`'s `model_type` of a folder (`None` without one).
pub fn model_type(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = crate::checkpoint::read_json(&p)?;
    Ok(Some(
        v.get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or("bert")
            .to_string(),
    ))
}

/// Whether `dir` loads through the blocks: an ELECTRA, ALBERT or ModernBERT folder, a BERT-family folder
/// that trains LoRA, or a peft adapter on an encoder.
pub fn uses_blocks(dir: &Path, lora: bool, base_override: Option<&Path>) -> Result<bool> {
    let base = if dir.join(ADAPTER_CONFIG).is_file() {
        match crate::decoder::adapter_base(dir, base_override) {
            Ok(b) => b,
            Err(_) => return Ok(false),
        }
    } else {
        dir.to_path_buf()
    };
    let Some(t) = model_type(&base)? else {
        return Ok(false);
    };
    if crate::decoder::DECODER_TYPES.contains(&t.as_str()) {
        return Ok(false);
    }
    Ok(BLOCK_TYPES.contains(&t.as_str()) || lora || base != dir)
}

/// The decoder crate's LoRA settings as the blocks' (one spec for every family).
pub fn lora_spec(l: &angle_decoder::LoraConfig) -> LoraSpec {
    LoraSpec {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        targets: l.targets.clone(),
        seed: l.seed,
    }
}

/// Loads `dir` (a model folder, or a peft adapter on one) with a new adapter when `lora` is given.
pub fn load_blocks(
    dir: &Path,
    pooling: Option<Pooling>,
    lora: Option<LoraSpec>,
    base_override: Option<&Path>,
    frozen: bool,
) -> Result<(BlocksCpu, PathBuf)> {
    let adapter = dir.join(ADAPTER_CONFIG);
    let (base, lora) = if adapter.is_file() {
        let cfg = angle_decoder::LoraConfig::from_adapter_config(&adapter)
            .map_err(|e| TrainError::Encoder(e.to_string()))?;
        (
            crate::decoder::adapter_base(dir, base_override)?,
            Some(lora_spec(&cfg)),
        )
    } else {
        (dir.to_path_buf(), lora)
    };
    let mut model = Model::from_dir(&base, &ModelOptions { lora, frozen }).map_err(model_err)?;
    if adapter.is_file() {
        model
            .load_adapter(&dir.join("adapter_model.safetensors"))
            .map_err(model_err)?;
    }
    let pooling = match pooling {
        Some(p) => p,
        None => crate::embed::ModelDefaults::from_dir(dir)
            .map(|d| d.pooling)
            .unwrap_or_else(|_| model.default_pooling()),
    };
    let tok_dir = if dir.join("tokenizer.json").is_file() {
        dir.to_path_buf()
    } else {
        base.clone()
    };
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    Ok((
        BlocksCpu {
            model,
            pooler: Pooler::new(pooling),
            base,
            dhidden: Vec::new(),
            max_shard_bytes: angle_models::weights::DEFAULT_MAX_SHARD_BYTES,
            bytes_per_seq: 0,
            bytes_fixed: 0,
        },
        tok_dir,
    ))
}

impl BlocksCpu {
    /// The base model folder.
    pub fn base(&self) -> &Path {
        &self.base
    }

    fn run(&mut self, batch: &Packed<'_>, dropout: Option<u64>, pooled: &mut Vec<f32>) -> Result<()> {
        let b = Batch {
            input_ids: batch.input_ids,
            token_type_ids: (!batch.token_type_ids.is_empty()).then_some(batch.token_type_ids),
            seq_offsets: batch.seq_offsets,
        };
        self.model.forward(&b, dropout).map_err(model_err)?;
        pooled.resize(batch.num_seqs() * self.model.hidden_size(), 0.0);
        self.model.pool(&mut self.pooler, pooled).map_err(model_err)
    }

    /// The base weights (merged with the adapter when `merged`) into `dir/model.safetensors`, with
    /// `config.json` from the base and every checkpoint tensor the model does not use carried along.
    fn write_full(&self, dir: &Path, merged: bool) -> Result<()> {
        let src = self.base.join("config.json");
        std::fs::copy(&src, dir.join("config.json")).map_err(io_err(&src))?;
        let ours: Vec<(String, Vec<usize>, Vec<f32>)> = if merged {
            self.model.merged_tensors()
        } else {
            self.model
                .tensors(false)
                .into_iter()
                .map(|(n, s, v)| (n, s, v.to_vec()))
                .collect()
        };
        let ckpt = Checkpoint::open(&self.base).map_err(model_err)?;
        let prefixes = &self.model.blocks.checkpoint_prefixes;
        let known: std::collections::HashSet<&str> = ours.iter().map(|(n, _, _)| n.as_str()).collect();
        // ours (f32), then every checkpoint tensor the model does not use, in its own dtype
        let mut carried: Vec<&String> = ckpt
            .tensors
            .keys()
            .filter(|name| {
                let bare = prefixes
                    .iter()
                    .find_map(|p| name.strip_prefix(p.as_str()))
                    .unwrap_or(name);
                !known.contains(bare)
            })
            .collect();
        carried.sort();
        let specs: Vec<TensorSpec> = ours
            .iter()
            .map(|(n, shape, _)| TensorSpec {
                name: n.clone(),
                dtype: Dtype::F32,
                shape: shape.clone(),
            })
            .chain(carried.iter().map(|&n| TensorSpec {
                name: n.clone(),
                dtype: ckpt.tensors[n].dtype.safetensors(),
                shape: ckpt.tensors[n].shape.clone(),
            }))
            .collect();
        write_sharded(dir, &specs, self.max_shard_bytes, |i, bytes| {
            match ours.get(i) {
                Some((_, _, v)) => v.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes())),
                None => bytes.extend_from_slice(ckpt.tensors[carried[i - ours.len()]].bytes()),
            }
            Ok(())
        })
        .map_err(model_err)?;
        Ok(())
    }

    /// peft's adapter folder: `adapter_config.json` and `adapter_model.safetensors`.
    fn write_adapter(&self, dir: &Path) -> Result<()> {
        let spec = self.model.lora.as_ref().expect("a LoRA model");
        let adapters = self.model.tensors(true);
        let mut modules: Vec<String> = adapters
            .iter()
            .filter_map(|(n, _, _)| n.strip_suffix(".lora_A.weight").map(str::to_string))
            .collect();
        modules.sort();
        let cfg = json!({
            "base_model_name_or_path": crate::hub::model_name(&self.base),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": spec.r,
            "target_modules": modules,
            "task_type": "FEATURE_EXTRACTION",
            "use_dora": false,
            "use_rslora": false,
        });
        let p = dir.join(ADAPTER_CONFIG);
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).expect("JSON")).map_err(io_err(&p))?;
        let tensors = adapters
            .into_iter()
            .map(|(n, s, v)| {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (format!("{}{n}", Model::PEFT_PREFIX), Dtype::F32, s, bytes)
            })
            .collect();
        write_safetensors(&dir.join("adapter_model.safetensors"), tensors).map_err(model_err)
    }
}

impl Backbone for BlocksCpu {
    fn describe(&self) -> String {
        let b = &self.model.blocks;
        let how = match &self.model.lora {
            Some(l) => format!("LoRA r {} alpha {} on {}", l.r, l.alpha, l.targets.join(",")),
            None => "full fine-tuning".into(),
        };
        let ckpt = match self.model.checkpointing {
            true => ", gradient checkpointing",
            false => "",
        };
        format!(
            "{} ({} layers, hidden {}) on the cpu, f32, {how}{ckpt}, {} trainable",
            b.model_type,
            b.uses.len(),
            b.hidden_size,
            self.model.buffers.params.len()
        )
    }

    fn hidden_size(&self) -> usize {
        self.model.hidden_size()
    }

    fn pooling(&self) -> Pooling {
        self.pooler.kind
    }

    fn reserve(&mut self, sizes: Sizes) -> Result<()> {
        // Each block's state grows to the largest batch at its first forward and is reused. For the memory
        // estimate, what a batch holds is measured here on train steps of one and of two sequences of the
        // longest length: every buffer grows linearly with the sequences, a few (gradient sinks) not at all.
        if sizes.train_seqs > 0 && sizes.max_len > 0 && !self.model.buffers.params.is_empty() {
            let mut held = [0usize; 2];
            for (k, seqs) in [1usize, 2].into_iter().enumerate() {
                let ids = vec![0u32; seqs * sizes.max_len];
                let offsets: Vec<usize> = (0..=seqs).map(|s| s * sizes.max_len).collect();
                let probe = Packed {
                    input_ids: &ids,
                    token_type_ids: &[],
                    seq_offsets: &offsets,
                };
                let mut pooled = Vec::new();
                self.forward_train(&probe, Some(0), &mut pooled)?;
                let zeros = vec![0.0f32; pooled.len()];
                self.backward(&probe, &zeros)?;
                held[k] = self.model.activation_bytes();
            }
            self.model.zero_grad();
            self.bytes_per_seq = held[1].saturating_sub(held[0]);
            self.bytes_fixed = held[0].saturating_sub(self.bytes_per_seq);
        }
        Ok(())
    }

    fn memory_plan(&self, sizes: Sizes) -> Option<crate::memory::MemoryPlan> {
        let m = &self.model;
        let trainable = m.buffers.params.len();
        Some(crate::memory::MemoryPlan {
            weights: 4 * (trainable + m.frozen.len()) + m.packed_bytes(),
            trainable_state: 12 * trainable,
            // an evaluation batch runs through the same (grow-only) states
            activations: self.bytes_fixed + self.bytes_per_seq * sizes.train_seqs.max(sizes.embed_seqs),
            working: crate::memory::PROCESS_BYTES,
        })
    }

    fn embed(&mut self, batch: &Packed<'_>, pooled: &mut Vec<f32>) -> Result<()> {
        self.run(batch, None, pooled)
    }

    fn forward_train(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        self.run(batch, dropout, pooled)
    }

    fn backward(&mut self, batch: &Packed<'_>, dpooled: &[f32]) -> Result<()> {
        let h = self.model.hidden_size();
        self.dhidden.clear();
        self.dhidden.resize(batch.input_ids.len() * h, 0.0);
        self.pooler
            .backward(&mut self.dhidden, dpooled, batch.seq_offsets, h)
            .map_err(|e| TrainError::Encoder(e.to_string()))?;
        self.model.backward(&self.dhidden).map_err(model_err)
    }

    fn token_states(&self, _train: bool) -> Option<&[f32]> {
        Some(self.model.hidden())
    }

    fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    fn zero_grad(&mut self) -> Result<()> {
        self.model.zero_grad();
        Ok(())
    }

    fn clip_grad_norm(&mut self, max_norm: Option<f32>) -> Result<f64> {
        Ok(clip_or_norm(&mut self.model.buffers, max_norm))
    }

    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        self.model.adamw_step(hp, t).map_err(model_err)
    }

    fn trainable_len(&self) -> usize {
        self.model.buffers.params.len()
    }

    fn moments(&mut self) -> Result<(&[f32], &[f32])> {
        Ok(moments_of(&self.model.buffers))
    }

    fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        set_moments_of(&mut self.model.buffers, m, v);
        Ok(())
    }

    fn write_weights(&mut self, dir: &Path, _files_from: &Path) -> Result<()> {
        match self.model.lora {
            Some(_) => self.write_adapter(dir),
            None => self.write_full(dir, false),
        }
    }

    fn write_merged(&mut self, dir: &Path, settings_from: &Path) -> Result<()> {
        if self.model.lora.is_none() {
            return Err(TrainError::Config(
                "--merge-lora needs a LoRA run (--lora-r ...)".into(),
            ));
        }
        if dir.exists() {
            return Err(TrainError::Config(format!(
                "{} exists: give a new folder for the merged model",
                dir.display()
            )));
        }
        let pooling = if settings_from.join(crate::checkpoint::ANGLE_CONFIG).is_file() {
            crate::embed::ModelDefaults::from_dir(settings_from)?.pooling
        } else {
            self.pooler.kind
        };
        // the folder appears complete or not at all
        crate::atomic::write_dir_atomic(dir, |tmp| {
            self.write_full(tmp, true)?;
            for name in angle_models::weights::TOKENIZER_FILES {
                let from = [settings_from, &self.base].map(|d| d.join(name));
                if let Some(src) = from.iter().find(|p| p.is_file()) {
                    std::fs::copy(src, tmp.join(name)).map_err(io_err(src))?;
                }
            }
            crate::checkpoint::copy_settings(settings_from, tmp, pooling, self.model.hidden_size())
        })
    }
}
