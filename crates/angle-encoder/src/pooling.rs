//! Pooling: token states `[N, H]` (packed) to one embedding per sequence `[B, H]`, forward and backward.
//!
//! The strategies are angle-emb's (`cls`, `cls_avg`, `mean`/`avg`, `max`, `last`, an integer token index)
//! over each sequence's own tokens; packed sequences hold no padding, so "unmasked" is simply "in range".

use std::path::Path;

use serde_json::Value;

use crate::config::{Keys, cfg_err};
use crate::error::{EncoderError, Result, io_err, json_err};

/// How token states become a sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token (`[CLS]`).
    Cls,
    /// The mean over the sequence's tokens.
    Mean,
    /// The element-wise maximum over the sequence's tokens.
    Max,
    /// (CLS + mean) / 2, as angle-emb's `cls_avg`.
    ClsAvg,
    /// The last token of the sequence.
    Last,
    /// The token at this index of every sequence.
    Token(usize),
}

impl Pooling {
    /// Parses angle-emb's names (`cls`, `cls_avg`, `mean` or `avg`, `max`, `last`) or a token index.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cls" => Pooling::Cls,
            "mean" | "avg" => Pooling::Mean,
            "max" => Pooling::Max,
            "cls_avg" => Pooling::ClsAvg,
            "last" => Pooling::Last,
            _ => Pooling::Token(s.parse().ok()?),
        })
    }

    pub fn name(self) -> String {
        match self {
            Pooling::Cls => "cls".into(),
            Pooling::Mean => "mean".into(),
            Pooling::Max => "max".into(),
            Pooling::ClsAvg => "cls_avg".into(),
            Pooling::Last => "last".into(),
            Pooling::Token(i) => i.to_string(),
        }
    }

    /// The pooling a checkpoint directory asks for: sentence-transformers' `1_Pooling/config.json` (found
    /// through `modules.json` when present), else `cls`, angle-emb's default.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut pooling_dir = dir.join("1_Pooling");
        let modules = dir.join("modules.json");
        if modules.is_file() {
            let text = std::fs::read_to_string(&modules).map_err(io_err(&modules))?;
            let v: Value = serde_json::from_str(&text).map_err(json_err(&modules))?;
            let found = v.as_array().into_iter().flatten().find(|m| {
                m.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("Pooling"))
            });
            if let Some(path) = found.and_then(|m| m.get("path")).and_then(Value::as_str) {
                pooling_dir = dir.join(path);
            }
        }
        let path = pooling_dir.join("config.json");
        if !path.is_file() {
            return Ok(Pooling::Cls);
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::from_sentence_transformers_json(&text, &path)
    }

    /// Parses a sentence-transformers pooling config; exactly one supported mode must be on.
    pub fn from_sentence_transformers_json(text: &str, path: &Path) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(json_err(path))?;
        let Value::Object(map) = v else {
            return Err(cfg_err(path, "<root>", "expected a JSON object"));
        };
        let keys = Keys { map: &map, path };
        let modes = [
            ("pooling_mode_cls_token", Some(Pooling::Cls)),
            ("pooling_mode_mean_tokens", Some(Pooling::Mean)),
            ("pooling_mode_max_tokens", Some(Pooling::Max)),
            ("pooling_mode_lasttoken", Some(Pooling::Last)),
            ("pooling_mode_mean_sqrt_len_tokens", None),
            ("pooling_mode_weightedmean_tokens", None),
        ];
        let mut chosen = None;
        for (key, mode) in modes {
            if !keys.bool_or(key, false)? {
                continue;
            }
            let Some(mode) = mode else {
                return Err(cfg_err(path, key, "this pooling mode is not supported"));
            };
            if chosen.is_some() {
                return Err(cfg_err(
                    path,
                    key,
                    "several pooling modes at once (concatenation) are not supported",
                ));
            }
            chosen = Some(mode);
        }
        chosen.ok_or_else(|| cfg_err(path, "pooling_mode_mean_tokens", "no pooling mode is enabled"))
    }
}

