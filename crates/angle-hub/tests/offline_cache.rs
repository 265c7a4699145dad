//! Hub ids resolve from a cache laid out as huggingface_hub lays it out, with no network.

use std::path::Path;

use angle_hub::{DatasetId, Hub, HubEnv, HubError, RepoId};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `<cache>/<folder>/refs/main` -> COMMIT, and the files under `snapshots/COMMIT/` (as links into `blobs/`).
fn cache_repo(cache: &Path, folder: &str, files: &[(&str, &str)]) {
    let repo = cache.join(folder);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (i, (name, text)) in files.iter().enumerate() {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, text).unwrap();
        let link = repo.join("snapshots").join(COMMIT).join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
}

fn model(spec: &str) -> RepoId {
    RepoId::parse_model(spec).unwrap().unwrap()
}

#[test]
fn a_cached_model_resolves_offline_with_only_what_angle_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    cache_repo(
        tmp.path(),
        "models--org--sharded",
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", "x"),
            ("model-00002-of-00002.safetensors", "y"),
            ("pytorch_model.bin", "z"),
            ("1_Pooling/config.json", "{}"),
        ],
    );
    let hub = Hub::new(HubEnv::offline_at(tmp.path()));
    let s = hub.model(&model("org/sharded")).unwrap();
    assert_eq!(s.commit, COMMIT);
    assert_eq!(
        s.dir,
        tmp.path().join("models--org--sharded/snapshots").join(COMMIT)
    );
    assert!(s.files.contains(&"model-00002-of-00002.safetensors".to_string()));
    assert!(s.files.contains(&"1_Pooling/config.json".to_string()));
    assert!(!s.files.contains(&"pytorch_model.bin".to_string()));
    // The same commit by its hash.
    let by_commit = hub.model(&model(&format!("org/sharded@{COMMIT}"))).unwrap();
    assert_eq!(by_commit.dir, s.dir);
}

#[test]
fn a_missing_shard_offline_names_the_cache_folder_and_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    cache_repo(
        tmp.path(),
        "models--org--partial",
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors.index.json", index),
            ("model-00001-of-00002.safetensors", "x"),
        ],
    );
    let mut env = HubEnv::offline_at(tmp.path());
    env.offline = true;
    let err = Hub::new(env).model(&model("org/partial")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HubError::NotCached { .. }), "{msg}");
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
    assert!(
        msg.contains(&format!("models--org--partial/snapshots/{COMMIT}")),
        "{msg}"
    );
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
}

#[test]
fn an_uncached_model_offline_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Hub::new(HubEnv::offline_at(tmp.path()))
        .model(&model("org/absent"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("models--org--absent") && msg.contains("refs/main"),
        "{msg}"
    );
    assert!(msg.contains("HF_HUB_CACHE"), "{msg}");
}

#[test]
fn a_model_without_safetensors_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    cache_repo(
        tmp.path(),
        "models--org--bin",
        &[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("pytorch_model.bin", "z"),
        ],
    );
    let msg = Hub::new(HubEnv::offline_at(tmp.path()))
        .model(&model("org/bin"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("safetensors") && msg.contains("org/bin"), "{msg}");
}

#[test]
fn a_cached_dataset_split_resolves_to_its_shards() {
    let tmp = tempfile::tempdir().unwrap();
    cache_repo(
        tmp.path(),
        "datasets--org--pairs",
        &[
            ("README.md", "# pairs"),
            ("data/train-00000-of-00002.parquet", "a"),
            ("data/train-00001-of-00002.parquet", "b"),
            ("data/test-00000-of-00001.parquet", "c"),
        ],
    );
    let hub = Hub::new(HubEnv::offline_at(tmp.path()));
    let id = DatasetId::parse("hf://datasets/org/pairs").unwrap().unwrap();
    let (snap, files) = hub.dataset_split(&id, "train").unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].ends_with("data/train-00000-of-00002.parquet"));
    assert!(files.iter().all(|f| f.starts_with(&snap.dir) && f.is_file()));
    let (_, test) = hub.dataset_split(&id, "test").unwrap();
    assert_eq!(test.len(), 1);
    let msg = hub.dataset_split(&id, "validation").unwrap_err().to_string();
    assert!(
        msg.contains("\"validation\"") && msg.contains("train, test"),
        "{msg}"
    );
}

#[test]
fn the_environment_names_the_cache_as_huggingface_hub_does() {
    // One test touches the process environment, so no other test here reads it.
    unsafe {
        std::env::set_var("HF_HOME", "/tmp/hf-home");
        std::env::remove_var("HF_HUB_CACHE");
        std::env::remove_var("HUGGINGFACE_HUB_CACHE");
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_TOKEN", "hf_test");
    }
    let e = HubEnv::from_env();
    assert_eq!(e.cache, Path::new("/tmp/hf-home/hub"));
    assert!(e.offline);
    assert_eq!(e.token.as_deref(), Some("hf_test"));
    unsafe {
        std::env::set_var("HF_HUB_CACHE", "/tmp/elsewhere");
        std::env::set_var("HF_HUB_OFFLINE", "0");
    }
    let e = HubEnv::from_env();
    assert_eq!(e.cache, Path::new("/tmp/elsewhere"));
    assert!(!e.offline);
}
