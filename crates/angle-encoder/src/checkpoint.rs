//! `model.safetensors` in and out, by Hugging Face name.
//!
//! Loading memory-maps the file and converts each tensor (f32, f16 or bf16) straight into its slot of the
//! flat parameter buffer, so peak memory is the buffer plus the pages of the map being read. Names may carry
//! the model-type prefix (`bert.`, `roberta.`); the pooler and pre-training heads are skipped (sentence
//! encoders pool themselves).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use crate::config::BertConfig;
use crate::error::{EncoderError, Result, io_err};
use crate::params::ParamLayout;

#[cfg(target_endian = "big")]
compile_error!("safetensors data is little-endian; this crate reinterprets f32 buffers as bytes");

/// The name prefix a checkpoint used (`""` when none), kept so that `save` writes the names it read.
pub fn model_prefix(cfg: &BertConfig) -> &'static str {
    if cfg.position_offset == 0 {
        "bert."
    } else {
        "roberta."
    }
}

/// Tensors a checkpoint may carry that are not encoder parameters: the pooler, the position-id buffer of
/// older files, and the pre-training heads of `BertForPreTraining` / `*ForMaskedLM` files (`cls.`,
/// `lm_head.`, e.g. bert-base-uncased's own checkpoint). Any other unknown name is an error.
fn ignored(name: &str) -> bool {
    name.starts_with("pooler.")
        || name == "embeddings.position_ids"
        || name.starts_with("cls.")
        || name.starts_with("lm_head.")
}

/// Parameters read from a checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub params: Vec<f32>,
    /// `"bert."` when the file's names had that prefix, else `""`.
    pub prefix: String,
}

pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The weight files of a model folder: `model.safetensors`, else the shards its `model.safetensors.index.json`
/// names (each once, in name order; a missing shard is an error naming it).
pub fn weight_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let single = dir.join("model.safetensors");
    let index = dir.join(SHARD_INDEX);
    if single.is_file() || !index.is_file() {
        return Ok(vec![single]);
    }
    let bad = |msg: String| EncoderError::Safetensors {
        path: index.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.contains("..") && !f.starts_with('/'))
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file of this folder")))?;
        files.push(dir.join(file));
    }
    files.sort();
    files.dedup();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(bad(format!("shard {} is missing", missing.display())));
    }
    Ok(files)
}

/// Reads every parameter of `layout` from `path` into a new flat buffer.
pub fn load(path: impl AsRef<Path>, cfg: &BertConfig, layout: &ParamLayout) -> Result<Loaded> {
    load_files(&[path.as_ref().to_path_buf()], cfg, layout)
}

/// [`load`] from the shards of one checkpoint: each file is mapped once, and every parameter must come from
/// exactly one of them.
pub fn load_files(paths: &[PathBuf], cfg: &BertConfig, layout: &ParamLayout) -> Result<Loaded> {
    let mut params = vec![0.0f32; layout.total];
    let mut seen = vec![false; layout.entries.len()];
    let index: HashMap<&str, usize> = layout
        .entries
        .iter()
        .enumerate()
        .map(|(k, e)| (e.name.as_str(), k))
        .collect();
    let full_prefix = model_prefix(cfg);
    let mut prefix = String::new();
    for path in paths {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only and lives only inside this loop. Another process truncating the
        // file meanwhile could fault; `save` never does that (it renames a new file into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| EncoderError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        read_tensors(
            &st,
            path,
            full_prefix,
            &index,
            layout,
            &mut params,
            &mut seen,
            &mut prefix,
        )?;
    }
    if let Some(k) = seen.iter().position(|s| !s) {
        let path = match paths {
            [one] => one.clone(),
            _ => paths[0].with_file_name(SHARD_INDEX),
        };
        return Err(EncoderError::MissingTensor {
            path,
            name: format!("{prefix}{}", layout.entries[k].name),
        });
    }
    Ok(Loaded { params, prefix })
}

