//! The parameter layout: every tensor's Hugging Face name, shape and offset in one flat `f32` buffer.
//!
//! Parameters, gradients and the two AdamW moments share this layout, so the optimizer and the gradient
//! norm are single loops over one slice, and a GPU copy of the buffer uses the very same offsets.
//! Order: embeddings, then per layer the query/key/value weights back to back (one `[3H, H]` matrix), the
//! three biases back to back (one `[3H]` vector), then the rest of the layer in module order.

use std::collections::HashMap;
use std::ops::Range;

use crate::config::BertConfig;

/// One named tensor in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// Hugging Face name without the `bert.` prefix, e.g. `encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Ranges of the embedding parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingRanges {
    /// `[vocab, H]`
    pub word: Range<usize>,
    /// `[max_positions, H]`
    pub position: Range<usize>,
    /// `[type_vocab, H]`
    pub token_type: Range<usize>,
    pub ln_weight: Range<usize>,
    pub ln_bias: Range<usize>,
}

/// Ranges of one transformer layer's parameters, grouped as the forward pass uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRanges {
    /// query, key, value weights: one `[3H, H]` matrix.
    pub qkv_weight: Range<usize>,
    /// query, key, value biases: one `[3H]` vector.
    pub qkv_bias: Range<usize>,
    /// `attention.output.dense`, `[H, H]` and `[H]`.
    pub attn_out_weight: Range<usize>,
    pub attn_out_bias: Range<usize>,
    /// `attention.output.LayerNorm`
    pub attn_ln_weight: Range<usize>,
    pub attn_ln_bias: Range<usize>,
    /// `intermediate.dense`, `[I, H]` and `[I]`.
    pub ffn_in_weight: Range<usize>,
    pub ffn_in_bias: Range<usize>,
    /// `output.dense`, `[H, I]` and `[H]`.
    pub ffn_out_weight: Range<usize>,
    pub ffn_out_bias: Range<usize>,
    /// `output.LayerNorm`
    pub ffn_ln_weight: Range<usize>,
    pub ffn_ln_bias: Range<usize>,
}

/// Names, shapes and offsets of all parameters of a [`BertConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    /// In buffer order.
    pub entries: Vec<ParamEntry>,
    pub embeddings: EmbeddingRanges,
    pub layers: Vec<LayerRanges>,
    /// Total number of floats.
    pub total: usize,
    /// The ranges AdamW does not decay ([`no_decay_ranges`]).
    pub no_decay: Vec<Range<usize>>,
    index: HashMap<String, usize>,
}

impl ParamLayout {
    pub fn new(cfg: &BertConfig) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut b = Builder::default();
        let embeddings = EmbeddingRanges {
            word: b.push("embeddings.word_embeddings.weight", &[cfg.vocab_size, h]),
            position: b.push(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            ),
            token_type: b.push(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            ),
            ln_weight: b.push("embeddings.LayerNorm.weight", &[h]),
            ln_bias: b.push("embeddings.LayerNorm.bias", &[h]),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = |s: &str| format!("encoder.layer.{l}.{s}");
                let q = b.push(&p("attention.self.query.weight"), &[h, h]);
                b.push(&p("attention.self.key.weight"), &[h, h]);
                let v = b.push(&p("attention.self.value.weight"), &[h, h]);
                let qb = b.push(&p("attention.self.query.bias"), &[h]);
                b.push(&p("attention.self.key.bias"), &[h]);
                let vb = b.push(&p("attention.self.value.bias"), &[h]);
                LayerRanges {
                    qkv_weight: q.start..v.end,
                    qkv_bias: qb.start..vb.end,
                    attn_out_weight: b.push(&p("attention.output.dense.weight"), &[h, h]),
                    attn_out_bias: b.push(&p("attention.output.dense.bias"), &[h]),
                    attn_ln_weight: b.push(&p("attention.output.LayerNorm.weight"), &[h]),
                    attn_ln_bias: b.push(&p("attention.output.LayerNorm.bias"), &[h]),
                    ffn_in_weight: b.push(&p("intermediate.dense.weight"), &[i, h]),
                    ffn_in_bias: b.push(&p("intermediate.dense.bias"), &[i]),
                    ffn_out_weight: b.push(&p("output.dense.weight"), &[h, i]),
                    ffn_out_bias: b.push(&p("output.dense.bias"), &[h]),
                    ffn_ln_weight: b.push(&p("output.LayerNorm.weight"), &[h]),
                    ffn_ln_bias: b.push(&p("output.LayerNorm.bias"), &[h]),
                }
            })
            .collect();
        let index = b
            .entries
            .iter()
            .enumerate()
            .map(|(k, e)| (e.name.clone(), k))
            .collect();
        ParamLayout {
            total: b.offset,
            no_decay: no_decay_ranges(&b.entries),
            entries: b.entries,
            embeddings,
            layers,
            index,
        }
    }

    /// The entry of a Hugging Face name (without the `bert.` prefix).
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.index.get(name).map(|&k| &self.entries[k])
    }

    /// The view of `name` in any buffer with this layout (parameters, gradients, moments).
    pub fn view<'a>(&self, buf: &'a [f32], name: &str) -> Option<&'a [f32]> {
        self.get(name).and_then(|e| buf.get(e.range()))
    }

    pub fn view_mut<'a>(&self, buf: &'a mut [f32], name: &str) -> Option<&'a mut [f32]> {
        let r = self.get(name)?.range();
        buf.get_mut(r)
    }
}

