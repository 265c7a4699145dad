//! Embeddings cached on disk by model and texts, so that a rerun of `angle mine` (or of a retrieval evaluation on
//! the same corpus) does not encode again: the file name is a hash of what decides the embeddings (the model
//! folder's identity, pooling, length, prompt, width) and of every text in order.
//!
//! File layout: `ANGLEEMB` magic, rows and cols as u64 LE, then `rows × cols` f32 LE. Written to a temporary name
//! and renamed, so a reader never sees half a file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

const MAGIC: &[u8; 8] = b"ANGLEEMB";

/// FNV-1a, 64 bit: stable across Rust versions and platforms (std's hasher is not promised to be).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn bytes(mut self, b: &[u8]) -> Self {
        // Length first: ("ab", "c") and ("a", "bc") must differ.
        for x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
        self
    }
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// What identifies a model folder's weights without reading them: its canonical path and each weight file's
/// size and modification time.
pub fn model_identity(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut id = canon.display().to_string();
    if let Ok(entries) = std::fs::read_dir(&canon) {
        let mut files: Vec<(String, u64, u128)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let t = m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                Some((e.file_name().to_string_lossy().into_owned(), m.len(), t))
            })
            .collect();
        files.sort();
        for (n, len, t) in files {
            id.push_str(&format!("|{n}:{len}:{t}"));
        }
    }
    id
}

/// The cache file for `texts` embedded by the model `key` describes.
pub fn cache_path(dir: &Path, key: &str, texts: &[String]) -> PathBuf {
    let k = Fnv::default().bytes(key.as_bytes()).finish();
    let t = texts
        .iter()
        .fold(Fnv::default(), |h, s| h.bytes(s.as_bytes()))
        .finish();
    dir.join(format!("{k:016x}-{t:016x}-{}.emb", texts.len()))
}

fn read(path: &Path, rows: usize) -> Result<Option<(Vec<f32>, usize)>> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 24];
    f.read_exact(&mut head).map_err(io)?;
    let r = u64::from_le_bytes(head[8..16].try_into().unwrap()) as usize;
    let c = u64::from_le_bytes(head[16..24].try_into().unwrap()) as usize;
    if &head[..8] != MAGIC || r != rows {
        return Err(TrainError::Data(format!(
            "{}: not an embedding cache of {rows} rows (delete it to re-encode)",
            path.display()
        )));
    }
    let mut bytes = Vec::with_capacity(r * c * 4);
    f.read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() != r * c * 4 {
        return Err(TrainError::Data(format!(
            "{}: truncated embedding cache (delete it to re-encode)",
            path.display()
        )));
    }
    let data = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Some((data, c)))
}

fn write(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&(rows as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&(cols as u64).to_le_bytes()).map_err(io)?;
    for x in data {
        f.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    f.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The embeddings of `texts` (`rows × cols`) from the cache in `dir`, or `compute`d and stored there.
/// Returns the embeddings, their width, and whether they came from the cache.
pub fn cached<F>(dir: &Path, key: &str, texts: &[String], compute: F) -> Result<(Vec<f32>, usize, bool)>
where
    F: FnOnce() -> Result<(Vec<f32>, usize)>,
{
    let path = cache_path(dir, key, texts);
    if let Some((e, c)) = read(&path, texts.len())? {
        return Ok((e, c, true));
    }
    let (e, c) = compute()?;
    write(&path, &e, texts.len(), c)?;
    Ok((e, c, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_call_reads_the_cache_and_other_texts_miss() {
        let dir = tempfile::tempdir().unwrap();
        let texts = vec!["a".to_string(), "b c".to_string()];
        let (e, c, hit) = cached(dir.path(), "m", &texts, || Ok((vec![1.0, 2.0, 3.0, 4.0], 2))).unwrap();
        assert!(!hit && c == 2);
        let (e2, _, hit) = cached(dir.path(), "m", &texts, || panic!("must not encode")).unwrap();
        assert!(hit);
        assert_eq!(e, e2);
        let other = vec!["a b".to_string(), "c".to_string()];
        assert_ne!(
            cache_path(dir.path(), "m", &texts),
            cache_path(dir.path(), "m", &other)
        );
        assert_ne!(
            cache_path(dir.path(), "m", &texts),
            cache_path(dir.path(), "n", &texts)
        );
        // A damaged file is named, not silently re-used.
        let p = cache_path(dir.path(), "m", &texts);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&p, bytes).unwrap();
        let err = cached(dir.path(), "m", &texts, || panic!())
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
