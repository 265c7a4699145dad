//! Shared by the tests: the family fixture folders.
#![allow(dead_code)]

use std::path::PathBuf;

/// Every folder under `ANGLE_FAMILY_FIXTURES` (default `../shared/fixtures/families`) that holds a model.
pub fn family_models() -> Vec<PathBuf> {
    let root = std::env::var_os("ANGLE_FAMILY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/families")
        });
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("model")))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no family fixtures under {}", root.display());
    v
}