/// Whether AdamW decays the tensor `name`, as the Hugging Face Trainer (which angle-emb and
/// sentence-transformers train with) groups parameters in `get_decay_parameter_names`: no decay for a
/// name that, lower-cased, contains `bias`, `layernorm` or `rmsnorm`, or has a path component `norm` or
/// one ending in `_norm` (BERT's `LayerNorm`, LLaMA's `input_layernorm` and `model.norm`, Qwen3's
/// `q_norm`). Everything else decays, LoRA's A and B included (they are `Linear` weights).
pub fn decays(name: &str) -> bool {
    let name = name.to_lowercase();
    let norm_part = name.split('.').any(|p| p == "norm" || p.ends_with("_norm"));
    !(name.contains("bias") || name.contains("layernorm") || name.contains("rmsnorm") || norm_part)
}

/// The buffer ranges of the tensors [`decays`] spares, adjacent ones merged, in buffer order (as
/// `entries` are laid out): what [`angle_tensor::cpu::adamw_update_masked`] takes.
pub fn no_decay_ranges(entries: &[ParamEntry]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for e in entries.iter().filter(|e| !e.is_empty() && !decays(&e.name)) {
        match out.last_mut() {
            Some(last) if last.end == e.offset => last.end = e.range().end,
            _ => out.push(e.range()),
        }
    }
    out
}

#[derive(Default)]
struct Builder {
    entries: Vec<ParamEntry>,
    offset: usize,
}

impl Builder {
    fn push(&mut self, name: &str, shape: &[usize]) -> Range<usize> {
        let e = ParamEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            offset: self.offset,
        };
        self.offset += e.len();
        let r = e.range();
        self.entries.push(e);
        r
    }
}

/// Parameters, gradients and AdamW moments, each one contiguous buffer in [`ParamLayout`] order.
///
/// `grads`, `adam_m` and `adam_v` stay empty until [`ParamBuffers::alloc_training`]: an encoder that only
/// embeds needs the parameters alone.
#[derive(Debug, Clone, Default)]
pub struct ParamBuffers {
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
}

impl ParamBuffers {
    pub fn new(params: Vec<f32>) -> Self {
        ParamBuffers {
            params,
            ..Default::default()
        }
    }

    /// Allocates zeroed gradients and moments (once; later calls keep their contents).
    pub fn alloc_training(&mut self) {
        let n = self.params.len();
        for buf in [&mut self.grads, &mut self.adam_m, &mut self.adam_v] {
            if buf.len() != n {
                *buf = vec![0.0; n];
            }
        }
    }

    pub fn is_training(&self) -> bool {
        self.grads.len() == self.params.len()
    }

    /// Clears the gradients (backward adds into them); split across the rayon pool, as a 90 MB memset is
    /// memory-bound work one core does not saturate.
    pub fn zero_grad(&mut self) {
        use rayon::prelude::*;
        self.grads.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
    }

