//! `config.json` of a LLaMA / Mistral / Qwen2 / Qwen3 checkpoint (`*ForCausalLM`).
//!
//! Every key the forward depends on is read here; anything that would make us compute something other
//! than transformers does (an unknown `model_type`, a non-default rope type, an activation other than
//! SiLU) is refused with the key named.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Result, cfg_err, read_json};

/// The supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl ModelType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "llama" => ModelType::Llama,
            "mistral" => ModelType::Mistral,
            "qwen2" => ModelType::Qwen2,
            "qwen3" => ModelType::Qwen3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
        }
    }
}

/// A decoder's shape and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub model_type: ModelType,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    /// Biases on q/k/v (Qwen2 always; others with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (`attention_bias`, never Qwen2).
    pub o_bias: bool,
    /// Biases on gate/up/down (`mlp_bias`).
    pub mlp_bias: bool,
    /// Qwen3's per-head RMSNorm on queries and keys.
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    /// Attention window (Mistral `sliding_window`; Qwen only with `use_sliding_window`): longer
    /// sequences are refused.
    pub sliding_window: Option<usize>,
    /// `dtype` / `torch_dtype` as written.
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// transformers builds the token embedding with `padding_idx = pad_token_id`: that row never gets
    /// a gradient (torch's `nn.Embedding` semantics), even where the token is real (an appended EOS
    /// that doubles as padding).
    pub pad_token_id: Option<u32>,
}

struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| cfg_err(self.path, key, "missing"))
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    cfg_err(
                        self.path,
                        key,
                        format!("expected a non-negative integer, found {v}"),
                    )
                })
            })
            .transpose()
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| cfg_err(self.path, key, format!("expected a number, found {v}"))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| cfg_err(self.path, key, format!("expected true or false, found {v}"))),
        }
    }
    /// A token id, or the first of a list (`eos_token_id: [1, 2]`).
    fn token(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(a.first().and_then(Value::as_u64).map(|x| x as u32)),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as u32))
                .ok_or_else(|| cfg_err(self.path, key, format!("expected a token id, found {v}"))),
        }
    }
}

/// `rope_type` of a rope section: only `default` is computed (exactly); anything else is refused.
fn check_rope_type(section: &Map<String, Value>, key: &str, path: &Path) -> Result<()> {
    for k in ["rope_type", "type"] {
        if let Some(t) = section.get(k).filter(|v| !v.is_null())
            && t.as_str() != Some("default")
        {
            return Err(cfg_err(
                path,
                &format!("{key}.{k}"),
                format!("rope type {t} is not supported (only \"default\")"),
            ));
        }
    }
    Ok(())
}

