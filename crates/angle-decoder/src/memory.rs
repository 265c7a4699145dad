//! Bytes of weights, trainable state and activations, from a shape (what `Decoder` allocates).

use crate::config::DecoderConfig;
use crate::lora::LoraConfig;

/// Memory of a training run, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Parameters of the backbone (embedding, layers, final norm; no LM head).
    pub params: usize,
    /// Trainable parameters (all, or LoRA's A and B).
    pub trainable: usize,
    /// Weights held: frozen ones in the checkpoint dtype (`weight_bytes` per element), trainable ones f32.
    pub weights: usize,
    /// Gradients and the two AdamW moments of the trainable tensors (f32).
    pub trainable_state: usize,
    /// Activations saved for backward per sequence of `seq_len` tokens (f32).
    pub activations_per_seq: usize,
    /// The same with gradient checkpointing: every layer's input, one layer's working set (the slot forward
    /// runs every layer in and backward recomputes each layer into) and the final norm's.
    pub activations_per_seq_checkpointed: usize,
    /// Backward's work buffers per sequence (gradients of one layer's activations, its attention
    /// probabilities, LoRA dropout's inputs; with checkpointing, the recomputed layer's output).
    pub working_per_seq: usize,
    pub working_per_seq_checkpointed: usize,
    /// Work buffers that do not grow with the batch: one frozen weight widened to f32 for its product.
    pub working_fixed: usize,
}

impl MemoryEstimate {
    /// `lora`: `None` for full fine-tuning. `weight_bytes`: 2 for a bf16/f16 checkpoint, 4 for f32.
    pub fn new(c: &DecoderConfig, lora: Option<&LoraConfig>, weight_bytes: usize, seq_len: usize) -> Self {
        let (h, i, l) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let linear = [(h, qd), (h, kvd), (h, kvd), (qd, h), (h, i), (h, i), (i, h)];
        let biases = if c.qkv_bias { qd + 2 * kvd } else { 0 }
            + if c.o_bias { h } else { 0 }
            + if c.mlp_bias { 2 * i + h } else { 0 };
        let norms = 2 * h + if c.qk_norm { 2 * c.head_dim } else { 0 };
        let per_layer: usize = linear.iter().map(|(a, b)| a * b).sum::<usize>() + biases + norms;
        let params = c.vocab_size * h + l * per_layer + h;
        let (trainable, weights, r, mask) = match lora {
            None => (params, 4 * params, 0, [false; 7]),
            Some(lc) => {
                let mask = lc.target_mask().unwrap_or([true; 7]);
                let t: usize = l * linear
                    .iter()
                    .zip(mask)
                    .filter(|(_, on)| *on)
                    .map(|((a, b), _)| lc.r * (a + b))
                    .sum::<usize>();
                (t, weight_bytes * params + 4 * t, lc.r, mask)
            }
        };
        let t = seq_len;
        let lora_acts = r * mask.iter().filter(|m| **m).count();
        let qk_norm = if c.qk_norm {
            qd + kvd + c.num_attention_heads + c.num_key_value_heads
        } else {
            0
        };
        let per_token_layer = 3 * h + 2 + qd + 2 * kvd + qk_norm + qd + h + 3 * i + lora_acts;
        let probs = c.num_attention_heads * t * t;
        let layer = t * per_token_layer + probs;
        let last = t * (2 * h + 1);
        let acts = l * layer + last;
        let checkpointed = l.min(1) * (layer - t * h) + l * t * h + last;
        // backward's scratch: dx, dh, dhidden; dq, datt (+ dq_raw), dk, dv (+ dk_raw); dgate, dup, dact;
        // LoRA dropout's masked input and its gradient; LoRA's dxa; one layer's dprobs
        let qk = usize::from(c.qk_norm);
        let dropout = lora.is_some_and(|lc| lc.dropout > 0.0);
        let widest_in = linear.iter().map(|(a, _)| *a).max().unwrap_or(0);
        let work_token =
            3 * h + (2 + qk) * qd + (2 + qk) * kvd + 3 * i + if dropout { 2 * widest_in } else { 0 } + r;
        let working = t * work_token + probs;
        let widest = linear.iter().map(|(a, b)| a * b).max().unwrap_or(0);
        let working_fixed = if lora.is_some() { 4 * widest } else { 0 };
        MemoryEstimate {
            params,
            trainable,
            weights,
            trainable_state: 12 * trainable,
            activations_per_seq: 4 * acts,
            activations_per_seq_checkpointed: 4 * checkpointed,
            working_per_seq: 4 * working,
            working_per_seq_checkpointed: 4 * (working + t * h),
            working_fixed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_5_0_5b_parameter_count() {
        // Qwen2.5-0.5B: 494,032,768 parameters with its tied embedding counted once.
        let m = MemoryEstimate::new(&DecoderConfig::qwen2_5_0_5b(), None, 2, 64);
        assert_eq!(m.params, 494_032_768);
    }

    /// Prints the table of the README (`cargo test -p angle-decoder --lib memory -- --nocapture`), and
    /// checks its counts against the published ones: the parameters without the LM head, and the trainable
    /// counts peft prints for LoRA r 16 on all linear layers (8,798,208 for Qwen2.5-0.5B, 10,092,544 for
    /// Qwen3-0.6B, 41,943,040 for Mistral-7B), doubled for r 32. The activations are checked against what
    /// the decoder allocates in `tests/memory.rs`.
    #[test]
    fn memory_table() {
        let lora = LoraConfig::default();
        for (name, c, params, lora_r32) in [
            (
                "Qwen2.5-0.5B",
                DecoderConfig::qwen2_5_0_5b(),
                494_032_768,
                2 * 8_798_208,
            ),
            (
                "Qwen3-0.6B",
                DecoderConfig::qwen3_0_6b(),
                596_049_920,
                2 * 10_092_544,
            ),
            (
                "Mistral-7B",
                DecoderConfig::mistral_7b(),
                7_110_660_096,
                2 * 41_943_040,
            ),
        ] {
            for (mode, l) in [("full", None), ("LoRA r32 all-linear", Some(&lora))] {
                let m = MemoryEstimate::new(&c, l, 2, 64);
                assert_eq!(m.params, params, "{name}");
                let trainable = if l.is_some() { lora_r32 } else { params };
                assert_eq!(m.trainable, trainable, "{name} {mode}");
                assert_eq!(m.trainable_state, 12 * trainable, "{name} {mode}");
                let weights = if l.is_some() {
                    2 * params + 4 * trainable
                } else {
                    4 * params
                };
                assert_eq!(m.weights, weights, "{name} {mode}");
                println!(
                    "{name} {mode}: params {:.1} M, trainable {:.1} M, weights {:.2} GB, trainable state {:.2} GB, activations/seq(64 tok) {:.2} MB ({:.2} MB checkpointed)",
                    m.params as f64 / 1e6,
                    m.trainable as f64 / 1e6,
                    m.weights as f64 / 1e9,
                    m.trainable_state as f64 / 1e9,
                    m.activations_per_seq as f64 / 1e6,
                    m.activations_per_seq_checkpointed as f64 / 1e6
                );
            }
        }
    }
}