/// A pooling strategy and the state its backward needs (the arg-max rows of `max`), reused across steps.
#[derive(Debug, Clone)]
pub struct Pooler {
    pub kind: Pooling,
    argmax: Vec<u32>,
}

impl Pooler {
    pub fn new(kind: Pooling) -> Self {
        Pooler {
            kind,
            argmax: Vec::new(),
        }
    }

    /// `out [B, H]` = pooled `hidden [N, H]`; `seq_offsets` has B + 1 entries.
    pub fn forward(
        &mut self,
        out: &mut [f32],
        hidden: &[f32],
        seq_offsets: &[usize],
        dim: usize,
    ) -> Result<()> {
        let b = check(out.len(), hidden.len(), seq_offsets, dim)?;
        if let Pooling::Token(t) = self.kind
            && let Some(s) = (0..b).find(|&s| seq_offsets[s + 1] - seq_offsets[s] <= t)
        {
            return Err(EncoderError::Pooling(format!(
                "token index {t} is past the end of sequence {s} ({} tokens)",
                seq_offsets[s + 1] - seq_offsets[s]
            )));
        }
        if self.kind == Pooling::Max {
            self.argmax.clear();
            self.argmax.resize(b * dim, 0);
        }
        for s in 0..b {
            let (start, end) = (seq_offsets[s], seq_offsets[s + 1]);
            let o = &mut out[s * dim..(s + 1) * dim];
            let row = |t: usize| &hidden[t * dim..(t + 1) * dim];
            match self.kind {
                Pooling::Cls => o.copy_from_slice(row(start)),
                Pooling::Last => o.copy_from_slice(row(end - 1)),
                Pooling::Token(t) => o.copy_from_slice(row(start + t)),
                Pooling::Mean | Pooling::ClsAvg => {
                    o.fill(0.0);
                    for t in start..end {
                        o.iter_mut().zip(row(t)).for_each(|(a, &x)| *a += x);
                    }
                    let inv = 1.0 / (end - start) as f32;
                    if self.kind == Pooling::Mean {
                        o.iter_mut().for_each(|a| *a *= inv);
                    } else {
                        o.iter_mut()
                            .zip(row(start))
                            .for_each(|(a, &c)| *a = 0.5 * (c + *a * inv));
                    }
                }
                Pooling::Max => {
                    let am = &mut self.argmax[s * dim..(s + 1) * dim];
                    o.copy_from_slice(row(start));
                    am.fill(start as u32);
                    for t in start + 1..end {
                        for ((a, i), &x) in o.iter_mut().zip(am.iter_mut()).zip(row(t)) {
                            // strict `>` keeps the first maximum, as torch.max does
                            if x > *a {
                                *a = x;
                                *i = t as u32;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds the gradient of the pooled `[B, H]` into `dhidden [N, H]`. Uses the state of the last `forward`.
    pub fn backward(
        &self,
        dhidden: &mut [f32],
        dout: &[f32],
        seq_offsets: &[usize],
        dim: usize,
    ) -> Result<()> {
        let b = check(dout.len(), dhidden.len(), seq_offsets, dim)?;
        for s in 0..b {
            let (start, end) = (seq_offsets[s], seq_offsets[s + 1]);
            let d = &dout[s * dim..(s + 1) * dim];
            let mut add = |t: usize, scale: f32| {
                dhidden[t * dim..(t + 1) * dim]
                    .iter_mut()
                    .zip(d)
                    .for_each(|(g, &x)| *g += scale * x);
            };
            match self.kind {
                Pooling::Cls => add(start, 1.0),
                Pooling::Last => add(end - 1, 1.0),
                Pooling::Token(t) => add(start + t, 1.0),
                Pooling::Mean | Pooling::ClsAvg => {
                    let mut w = 1.0 / (end - start) as f32;
                    if self.kind == Pooling::ClsAvg {
                        w *= 0.5;
                        add(start, 0.5);
                    }
                    for t in start..end {
                        add(t, w);
                    }
                }
                Pooling::Max => {
                    let am = self.argmax.get(s * dim..(s + 1) * dim).ok_or_else(|| {
                        EncoderError::Pooling("max pooling backward without a matching forward".into())
                    })?;
                    for (k, (&t, &x)) in am.iter().zip(d).enumerate() {
                        dhidden[t as usize * dim + k] += x;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Validates the shapes; returns B.
fn check(pooled_len: usize, hidden_len: usize, seq_offsets: &[usize], dim: usize) -> Result<usize> {
    let bad = |m: String| Err(EncoderError::Pooling(m));
    if seq_offsets.len() < 2 || seq_offsets[0] != 0 {
        return bad("seq_offsets must start at 0 and hold B + 1 >= 2 entries".into());
    }
    let b = seq_offsets.len() - 1;
    if let Some(s) = (0..b).find(|&s| seq_offsets[s + 1] <= seq_offsets[s]) {
        return bad(format!("sequence {s} is empty or seq_offsets decrease"));
    }
    if hidden_len != seq_offsets[b] * dim {
        return bad(format!(
            "hidden has {hidden_len} floats, expected {} tokens x {dim}",
            seq_offsets[b]
        ));
    }
    if pooled_len != b * dim {
        return bad(format!("pooled has {pooled_len} floats, expected {b} x {dim}"));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite differences of `sum(w * pool(h))` in f32 on well-separated values.
    #[test]
    fn backward_matches_finite_differences() {
        let dim = 3;
        let offs = [0usize, 3, 4, 8];
        let n = 8;
        let h: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.25)
            .collect();
        let w: Vec<f32> = (0..3 * dim).map(|i| (i as f32 - 4.0) * 0.5).collect();
        for kind in [
            Pooling::Cls,
            Pooling::Mean,
            Pooling::Max,
            Pooling::ClsAvg,
            Pooling::Last,
            Pooling::Token(0),
        ] {
            let mut p = Pooler::new(kind);
            let f = |p: &mut Pooler, h: &[f32]| {
                let mut out = vec![0.0; 3 * dim];
                p.forward(&mut out, h, &offs, dim).unwrap();
                out.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>()
            };
            f(&mut p, &h);
            let mut g = vec![0.0; n * dim];
            p.backward(&mut g, &w, &offs, dim).unwrap();
            for i in 0..n * dim {
                let eps = 1e-2;
                let (mut hp, mut hm) = (h.clone(), h.clone());
                hp[i] += eps;
                hm[i] -= eps;
                let fd = (f(&mut p, &hp) - f(&mut p, &hm)) / (2.0 * eps as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 1e-3,
                    "{kind:?} [{i}]: fd {fd} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn token_index_past_the_end_is_an_error() {
        let mut p = Pooler::new(Pooling::Token(2));
        let mut out = vec![0.0; 2];
        assert!(p.forward(&mut out, &[0.0; 6], &[0, 2, 3], 1).is_err());
    }

    #[test]
    fn sentence_transformers_config() {
        let path = Path::new("1_Pooling/config.json");
        let parse = |s: &str| Pooling::from_sentence_transformers_json(s, path);
        assert_eq!(
            parse(r#"{"pooling_mode_mean_tokens": true}"#).unwrap(),
            Pooling::Mean
        );
        assert_eq!(
            parse(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#).unwrap(),
            Pooling::Cls
        );
        assert!(parse(r#"{"pooling_mode_mean_sqrt_len_tokens": true}"#).is_err());
        assert!(parse(r#"{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": true}"#).is_err());
        assert_eq!(Pooling::parse("avg"), Some(Pooling::Mean));
        assert_eq!(Pooling::parse("3"), Some(Pooling::Token(3)));
        assert_eq!(Pooling::parse("bogus"), None);
    }
}
