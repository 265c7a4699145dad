//! `MemoryEstimate` against what the decoder really holds, on the fixture models (full fine-tuning and
//! LoRA; Qwen3's q/k norms included): parameter and trainable counts, the weights' bytes, and the
//! activations one forward of one sequence saves for backward, with and without checkpointing.

mod common;

use angle_decoder::{Decoder, DecoderOptions, LoraConfig, MemoryEstimate};

#[test]
fn estimate_equals_what_the_decoder_allocates() {
    let lora = LoraConfig {
        r: 3,
        alpha: 6.0,
        dropout: 0.1,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        seed: 1,
    };
    for case in common::cases() {
        let model = case.join("model");
        for l in [None, Some(lora.clone())] {
            let opts = DecoderOptions {
                lora: l.clone(),
                ..DecoderOptions::default()
            };
            let mut dec = Decoder::load(&model, opts).unwrap();
            let what = format!(
                "{} ({})",
                case.display(),
                if l.is_some() { "LoRA" } else { "full" }
            );
            let ck = &dec.checkpoint.tensors;
            // the backbone's tensors (a tied LM head is not stored; an untied one is no backbone tensor)
            let backbone = ck.iter().filter(|(name, _)| name.as_str() != "lm_head.weight");
            let params: usize = backbone
                .clone()
                .map(|(_, f)| f.shape.iter().product::<usize>())
                .sum();
            let weight_bytes = ck["model.embed_tokens.weight"].dtype.bytes();
            let t = 9;
            let est = MemoryEstimate::new(&dec.config, l.as_ref(), weight_bytes, t);
            assert_eq!(est.params, params, "{what}");
            let trainable = dec.buffers.params.len();
            assert_eq!(est.trainable, trainable, "{what}");
            let held = match l {
                None => 4 * params,
                Some(_) => backbone.map(|(_, f)| f.bytes().len()).sum::<usize>() + 4 * trainable,
            };
            assert_eq!(est.weights, held, "{what}");
            let ids: Vec<u32> = (1..=t as u32).collect();
            dec.forward(&ids, &[0, t], Some(5)).unwrap();
            assert_eq!(est.activations_per_seq, dec.activation_bytes(), "{what}");
            // two sequences of t tokens: twice the one-sequence figure
            let two: Vec<u32> = ids.iter().chain(&ids).copied().collect();
            dec.forward(&two, &[0, t, 2 * t], Some(5)).unwrap();
            assert_eq!(2 * est.activations_per_seq, dec.activation_bytes(), "{what}");
            // checkpointing: every layer's input and one layer's working set
            dec.checkpointing = true;
            dec.forward(&ids, &[0, t], Some(5)).unwrap();
            assert_eq!(
                est.activations_per_seq_checkpointed,
                dec.activation_bytes(),
                "{what}"
            );
            dec.forward(&two, &[0, t, 2 * t], Some(5)).unwrap();
            assert_eq!(
                2 * est.activations_per_seq_checkpointed,
                dec.activation_bytes(),
                "{what}"
            );
        }
    }
}
