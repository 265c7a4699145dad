//! Output: a peft adapter, or a full Hugging Face checkpoint (trained weights, or LoRA merged in).

use std::path::Path;

use angle_tensor::cpu::{MatMut, MatRef, gemm};
use safetensors::tensor::Dtype;

use crate::error::{DecoderError, Result, io_err};
use crate::lora::{MODULES, module_parent, peft_name};
use crate::model::Decoder;
use crate::weights::{TensorSpec, write_safetensors, write_sharded};

/// Files copied from the base folder next to a full checkpoint (those that exist), besides the tokenizer's
/// ([`angle_models::weights::TOKENIZER_FILES`]). Not the base's sentence-transformers files: they describe the
/// base's pooling, and whoever saves knows the pooling it trained with (angle's trainer writes them for it).
const COPIED: [&str; 2] = ["config.json", "generation_config.json"];

impl Decoder {
    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32, peft's names) into `dir`.
    pub fn save_adapter(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let Some(lora) = &self.lora else {
            return Err(DecoderError::Lora(
                "save_adapter: the model has no LoRA adapter".into(),
            ));
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        lora.write_adapter_config(&dir.join("adapter_config.json"), base_model)?;
        let p = &self.buffers.params;
        let tensors = self
            .entries
            .iter()
            .map(|e| {
                let bytes: &[u8] = bytemuck::cast_slice(&p[e.range()]);
                (e.name.clone(), Dtype::F32, e.shape.clone(), bytes.to_vec())
            })
            .collect();
        Ok(write_safetensors(
            &dir.join("adapter_model.safetensors"),
            tensors,
        )?)
    }

    /// Writes a full checkpoint into `dir` (`model.safetensors` in each tensor's original dtype, plus the
    /// base's config and tokenizer files): the trained weights of a full fine-tune, or the base with the
    /// adapter folded in, `W + (alpha/r)·B·A`, for LoRA. Loadable by transformers.
    pub fn save_merged(&self, dir: &Path) -> Result<()> {
        self.write_full(dir, false)
    }

    /// As [`Decoder::save_merged`], but the trained tensors of a full fine-tune stay f32 (the rest keeps the
    /// file's dtype): a training checkpoint that resumes bit for bit.
    pub fn save_trained(&self, dir: &Path) -> Result<()> {
        self.write_full(dir, true)
    }

    fn write_full(&self, dir: &Path, trained_f32: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut names: Vec<&String> = self.checkpoint.tensors.keys().collect();
        names.sort();
        // the dtype of each tensor first (the shard headers need every size), then the bytes tensor by tensor
        let specs: Vec<TensorSpec> = names
            .iter()
            .map(|&name| {
                let f = &self.checkpoint.tensors[name];
                let trained = self.entry(name).is_some() && trained_f32;
                let dtype = if trained {
                    crate::weights::WeightDtype::F32
                } else {
                    f.dtype
                };
                TensorSpec {
                    name: name.clone(),
                    dtype: dtype.safetensors(),
                    shape: f.shape.clone(),
                }
            })
            .collect();
        let p = &self.buffers.params;
        write_sharded(dir, &specs, self.max_shard_bytes, |i, bytes| {
            let name = names[i];
            let f = &self.checkpoint.tensors[name];
            if let Some(e) = self.entry(name) {
                // full fine-tuning: the trained values, rounded to the file's dtype unless kept f32
                let dtype = if trained_f32 {
                    crate::weights::WeightDtype::F32
                } else {
                    f.dtype
                };
                dtype.encode(&p[e.range()], bytes);
            } else if let Some((a, b, scale)) = self.lora_of(name) {
                let mut w = f.to_f32();
                let (o, i) = (f.shape[0], f.shape[1]);
                let r = a.len() / i;
                gemm(
                    scale as f32,
                    MatRef::new(b, o, r),
                    MatRef::new(a, r, i),
                    1.0,
                    MatMut::new(&mut w, o, i),
                )
                .map_err(angle_models::ModelError::from)?;
                f.dtype.encode(&w, bytes);
            } else {
                bytes.extend_from_slice(f.bytes());
            }
            Ok(())
        })?;
        for f in COPIED.iter().chain(angle_models::weights::TOKENIZER_FILES) {
            let src = self.checkpoint.dir.join(f);
            if src.is_file() {
                std::fs::copy(&src, dir.join(f)).map_err(io_err(&src))?;
            }
        }
        Ok(())
    }

    /// `(A, B, alpha/r)` of the checkpoint weight `name` when LoRA adapts it.
    fn lora_of(&self, name: &str) -> Option<(&[f32], &[f32], f64)> {
        let lora = self.lora.as_ref()?;
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let m = MODULES
            .iter()
            .enumerate()
            .position(|(m, mn)| rest == format!("{}.{mn}.weight", module_parent(m)))?;
        let p = &self.buffers.params;
        let a = self.view(p, &peft_name(layer, m, false))?;
        let b = self.view(p, &peft_name(layer, m, true))?;
        Some((a, b, lora.scale()))
    }
}