    /// One AdamW step `t` (1-based) over the whole buffer (allocating the moments on first use), without
    /// weight decay on the `no_decay` ranges (biases and norm weights, as the Hugging Face Trainer).
    pub fn adamw_step(
        &mut self,
        hp: &crate::AdamW,
        no_decay: &[Range<usize>],
        t: u64,
    ) -> Result<(), angle_tensor::TensorError> {
        self.alloc_training();
        angle_tensor::cpu::adamw_update_masked(
            &mut self.params,
            &self.grads,
            &mut self.adam_m,
            &mut self.adam_v,
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.eps,
            hp.weight_decay,
            no_decay,
            t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_layout() {
        let cfg = BertConfig::bert(384, 6, 12, 1536, 30522, 512);
        let l = ParamLayout::new(&cfg);
        // all-MiniLM-L6-v2 without its pooler: 22,565,376 parameters.
        assert_eq!(l.total, 22_565_376);
        assert_eq!(l.entries.len(), 5 + 6 * 16);
        let q = l.get("encoder.layer.3.attention.self.query.weight").unwrap();
        let k = l.get("encoder.layer.3.attention.self.key.weight").unwrap();
        let v = l.get("encoder.layer.3.attention.self.value.weight").unwrap();
        assert_eq!(k.offset, q.offset + 384 * 384);
        assert_eq!(v.offset, k.offset + 384 * 384);
        assert_eq!(l.layers[3].qkv_weight, q.offset..v.offset + 384 * 384);
        let mut end = 0;
        for e in &l.entries {
            assert_eq!(e.offset, end, "{}", e.name);
            end += e.len();
        }
        assert_eq!(end, l.total);
    }

    /// The Hugging Face Trainer's two groups: matrices and embeddings decay, biases and norm weights do not.
    #[test]
    fn decay_groups_follow_the_hf_trainer() {
        for name in [
            "embeddings.word_embeddings.weight",
            "encoder.layer.0.attention.self.query.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.embed_tokens.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
            "model.normalizer.weight",
        ] {
            assert!(decays(name), "{name}");
        }
        for name in [
            "encoder.layer.0.attention.self.query.bias",
            "embeddings.LayerNorm.weight",
            "encoder.layer.0.output.LayerNorm.bias",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.self_attn.q_norm.weight",
            "model.layers.0.self_attn.k_norm.weight",
            "model.norm.weight",
            "model.layers.0.self_attn.q_proj.bias",
        ] {
            assert!(!decays(name), "{name}");
        }
        let cfg = BertConfig::bert(8, 2, 2, 16, 30, 10);
        let l = ParamLayout::new(&cfg);
        let spared = |name: &str| {
            let r = l.get(name).unwrap().range();
            l.no_decay.iter().any(|nd| nd.start <= r.start && r.end <= nd.end)
        };
        for e in &l.entries {
            assert_eq!(spared(&e.name), !decays(&e.name), "{}", e.name);
        }
        // the embedding LayerNorm's weight and bias are one merged range; q/k/v biases are one more
        let ln = l.embeddings.ln_weight.start..l.embeddings.ln_bias.end;
        assert_eq!(l.no_decay[0], ln);
        assert_eq!(l.no_decay[1], l.layers[0].qkv_bias);
        assert!(l.no_decay.windows(2).all(|w| w[0].end < w[1].start));
    }

    /// An encoder's AdamW step with zero gradients only decays: matrices and embeddings scale by
    /// `1 - lr·wd`, biases and LayerNorm weights stay.
    #[test]
    fn adamw_step_spares_biases_and_layernorms() {
        let cfg = BertConfig::bert(8, 2, 2, 16, 30, 10);
        let n = ParamLayout::new(&cfg).total;
        let params: Vec<f32> = (0..n).map(|k| 0.5 + (k % 5) as f32 / 4.0).collect();
        let mut enc = crate::Encoder::from_params(cfg, params.clone()).unwrap();
        enc.zero_grad();
        let hp = crate::AdamW {
            lr: 0.1,
            weight_decay: 0.5,
            ..crate::AdamW::default()
        };
        enc.adamw_step(&hp, 1).unwrap();
        let factor = (1.0 - hp.lr * hp.weight_decay) as f32;
        for e in &enc.layout.entries {
            let (now, was) = (&enc.buffers.params[e.range()], &params[e.range()]);
            let want: Vec<f32> = was
                .iter()
                .map(|w| if decays(&e.name) { w * factor } else { *w })
                .collect();
            assert_eq!(now, &want[..], "{}", e.name);
        }
        let w = enc
            .layout
            .get("encoder.layer.1.intermediate.dense.weight")
            .unwrap()
            .range();
        assert_ne!(enc.buffers.params[w.clone()], params[w]);
        let b = enc
            .layout
            .get("encoder.layer.1.output.LayerNorm.weight")
            .unwrap()
            .range();
        assert_eq!(enc.buffers.params[b.clone()], params[b]);
    }
}