/// The parameters one safetensors file holds, into `params`; `seen` marks them (twice is an error).
fn read_tensors(
    st: &SafeTensors<'_>,
    path: &Path,
    full_prefix: &str,
    index: &HashMap<&str, usize>,
    layout: &ParamLayout,
    params: &mut [f32],
    seen: &mut [bool],
    prefix: &mut String,
) -> Result<()> {
    for (file_name, view) in st.iter() {
        let name = match file_name.strip_prefix(full_prefix) {
            Some(rest) => {
                *prefix = full_prefix.to_string();
                rest
            }
            None => file_name,
        };
        if ignored(name) {
            continue;
        }
        let Some(&k) = index.get(name) else {
            return Err(EncoderError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: file_name.to_string(),
            });
        };
        if seen[k] {
            return Err(EncoderError::Safetensors {
                path: path.to_path_buf(),
                msg: format!("tensor `{file_name}` is in more than one shard"),
            });
        }
        let entry = &layout.entries[k];
        if view.shape() != entry.shape.as_slice() {
            return Err(EncoderError::ShapeMismatch {
                path: path.to_path_buf(),
                name: file_name.to_string(),
                found: view.shape().to_vec(),
                expected: entry.shape.clone(),
            });
        }
        convert(&view, &mut params[entry.range()]).map_err(|dtype| EncoderError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: file_name.to_string(),
            dtype,
        })?;
        seen[k] = true;
    }
    Ok(())
}

/// Little-endian bytes to f32; `Err(dtype)` for a dtype we do not read.
fn convert(view: &TensorView<'_>, out: &mut [f32]) -> std::result::Result<(), String> {
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        other => return Err(format!("{other:?}")),
    }
    Ok(())
}

/// Writes `params` to `path` as f32 safetensors with the Hugging Face names (`prefix` + name), atomically:
/// the data goes to a temporary file in the same directory that is then renamed over `path`, so a reader
/// (or a crash) never sees a half-written checkpoint.
pub fn save(path: impl AsRef<Path>, layout: &ParamLayout, params: &[f32], prefix: &str) -> Result<()> {
    save_with(path, layout, params, prefix, &[])
}

/// A tensor the encoder does not model (a pooler, a head), carried into a saved checkpoint unchanged.
#[derive(Debug, Clone)]
pub struct Carried {
    /// The full name, as in the source file.
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The tensors of a safetensors file that `layout` does not hold (under `prefix`), to carry along on save.
pub fn untrained_tensors(path: impl AsRef<Path>, layout: &ParamLayout, prefix: &str) -> Result<Vec<Carried>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| EncoderError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| EncoderError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut out: Vec<Carried> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| {
            let bare = name.strip_prefix(prefix).unwrap_or(name);
            // A layer's tensor outside the layout belongs to a layer cut away (`Encoder::truncated`): not carried.
            layout.get(bare).is_none() && layout.get(name).is_none() && !bare.starts_with("encoder.layer.")
        })
        .map(|(name, t)| Carried {
            name,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// [`save`], with `extra` tensors written beside the parameters.
pub fn save_with(
    path: impl AsRef<Path>,
    layout: &ParamLayout,
    params: &[f32],
    prefix: &str,
    extra: &[Carried],
) -> Result<()> {
    let path = path.as_ref();
    if params.len() != layout.total {
        return Err(EncoderError::BufferSize {
            found: params.len(),
            expected: layout.total,
        });
    }
    let bytes: &[u8] = bytemuck::cast_slice(params);
    let tensors = layout.entries.iter().map(|e| {
        let r = e.range();
        let view = TensorView::new(Dtype::F32, e.shape.clone(), &bytes[r.start * 4..r.end * 4])
            .expect("the slice length is the shape's size by construction");
        (format!("{prefix}{}", e.name), view)
    });
    let carried = extra.iter().map(|c| {
        let view =
            TensorView::new(c.dtype, c.shape.clone(), &c.data).map_err(|e| EncoderError::Safetensors {
                path: path.to_path_buf(),
                msg: format!("{}: {e}", c.name),
            });
        (c.name.clone(), view)
    });
    let carried: Vec<(String, TensorView<'_>)> =
        carried.map(|(n, v)| v.map(|v| (n, v))).collect::<Result<_>>()?;
    let tensors = tensors.chain(carried);
    let tmp = temp_path(path);
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EncoderError::Safetensors {
            path: tmp.clone(),
            msg: e.to_string(),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EncoderError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}
