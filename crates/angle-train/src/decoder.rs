//! The decoder family (LLaMA, Mistral, Qwen2, Qwen3; full fine-tuning or LoRA) behind the [`Backbone`]
//! interface, on the CPU.
//!
//! A LoRA checkpoint folder is a peft adapter (`adapter_config.json`, `adapter_model.safetensors`) whose
//! `base_model_name_or_path` names the base folder; [`load_decoder`] reads either kind of folder.

use std::path::{Path, PathBuf};

use angle_decoder::{Decoder, DecoderOptions, LoraConfig};
use angle_encoder::{AdamW, Pooling};

use crate::backbone::{Backbone, Packed, Sizes, clip_or_norm, moments_of, set_moments_of};
use crate::error::{Result, TrainError};
use crate::precision::Precision;

/// The file that makes a folder a peft adapter.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Model types of the decoder family (`config.json`'s `model_type`).
pub const DECODER_TYPES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

fn dec_err(e: angle_decoder::DecoderError) -> TrainError {
    TrainError::Encoder(e.to_string())
}

/// What a folder holds: a decoder-family checkpoint, a peft adapter on one, or neither.
pub fn is_decoder_folder(dir: &Path) -> Result<bool> {
    if dir.join(ADAPTER_CONFIG).is_file() {
        // an adapter on an encoder base loads through the blocks (`crate::blocks`); one whose base is not
        // found here is left to the decoder loader, which names what is missing
        return Ok(match adapter_base(dir, None) {
            Ok(base) => crate::blocks::model_type(&base)?.is_none_or(|t| DECODER_TYPES.contains(&t.as_str())),
            Err(_) => true,
        });
    }
    let p = dir.join("config.json");
    if !p.is_file() {
        return Ok(false);
    }
    let v: serde_json::Value = crate::checkpoint::read_json(&p)?;
    Ok(v.get("model_type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| DECODER_TYPES.contains(&t)))
}

/// The pooling a decoder folder embeds with unless told: its sentence-transformers `1_Pooling` config when it
/// has one (`pooling_mode_lasttoken` and the others), else `last`.
pub fn default_pooling(dir: &Path) -> Result<Pooling> {
    if dir.join("1_Pooling/config.json").is_file() || dir.join("modules.json").is_file() {
        return Pooling::from_model_dir(dir).map_err(|e| TrainError::Encoder(e.to_string()));
    }
    Ok(Pooling::Last)
}

/// The base model folder of a peft adapter folder: `base` when given, else the adapter's
/// `base_model_name_or_path` (relative paths from the adapter folder).
pub fn adapter_base(adapter: &Path, base: Option<&Path>) -> Result<PathBuf> {
    if let Some(b) = base {
        return crate::hub::model_dir(b);
    }
    let p = adapter.join(ADAPTER_CONFIG);
    let v: serde_json::Value = crate::checkpoint::read_json(&p)?;
    let name = v
        .get("base_model_name_or_path")
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TrainError::Checkpoint {
            path: p.clone(),
            msg: "base_model_name_or_path is missing: pass --base-model".into(),
        })?;
    let path = PathBuf::from(name);
    let path = if path.exists() {
        path
    } else if path.is_relative() && adapter.join(&path).exists() {
        adapter.join(&path)
    } else {
        // Not a folder here: a hub id (peft writes the id it loaded the base from), through the cache.
        crate::hub::model_dir(&path).map_err(|e| TrainError::Checkpoint {
            path: p.clone(),
            msg: format!("base_model_name_or_path {name:?}: {e}; or pass --base-model"),
        })?
    };
    if !path.join("config.json").is_file() {
        return Err(TrainError::Checkpoint {
            path: p,
            msg: format!(
                "base_model_name_or_path {name:?} is not a model folder here (no config.json): pass --base-model"
            ),
        });
    }
    Ok(path)
}

/// How a decoder is built for a run.
#[derive(Debug, Clone, Default)]
pub struct DecoderSettings {
    /// LoRA for a new adapter (ignored when the folder is an adapter: its own settings hold).
    pub lora: Option<LoraConfig>,
    pub bidirectional: bool,
    /// Layers from this index on attend bidirectionally (BiLLM); `None`: as `bidirectional` says.
    pub bidirectional_from: Option<usize>,
    /// The base folder of an adapter folder, overriding its `base_model_name_or_path`.
    pub base_model: Option<PathBuf>,
    /// Encoding only: a full checkpoint keeps every weight in its dtype, nothing trainable.
    pub inference_only: bool,
    /// Gradient checkpointing: layer inputs kept, each layer recomputed inside backward (the decoder family and
    /// angle-models' encoders; a BERT-family run that asks for it goes through angle-models' blocks).
    pub gradient_checkpointing: bool,
    /// Shard size of full and merged saves (`None`: 5GB).
    pub max_shard_bytes: Option<u64>,
}

/// The decoder settings a training configuration asks for (LoRA's A initialised from the run's seed).
pub fn settings_for(c: &crate::config::TrainConfig) -> DecoderSettings {
    DecoderSettings {
        lora: c.lora.as_ref().map(|l| LoraConfig {
            r: l.r,
            alpha: l.alpha,
            dropout: l.dropout,
            targets: l
                .targets
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            seed: c.seed,
        }),
        bidirectional: c.bidirectional,
        bidirectional_from: c.bidirectional_from,
        base_model: None,
        inference_only: false,
        gradient_checkpointing: c.gradient_checkpointing,
        max_shard_bytes: c
            .max_shard_size
            .as_deref()
            .and_then(angle_models::weights::parse_shard_size),
    }
}

/// A decoder on the CPU.
pub struct DecoderCpu {
    pub dec: Decoder,
    /// The base model folder (for a LoRA adapter's `base_model_name_or_path` and the merged model).
    pub base: PathBuf,
}

/// Loads `dir` (a decoder checkpoint, or a peft adapter folder on one) as `s` asks; the tokenizer
/// folder is returned beside (the adapter folder when it has a `tokenizer.json`, else the base).
pub fn load_decoder(
    dir: &Path,
    pooling: Option<Pooling>,
    s: &DecoderSettings,
) -> Result<(DecoderCpu, PathBuf)> {
    let is_adapter = dir.join(ADAPTER_CONFIG).is_file();
    let base = if is_adapter {
        adapter_base(dir, s.base_model.as_deref())?
    } else {
        dir.to_path_buf()
    };
    let opts = DecoderOptions {
        lora: s.lora.clone(),
        adapter: is_adapter.then(|| dir.to_path_buf()),
        causal: !s.bidirectional,
        bidirectional_from: s.bidirectional_from,
        pooling,
        frozen: s.inference_only,
    };
    let mut dec = Decoder::load(&base, opts).map_err(dec_err)?;
    dec.checkpointing = s.gradient_checkpointing;
    if let Some(b) = s.max_shard_bytes {
        dec.max_shard_bytes = b;
    }
    let tok_dir = if dir.join("tokenizer.json").is_file() {
        dir.to_path_buf()
    } else {
        base.clone()
    };
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    Ok((DecoderCpu { dec, base }, tok_dir))
}

impl Backbone for DecoderCpu {
    fn describe(&self) -> String {
        let c = &self.dec.config;
        let how = match &self.dec.lora {
            Some(l) => format!("LoRA r {} alpha {} on {}", l.r, l.alpha, l.targets.join(",")),
            None => "full fine-tuning".into(),
        };
        let how = match self.dec.checkpointing {
            true => format!("{how}, gradient checkpointing"),
            false => how,
        };
        let products = match self.dec.precision() {
            Precision::Bf16 => format!(
                "bf16 products ({}, {:.0} MB of bf16 copies)",
                angle_tensor::cpu::bf16_kernel().name(),
                self.dec.bf16_bytes() as f64 / 1e6
            ),
            Precision::Int8 => format!(
                "int8 products ({}, {:.0} MB of int8 copies)",
                angle_tensor::cpu::int8_kernel().name(),
                self.dec.bf16_bytes() as f64 / 1e6
            ),
            Precision::F32 | Precision::Tf32 => "f32".into(),
        };
        format!(
            "{} ({} layers, hidden {}) on the cpu, {}, {products}, {} attention, {} trainable",
            c.model_type.name(),
            c.num_hidden_layers,
            c.hidden_size,
            how,
            match (self.dec.causal, self.dec.bidirectional_from) {
                (false, _) => "bidirectional".to_string(),
                (true, Some(k)) => format!("causal before layer {k}, bidirectional from it"),
                (true, None) => "causal".to_string(),
            },
            self.dec.buffers.params.len()
        )
    }

    fn memory_plan(&self, sizes: Sizes) -> Option<crate::memory::MemoryPlan> {
        let d = &self.dec;
        let weight_bytes = d
            .checkpoint
            .tensors
            .get("model.embed_tokens.weight")
            .map_or(4, |t| t.dtype.bytes());
        let e = angle_decoder::MemoryEstimate::new(&d.config, d.lora.as_ref(), weight_bytes, sizes.max_len);
        let (acts, work) = match d.checkpointing {
            true => (e.activations_per_seq_checkpointed, e.working_per_seq_checkpointed),
            false => (e.activations_per_seq, e.working_per_seq),
        };
        // Full fine-tuning read every weight through the checkpoint's map: its pages stay resident. A LoRA
        // run's frozen embedding table stays in the map, where only the rows of the tokens used get paged in.
        let (mapped, unread) = match d.lora {
            None => (weight_bytes * e.params, 0),
            Some(_) => (0, weight_bytes * d.config.vocab_size * d.config.hidden_size),
        };
        Some(crate::memory::MemoryPlan {
            weights: (e.weights + mapped + d.bf16_bytes()).saturating_sub(unread),
            trainable_state: e.trainable_state,
            // an evaluation batch runs through the same (grow-only) buffers as a training one
            activations: sizes.train_seqs.max(sizes.embed_seqs) * acts,
            working: sizes.train_seqs * work + e.working_fixed + crate::memory::PROCESS_BYTES,
        })
    }

    fn hidden_size(&self) -> usize {
        self.dec.config.hidden_size
    }

    fn pooling(&self) -> Pooling {
        self.dec.pooling
    }

    fn reserve(&mut self, _sizes: Sizes) -> Result<()> {
        // The decoder sizes its one arena at the first forward of the largest batch and reuses it.
        Ok(())
    }

    fn embed(&mut self, batch: &Packed<'_>, pooled: &mut Vec<f32>) -> Result<()> {
        self.forward_train(batch, None, pooled)
    }

    fn forward_train(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        self.dec
            .forward(batch.input_ids, batch.seq_offsets, dropout)
            .map_err(dec_err)?;
        pooled.resize(batch.num_seqs() * self.hidden_size(), 0.0);
        self.dec.pool(pooled).map_err(dec_err)
    }

    fn backward(&mut self, _batch: &Packed<'_>, dpooled: &[f32]) -> Result<()> {
        self.dec.backward_pooled(dpooled).map_err(dec_err)
    }

    fn num_layers(&self) -> usize {
        self.dec.config.num_hidden_layers
    }

    fn zero_grad(&mut self) -> Result<()> {
        self.dec.zero_grad();
        Ok(())
    }

    fn clip_grad_norm(&mut self, max_norm: Option<f32>) -> Result<f64> {
        Ok(clip_or_norm(&mut self.dec.buffers, max_norm))
    }

    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        self.dec.adamw_step(hp, t).map_err(dec_err)
    }

    fn trainable_len(&self) -> usize {
        self.dec.buffers.params.len()
    }

    fn moments(&mut self) -> Result<(&[f32], &[f32])> {
        Ok(moments_of(&self.dec.buffers))
    }

    fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        set_moments_of(&mut self.dec.buffers, m, v);
        Ok(())
    }

    fn write_weights(&mut self, dir: &Path, _files_from: &Path) -> Result<()> {
        match self.dec.lora {
            Some(_) => {
                let base = crate::hub::model_name(&self.base);
                self.dec.save_adapter(dir, Some(&base)).map_err(dec_err)
            }
            None => self.dec.save_trained(dir).map_err(dec_err),
        }
    }

    fn write_merged(&mut self, dir: &Path, settings_from: &Path) -> Result<()> {
        if self.dec.lora.is_none() {
            return Err(TrainError::Config(
                "--merge-lora needs a LoRA run (--lora-r ...)".into(),
            ));
        }
        write_merged(self, dir, settings_from)
    }
}

/// `angle merge` and `--merge-lora`: the adapter folded into the base weights, a full checkpoint in `out`
/// (with the tokenizer files and the encode settings of the adapter folder `settings_from`, so it encodes as
/// trained), refused when `out` exists.
pub fn write_merged(model: &DecoderCpu, out: &Path, settings_from: &Path) -> Result<()> {
    if out.exists() {
        return Err(TrainError::Config(format!(
            "{} exists: give a new folder for the merged model",
            out.display()
        )));
    }
    // the pooling trained with: the adapter folder's record when it has one (`angle merge` loads the
    // model with the base's default), else the model's
    let pooling = if settings_from.join(crate::checkpoint::ANGLE_CONFIG).is_file() {
        crate::embed::ModelDefaults::from_dir(settings_from)?.pooling
    } else {
        model.dec.pooling
    };
    // the folder appears complete or not at all
    crate::atomic::write_dir_atomic(out, |tmp| {
        model.dec.save_merged(tmp).map_err(dec_err)?;
        crate::checkpoint::copy_settings(settings_from, tmp, pooling, model.dec.config.hidden_size)
    })
}
