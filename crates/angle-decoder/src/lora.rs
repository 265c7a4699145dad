//! LoRA settings, peft's initialisation and peft's adapter files.
//!
//! `y = x·Wᵀ (+ b) + (alpha/r) · (dropout(x)·Aᵀ)·Bᵀ` on the targeted linear layers (the op is
//! `angle_tensor::cpu::lora_forward`); A starts Kaiming-uniform (a = √5) as peft does, B at zero.

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{DecoderError, Result, cfg_err, io_err, read_json};

/// The seven linear modules of a decoder layer, in layer order.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The module's parent inside a layer (`self_attn` or `mlp`).
pub fn module_parent(m: usize) -> &'static str {
    if m < 4 { "self_attn" } else { "mlp" }
}

/// LoRA hyper-parameters (angle-emb's defaults: r 32, alpha 32, dropout 0.1, all linear layers).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj`, `self_attn.v_proj`, ...) or `all-linear`.
    pub targets: Vec<String>,
    /// Seed of A's initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 32,
            alpha: 32.0,
            dropout: 0.1,
            targets: vec!["all-linear".into()],
            seed: 42,
        }
    }
}

impl LoraConfig {
    /// `alpha / r`
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Which of [`MODULES`] are adapted; a target that names no module is an error naming it.
    pub fn target_mask(&self) -> Result<[bool; 7]> {
        if self.r == 0 {
            return Err(DecoderError::Lora("r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(DecoderError::Lora(format!(
                "dropout {} is outside [0, 1)",
                self.dropout
            )));
        }
        let mut mask = [false; 7];
        if self.targets.is_empty() {
            return Err(DecoderError::Lora("no target modules".into()));
        }
        for t in &self.targets {
            if t == "all-linear" {
                mask = [true; 7];
                continue;
            }
            let mut hit = false;
            for (m, name) in MODULES.iter().enumerate() {
                let full = format!("{}.{name}", module_parent(m));
                if t == name || t == &full {
                    mask[m] = true;
                    hit = true;
                }
            }
            if !hit {
                return Err(DecoderError::Lora(format!(
                    "target module `{t}` matches no linear layer of the model (have: {}, or all-linear)",
                    MODULES.join(", ")
                )));
            }
        }
        Ok(mask)
    }

    /// The target list peft writes: module names, sorted.
    pub fn target_names(&self) -> Result<Vec<String>> {
        let mask = self.target_mask()?;
        let mut v: Vec<String> = MODULES
            .iter()
            .zip(mask)
            .filter(|(_, on)| *on)
            .map(|(n, _)| n.to_string())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Reads peft's `adapter_config.json`.
    pub fn from_adapter_config(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        if let Some(t) = get("peft_type").and_then(Value::as_str)
            && t != "LORA"
        {
            return Err(cfg_err(path, "peft_type", format!("\"{t}\" is not LORA")));
        }
        for key in ["use_dora", "use_rslora", "fan_in_fan_out"] {
            if get(key).and_then(Value::as_bool) == Some(true) {
                return Err(cfg_err(path, key, "not supported"));
            }
        }
        if let Some(p) = get("rank_pattern").and_then(Value::as_object)
            && !p.is_empty()
        {
            return Err(cfg_err(
                path,
                "rank_pattern",
                "per-module ranks are not supported",
            ));
        }
        if let Some(p) = get("alpha_pattern").and_then(Value::as_object)
            && !p.is_empty()
        {
            return Err(cfg_err(
                path,
                "alpha_pattern",
                "per-module alphas are not supported",
            ));
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| cfg_err(path, "r", "missing or not an integer"))? as usize;
        let alpha = get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| cfg_err(path, "lora_alpha", "missing or not a number"))?;
        let dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        let targets = match get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| cfg_err(path, "target_modules", "expected strings"))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::String(s)) => vec![s.clone()],
            _ => return Err(cfg_err(path, "target_modules", "missing")),
        };
        Ok(LoraConfig {
            r,
            alpha,
            dropout,
            targets,
            seed: 0,
        })
    }

    /// Writes peft's `adapter_config.json`.
    pub fn write_adapter_config(&self, path: &Path, base_model: Option<&str>) -> Result<()> {
        let v = json!({
            "base_model_name_or_path": base_model,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "target_modules": self.target_names()?,
            "task_type": "FEATURE_EXTRACTION",
            "use_dora": false,
            "use_rslora": false,
        });
        let text = serde_json::to_string_pretty(&v).expect("a JSON value serialises");
        std::fs::write(path, text).map_err(io_err(path))
    }
}

/// peft's name of a LoRA tensor: `base_model.model.model.layers.{l}.{self_attn|mlp}.{m}.lora_{A|B}.weight`.
pub fn peft_name(layer: usize, module: usize, b: bool) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{}.weight",
        module_parent(module),
        MODULES[module],
        if b { "B" } else { "A" }
    )
}

/// peft's initialisation of A, shared with every family.
pub use angle_models::nn::kaiming_uniform;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let c = |t: &[&str]| LoraConfig {
            targets: t.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(c(&["all-linear"]).target_mask().unwrap(), [true; 7]);
        let m = c(&["q_proj", "mlp.down_proj"]).target_mask().unwrap();
        assert_eq!(m, [true, false, false, false, false, false, true]);
        let e = c(&["q_proj", "query"]).target_mask().unwrap_err().to_string();
        assert!(e.contains("`query`"), "{e}");
        assert_eq!(
            peft_name(0, 0, false),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            peft_name(3, 6, true),
            "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"
        );
    }

    #[test]
    fn kaiming_bound() {
        let mut a = vec![0.0; 4000];
        kaiming_uniform(&mut a, 64, 7);
        let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(max <= 0.125 && max > 0.12, "{max}");
    }
}
