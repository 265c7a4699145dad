//! Where the cache is and whether the network may be used, read from the variables huggingface_hub reads.

use std::path::{Path, PathBuf};

/// The hub settings of this process: `HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`),
/// `HF_HUB_OFFLINE`, `HF_TOKEN` (else the token file `$HF_HOME/token` that `huggingface-cli login` writes) and
/// `HF_ENDPOINT`.
#[derive(Clone, Debug)]
pub struct HubEnv {
    /// The folder holding `models--ORG--NAME`, `datasets--ORG--NAME`.
    pub cache: PathBuf,
    pub offline: bool,
    pub token: Option<String>,
    pub endpoint: Option<String>,
}

impl HubEnv {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let user = var("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| user.join(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .iter()
            .any(|k| var(k).is_some_and(|v| is_true(&v)));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| read_token(&token_file));
        HubEnv {
            cache,
            offline,
            token,
            endpoint: var("HF_ENDPOINT"),
        }
    }

    /// A cache folder only, no network: what tests and air-gapped machines use.
    pub fn offline_at(cache: impl Into<PathBuf>) -> Self {
        HubEnv {
            cache: cache.into(),
            offline: true,
            token: None,
            endpoint: None,
        }
    }
}

/// huggingface_hub's truthy values for a boolean variable.
fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

fn read_token(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}
