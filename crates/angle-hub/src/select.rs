//! Which files of a repository angle reads: a model's config, tokenizer and safetensors weights (never
//! `pytorch_model.bin`, ONNX or other copies), or a dataset split's data files.

/// A model's tokenizer files: `tokenizer.json` (what angle reads) and those a checkpoint carries along for other
/// tools (BERT, RoBERTa and XLM-R vocabularies, the LLaMA family's sentencepiece model). The same list as
/// `angle_models::weights::TOKENIZER_FILES`, which every save copies from (angle-train's tests hold them equal;
/// this crate stays free of the model crates).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "tokenizer.model",
];

/// Other small files read or carried into checkpoints when the repository has them.
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "modules.json",
    "1_Pooling/config.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "angle_config.json",
];

pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The first round of a model's files: what it must have (all present, else `Err` with the reason) and the
/// optional files it has. A sharded model's shards are named by its index, read after this round.
pub fn model_files(listing: &[String]) -> Result<Vec<String>, String> {
    let has = |f: &str| listing.iter().any(|l| l == f);
    let mut want: Vec<String> = Vec::new();
    if has("adapter_config.json") {
        // A peft adapter: its base comes from `base_model_name_or_path`, resolved on its own.
        if !has("adapter_model.safetensors") {
            return Err(
                "a LoRA adapter without adapter_model.safetensors (angle reads safetensors only)".into(),
            );
        }
        want.extend(["adapter_config.json", "adapter_model.safetensors"].map(String::from));
    } else {
        if !has("config.json") {
            return Err("no config.json: not a transformers model".into());
        }
        if !has("tokenizer.json") {
            return Err("no tokenizer.json (angle reads the tokenizer in that format)".into());
        }
        want.push("config.json".into());
        if has("model.safetensors") {
            want.push("model.safetensors".into());
        } else if has(SHARD_INDEX) {
            want.push(SHARD_INDEX.into());
        } else {
            return Err(
                "no model.safetensors or model.safetensors.index.json (angle reads safetensors only)".into(),
            );
        }
    }
    for f in TOKENIZER_FILES.iter().chain(OPTIONAL) {
        if has(f) && !want.iter().any(|w| w == f) {
            want.push(f.to_string());
        }
    }
    Ok(want)
}

/// The shard files a `model.safetensors.index.json` names, each once, in name order.
pub fn shard_files(index_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(index_json).map_err(|e| format!("not JSON: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no `weight_map` object")?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format!("weight_map[{tensor:?}] is not a file name"))?;
        if file.contains("..") || file.starts_with('/') {
            return Err(format!(
                "weight_map[{tensor:?}] = {file:?} points outside the repository"
            ));
        }
        shards.push(file.to_string());
    }
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err("`weight_map` is empty".into());
    }
    Ok(shards)
}

const DATA_EXTENSIONS: &[&str] = &["parquet", "csv", "tsv", "jsonl", "json"];
/// JSON files of a dataset repository that describe it rather than hold rows.
const METADATA: &[&str] = &[
    "dataset_infos.json",
    "dataset_info.json",
    "dataset_dict.json",
    "state.json",
];

/// The split keywords of the `datasets` library: a file belongs to a split when one of them is a word of its path
/// (words are separated by `/`, `-`, `_`, `.`, spaces and digits), as in `data/train-00000-of-00004.parquet`,
/// `train/0000.parquet` or `stsb-dev.csv`.
const SPLITS: &[(&str, &[&str])] = &[
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

fn keywords(split: &str) -> Vec<String> {
    let s = split.to_ascii_lowercase();
    match SPLITS
        .iter()
        .find(|(name, kws)| *name == s || kws.contains(&s.as_str()))
    {
        Some((_, kws)) => kws.iter().map(|k| k.to_string()).collect(),
        None => vec![s],
    }
}

fn words(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split(|c: char| matches!(c, '/' | '-' | '_' | '.' | ' ') || c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
}

fn is_data_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    ext.is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str()))
        && !METADATA.contains(&name)
        && !name.starts_with('.')
}

