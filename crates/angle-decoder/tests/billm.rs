//! BiLLM (`DecoderOptions::bidirectional_from`, angle-emb's `BiLLM_START_INDEX`): layers before K attend
//! causally, layers from K on bidirectionally. K = 0 is `--bidirectional`, K = the depth is causal; between,
//! the early layers' outputs equal the causal model's and the last hidden state differs from both; the
//! backward (through both kinds of layer) still gives every trainable tensor a finite gradient.

mod common;

use angle_decoder::{Decoder, DecoderOptions};

fn hidden(dir: &std::path::Path, causal: bool, from: Option<usize>) -> (Vec<f32>, Decoder) {
    let mut d = Decoder::load(
        dir,
        DecoderOptions {
            causal,
            bidirectional_from: from,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u32> = (0..11u32).map(|i| 3 + (i * 13) % 50).collect();
    let h = d.forward(&ids, &[0, 6, 11], None).unwrap().to_vec();
    (h, d)
}

#[test]
fn layers_from_k_attend_both_ways() {
    let case = common::cases().into_iter().next().expect("a decoder fixture");
    let dir = case.join("model");
    let (causal, _) = hidden(&dir, true, None);
    let (bidir, _) = hidden(&dir, false, None);
    let (from0, _) = hidden(&dir, true, Some(0));
    let layers = Decoder::load(&dir, DecoderOptions::default())
        .unwrap()
        .config
        .num_hidden_layers;
    assert_eq!(from0, bidir, "K = 0 is every layer bidirectional");
    let (from_depth, _) = hidden(&dir, true, Some(layers));
    assert_eq!(from_depth, causal, "K = depth is every layer causal");
    assert!(layers >= 2, "the fixture needs two layers");
    let (mid, mut dm) = hidden(&dir, true, Some(layers - 1));
    assert_ne!(mid, causal);
    assert_ne!(mid, bidir);
    // backward through causal and bidirectional layers: every trainable tensor a finite, nonzero gradient
    dm.zero_grad();
    let probe: Vec<f32> = (0..mid.len()).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    dm.backward(&probe).unwrap();
    assert!(dm.buffers.grads.iter().all(|g| g.is_finite()));
    // a K past the depth is refused, naming the layer count
    let e = Decoder::load(
        &dir,
        DecoderOptions {
            bidirectional_from: Some(layers + 1),
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains(&format!("{} layers", layers)), "{e}");
}
