//! `BertConfig`: the subset of a Hugging Face `config.json` that fixes a BERT encoder's shapes and math.
//!
//! Keys that would change the computation in a way this crate does not implement are refused with an
//! error naming the key, rather than silently ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{EncoderError, Result, io_err, json_err};

/// The GELU variant of `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact form x·Φ(x) with the error function (BERT's original).
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
}

impl Activation {
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu",
            Activation::GeluTanh => "gelu_new",
        }
    }
}

/// Shapes and constants of a BERT-family encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// `bert`, or a RoBERTa-family type (`roberta`, `xlm-roberta`, `camembert`).
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
    pub pad_token_id: usize,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
    /// Position id of a sequence's first token. BERT counts from 0; RoBERTa's position ids start after
    /// its padding index (`pad_token_id + 1`), as Hugging Face's `create_position_ids_from_input_ids`
    /// does for right-padded input.
    pub position_offset: usize,
}

/// Model types whose checkpoints have BERT's module tree, and their position numbering.
fn model_family(model_type: &str) -> Option<Family> {
    match model_type {
        "bert" => Some(Family::Bert),
        "roberta" | "xlm-roberta" | "camembert" => Some(Family::Roberta),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Family {
    Bert,
    Roberta,
}

impl BertConfig {
    /// Reads `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let value: Value = serde_json::from_str(text).map_err(json_err(&path))?;
        let Value::Object(map) = value else {
            return Err(cfg_err(&path, "<root>", "expected a JSON object"));
        };
        let keys = Keys {
            map: &map,
            path: &path,
        };

        let model_type = keys.string_or("model_type", "bert")?;
        let family = model_family(&model_type).ok_or_else(|| {
            cfg_err(
                &path,
                "model_type",
                format!("`{model_type}` is not supported; supported: bert, roberta, xlm-roberta, camembert"),
            )
        })?;
        let position_embedding_type = keys.string_or("position_embedding_type", "absolute")?;
        if position_embedding_type != "absolute" {
            return Err(cfg_err(
                &path,
                "position_embedding_type",
                format!("`{position_embedding_type}` is not supported; only `absolute`"),
            ));
        }
        for key in ["is_decoder", "add_cross_attention"] {
            if keys.bool_or(key, false)? {
                return Err(cfg_err(&path, key, "decoders are not supported (encoder only)"));
            }
        }
        let hidden_act = match keys.string_or("hidden_act", "gelu")?.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => {
                return Err(cfg_err(
                    &path,
                    "hidden_act",
                    format!("`{other}` is not supported; supported: gelu, gelu_new, gelu_pytorch_tanh"),
                ));
            }
        };

        let pad_token_id = keys.usize_or("pad_token_id", 0)?;
        let cfg = BertConfig {
            hidden_size: keys.usize("hidden_size")?,
            num_hidden_layers: keys.usize("num_hidden_layers")?,
            num_attention_heads: keys.usize("num_attention_heads")?,
            intermediate_size: keys.usize("intermediate_size")?,
            vocab_size: keys.usize("vocab_size")?,
            max_position_embeddings: keys.usize_or("max_position_embeddings", 512)?,
            type_vocab_size: keys.usize_or("type_vocab_size", 2)?,
            hidden_act,
            layer_norm_eps: keys.f64_or("layer_norm_eps", 1e-12)? as f32,
            pad_token_id,
            hidden_dropout_prob: keys.f64_or("hidden_dropout_prob", 0.1)? as f32,
            attention_probs_dropout_prob: keys.f64_or("attention_probs_dropout_prob", 0.1)? as f32,
            position_offset: match family {
                Family::Bert => 0,
                Family::Roberta => pad_token_id + 1,
            },
            model_type,
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// A BERT config with the given shapes (GELU erf, eps 1e-12, dropout 0.1): for tests and benches.
    pub fn bert(
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
        vocab_size: usize,
        max_position_embeddings: usize,
    ) -> Self {
        BertConfig {
            model_type: "bert".into(),
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            vocab_size,
            max_position_embeddings,
            type_vocab_size: 2,
            hidden_act: Activation::GeluErf,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            position_offset: 0,
        }
    }

    /// The `config.json` text Hugging Face would write for this config (round-trips through `from_json_str`).
    pub fn to_json_string(&self) -> String {
        let v = serde_json::json!({
            "architectures": [if self.position_offset == 0 { "BertModel" } else { "RobertaModel" }],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "hidden_act": self.hidden_act.hf_name(),
            "layer_norm_eps": self.layer_norm_eps as f64,
            "pad_token_id": self.pad_token_id,
            "hidden_dropout_prob": self.hidden_dropout_prob as f64,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob as f64,
            "position_embedding_type": "absolute",
        });
        serde_json::to_string_pretty(&v).expect("a JSON object always serialises")
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The longest sequence the position table can hold.
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings.saturating_sub(self.position_offset)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(cfg_err(path, key, "must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(cfg_err(
                path,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.max_sequence_length() == 0 {
            return Err(cfg_err(
                path,
                "max_position_embeddings",
                "leaves no room for a token",
            ));
        }
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(cfg_err(path, key, format!("{p} is not in [0, 1)")));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(cfg_err(path, "layer_norm_eps", "must be positive"));
        }
        Ok(())
    }
}

pub(crate) fn cfg_err(path: &Path, key: &str, msg: impl Into<String>) -> EncoderError {
    EncoderError::Config {
        path: PathBuf::from(path),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Typed access to a JSON object whose errors name the key.
pub struct Keys<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a Path,
}

impl Keys<'_> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(cfg_err(self.path, key, "missing")),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                cfg_err(
                    self.path,
                    key,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_none() {
            Ok(default)
        } else {
            self.usize(key)
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| cfg_err(self.path, key, format!("expected a number, found {v}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| cfg_err(self.path, key, format!("expected true or false, found {v}"))),
        }
    }

    pub fn string_or(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| cfg_err(self.path, key, format!("expected a string, found {v}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BertConfig> {
        BertConfig::from_json_str(text, "config.json")
    }

    const MINI: &str = r#"{"model_type":"bert","hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,
        "intermediate_size":16,"vocab_size":50,"max_position_embeddings":32,"hidden_act":"gelu"}"#;

    #[test]
    fn parses_and_round_trips() {
        let c = parse(MINI).unwrap();
        assert_eq!(c.head_dim(), 4);
        assert_eq!(c.hidden_act, Activation::GeluErf);
        assert_eq!(parse(&c.to_json_string()).unwrap(), c);
    }

    fn err_key(text: &str) -> String {
        match parse(text).unwrap_err() {
            EncoderError::Config { key, .. } => key,
            e => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let with = |k: &str, v: &str| MINI.replacen('{', &format!("{{\"{k}\":{v},"), 1);
        assert_eq!(
            err_key(&with("position_embedding_type", "\"relative_key\"")),
            "position_embedding_type"
        );
        assert_eq!(err_key(&MINI.replace("\"bert\"", "\"gpt2\"")), "model_type");
        assert_eq!(err_key(&MINI.replace("\"gelu\"", "\"relu\"")), "hidden_act");
        assert_eq!(
            err_key(&MINI.replace("\"num_attention_heads\":2", "\"num_attention_heads\":3")),
            "num_attention_heads"
        );
        assert_eq!(err_key(&MINI.replace("\"hidden_size\":8,", "")), "hidden_size");
        assert_eq!(
            err_key(&MINI.replace("\"vocab_size\":50", "\"vocab_size\":\"x\"")),
            "vocab_size"
        );
    }

    #[test]
    fn roberta_positions_start_after_padding() {
        let c = parse(
            &MINI
                .replace("\"bert\"", "\"roberta\"")
                .replacen('{', "{\"pad_token_id\":1,", 1),
        )
        .unwrap();
        assert_eq!(c.position_offset, 2);
        assert_eq!(c.max_sequence_length(), 30);
    }

    #[test]
    fn tanh_gelu_names() {
        for name in ["gelu_new", "gelu_pytorch_tanh"] {
            let c = parse(&MINI.replace("\"gelu\"", &format!("\"{name}\""))).unwrap();
            assert_eq!(c.hidden_act, Activation::GeluTanh);
        }
    }
}
