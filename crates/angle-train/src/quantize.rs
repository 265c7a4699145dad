//! Output quantization of embeddings, as sentence-transformers' `quantize_embeddings` defines it (6.3):
//!
//! - `int8` / `uint8`: per dimension, the range `[min, max]` over calibration embeddings (the embeddings themselves
//!   unless given others) is cut into 255 steps: `q = clip(floor((x − min) / step), 0, 255)` with
//!   `step = (max − min) / 255` (1 where the range is empty), in f32; `int8` stores `q − 128`.
//! - `binary` / `ubinary`: one bit per dimension, `x > 0`, packed 8 to a byte with the first dimension in the high
//!   bit (`numpy.packbits`); `binary` stores each byte minus 128 as `int8`.
//!
//! For scoring, [`Quantized::to_f32`] gives the float vectors sentence-transformers' `EmbeddingSimilarityEvaluator`
//! compares: the integers as numbers, the bits of a binary embedding unpacked to 0 / 1.

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    Int8,
    Uint8,
    Binary,
    Ubinary,
}

impl Quantization {
    pub const ALL: [Quantization; 4] = [Self::Int8, Self::Uint8, Self::Binary, Self::Ubinary];

    pub fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Binary => "binary",
            Self::Ubinary => "ubinary",
        }
    }

    /// Whether the values are signed bytes (`int8`, `binary`) rather than unsigned ones.
    pub fn signed(self) -> bool {
        matches!(self, Self::Int8 | Self::Binary)
    }

    /// Whether ranges are calibrated (the 8-bit kinds) rather than the sign taken (the binary kinds).
    pub fn needs_ranges(self) -> bool {
        matches!(self, Self::Int8 | Self::Uint8)
    }

    /// Bytes per embedding of `dim` dimensions.
    pub fn cols(self, dim: usize) -> usize {
        if self.needs_ranges() { dim } else { dim.div_ceil(8) }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quantization {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|q| q.name() == s).ok_or_else(|| {
            TrainError::Config(format!(
                "unknown quantization {s:?}: expected int8, uint8, binary or ubinary"
            ))
        })
    }
}

/// Per dimension, the smallest and largest value of the calibration embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Ranges {
    /// The ranges of `rows` embeddings of `dim` values; at least two are needed (one embedding has no spread,
    /// as sentence-transformers also refuses).
    pub fn of(emb: &[f32], dim: usize) -> Result<Ranges> {
        let rows = emb.len() / dim.max(1);
        if rows < 2 {
            return Err(TrainError::Config(format!(
                "cannot calibrate int8 ranges from {rows} embedding(s): give more texts, or --calibration FILE"
            )));
        }
        let mut r = Ranges {
            min: vec![f32::INFINITY; dim],
            max: vec![f32::NEG_INFINITY; dim],
        };
        for row in emb.chunks(dim) {
            for (j, &x) in row.iter().enumerate() {
                r.min[j] = r.min[j].min(x);
                r.max[j] = r.max[j].max(x);
            }
        }
        Ok(r)
    }
}

/// Quantized embeddings: `rows × cols` bytes (an `int8` value stored as its bit pattern).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub kind: Quantization,
    pub rows: usize,
    /// Dimensions of the source embeddings.
    pub dim: usize,
    pub bytes: Vec<u8>,
}

/// Quantizes `rows × dim` embeddings; `ranges` for the 8-bit kinds (`None`: calibrated on `emb` itself).
pub fn quantize(emb: &[f32], dim: usize, kind: Quantization, ranges: Option<&Ranges>) -> Result<Quantized> {
    let rows = emb.len() / dim.max(1);
    let cols = kind.cols(dim);
    let mut bytes = vec![0u8; rows * cols];
    if kind.needs_ranges() {
        let own;
        let r = match ranges {
            Some(r) => r,
            None => {
                own = Ranges::of(emb, dim)?;
                &own
            }
        };
        if r.min.len() != dim {
            return Err(TrainError::Config(format!(
                "quantization ranges have {} dimensions, the embeddings {dim}",
                r.min.len()
            )));
        }
        let step: Vec<f32> = (0..dim)
            .map(|j| {
                let s = (r.max[j] - r.min[j]) / 255.0;
                if s == 0.0 { 1.0 } else { s }
            })
            .collect();
        for (row, out) in emb.chunks(dim).zip(bytes.chunks_mut(cols)) {
            for j in 0..dim {
                let q = ((row[j] - r.min[j]) / step[j]).floor().clamp(0.0, 255.0) as u8;
                out[j] = if kind.signed() { q.wrapping_sub(128) } else { q };
            }
        }
    } else {
        for (row, out) in emb.chunks(dim).zip(bytes.chunks_mut(cols)) {
            for (j, &x) in row.iter().enumerate() {
                if x > 0.0 {
                    out[j / 8] |= 0x80 >> (j % 8);
                }
            }
            if kind.signed() {
                out.iter_mut().for_each(|b| *b = b.wrapping_sub(128));
            }
        }
    }
    Ok(Quantized {
        kind,
        rows,
        dim,
        bytes,
    })
}

