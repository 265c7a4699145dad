//! Bad input gets a clear error naming the key, file or tensor; adapters and merged checkpoints round-trip.

mod common;

use std::path::{Path, PathBuf};

use angle_decoder::{Decoder, DecoderOptions, LoraConfig};
use common::{cases, copy_dir};
use serde_json::Value;

fn case(name: &str) -> PathBuf {
    cases()
        .into_iter()
        .find(|c| c.file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("fixture case {name} missing"))
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn err_of(dir: &Path, opts: DecoderOptions) -> String {
    Decoder::load(dir, opts).expect_err("load must fail").to_string()
}

#[test]
fn unknown_model_type_and_rope_type_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_dir(&case("llama-causal-last").join("model"), &m);
    edit_config(&m, |c| {
        c.insert("model_type".into(), "gpt_neox".into());
    });
    let e = err_of(&m, DecoderOptions::default());
    assert!(e.contains("model_type") && e.contains("gpt_neox"), "{e}");
    edit_config(&m, |c| {
        c.insert("model_type".into(), "llama".into());
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
        );
    });
    let e = err_of(&m, DecoderOptions::default());
    assert!(
        e.contains("rope_scaling.rope_type") && e.contains("llama3"),
        "{e}"
    );
}

#[test]
fn sharded_checkpoint_loads_and_a_missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    let src = case("qwen3-bidir-mean").join("model");
    copy_dir(&src, &m);
    std::fs::rename(
        m.join("model.safetensors"),
        m.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let ck = angle_decoder::Checkpoint::open(&src).unwrap();
    let mut map = serde_json::Map::new();
    for name in ck.tensors.keys() {
        map.insert(name.clone(), "model-00001-of-00002.safetensors".into());
    }
    let write_index = |map: &serde_json::Map<String, Value>| {
        let v = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(m.join("model.safetensors.index.json"), v.to_string()).unwrap();
    };
    write_index(&map);
    let opts = || DecoderOptions {
        causal: false,
        ..Default::default()
    };
    Decoder::load(&m, opts()).expect("a one-shard index loads");
    map.insert(
        "model.norm.weight".into(),
        "model-00002-of-00002.safetensors".into(),
    );
    write_index(&map);
    let e = err_of(&m, opts());
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn lora_target_matching_nothing_is_an_error() {
    let opts = DecoderOptions {
        lora: Some(LoraConfig {
            targets: vec!["q_proj".into(), "query".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = err_of(&case("llama-causal-last").join("model"), opts);
    assert!(e.contains("`query`"), "{e}");
}

#[test]
fn mismatched_adapter_is_an_error_naming_the_tensor() {
    // qwen2's adapter on qwen3's base: q_proj is [96, 64] there, the adapter's B is [64, 4]
    let opts = DecoderOptions {
        adapter: Some(case("qwen2-lora-last").join("model/adapter")),
        ..Default::default()
    };
    let e = err_of(&case("qwen3-bidir-mean").join("model"), opts);
    assert!(e.contains("adapter does not match") && e.contains("lora_"), "{e}");
}

#[test]
fn adapter_and_merged_checkpoint_round_trip() {
    let dir = case("qwen2-lora-last");
    let base = dir.join("model");
    let opts = |adapter: Option<PathBuf>| DecoderOptions {
        adapter,
        ..Default::default()
    };
    let mut dec = Decoder::load(&base, opts(Some(base.join("adapter")))).unwrap();
    let ids: Vec<u32> = (1..30).collect();
    let offs = [0, 12, 29];
    let h = dec.config.hidden_size;
    let want = dec.forward(&ids, &offs, None).unwrap().to_vec();

    let tmp = tempfile::tempdir().unwrap();
    let ad = tmp.path().join("adapter");
    dec.save_adapter(&ad, Some("qwen2-lora-last")).unwrap();
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let mut again = Decoder::load(&base, opts(Some(ad))).unwrap();
    assert_eq!(again.buffers.params, dec.buffers.params);
    assert_eq!(again.forward(&ids, &offs, None).unwrap(), &want[..]);

    let merged = tmp.path().join("merged");
    dec.save_merged(&merged).unwrap();
    let mut full = Decoder::load(&merged, opts(None)).unwrap();
    assert!(full.lora.is_none());
    let got = full.forward(&ids, &offs, None).unwrap();
    // the merged weights are rounded to the checkpoint's bf16
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "merged vs adapter: max abs err {err:.3e} over {} x {h}",
        ids.len()
    );
    assert!(err < 5e-2, "merged model differs by {err}");
}

#[test]
fn a_step_pools_the_last_real_token_and_updates_the_adapter() {
    let base = case("qwen2-lora-last").join("model");
    let mut dec = Decoder::load(
        &base,
        DecoderOptions {
            adapter: Some(base.join("adapter")),
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u32> = (5..25).collect();
    let offsets = [0usize, 7, 20];
    let h = dec.config.hidden_size;
    let direct = dec.forward(&ids, &offsets, None).unwrap().to_vec();
    let mut pooled = vec![0.0; 2 * h];
    dec.pool(&mut pooled).unwrap();
    assert_eq!(&pooled[..h], &direct[6 * h..7 * h], "last-token pooling");
    dec.zero_grad();
    dec.backward_pooled(&vec![1.0; 2 * h]).unwrap();
    assert!(dec.grad_norm() > 0.0);
    let before = dec.buffers.params.clone();
    dec.adamw_step(&angle_encoder::AdamW::default(), 1).unwrap();
    assert_ne!(dec.buffers.params, before);
    assert_eq!(dec.buffers.grads.len(), dec.buffers.params.len());
}
