//! LoRA settings as peft defines them: `y = x·Wᵀ (+ b) + (alpha/r) · (dropout(x)·Aᵀ)·Bᵀ` on the targeted
//! linear modules; A starts Kaiming-uniform (a = √5), B at zero; the base stays frozen.

/// Which modules get an adapter, and its hyper-parameters (angle-emb's defaults: r 32, alpha 32,
/// dropout 0.1, every linear layer).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`query`, `attention.self.value`, `Wqkv`, ...) or `all-linear`: peft matches a name
    /// against the end of a module's path.
    pub targets: Vec<String>,
    /// Seed of A's initialisation.
    pub seed: u64,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            r: 32,
            alpha: 32.0,
            dropout: 0.1,
            targets: vec!["all-linear".into()],
            seed: 42,
        }
    }
}

impl LoraSpec {
    /// `alpha / r`
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Whether the linear module at `module_path` is adapted (peft: the whole path, or its end after a dot).
    pub fn targets_module(&self, module_path: &str) -> bool {
        self.targets.iter().any(|t| {
            t == "all-linear"
                || module_path == t
                || module_path
                    .strip_suffix(t.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

/// peft's (torch's) `kaiming_uniform_(a = √5)` for `A [r, in]`: U(−1/√in, 1/√in), from a seeded counter RNG.
pub fn kaiming_uniform(out: &mut [f32], fan_in: usize, seed: u64) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    for (i, o) in out.iter_mut().enumerate() {
        let u = angle_tensor::rng::uniform(seed, i as u64);
        *o = ((2.0 * u - 1.0) * bound) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_matching() {
        let s = |t: &[&str]| LoraSpec {
            targets: t.iter().map(|x| x.to_string()).collect(),
            ..Default::default()
        };
        let q = "encoder.layer.0.attention.self.query";
        assert!(s(&["all-linear"]).targets_module(q));
        assert!(s(&["query"]).targets_module(q));
        assert!(s(&["self.query"]).targets_module(q));
        assert!(!s(&["uery"]).targets_module(q));
        assert!(!s(&["value"]).targets_module(q));
    }
}