/// The data files of `split` in a dataset repository's listing, under `folder` when given, in name order. When no
/// file names any split, every data file is the `train` split (as `datasets` does).
pub fn split_files(listing: &[String], folder: Option<&str>, split: &str) -> Result<Vec<String>, String> {
    let prefix = folder.map(|f| format!("{}/", f.trim_matches('/')));
    let data: Vec<&String> = listing
        .iter()
        .filter(|p| is_data_file(p))
        .filter(|p| prefix.as_ref().is_none_or(|pre| p.starts_with(pre.as_str())))
        .collect();
    let rel = |p: &str| -> String {
        match &prefix {
            Some(pre) => p[pre.len()..].to_string(),
            None => p.to_string(),
        }
    };
    if data.is_empty() {
        return Err(match folder {
            Some(f) => format!("no data files (.parquet, .csv, .tsv, .jsonl) under {f}/"),
            None => "no data files (.parquet, .csv, .tsv, .jsonl)".into(),
        });
    }
    let kws = keywords(split);
    let in_split = |p: &str, kws: &[String]| words(&rel(p)).any(|w| kws.contains(&w));
    let mut files: Vec<String> = data
        .iter()
        .filter(|p| in_split(p, &kws))
        .map(|p| p.to_string())
        .collect();
    if files.is_empty() {
        let present: Vec<&str> = SPLITS
            .iter()
            .filter(|(_, kws)| {
                let kws: Vec<String> = kws.iter().map(|k| k.to_string()).collect();
                data.iter().any(|p| in_split(p, &kws))
            })
            .map(|(name, _)| *name)
            .collect();
        if present.is_empty() && keywords("train") == kws {
            files = data.iter().map(|p| p.to_string()).collect();
        } else {
            return Err(format!(
                "no data files of split {split:?}; the splits here: {}",
                if present.is_empty() {
                    "train (every file, none names a split)".to_string()
                } else {
                    present.join(", ")
                }
            ));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(files: &[&str]) -> Vec<String> {
        files.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_safetensors_and_sentence_transformers_files() {
        let l = list(&[
            ".gitattributes",
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "onnx/model.onnx",
            "tokenizer.json",
            "vocab.txt",
            "modules.json",
            "1_Pooling/config.json",
            "README.md",
        ]);
        let got = model_files(&l).unwrap();
        assert_eq!(
            got,
            list(&[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "vocab.txt",
                "modules.json",
                "1_Pooling/config.json"
            ])
        );
        let sharded = list(&[
            "config.json",
            "tokenizer.json",
            SHARD_INDEX,
            "model-00001-of-00002.safetensors",
        ]);
        assert!(model_files(&sharded).unwrap().contains(&SHARD_INDEX.to_string()));
        assert!(
            model_files(&list(&["config.json", "tokenizer.json", "pytorch_model.bin"]))
                .unwrap_err()
                .contains("safetensors")
        );
        let adapter = list(&["adapter_config.json", "adapter_model.safetensors", "README.md"]);
        assert_eq!(model_files(&adapter).unwrap(), adapter[..2].to_vec());
    }

    #[test]
    fn shards_from_the_index() {
        let idx = r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        assert_eq!(
            shard_files(idx).unwrap(),
            list(&["m-1.safetensors", "m-2.safetensors"])
        );
        assert!(shard_files(r#"{"weight_map":{"a":"../x"}}"#).is_err());
    }

    #[test]
    fn splits_like_the_datasets_library() {
        let l = list(&[
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/validation-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet",
            "dataset_infos.json",
        ]);
        assert_eq!(split_files(&l, None, "train").unwrap().len(), 2);
        assert_eq!(
            split_files(&l, None, "dev").unwrap(),
            list(&["data/validation-00000-of-00001.parquet"])
        );
        assert!(
            split_files(&l, None, "extra")
                .unwrap_err()
                .contains("train, validation, test")
        );
        let flat = list(&["stsb-en-train.csv", "stsb-en-dev.csv", "stsb-en-test.csv"]);
        assert_eq!(
            split_files(&flat, None, "validation").unwrap(),
            list(&["stsb-en-dev.csv"])
        );
        let nosplit = list(&["part-a.jsonl", "part-b.jsonl"]);
        assert_eq!(split_files(&nosplit, None, "train").unwrap().len(), 2);
        assert!(split_files(&nosplit, None, "test").is_err());
        let configs = list(&["en/train/0000.parquet", "zh/train/0000.parquet"]);
        assert_eq!(
            split_files(&configs, Some("zh"), "train").unwrap(),
            list(&["zh/train/0000.parquet"])
        );
    }
}
