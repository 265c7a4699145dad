//! AdamW's weight decay as the Hugging Face Trainer applies it: every trainable tensor but biases and norm
//! weights (RMSNorm of each layer, the final norm, Qwen3's q/k norms), LoRA's A and B included.

mod common;

use angle_decoder::{Decoder, DecoderOptions, LoraConfig};
use angle_encoder::{AdamW, decays};

/// With zero gradients an AdamW step only decays: `p · (1 - lr·wd)` where it applies, `p` unchanged where not.
#[test]
fn biases_and_norm_weights_are_not_decayed() {
    let hp = AdamW {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamW::default()
    };
    let factor = (1.0 - hp.lr * hp.weight_decay) as f32;
    for case in common::cases() {
        for lora in [None, Some(LoraConfig::default())] {
            let is_lora = lora.is_some();
            let opts = DecoderOptions {
                lora,
                ..DecoderOptions::default()
            };
            let mut dec = Decoder::load(case.join("model"), opts).unwrap();
            // LoRA's B starts at zero: give every tensor values a decay would move
            for (k, v) in dec.buffers.params.iter_mut().enumerate() {
                *v = 0.5 + (k % 7) as f32 / 8.0;
            }
            let before = dec.buffers.params.clone();
            dec.zero_grad();
            dec.adamw_step(&hp, 1).unwrap();
            let (mut spared, mut decayed) = (0, 0);
            for e in &dec.entries {
                let r = e.range();
                let (now, was) = (&dec.buffers.params[r.clone()], &before[r]);
                if decays(&e.name) {
                    decayed += 1;
                    assert!(
                        now.iter().zip(was).all(|(n, w)| *n == w * factor),
                        "{} decayed",
                        e.name
                    );
                } else {
                    spared += 1;
                    assert_eq!(now, was, "{} is not decayed", e.name);
                }
            }
            assert!(decayed > 0, "{}", case.display());
            // full fine-tuning has norm weights to spare; LoRA trains only A and B, all decayed
            assert_eq!(spared > 0, !is_lora, "{}", case.display());
        }
    }
}
