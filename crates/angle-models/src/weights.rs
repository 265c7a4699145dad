//! Checkpoint tensors, memory-mapped: `model.safetensors` or the shards of `model.safetensors.index.json`.
//!
//! A [`Frozen`] tensor is a window into the map, kept in the file's dtype (f32, bf16 or f16): a 7B bf16
//! checkpoint costs its 14 GB of pages, not 28 GB of f32. Products widen a frozen weight to f32 into a
//! reusable scratch buffer ([`Frozen::widen_into`]).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use crate::error::{ModelError, Result, io_err, read_json};

/// The element types of frozen weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    pub fn bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            _ => 2,
        }
    }
    pub fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }
    /// f32 to this dtype's little-endian bytes (round to nearest even).
    pub fn encode(self, xs: &[f32], out: &mut Vec<u8>) {
        match self {
            WeightDtype::F32 => xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            WeightDtype::F16 => xs
                .iter()
                .for_each(|&x| out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes())),
            WeightDtype::Bf16 => xs
                .iter()
                .for_each(|&x| out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())),
        }
    }
}

/// One tensor of a memory-mapped checkpoint, in the file's dtype.
#[derive(Debug, Clone)]
pub struct Frozen {
    map: Arc<Mmap>,
    start: usize,
    pub dtype: WeightDtype,
    pub shape: Vec<usize>,
    pub name: String,
}

impl Frozen {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len() * self.dtype.bytes()]
    }

    /// Elements `from .. from + out.len()` widened to f32 into `out`.
    pub fn widen_range_into(&self, from: usize, out: &mut [f32]) {
        let w = self.dtype.bytes();
        let b = &self.bytes()[from * w..(from + out.len()) * w];
        match self.dtype {
            WeightDtype::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            WeightDtype::Bf16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                }
            }
            WeightDtype::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }

    /// The whole tensor widened into `out` (resized to fit; no allocation once it is large enough).
    pub fn widen_into<'a>(&self, out: &'a mut Vec<f32>) -> &'a [f32] {
        out.resize(self.len(), 0.0);
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| self.widen_range_into(i * CHUNK, c));
        &out[..]
    }

    /// Drops this tensor's pages from the process's resident set (`MADV_DONTNEED`), once a bf16 copy was
    /// packed from them: the mapping is read-only and file-backed, so a later read faults them in from the
    /// file again and nothing is lost. A hint: an error is ignored.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        // SAFETY: a read-only mapping of an unmodified file: dropped pages read back the same bytes, and no
        // reference into this range is held while it runs (callers hold none; `bytes()` borrows end there).
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.start,
                self.len() * self.dtype.bytes(),
            )
        };
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = Vec::new();
        self.widen_into(&mut v);
        v
    }
}

/// All tensors of a checkpoint folder, by name.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The weight files (one, or the shards in index order).
    pub files: Vec<PathBuf>,
    pub tensors: HashMap<String, Frozen>,
    /// Tensors of other dtypes (integer buffers such as BERT's `position_ids`), by name: never weights we read,
    /// so they are kept out of `tensors`; asking for one is an error naming its dtype.
    pub other_dtypes: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens `model.safetensors`, else the shards listed by `model.safetensors.index.json`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let v = read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| crate::error::cfg_err(&index, "weight_map", "missing or not an object"))?;
            let mut shards = BTreeSet::new();
            for (name, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    crate::error::cfg_err(&index, &format!("weight_map.{name}"), "expected a file name")
                })?;
                shards.insert(f.to_string());
            }
            let mut files = Vec::new();
            for s in shards {
                let p = dir.join(&s);
                if !p.is_file() {
                    return Err(ModelError::MissingShard { index, shard: s });
                }
                files.push(p);
            }
            files
        } else {
            return Err(ModelError::NoWeights { path: dir });
        };
        let mut tensors = HashMap::new();
        let mut other_dtypes = HashMap::new();
        for path in &files {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: read-only map; a checkpoint is not rewritten in place while we hold it (our own
            // writers rename a new file into place).
            let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_err(path))?);
            let st = SafeTensors::deserialize(&map).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            })?;
            for (name, view) in st.iter() {
                let dtype = match view.dtype() {
                    Dtype::F32 => WeightDtype::F32,
                    Dtype::F16 => WeightDtype::F16,
                    Dtype::BF16 => WeightDtype::Bf16,
                    other => {
                        other_dtypes.insert(name.to_string(), format!("{other:?}"));
                        continue;
                    }
                };
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                tensors.insert(
                    name.to_string(),
                    Frozen {
                        map: map.clone(),
                        start,
                        dtype,
                        shape: view.shape().to_vec(),
                        name: name.to_string(),
                    },
                );
            }
        }
        Ok(Checkpoint {
            dir,
            files,
            tensors,
            other_dtypes,
        })
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&Frozen> {
        if let Some(dtype) = self.other_dtypes.get(name) {
            return Err(ModelError::UnsupportedDtype {
                path: self.dir.clone(),
                name: name.to_string(),
                dtype: dtype.clone(),
            });
        }
        let t = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.files.first().cloned().unwrap_or_else(|| self.dir.clone()),
            name: name.to_string(),
        })?;
        if t.shape != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.dir.clone(),
                name: name.to_string(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// The dtype most tensors have (what a merged checkpoint is written in).
    pub fn dtype(&self) -> WeightDtype {
        let mut count = HashMap::new();
        for t in self.tensors.values() {
            *count.entry(t.dtype as u8).or_insert(0usize) += 1;
        }
        [WeightDtype::Bf16, WeightDtype::F16, WeightDtype::F32]
            .into_iter()
            .max_by_key(|d| count.get(&(*d as u8)).copied().unwrap_or(0))
            .unwrap_or(WeightDtype::F32)
    }
}