impl Quantized {
    /// Bytes per row.
    pub fn cols(&self) -> usize {
        self.kind.cols(self.dim)
    }

    /// Row `r`'s values as integers (`int8` values signed).
    pub fn row_values(&self, r: usize) -> Vec<i32> {
        let c = self.cols();
        self.bytes[r * c..(r + 1) * c]
            .iter()
            .map(|&b| {
                if self.kind.signed() {
                    b as i8 as i32
                } else {
                    b as i32
                }
            })
            .collect()
    }

    /// The float vectors sentence-transformers' evaluator compares: `rows × dim` for the 8-bit kinds (the integer
    /// values), `rows × 8·cols` for the binary kinds (each bit 0 or 1, padding bits included, as `numpy.unpackbits`).
    pub fn to_f32(&self) -> (Vec<f32>, usize) {
        let c = self.cols();
        if self.kind.needs_ranges() {
            let v = self
                .bytes
                .iter()
                .map(|&b| {
                    if self.kind.signed() {
                        b as i8 as f32
                    } else {
                        b as f32
                    }
                })
                .collect();
            return (v, c);
        }
        let mut v = Vec::with_capacity(self.bytes.len() * 8);
        for &b in &self.bytes {
            let u = if self.kind.signed() {
                b.wrapping_add(128)
            } else {
                b
            };
            v.extend((0..8).map(|k| ((u >> (7 - k)) & 1) as f32));
        }
        (v, 8 * c)
    }

    /// The `.npy` type of the bytes.
    pub fn npy_descr(&self) -> &'static str {
        if self.kind.signed() { "|i1" } else { "|u1" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_kinds_floor_and_clip_in_255_steps() {
        // Dimension 0 ranges over [-1, 1]; dimension 1 is constant (step 1).
        let emb = [-1.0f32, 0.5, 0.0, 0.5, 1.0, 0.5, 2.0, 0.5];
        // The values sentence-transformers 6.3 gives for the same array (the maximum lands on 254: f32 rounding
        // of (max − min) / step, as there).
        let u = quantize(&emb[..6], 2, Quantization::Uint8, None).unwrap();
        assert_eq!(u.bytes, vec![0, 0, 127, 0, 254, 0]);
        let r = Ranges::of(&emb[..6], 2).unwrap();
        // Outside the calibration range: clipped.
        let u = quantize(&emb, 2, Quantization::Uint8, Some(&r)).unwrap();
        assert_eq!(u.bytes[6], 255);
        let i = quantize(&emb[..6], 2, Quantization::Int8, None).unwrap();
        assert_eq!(i.row_values(1), vec![-1, -128]);
        assert_eq!(i.row_values(2), vec![126, -128]);
        assert_eq!(i.to_f32().0[2], -1.0);
        assert!(quantize(&emb[..2], 2, Quantization::Int8, None).is_err());
    }

    #[test]
    fn binary_kinds_pack_the_first_dimension_into_the_high_bit() {
        let emb = [1.0f32, -1.0, 0.0, 2.0, 0.1, 0.0, 0.0, 0.0, 3.0];
        let u = quantize(&emb, 9, Quantization::Ubinary, None).unwrap();
        // numpy.packbits: [[152, 128]]; sentence-transformers' binary: [[24, 0]].
        assert_eq!(u.bytes, vec![152, 128]);
        let b = quantize(&emb, 9, Quantization::Binary, None).unwrap();
        assert_eq!(b.row_values(0), vec![24, 0]);
        let (bits, width) = b.to_f32();
        assert_eq!(width, 16);
        assert_eq!(&bits[..9], &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(b.npy_descr(), "|i1");
        assert_eq!(u.npy_descr(), "|u1");
    }

    #[test]
    fn names_parse() {
        for q in Quantization::ALL {
            assert_eq!(q.name().parse::<Quantization>().unwrap(), q);
        }
        assert!("int4".parse::<Quantization>().is_err());
    }
}
