//! model.safetensors in and out: round trip, half precision, prefixes, and errors that name the tensor.

mod common;

use std::path::Path;

use angle_encoder::{BertConfig, Encoder, EncoderError, ParamLayout};
use common::tiny_encoder;
use safetensors::tensor::{Dtype, TensorView};

/// Writes tensors given as (name, dtype, shape, little-endian bytes).
fn write(path: &Path, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The tiny encoder's tensors as f32 bytes under `prefix`.
fn tensors_of(enc: &Encoder, prefix: &str) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    enc.layout
        .entries
        .iter()
        .map(|e| {
            let bytes = enc.buffers.params[e.range()]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            (format!("{prefix}{}", e.name), Dtype::F32, e.shape.clone(), bytes)
        })
        .collect()
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny_encoder(1);
    let path = enc.save_dir(dir.path()).unwrap();
    let back = Encoder::from_dir(dir.path()).unwrap();
    assert_eq!(back.config, enc.config);
    assert!(
        back.buffers
            .params
            .iter()
            .zip(&enc.buffers.params)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    let first = std::fs::read(&path).unwrap();
    back.save(&path).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        first,
        "saving what was loaded rewrites the same bytes"
    );
    // no temporary file is left behind
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn bert_prefix_half_precision_and_pooler() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny_encoder(2);
    for dtype in [Dtype::F16, Dtype::BF16] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        let mut tensors: Vec<_> = enc
            .layout
            .entries
            .iter()
            .map(|e| {
                let bytes = enc.buffers.params[e.range()]
                    .iter()
                    .flat_map(|&x| match dtype {
                        Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                        _ => half::bf16::from_f32(x).to_le_bytes(),
                    })
                    .collect();
                (format!("bert.{}", e.name), dtype, e.shape.clone(), bytes)
            })
            .collect();
        tensors.push((
            "bert.pooler.dense.weight".into(),
            dtype,
            vec![16, 16],
            vec![0; 16 * 16 * 2],
        ));
        tensors.push((
            "bert.embeddings.position_ids".into(),
            Dtype::I64,
            vec![1, 24],
            vec![0; 24 * 8],
        ));
        write(&path, tensors);
        let back = Encoder::from_files(enc.config.clone(), &path).unwrap();
        assert_eq!(back.name_prefix, "bert.");
        for (a, &b) in back.buffers.params.iter().zip(&enc.buffers.params) {
            let want = match dtype {
                Dtype::F16 => half::f16::from_f32(b).to_f32(),
                _ => half::bf16::from_f32(b).to_f32(),
            };
            assert_eq!(a.to_bits(), want.to_bits());
        }
        // saved back with the names it was read with (as f32)
        let out = dir.path().join("out.safetensors");
        back.save(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.names().iter().all(|n| n.starts_with("bert.")));
        assert_eq!(st.names().len(), enc.layout.entries.len());
    }
}

fn load_err(enc: &Encoder, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) -> EncoderError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write(&path, tensors);
    Encoder::from_files(enc.config.clone(), &path).unwrap_err()
}