/// Tensors read into f32, by name: shape and values.
pub type F32Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a small safetensors file (adapters) into f32 tensors, F64 included.
pub fn read_f32_tensors(path: &Path) -> Result<F32Tensors> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (name, v) in st.iter() {
        let d = v.data();
        let data: Vec<f32> = match v.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        out.insert(name.to_string(), (v.shape().to_vec(), data));
    }
    Ok(out)
}

/// Writes named tensors (raw little-endian bytes in `dtype`) to `path` atomically (temp file + rename).
pub fn write_safetensors(path: &Path, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(|e| {
                ModelError::Safetensors {
                    path: path.to_path_buf(),
                    msg: format!("{n}: {e}"),
                }
            })?;
            Ok((n.clone(), view))
        })
        .collect::<Result<_>>()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::Safetensors {
            path: tmp.clone(),
            msg: e.to_string(),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A model's tokenizer files: `tokenizer.json` (what angle reads) and those a checkpoint carries along for
/// other tools (BERT, RoBERTa and XLM-R vocabularies, the LLaMA family's sentencepiece model). The one list
/// every save copies from (the trainer's checkpoints, merged models, the decoder's full saves); `angle-hub`
/// downloads the same files (a test there holds its list equal to this one).
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

/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// A tensor to be written: its name, dtype and shape (its bytes come later, one tensor at a time).
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn bytes(&self) -> u64 {
        let elem = match self.dtype {
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 | Dtype::U16 => 2,
            _ => 1,
        };
        self.shape.iter().product::<usize>() as u64 * elem
    }
}

/// Parses a shard size as transformers writes it: `5GB`, `500MB`, `200KB` (decimal), `2GiB`, `10MiB` (binary),
/// or a number of bytes.
pub fn parse_shard_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = (n * scale).round();
    (bytes >= 1.0).then_some(bytes as u64)
}

/// Writes a checkpoint into the folder `dir` tensor by tensor: `model.safetensors`, or, above `max_shard_bytes`,
/// `model-0000i-of-0000n.safetensors` shards (in order, a shard closed before a tensor would overflow it; a larger
/// tensor gets a shard of its own, as transformers does) with `model.safetensors.index.json`. `fill(i, buf)` puts
/// tensor `i`'s little-endian bytes into `buf` (cleared first): the extra memory of a save is one tensor. Each file
/// is written under a temporary name and renamed when complete; the index comes last.
pub fn write_sharded(
    dir: &Path,
    specs: &[TensorSpec],
    max_shard_bytes: u64,
    mut fill: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    use std::io::Write;
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let b = s.bytes();
        if size > 0 && size + b > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += b;
    }
    let n = shards.len();
    let file_name = |k: usize| match n {
        1 => "model.safetensors".to_string(),
        _ => format!("model-{:05}-of-{:05}.safetensors", k + 1, n),
    };
    let mut written = Vec::new();
    let mut buf = Vec::new();
    for (k, shard) in shards.iter().enumerate() {
        let path = dir.join(file_name(k));
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut offset = 0u64;
        for &i in shard {
            let s = &specs[i];
            let dtype = format!("{:?}", s.dtype);
            header.insert(
                s.name.clone(),
                serde_json::json!({"dtype": dtype, "shape": s.shape, "data_offsets": [offset, offset + s.bytes()]}),
            );
            offset += s.bytes();
        }
        let mut head = serde_json::to_vec(&header).expect("a JSON map serialises");
        // pad with spaces to a multiple of 8, as the safetensors writers do, so the data stays aligned
        head.resize(head.len().div_ceil(8) * 8, b' ');
        let tmp = path.with_file_name(format!(".{}.tmp{}", file_name(k), std::process::id()));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(io_err(&tmp))?;
        w.write_all(&head).map_err(io_err(&tmp))?;
        for &i in shard {
            buf.clear();
            fill(i, &mut buf)?;
            if buf.len() as u64 != specs[i].bytes() {
                let _ = std::fs::remove_file(&tmp);
                return Err(ModelError::Safetensors {
                    path: path.clone(),
                    msg: format!(
                        "{}: {} bytes for {} expected",
                        specs[i].name,
                        buf.len(),
                        specs[i].bytes()
                    ),
                });
            }
            w.write_all(&buf).map_err(io_err(&tmp))?;
        }
        let file = w.into_inner().map_err(|e| e.into_error()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        written.push(path);
    }
    if n > 1 {
        let mut map = serde_json::Map::new();
        for (k, shard) in shards.iter().enumerate() {
            for &i in shard {
                map.insert(specs[i].name.clone(), file_name(k).into());
            }
        }
        let total: u64 = specs.iter().map(TensorSpec::bytes).sum();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
        let path = dir.join("model.safetensors.index.json");
        let tmp = dir.join(format!(".model.safetensors.index.json.tmp{}", std::process::id()));
        let text = serde_json::to_string_pretty(&index).expect("JSON");
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        written.push(path);
    }
    Ok(written)
}