impl DecoderConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("config.json");
        Self::from_value(&read_json(&path)?, &path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(crate::error::json_err(path))?;
        Self::from_value(&v, path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let Value::Object(map) = v else {
            return Err(cfg_err(path, "<root>", "expected a JSON object"));
        };
        let k = Keys { map, path };
        let mt = k
            .get("model_type")
            .ok_or_else(|| cfg_err(path, "model_type", "missing"))?;
        let model_type = mt.as_str().and_then(ModelType::parse).ok_or_else(|| {
            cfg_err(
                path,
                "model_type",
                format!("{mt} is not a supported decoder (llama, mistral, qwen2, qwen3)"),
            )
        })?;
        let act = k.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(cfg_err(
                path,
                "hidden_act",
                format!("\"{act}\" is not supported (only \"silu\")"),
            ));
        }
        let hidden_size = k.usize("hidden_size")?;
        let num_attention_heads = k.usize("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(cfg_err(path, "num_attention_heads", "must be positive"));
        }
        let num_key_value_heads = k.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(cfg_err(
                path,
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = k
            .usize_opt("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(cfg_err(
                path,
                "head_dim",
                format!("{head_dim} must be even and positive (rotary halves)"),
            ));
        }
        // rope base: transformers 5 `rope_parameters`, or transformers 4's top-level `rope_theta`
        let mut rope_theta = k.f64_or("rope_theta", 10000.0)?;
        if let Some(rp) = k.get("rope_parameters") {
            let Value::Object(rp) = rp else {
                return Err(cfg_err(path, "rope_parameters", "expected an object"));
            };
            check_rope_type(rp, "rope_parameters", path)?;
            if let Some(t) = rp.get("rope_theta").filter(|v| !v.is_null()) {
                rope_theta = t
                    .as_f64()
                    .ok_or_else(|| cfg_err(path, "rope_parameters.rope_theta", "expected a number"))?;
            }
        }
        if let Some(rs) = k.get("rope_scaling") {
            let Value::Object(rs) = rs else {
                return Err(cfg_err(path, "rope_scaling", "expected an object or null"));
            };
            check_rope_type(rs, "rope_scaling", path)?;
        }
        let attention_bias = k.bool_or("attention_bias", false)?;
        let (qkv_bias, o_bias) = match model_type {
            ModelType::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let sliding_window = match model_type {
            ModelType::Mistral => k.usize_opt("sliding_window")?,
            ModelType::Qwen2 | ModelType::Qwen3 if k.bool_or("use_sliding_window", false)? => {
                k.usize_opt("sliding_window")?
            }
            _ => None,
        };
        let dtype = k
            .get("dtype")
            .or_else(|| k.get("torch_dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(DecoderConfig {
            model_type,
            hidden_size,
            intermediate_size: k.usize("intermediate_size")?,
            num_hidden_layers: k.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: k.f64_or("rms_norm_eps", 1e-6)?,
            vocab_size: k.usize("vocab_size")?,
            max_position_embeddings: k.usize_opt("max_position_embeddings")?.unwrap_or(4096),
            rope_theta,
            qkv_bias,
            o_bias,
            mlp_bias: k.bool_or("mlp_bias", false)?,
            qk_norm: model_type == ModelType::Qwen3,
            tie_word_embeddings: k.bool_or("tie_word_embeddings", false)?,
            sliding_window,
            dtype,
            bos_token_id: k.token("bos_token_id")?,
            eos_token_id: k.token("eos_token_id")?,
            pad_token_id: k.token("pad_token_id")?,
        })
    }

    /// `num_attention_heads · head_dim`
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// `num_key_value_heads · head_dim`
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// A random-initialisable shape (benchmarks, memory estimates): Qwen2.5-0.5B.
    pub fn qwen2_5_0_5b() -> Self {
        DecoderConfig {
            model_type: ModelType::Qwen2,
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-6,
            vocab_size: 151_936,
            max_position_embeddings: 32_768,
            rope_theta: 1e6,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            tie_word_embeddings: true,
            sliding_window: None,
            dtype: Some("bfloat16".into()),
            bos_token_id: None,
            eos_token_id: Some(151_643),
            pad_token_id: None,
        }
    }

    /// Qwen3-0.6B's shape.
    pub fn qwen3_0_6b() -> Self {
        DecoderConfig {
            model_type: ModelType::Qwen3,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            qkv_bias: false,
            qk_norm: true,
            ..Self::qwen2_5_0_5b()
        }
    }

    /// A LLaMA-2-7B / Mistral-7B-like shape (32 layers, hidden 4096, 32 heads; 8 kv heads as Mistral).
    pub fn mistral_7b() -> Self {
        DecoderConfig {
            model_type: ModelType::Mistral,
            hidden_size: 4096,
            intermediate_size: 14_336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            vocab_size: 32_000,
            rope_theta: 10_000.0,
            qkv_bias: false,
            tie_word_embeddings: false,
            sliding_window: Some(4096),
            eos_token_id: Some(2),
            bos_token_id: Some(1),
            ..Self::qwen2_5_0_5b()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DecoderConfig> {
        DecoderConfig::from_json(s, Path::new("config.json"))
    }

    const BASE: &str = r#""hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10"#;

    #[test]
    fn rope_base_in_both_spellings() {
        let a = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500.0}}"#
        ))
        .unwrap();
        let b = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_type": "default", "rope_theta": 500.0}}}}"#
        ))
        .unwrap();
        assert_eq!(a.rope_theta, 500.0);
        assert_eq!(a, b);
        assert_eq!(a.head_dim, 4);
        assert_eq!(a.num_key_value_heads, 2);
    }

    #[test]
    fn refusals_name_the_key() {
        let e = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type") && e.contains("gpt2"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("llama3"),
            "{e}"
        );
        let e = parse(&format!(
            r#"{{"model_type": "qwen3", {BASE}, "rope_parameters": {{"rope_type": "yarn", "rope_theta": 1.0}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("rope_parameters.rope_type"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "hidden_act": "gelu"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hidden_act"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "num_key_value_heads": 3}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }

    #[test]
    fn family_settings() {
        let q2 = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "sliding_window": 4, "use_sliding_window": false}}"#
        ))
        .unwrap();
        assert!(q2.qkv_bias && !q2.o_bias && !q2.qk_norm && q2.sliding_window.is_none());
        let m = parse(&format!(
            r#"{{"model_type": "mistral", {BASE}, "sliding_window": 4}}"#
        ))
        .unwrap();
        assert_eq!(m.sliding_window, Some(4));
        assert!(
            parse(&format!(r#"{{"model_type": "qwen3", {BASE}}}"#))
                .unwrap()
                .qk_norm
        );
    }
}