#[test]
fn errors_name_the_tensor() {
    let enc = tiny_encoder(3);
    let name = "encoder.layer.1.attention.self.key.bias";

    let mut t = tensors_of(&enc, "");
    t.retain(|x| x.0 != name);
    match load_err(&enc, t) {
        EncoderError::MissingTensor { name: n, .. } => assert_eq!(n, name),
        e => panic!("{e}"),
    }

    let mut t = tensors_of(&enc, "");
    let k = t.iter().position(|x| x.0 == name).unwrap();
    t[k].2 = vec![8, 2];
    let e = load_err(&enc, t);
    assert!(
        matches!(&e, EncoderError::ShapeMismatch { name: n, .. } if n == name),
        "{e}"
    );
    assert!(e.to_string().contains(name));

    let mut t = tensors_of(&enc, "");
    t.push((
        "encoder.layer.2.output.dense.weight".into(),
        Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    let e = load_err(&enc, t);
    assert!(
        matches!(&e, EncoderError::UnexpectedTensor { name: n, .. } if n == "encoder.layer.2.output.dense.weight"),
        "{e}"
    );

    let mut t = tensors_of(&enc, "");
    let k = t.iter().position(|x| x.0 == name).unwrap();
    t[k].1 = Dtype::I32;
    let e = load_err(&enc, t);
    assert!(
        matches!(&e, EncoderError::UnsupportedDtype { name: n, .. } if n == name),
        "{e}"
    );
}

/// UAE-Large-V1's architecture: the layout (and so the loader, which only follows it) scales to BERT-large.
/// Its 1.3 GB checkpoint is not generated in CI; `load` streams each tensor from the memory map into the
/// flat buffer, so its peak is the 1.3 GB buffer plus mapped pages.
#[test]
fn bert_large_layout() {
    let text = r#"{"model_type":"bert","hidden_size":1024,"num_hidden_layers":24,"num_attention_heads":16,
        "intermediate_size":4096,"vocab_size":30522,"max_position_embeddings":512,"type_vocab_size":2,
        "hidden_act":"gelu","layer_norm_eps":1e-12,"pad_token_id":0,"position_embedding_type":"absolute"}"#;
    let cfg = BertConfig::from_json_str(text, "config.json").unwrap();
    let layout = ParamLayout::new(&cfg);
    // bert-large-uncased has 335,141,888 parameters, 1,049,600 of them in the pooler.
    assert_eq!(layout.total, 335_141_888 - 1_049_600);
    assert_eq!(layout.layers.len(), 24);
    assert_eq!(layout.layers[23].qkv_weight.len(), 3 * 1024 * 1024);
}

#[test]
fn minilm_loads_with_its_pooling() {
    let enc = Encoder::from_dir(common::model_dir()).unwrap();
    assert_eq!(enc.default_pooling, angle_encoder::Pooling::Mean);
    assert_eq!(enc.buffers.params.len(), 22_565_376);
}

/// RoBERTa-family checkpoints: `roberta.` names, positions counted from `pad_token_id + 1`. A RoBERTa whose
/// position table is a BERT's shifted down by two rows computes exactly what the BERT computes.
#[test]
fn roberta_positions_and_prefix() {
    use angle_encoder::{Capacity, Mode, model::Batch};
    let bert = tiny_encoder(5);
    let mut cfg = bert.config.clone();
    cfg.model_type = "roberta".into();
    cfg.pad_token_id = 1;
    cfg.position_offset = 2;
    cfg.max_position_embeddings += 2;
    let cfg = BertConfig::from_json_str(&cfg.to_json_string(), "config.json").unwrap();
    assert_eq!(cfg.position_offset, 2);
    let layout = ParamLayout::new(&cfg);
    let mut params = vec![0.5f32; layout.total];
    for e in &bert.layout.entries {
        let src = &bert.buffers.params[e.range()];
        let dst = layout.view_mut(&mut params, &e.name).unwrap();
        if e.name == "embeddings.position_embeddings.weight" {
            dst[2 * 16..].copy_from_slice(src);
        } else {
            dst.copy_from_slice(src);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    angle_encoder::checkpoint::save(&path, &layout, &params, "roberta.").unwrap();
    let roberta = Encoder::from_files(cfg, &path).unwrap();
    assert_eq!(roberta.name_prefix, "roberta.");

    let ids: Vec<u32> = (0..24).map(|i| (i * 5 % 30) as u32).collect();
    let offs = [0usize, 24];
    let batch = Batch {
        input_ids: &ids,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let cap = Capacity {
        max_tokens: 24,
        max_seq_len: 24,
    };
    let (mut a, mut b) = (
        bert.activations(cap, Mode::Eval),
        roberta.activations(cap, Mode::Eval),
    );
    let x = bert.forward(&batch, &mut a, None).unwrap();
    let y = roberta.forward(&batch, &mut b, None).unwrap();
    assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
    // the position table holds 24 positions after the offset: a 25-token sequence is an error, not a panic
    let long: Vec<u32> = vec![5; 25];
    let offs = [0usize, 25];
    let batch = Batch {
        input_ids: &long,
        token_type_ids: None,
        seq_offsets: &offs,
    };
    let mut c = roberta.activations(
        Capacity {
            max_tokens: 25,
            max_seq_len: 25,
        },
        Mode::Eval,
    );
    assert!(roberta.forward(&batch, &mut c, None).is_err());
}

#[test]
fn a_sharded_checkpoint_loads_as_the_single_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny_encoder(3);
    enc.save_dir(dir.path()).unwrap();
    let single = Encoder::from_dir(dir.path()).unwrap();
    let mut shards: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    let mut map = serde_json::Map::new();
    for (i, t) in tensors_of(&enc, "").into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(t.0.clone(), serde_json::json!(file));
        shards[i % 2].push(t);
    }
    for (i, s) in shards.into_iter().enumerate() {
        write(
            &dir.path()
                .join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            s,
        );
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let sharded = Encoder::from_dir(dir.path()).unwrap();
    assert_eq!(sharded.buffers.params, single.buffers.params);

    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = Encoder::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("missing"),
        "{msg}"
    );
}
