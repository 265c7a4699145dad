//! int8 linear layers for inference: `out = (qx · qWᵀ) · sx · sW + b`, integer products summed in
//! i32, on AVX512-VNNI (`vpdpbusd`: 64 u8 × i8 products per instruction), AVX-VNNI (the 256-bit VEX
//! form), AVX2 (`vpmaddubsw` + `vpmaddwd`) or a portable implementation of the same integer math
//! (`int8_simd.rs` holds the vector kernels).
//!
//! Quantization (as ONNX Runtime's and `torch.ao`'s dynamic schemes: symmetric per-channel weights,
//! asymmetric uint8 activations, here per row rather than per tensor):
//!
//! - the weight `[out, in]` **per output channel**, once, symmetric: `sW[j] = max_k |W[j, k]| / 127`,
//!   `qW[j, k] = round(W[j, k] · 127 / max_k |W[j, k]|)` in `[-127, 127]` ([`quantize_row_i8`]); where the
//!   products run on the AVX2 kernel, on `[-63, 63]` instead ([`weight_levels`], as ONNX Runtime's
//!   `reduce_range`), which lets that kernel skip moving signs (below);
//! - each input row **dynamically**, per call, asymmetric over its range with zero in it
//!   ([`quantize_row_u8`]): `lo = min(0, min x)`, `hi = max(0, max x)`, `sx = (hi − lo) / 255`, the zero
//!   point `zx = round(−lo / sx)` and `u = round(clamp(x / sx + zx, 0, 255))`, so `x ≈ (u − zx) · sx`.
//!   A row's 256 levels cover only the values it has: a one-sided row (after GELU) or one whose LayerNorm
//!   bias shifts it loses half the resolution to symmetric absmax (STS-B with all-MiniLM-L6-v2: 81.77 →
//!   81.94 Spearman in a PyTorch simulation of both, f32 82.07).
//!
//! Rounding is to nearest, ties to even. A row whose range is zero or subnormal (below
//! `f32::MIN_POSITIVE`) quantizes with scale 0 (its products are then exactly the bias); a row with a
//! NaN or an infinite value gets a NaN scale, so its outputs are NaN rather than silently the bias.
//!
//! The integer sums `acc = Σ_k (u_k − zx) · qW[j, k]` are exact in every kernel (`|acc| ≤ 255 · 127 ·
//! in_dim < 2³¹`: `in_dim` is at most [`MAX_IN_DIM`]), and every kernel computes the same f32 epilogue
//! in the same order,
//! `out = f32(acc) · (sx · sW) + b` (three roundings, no fused multiply-add), so **every kernel gives
//! the same bits** (the tests check that against an i64 reference). Against the exact value
//! `acc · sx · sW + b` the epilogue is off by at most `4.01 · 2⁻²⁴ · (|acc · sx · sW| + |b|)` (four
//! roundings: the conversion of `acc`, two products, the sum).
//!
//! `vpdpbusd` multiplies **unsigned** bytes by signed ones, so the VNNI kernels feed `u` as it is and
//! start every sum from `−zx · Σ_k qW[j, k]` (kept per column in [`PackedI8`]): `Σ u·qW − zx · Σ qW`.
//! The i32 lanes wrap on overflow, so a partial sum that leaves the i32 range on the way is harmless:
//! the final sum fits. `vpmaddubsw` (AVX2) also multiplies u8 by i8 but **saturates** each pair sum to
//! i16 (`255 · 127 · 2 = 64,770 > 32,767`), so the AVX2 kernel (and the portable one) feeds the signed
//! byte `v = u − 128` instead, moves its sign onto the weight, `|v| · (qW · sign v)` with `|v| ≤ 128`
//! and `|qW| ≤ 127` (a pair sum of at most 32,512, exact), and starts from `(128 − zx) · Σ qW`. On a
//! weight within ±63 it feeds `u` as it is, as VNNI does (`2 · 255 · 63` = 32,130 fits). Every kernel gives
//! the same bits on the same packed weight; a CPU whose kernel is AVX2 packs 7-bit weights, so its results
//! are those of another (slightly coarser) quantization.
//! (That is why `-128` is refused in a quantized weight: its negation does not fit an i8.)
//!
//! Layout: the weight is packed once into panels of 16 output columns (the panel count rounded up to
//! even, so the AVX-512 kernel always reads two); within a panel, for each group of 4 consecutive
//! input features, 64 bytes holding column `j`'s 4 values at `4j .. 4j + 4` (the "VNNI" layout: one
//! 32-bit lane per column, the 4 bytes `vpdpbusd` sums). Padding (columns past `out_dim`, features
//! past `in_dim`) is zero. Each call quantizes the input rows into the calling thread's scratch (grown
//! once, reused), then splits the rows (or, for fewer row blocks than threads, the columns too)
//! between rayon threads.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gelu::{GeluKind, gelu_in_place};
use super::int8_simd;
use crate::error::{TensorError, arg_err, check_len};

/// Output columns per packed panel.
pub(super) const PANEL: usize = 16;
/// Input features per group (one 32-bit lane of a `vpdpbusd`).
pub(super) const GROUP: usize = 4;
/// Bytes of one group row of a panel (16 columns × 4 features).
pub(super) const GROUP_BYTES: usize = PANEL * GROUP;
/// Rows per cache block of the quantized input.
const MC: usize = 48;
/// The widest `in_dim` accepted: `255 · 127 · in_dim` must stay below 2³¹ (exact i32 sums).
pub const MAX_IN_DIM: usize = 1 << 16;

/// Adds `1.5 · 2²³` and takes it away again: rounds to the nearest integer, ties to even, for
/// `|t| ≤ 2²²` (branch-free and vectorisable on baseline x86-64, unlike a `roundeven` libcall).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes `x` symmetrically into `q` (same length): returns the scale `max|x| / 127` and writes
/// `q[i] = round(x[i] · 127 / max|x|)` (nearest, ties to even; in `[-127, 127]`). A row whose
/// absmax is zero or subnormal gives scale 0 and zeros. The weights of the int8 products (per output
/// channel) are quantized by this function; their inputs by [`quantize_row_u8`].
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    quantize_row_levels(x, q, 127)
}

/// [`quantize_row_i8`] onto `[-levels, levels]`: scale `max|x| / levels`.
fn quantize_row_levels(x: &[f32], q: &mut [i8], levels: u8) -> f32 {
    assert_eq!(x.len(), q.len(), "quantize_row_i8: lengths differ");
    // The largest |x| as the largest bit pattern with the sign cleared (the order of non-negative
    // floats): an integer max, which vectorises (a float max that ignores NaN does not).
    let bits = x.iter().fold(0u32, |m, &v| m.max(v.to_bits() & 0x7fff_ffff));
    let absmax = f32::from_bits(bits);
    if absmax.is_nan() || absmax < f32::MIN_POSITIVE {
        q.fill(0);
        return 0.0;
    }
    let l = f32::from(levels);
    let inv = l / absmax;
    for (d, &v) in q.iter_mut().zip(x) {
        *d = quantize_one(v, inv, l) as i8;
    }
    absmax / l
}

/// `round(v · inv)` clamped to `[-levels, levels]`.
#[inline(always)]
fn quantize_one(v: f32, inv: f32, levels: f32) -> i32 {
    let t = (v * inv).clamp(-levels, levels);
    ((t + ROUND_MAGIC) - ROUND_MAGIC) as i32
}

/// Quantizes `x` asymmetrically over its range (with zero in it) into `q` (same length): returns the
/// scale `sx = (hi − lo) / 255` and the zero point `zx = round(−lo / sx)`, and writes `q[i] =
/// round(clamp(x[i] · (255 / (hi − lo)) + zx, 0, 255))` (nearest, ties to even), so that `x ≈ (q − zx) · sx`. A row
/// whose range is zero or subnormal gives scale 0, zero point 0 and zeros; one with a NaN or an
/// infinite value a NaN scale. The inputs of the int8 products are quantized by this function.
pub fn quantize_row_u8(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    assert_eq!(x.len(), q.len(), "quantize_row_u8: lengths differ");
    quantize_u8_into(x, q, 0)
}

/// [`quantize_row_u8`] writing the bytes of `q` XOR `flip` (0x80: `q − 128` as i8), compiled for the
/// widest vector unit present. Only IEEE operations and integer ones: every version gives the same bits.
fn quantize_u8_into(x: &[f32], q: &mut [u8], flip: u8) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512(x: &[f32], q: &mut [u8], flip: u8) -> (f32, i32) {
            quantize_u8_core(x, q, flip)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32], q: &mut [u8], flip: u8) -> (f32, i32) {
            quantize_u8_core(x, q, flip)
        }
        if int8_simd::avx512bw_available() {
            // SAFETY: the CPU has AVX512F and AVX512BW (checked just above).
            return unsafe { avx512(x, q, flip) };
        }
        if int8_simd::avx2_available() {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(x, q, flip) };
        }
    }
    quantize_u8_core(x, q, flip)
}

/// A float's bits mapped to an unsigned key in the floats' order (negative ones flipped whole, positive
/// ones with the sign bit set), so that the range is an integer min and max, which vectorise.
#[inline(always)]
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    b ^ (((b as i32 >> 31) as u32) | 0x8000_0000)
}

#[inline(always)]
fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k ^ 0x8000_0000 } else { !k })
}

#[inline(always)]
fn quantize_u8_core(x: &[f32], q: &mut [u8], flip: u8) -> (f32, i32) {
    let zero = order_key(0.0);
    let (kmin, kmax) = x.iter().fold((zero, zero), |(lo, hi), &v| {
        let k = order_key(v);
        (lo.min(k), hi.max(k))
    });
    let (lo, hi) = (from_order_key(kmin), from_order_key(kmax));
    let range = hi - lo;
    if !range.is_finite() {
        q.fill(flip);
        return (f32::NAN, 0);
    }
    if range < f32::MIN_POSITIVE {
        q.fill(flip);
        return (0.0, 0);
    }
    let inv = 255.0 / range;
    let zx = ((-lo * inv).min(255.0) + ROUND_MAGIC) - ROUND_MAGIC;
    for (d, &v) in q.iter_mut().zip(x) {
        // In [0, 255] before rounding, so the rounded integer is the low byte of `t + ROUND_MAGIC`'s bits:
        // no float-to-int conversion (whose saturating form does not vectorise). Two roundings, no FMA.
        let t = (v * inv + zx).clamp(0.0, 255.0);
        *d = ((t + ROUND_MAGIC).to_bits() as u8) ^ flip;
    }
    (range / 255.0, zx as i32)
}

/// A `[out_dim, in_dim]` weight (PyTorch's Linear layout) quantized to int8 per output channel and
/// packed into panels of 16 columns × groups of 4 features (the module documentation has the
/// layout), with each column's scale and the sum of its quantized values.
#[derive(Debug, Clone, Default)]
pub struct PackedI8 {
    pub(super) out_dim: usize,
    pub(super) in_dim: usize,
    /// Groups of 4 features (`in_dim` rounded up; at least one).
    pub(super) groups: usize,
    /// Panels of 16 columns (even).
    pub(super) panels: usize,
    /// `panels × groups × 64` bytes.
    pub(super) data: Vec<i8>,
    /// Per-column scales, zero-padded to `panels × 16`.
    pub(super) scales: Vec<f32>,
    /// Per-column `Σ_k qW[j, k]`, zero-padded to `panels × 16`.
    pub(super) col_sums: Vec<i32>,
    /// The largest `|qW|`: at most 63 lets the AVX2 kernel take unsigned inputs as they are.
    pub(super) max_q: u8,
}

/// The weight levels [`PackedI8::quantize`] uses on this CPU: ±127, or ±63 (7 bits, as ONNX Runtime's
/// `reduce_range`) where the products run on the AVX2 kernel, whose `vpmaddubsw` then takes the unsigned
/// inputs as they are (`2 · 255 · 63` fits its i16 pair sums): 7 instead of 10 instructions per 64
/// multiply-adds. STS-B with all-MiniLM-L6-v2 in a PyTorch simulation: 81.91 against 81.94 with ±127.
pub fn weight_levels() -> u8 {
    match int8_kernel() {
        Int8Kernel::Avx2 => 63,
        _ => 127,
    }
}

impl PackedI8 {
    /// Quantizes `w` (`[out_dim, in_dim]`, row-major) per output channel and packs it: the product
    /// is `x · Wᵀ`.
    pub fn quantize(w: &[f32], out_dim: usize, in_dim: usize) -> Result<Self, TensorError> {
        Self::quantize_levels(w, out_dim, in_dim, weight_levels())
    }

    /// [`PackedI8::quantize`] onto `[-levels, levels]` (`levels` in 1..=127; the CPU's choice is
    /// [`weight_levels`]).
    pub fn quantize_levels(
        w: &[f32],
        out_dim: usize,
        in_dim: usize,
        levels: u8,
    ) -> Result<Self, TensorError> {
        const OP: &str = "PackedI8::quantize";
        if !(1..=127).contains(&levels) {
            return Err(arg_err(OP, "levels", format!("{levels}: 1 to 127")));
        }
        check_len(OP, "weight", w.len(), out_dim * in_dim)?;
        check_in_dim(OP, in_dim)?;
        let mut q = vec![0i8; out_dim * in_dim];
        let mut scales = vec![0.0f32; out_dim];
        if in_dim > 0 {
            q.par_chunks_mut(in_dim)
                .zip(w.par_chunks(in_dim))
                .zip(scales.par_iter_mut())
                .for_each(|((q, w), s)| *s = quantize_row_levels(w, q, levels));
        }
        Ok(Self::pack(&q, &scales, out_dim, in_dim))
    }

    /// Packs an already quantized weight: `q [out_dim, in_dim]` in `[-127, 127]` and one scale per
    /// output row (the weight is `q[j, k] · scales[j]`), e.g. an 8-bit checkpoint. `-128` is refused
    /// (the AVX2 kernel negates weights), as are negative or non-finite scales.
    pub fn from_quantized(
        q: &[i8],
        scales: &[f32],
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Self, TensorError> {
        const OP: &str = "PackedI8::from_quantized";
        check_len(OP, "q", q.len(), out_dim * in_dim)?;
        check_len(OP, "scales", scales.len(), out_dim)?;
        check_in_dim(OP, in_dim)?;
        if let Some(i) = q.iter().position(|&v| v == i8::MIN) {
            return Err(arg_err(
                OP,
                "q",
                format!("q[{i}] is -128: symmetric int8 weights lie in [-127, 127]"),
            ));
        }
        if let Some(j) = scales.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(arg_err(
                OP,
                "scales",
                format!("scales[{j}] = {}: a scale is finite and not negative", scales[j]),
            ));
        }
        Ok(Self::pack(q, scales, out_dim, in_dim))
    }

    /// Lays `q` out in panels (the caller checked the lengths and values).
    fn pack(q: &[i8], scales: &[f32], out_dim: usize, in_dim: usize) -> Self {
        let groups = in_dim.div_ceil(GROUP).max(1);
        let panels = out_dim.div_ceil(2 * PANEL) * 2;
        let mut data = vec![0i8; panels * groups * GROUP_BYTES];
        let mut col_sums = vec![0i32; panels * PANEL];
        data.par_chunks_mut(groups * GROUP_BYTES)
            .zip(col_sums.par_chunks_mut(PANEL))
            .enumerate()
            .for_each(|(pi, (panel, sums))| {
                for jj in 0..PANEL.min(out_dim.saturating_sub(pi * PANEL)) {
                    let row = &q[(pi * PANEL + jj) * in_dim..][..in_dim];
                    sums[jj] = row.iter().map(|&v| i32::from(v)).sum();
                    for (kk, &v) in row.iter().enumerate() {
                        panel[(kk / GROUP) * GROUP_BYTES + jj * GROUP + kk % GROUP] = v;
                    }
                }
            });
        let mut padded = vec![0.0f32; panels * PANEL];
        padded[..out_dim].copy_from_slice(scales);
        let max_q = q.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        Self {
            out_dim,
            in_dim,
            groups,
            panels,
            data,
            scales: padded,
            col_sums,
            max_q,
        }
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Per output column: the weight is `q · scale`.
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.out_dim]
    }

    /// Per output column: `Σ_k q[j, k]` (the VNNI kernels' offset correction).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums[..self.out_dim]
    }

    /// `q[col, k]` as stored.
    pub fn get(&self, col: usize, k: usize) -> i8 {
        assert!(
            col < self.out_dim && k < self.in_dim,
            "PackedI8::get out of range"
        );
        self.data[((col / PANEL) * self.groups + k / GROUP) * GROUP_BYTES + (col % PANEL) * GROUP + k % GROUP]
    }

    /// The weight the int8 products multiply by, `q · scale` as `[out_dim, in_dim]` f32 (row-major,
    /// PyTorch's layout), written into `out` (resized): for an f32 product with the same weight, such
    /// as a backward's input gradient `dy · W` through a frozen 8-bit base.
    pub fn dequantize_into<'a>(&self, out: &'a mut Vec<f32>) -> &'a [f32] {
        let (n, k) = (self.out_dim, self.in_dim);
        out.clear();
        out.resize(n * k, 0.0);
        for p in 0..self.panels {
            for g in 0..self.groups {
                let block = &self.data[(p * self.groups + g) * GROUP_BYTES..][..GROUP_BYTES];
                for (c, quad) in block.chunks_exact(GROUP).enumerate() {
                    let col = p * PANEL + c;
                    if col >= n {
                        break;
                    }
                    let s = self.scales[col];
                    for (t, &q) in quad.iter().enumerate().take(k.saturating_sub(g * GROUP)) {
                        out[col * k + g * GROUP + t] = f32::from(q) * s;
                    }
                }
            }
        }
        out
    }

    /// Bytes held (packed weight with its padding, scales, column sums).
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.scales.len() * 4 + self.col_sums.len() * 4
    }
}

fn check_in_dim(op: &'static str, in_dim: usize) -> Result<(), TensorError> {
    if in_dim > MAX_IN_DIM {
        return Err(arg_err(
            op,
            "in_dim",
            format!("{in_dim} > {MAX_IN_DIM}: the i32 sums of 255 · 127 products would overflow"),
        ));
    }
    Ok(())
}

/// Which implementation the int8 products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX512-VNNI (`vpdpbusd` on zmm: 64 u8 × i8 products per instruction; Ice Lake, Zen 4 and
    /// later).
    Avx512Vnni,
    /// AVX-VNNI (the 256-bit VEX `vpdpbusd`: Alder Lake, Sapphire Rapids, Zen 5).
    AvxVnni,
    /// AVX2 (`vpsignb` + `vpmaddubsw` + `vpmaddwd`: every x86-64 CPU since Haswell / Zen 1).
    Avx2,
    /// Plain Rust, any CPU: the same integer sums, i8 × i8 in i32.
    Portable,
}

impl Int8Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Int8Kernel; 4] = [
        Int8Kernel::Avx512Vnni,
        Int8Kernel::AvxVnni,
        Int8Kernel::Avx2,
        Int8Kernel::Portable,
    ];

    /// `avx512-vnni`, `avx-vnni`, `avx2`, `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::AvxVnni => "avx-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Portable => "portable",
        }
    }

    /// The kernel [`Int8Kernel::name`] gives, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// The CPU features this kernel needs (for skip messages).
    pub fn needs(self) -> &'static str {
        match self {
            Int8Kernel::Avx512Vnni => "AVX512F + AVX512BW + AVX512-VNNI",
            Int8Kernel::AvxVnni => "AVX2 + AVX-VNNI",
            Int8Kernel::Avx2 => "AVX2",
            Int8Kernel::Portable => "nothing",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        self.flavor().available()
    }

    pub(super) fn flavor(self) -> Flavor {
        match self {
            Int8Kernel::Avx512Vnni => Flavor::Avx512Vnni,
            Int8Kernel::AvxVnni => Flavor::AvxVnni,
            Int8Kernel::Avx2 => Flavor::Avx2,
            Int8Kernel::Portable => Flavor::Portable,
        }
    }
}

/// The code a product runs: one per [`Int8Kernel`], and (tests only) the AVX-VNNI kernel's code with
/// the EVEX encoding of the same 256-bit `vpdpbusd` (AVX512-VNNI + AVX512VL), so that a CPU with
/// AVX512-VNNI but no AVX-VNNI (AMD Zen 4) still runs that kernel's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Avx512Vnni,
    AvxVnni,
    #[cfg(test)]
    AvxVnniEvex,
    Avx2,
    /// The AVX2 kernel on weights within ±63: `vpmaddubsw(u, qW)` directly (chosen per product).
    Avx2Unsigned,
    Portable,
}

impl Flavor {
    pub(super) fn available(self) -> bool {
        match self {
            Flavor::Avx512Vnni => int8_simd::avx512_vnni_available(),
            Flavor::AvxVnni => int8_simd::avx_vnni_available(),
            #[cfg(test)]
            Flavor::AvxVnniEvex => int8_simd::avx512_vnni_available() && int8_simd::avx512_vl_available(),
            Flavor::Avx2 | Flavor::Avx2Unsigned => int8_simd::avx2_available(),
            Flavor::Portable => true,
        }
    }

    /// Whether the input rows are stored as `u` (u8, for `vpdpbusd`) rather than `u − 128` (i8).
    pub(super) fn unsigned_inputs(self) -> bool {
        match self {
            Flavor::Avx512Vnni | Flavor::AvxVnni | Flavor::Avx2Unsigned => true,
            #[cfg(test)]
            Flavor::AvxVnniEvex => true,
            Flavor::Avx2 | Flavor::Portable => false,
        }
    }

    /// Columns per micro-block (the AVX-512 kernel takes two panels at a time).
    fn step(self) -> usize {
        match self {
            Flavor::Avx512Vnni => 2 * PANEL,
            _ => PANEL,
        }
    }

    /// Rows per micro-block (accumulators held in registers: 12 × 2 zmm, 6 × 2 ymm, 4 × 2 ymm with
    /// AVX2's temporaries).
    fn mr(self) -> usize {
        match self {
            Flavor::Avx512Vnni => 12,
            Flavor::AvxVnni => 6,
            #[cfg(test)]
            Flavor::AvxVnniEvex => 6,
            Flavor::Avx2 | Flavor::Avx2Unsigned | Flavor::Portable => 4,
        }
    }
}

/// The kernel int8 products run on this CPU: the first of [`Int8Kernel::ALL`] it has.
/// `ANGLE_INT8_KERNEL=avx512-vnni|avx-vnni|avx2|portable` picks one the CPU has instead (to compare
/// kernels end to end); a name it does not know or a kernel this CPU lacks is reported once on stderr
/// and the automatic choice stands (programs can refuse it up front with [`requested_int8_kernel`]).
pub fn int8_kernel() -> Int8Kernel {
    use std::sync::OnceLock;
    static K: OnceLock<Int8Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        let auto = automatic_kernel();
        match kernel_override(std::env::var("ANGLE_INT8_KERNEL").ok().as_deref()) {
            Ok(Some(k)) => k,
            Ok(None) => auto,
            Err(why) => {
                eprintln!("warning: ANGLE_INT8_KERNEL: {why}; using {}", auto.name());
                auto
            }
        }
    })
}

fn automatic_kernel() -> Int8Kernel {
    Int8Kernel::ALL
        .into_iter()
        .find(|k| k.available())
        .unwrap_or(Int8Kernel::Portable)
}

/// The kernel `ANGLE_INT8_KERNEL` asks for (`None` when unset or empty); `Err` names what is wrong
/// with it: an unknown name, or a kernel this CPU lacks and the features it needs.
pub fn requested_int8_kernel() -> Result<Option<Int8Kernel>, String> {
    kernel_override(std::env::var("ANGLE_INT8_KERNEL").ok().as_deref())
        .map_err(|why| format!("ANGLE_INT8_KERNEL: {why}"))
}

fn kernel_override(value: Option<&str>) -> Result<Option<Int8Kernel>, String> {
    let Some(name) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let names = Int8Kernel::ALL.map(|k| k.name()).join(", ");
    let k = Int8Kernel::from_name(name).ok_or_else(|| format!("unknown kernel `{name}` (one of {names})"))?;
    if k.available() {
        Ok(Some(k))
    } else {
        Err(format!(
            "the {} kernel needs {}, which this CPU lacks",
            k.name(),
            k.needs()
        ))
    }
}

/// The kernels this CPU has, and those it lacks (tests run the first, name the second).
pub fn int8_kernels_present() -> (Vec<Int8Kernel>, Vec<Int8Kernel>) {
    Int8Kernel::ALL.into_iter().partition(|k| k.available())
}

/// Checks `kernel` against i64 sums of the same quantized values on a ragged shape (rows, columns
/// and features that fill no block, more rows than a cache block), with a bias and with the fused
/// GELU: every output must have the bits of the reference epilogue applied to the exact sum (and
/// the fused GELU those of the product followed by `gelu_forward`). `Err` names the kernel and the
/// first element that differs. A few milliseconds.
pub fn int8_self_check(kernel: Int8Kernel) -> Result<(), String> {
    self_check_flavor(kernel.flavor(), kernel.name())
}

fn self_check_flavor(flavor: Flavor, name: &str) -> Result<(), String> {
    let (rows, k, n) = (61, 97, 45);
    let val = |len: usize, s: u64| -> Vec<f32> {
        (0..len)
            .map(|i| (crate::rng::uniform(s, i as u64) * 2.0 - 1.0) as f32)
            .collect()
    };
    let (x, w, bias) = (val(rows * k, 21), val(n * k, 22), val(n, 23));
    let fail = |what: &str, e: TensorError| format!("{name} kernel, {what}: {e}");
    let packed = PackedI8::quantize(&w, n, k).map_err(|e| fail("quantize", e))?;
    let want = reference_i8(&x, &packed, Some(&bias), rows);
    let mut out = vec![f32::NAN; rows * n];
    product(flavor, &mut out, &x, &packed, Some(&bias), rows, None).map_err(|e| fail("forward", e))?;
    if let Some(i) = (0..rows * n).find(|&i| out[i].to_bits() != want[i].to_bits()) {
        return Err(format!(
            "{name} kernel: element {i} is {} where the i64 reference gives {}",
            out[i], want[i]
        ));
    }
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        let (mut fused, mut want_g) = (vec![f32::NAN; rows * n], vec![0.0f32; rows * n]);
        product(flavor, &mut fused, &x, &packed, Some(&bias), rows, Some(kind))
            .map_err(|e| fail("fused GELU", e))?;
        super::gelu::gelu_forward(&mut want_g, &want, rows * n, kind).map_err(|e| fail("GELU", e))?;
        if let Some(i) = (0..rows * n).find(|&i| fused[i].to_bits() != want_g[i].to_bits()) {
            return Err(format!(
                "{name} kernel, fused {kind:?} GELU: element {i} is {} where the product then gelu_forward gives {}",
                fused[i], want_g[i]
            ));
        }
    }
    Ok(())
}

/// The epilogue every kernel computes, in this order: `f32(acc) · (sx · sw) + b`.
#[inline(always)]
pub(super) fn dequantize(acc: i32, sx: f32, sw: f32, b: f32) -> f32 {
    (acc as f32) * (sx * sw) + b
}

/// The reference the tests and [`int8_self_check`] compare against: inputs quantized with
/// [`quantize_row_u8`], i64 sums of `(u − zx) · qW`, then [`dequantize`].
pub(super) fn reference_i8(inp: &[f32], w: &PackedI8, bias: Option<&[f32]>, rows: usize) -> Vec<f32> {
    let (n, k) = (w.out_dim, w.in_dim);
    let mut out = vec![0.0f32; rows * n];
    let mut q = vec![0u8; k];
    for i in 0..rows {
        let (sx, zx) = quantize_row_u8(&inp[i * k..(i + 1) * k], &mut q);
        for j in 0..n {
            let s: i64 = (0..k)
                .map(|p| (i64::from(q[p]) - i64::from(zx)) * i64::from(w.get(j, p)))
                .sum();
            let acc = i32::try_from(s).expect("an i32 sum");
            out[i * n + j] = dequantize(acc, sx, w.scales[j], bias.map_or(0.0, |b| b[j]));
        }
    }
    out
}

/// `out[rows, out_dim] = int8(inp) · int8(W)ᵀ · scales + bias`: each input row quantized per call
/// (symmetric absmax), i32 sums, the f32 epilogue of the module documentation.
pub fn linear_forward_i8(
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedI8,
    bias: Option<&[f32]>,
    rows: usize,
) -> Result<(), TensorError> {
    linear_forward_i8_with(int8_kernel(), out, inp, weight, bias, rows)
}

/// As [`linear_forward_i8`] with a chosen kernel (tests and benches compare them; a kernel the CPU
/// lacks is an error).
pub fn linear_forward_i8_with(
    kernel: Int8Kernel,
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedI8,
    bias: Option<&[f32]>,
    rows: usize,
) -> Result<(), TensorError> {
    product(kernel.flavor(), out, inp, weight, bias, rows, None)
}

/// `out = gelu(int8 product + bias)`: an eval-mode FFN's first product and its activation in one
/// pass (GELU on each block of `out` while it is in cache). Same bits as [`linear_forward_i8`] then
/// [`gelu_forward`](crate::cpu::gelu_forward).
pub fn linear_forward_i8_gelu(
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedI8,
    bias: Option<&[f32]>,
    rows: usize,
    kind: GeluKind,
) -> Result<(), TensorError> {
    linear_forward_i8_gelu_with(int8_kernel(), out, inp, weight, bias, rows, kind)
}

/// As [`linear_forward_i8_gelu`] with a chosen kernel.
pub fn linear_forward_i8_gelu_with(
    kernel: Int8Kernel,
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedI8,
    bias: Option<&[f32]>,
    rows: usize,
    kind: GeluKind,
) -> Result<(), TensorError> {
    product(kernel.flavor(), out, inp, weight, bias, rows, Some(kind))
}

/// One micro-block of a product: `mr` quantized input rows × `cols ≤ step` output columns from
/// column `j0` (the pointers are already offset to `j0`). Every kernel reads these fields.
pub(super) struct Block {
    /// `mr` rows of quantized inputs (u8 `u` for the VNNI kernels, else i8 `u − 128`), `lda` apart,
    /// each `groups · 4` bytes.
    pub a: *const u8,
    pub lda: usize,
    pub mr: usize,
    /// `mr` row scales.
    pub sx: *const f32,
    /// `mr` row corrections: every sum starts from `corr[i] · Σ_k qW[j, k]` (`−zx`, or `128 − zx` for
    /// inputs stored as `u − 128`).
    pub corr: *const i32,
    /// The first panel (the AVX-512 kernel reads the next one too, `groups · 64` bytes on).
    pub b: *const i8,
    pub groups: usize,
    /// Column sums, scales and bias (zeros when there is none), padded: `step` values from `j0`.
    pub col_sums: *const i32,
    pub sw: *const f32,
    pub bias: *const f32,
    /// `mr` rows of `cols` outputs, `ldc` apart.
    pub c: *mut f32,
    pub ldc: usize,
    pub cols: usize,
}

#[derive(Default)]
struct Scratch {
    /// Quantized input rows, `rows × groups·4` bytes, zero-padded.
    q: Vec<u8>,
    /// Row scales.
    sx: Vec<f32>,
    /// Row corrections ([`Block::corr`]).
    corr: Vec<i32>,
    /// The bias padded to the packed columns (zeros without one).
    bias: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The output, shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint parts (rows × column ranges) of one live `&mut [f32]`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Checks, quantizes the input rows, and runs the micro-blocks of `flavor` over rayon tasks.
fn product(
    flavor: Flavor,
    out: &mut [f32],
    inp: &[f32],
    w: &PackedI8,
    bias: Option<&[f32]>,
    rows: usize,
    gelu: Option<GeluKind>,
) -> Result<(), TensorError> {
    const OP: &str = "linear_forward_i8";
    let (n, k) = (w.out_dim, w.in_dim);
    check_len(OP, "out", out.len(), rows * n)?;
    check_len(OP, "inp", inp.len(), rows * k)?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), n)?;
    }
    if !flavor.available() {
        return Err(arg_err(
            OP,
            "kernel",
            format!("this CPU lacks the features of the {flavor:?} kernel"),
        ));
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let kp = w.groups * GROUP;
    // AVX2 with 7-bit weights takes the unsigned inputs as they are (no sign moved per row)
    let flavor = match flavor {
        Flavor::Avx2 if w.max_q <= 63 => Flavor::Avx2Unsigned,
        f => f,
    };
    // Taken out while rayon runs (a task stolen onto this thread may call us again: it then finds an
    // empty buffer instead of a held borrow), put back after.
    let mut s = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if s.q.len() < rows * kp {
        s.q.resize(rows * kp, 0);
    }
    if s.sx.len() < rows {
        s.sx.resize(rows, 0.0);
        s.corr.resize(rows, 0);
    }
    s.bias.clear();
    s.bias.resize(w.panels * PANEL, 0.0);
    if let Some(b) = bias {
        s.bias[..n].copy_from_slice(b);
    }
    quantize_rows(
        inp,
        rows,
        k,
        kp,
        flavor.unsigned_inputs(),
        &mut s.q[..rows * kp],
        &mut s.sx[..rows],
        &mut s.corr[..rows],
    );

    let (step, mr) = (flavor.step(), flavor.mr());
    let n_steps = n.div_ceil(step);
    let threads = rayon::current_num_threads().max(1);
    let row_blocks = rows.div_ceil(MC);
    // Whole cache blocks of rows per task, one task per thread; with fewer row blocks than threads
    // (a handful of rows), the columns are split as well.
    let (rows_per, col_chunks) = if row_blocks >= threads {
        (row_blocks.div_ceil(threads) * MC, 1)
    } else {
        (MC, threads.div_ceil(row_blocks).min(n_steps))
    };
    let steps_per = n_steps.div_ceil(col_chunks);
    let col_chunks = n_steps.div_ceil(steps_per);
    let row_chunks = rows.div_ceil(rows_per);
    let dst = OutPtr(out.as_mut_ptr());
    let (q, sx, corr, padded_bias) = (&s.q[..rows * kp], &s.sx[..rows], &s.corr[..rows], &s.bias[..]);
    (0..row_chunks * col_chunks).into_par_iter().for_each(|t| {
        let (rc, cc) = (t / col_chunks, t % col_chunks);
        let (r0, r1) = (rc * rows_per, ((rc + 1) * rows_per).min(rows));
        let (s0, s1) = (cc * steps_per, ((cc + 1) * steps_per).min(n_steps));
        for i0 in (r0..r1).step_by(MC) {
            let mc = MC.min(r1 - i0);
            for st in s0..s1 {
                let j0 = st * step;
                let cols = step.min(n - j0);
                let mut i = i0;
                while i < i0 + mc {
                    let m = mr.min(i0 + mc - i);
                    let blk = Block {
                        a: q[i * kp..].as_ptr(),
                        lda: kp,
                        mr: m,
                        sx: sx[i..].as_ptr(),
                        corr: corr[i..].as_ptr(),
                        b: w.data[(j0 / PANEL) * w.groups * GROUP_BYTES..].as_ptr(),
                        groups: w.groups,
                        col_sums: w.col_sums[j0..].as_ptr(),
                        sw: w.scales[j0..].as_ptr(),
                        bias: padded_bias[j0..].as_ptr(),
                        // SAFETY: (i, j0) is inside `out` (rows × n).
                        c: unsafe { dst.ptr().add(i * n + j0) },
                        ldc: n,
                        cols,
                    };
                    // SAFETY: the CPU has the flavor's features (checked above); the block's pointers
                    // address `m` rows of `kp` quantized bytes, whole panels (padded to `step` columns)
                    // and `m × cols` outputs of this task's rectangle, which no other task writes.
                    unsafe { run_block(flavor, &blk) };
                    i += m;
                }
            }
            if let Some(kind) = gelu {
                let (c0, c1) = (s0 * step, (s1 * step).min(n));
                for r in i0..i0 + mc {
                    // SAFETY: this task's rectangle (rows i0.., columns c0..c1), written above.
                    let seg = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(r * n + c0), c1 - c0) };
                    gelu_in_place(seg, kind);
                }
            }
        }
    });
    SCRATCH.with(|b| *b.borrow_mut() = s);
    Ok(())
}

/// Quantizes `rows` input rows (`k` wide) into `q` (`kp` bytes a row; the padded weights are zero, so
/// the padding's value does not matter), as u8 `u` (`unsigned`) or as i8 `u − 128`, with each row's
/// scale and sum correction ([`Block::corr`]).
#[allow(clippy::too_many_arguments)]
fn quantize_rows(
    inp: &[f32],
    rows: usize,
    k: usize,
    kp: usize,
    unsigned: bool,
    q: &mut [u8],
    sx: &mut [f32],
    corr: &mut [i32],
) {
    const ROWS: usize = 16;
    let (flip, base) = if unsigned { (0, 0) } else { (0x80, 128) };
    debug_assert!(q.len() == rows * kp && sx.len() == rows && corr.len() == rows);
    if k == 0 {
        q.fill(flip);
        sx.fill(0.0);
        corr.fill(0);
        return;
    }
    q.par_chunks_mut(ROWS * kp)
        .zip(sx.par_chunks_mut(ROWS))
        .zip(corr.par_chunks_mut(ROWS))
        .zip(inp.par_chunks(ROWS * k))
        .for_each(|(((q, sx), corr), x)| {
            for (r, (qrow, (s, c))) in q.chunks_exact_mut(kp).zip(sx.iter_mut().zip(corr)).enumerate() {
                let (scale, zx) = quantize_u8_into(&x[r * k..(r + 1) * k], &mut qrow[..k], flip);
                (*s, *c) = (scale, base - zx);
                qrow[k..].fill(flip);
            }
        });
}

/// Runs one micro-block on `flavor`.
///
/// # Safety
/// The CPU has the flavor's features; `blk` is valid as [`Block`] describes.
unsafe fn run_block(flavor: Flavor, blk: &Block) {
    match flavor {
        Flavor::Portable => portable_block(blk),
        // SAFETY: the caller's contract.
        _ => unsafe { int8_simd::block(flavor, blk) },
    }
}

/// The portable micro-block: i8 × i8 products (`u − 128` by `qW`) in i32 over each group, 16 columns
/// of a panel, from `(128 − zx) · Σ qW`.
fn portable_block(blk: &Block) {
    let kp = blk.groups * GROUP;
    // SAFETY: `Block`'s contract: one panel of `groups · 64` bytes, 16 padded column values.
    let (panel, sw, bias, col_sums) = unsafe {
        (
            std::slice::from_raw_parts(blk.b, blk.groups * GROUP_BYTES),
            std::slice::from_raw_parts(blk.sw, PANEL),
            std::slice::from_raw_parts(blk.bias, PANEL),
            std::slice::from_raw_parts(blk.col_sums, PANEL),
        )
    };
    for i in 0..blk.mr {
        // SAFETY: row `i < mr` of `kp` bytes, its scale and correction, and `cols` outputs of row `i`.
        let (a, sx, corr, c) = unsafe {
            (
                std::slice::from_raw_parts(blk.a.add(i * blk.lda) as *const i8, kp),
                *blk.sx.add(i),
                *blk.corr.add(i),
                std::slice::from_raw_parts_mut(blk.c.add(i * blk.ldc), blk.cols),
            )
        };
        // wrapping, as the vector kernels' lanes: only the final sum is known to fit
        let mut acc: [i32; PANEL] = std::array::from_fn(|j| corr.wrapping_mul(col_sums[j]));
        for (ag, wg) in a.chunks_exact(GROUP).zip(panel.chunks_exact(GROUP_BYTES)) {
            for (acc, wj) in acc.iter_mut().zip(wg.chunks_exact(GROUP)) {
                let dot: i32 = ag
                    .iter()
                    .zip(wj)
                    .map(|(&x, &w)| i32::from(x) * i32::from(w))
                    .sum();
                *acc = acc.wrapping_add(dot);
            }
        }
        for (j, o) in c.iter_mut().enumerate() {
            *o = dequantize(acc[j], sx, sw[j], bias[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::TestRng;

    /// The code paths this CPU runs: every present kernel, plus the AVX-VNNI loop in its EVEX encoding
    /// where AVX512-VNNI is present.
    fn flavors() -> Vec<(Flavor, &'static str)> {
        let mut v: Vec<(Flavor, &'static str)> = int8_kernels_present()
            .0
            .into_iter()
            .map(|k| (k.flavor(), k.name()))
            .collect();
        if Flavor::AvxVnniEvex.available() {
            v.push((Flavor::AvxVnniEvex, "avx-vnni (EVEX encoding)"));
        }
        v
    }

    /// One line for CI's log: which int8 kernels this binary's tests checked, and which they skipped.
    #[test]
    fn kernel_coverage() {
        let (present, absent) = int8_kernels_present();
        let names = |ks: &[Int8Kernel]| ks.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
        let lacks: Vec<String> = absent
            .iter()
            .map(|k| format!("{} [{}]", k.name(), k.needs()))
            .collect();
        eprintln!(
            "angle-tensor int8 kernels checked: {}{}; skipped (CPU lacks): {}",
            names(&present),
            if Flavor::AvxVnniEvex.available() {
                " (and the avx-vnni loop, EVEX-encoded)"
            } else {
                ""
            },
            if lacks.is_empty() {
                "none".into()
            } else {
                lacks.join(", ")
            }
        );
        assert!(present.contains(&Int8Kernel::Portable));
        assert!(present.contains(&int8_kernel()));
        assert_eq!(present.len() + absent.len(), Int8Kernel::ALL.len());
    }

    fn f32s(rng: &mut TestRng, n: usize) -> Vec<f32> {
        rng.vec(n).iter().map(|&v| v as f32).collect()
    }

    /// Standard normal values (Box–Muller).
    fn gaussian(rng: &mut TestRng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u1, u2) = ((rng.next() + 1.0) / 2.0, (rng.next() + 1.0) / 2.0);
                ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    /// The exact (f64) value of the product of the quantized operands plus the bias, and the bound
    /// of the f32 epilogue: `4.01 · 2⁻²⁴ · (|acc · sx · sw| + |b|)` (four roundings of 2⁻²⁴).
    fn exact_with_bound(inp: &[f32], w: &PackedI8, bias: Option<&[f32]>, rows: usize) -> Vec<(f64, f64)> {
        let (n, k) = (w.out_dim, w.in_dim);
        let mut q = vec![0u8; k];
        let mut v = Vec::with_capacity(rows * n);
        for i in 0..rows {
            let (sx, zx) = quantize_row_u8(&inp[i * k..(i + 1) * k], &mut q);
            for j in 0..n {
                let s: i64 = (0..k)
                    .map(|p| (i64::from(q[p]) - i64::from(zx)) * i64::from(w.get(j, p)))
                    .sum();
                let prod = s as f64 * f64::from(sx) * f64::from(w.scales()[j]);
                let b = f64::from(bias.map_or(0.0, |b| b[j]));
                v.push((
                    prod + b,
                    4.01 * f64::from(f32::EPSILON) / 2.0 * (prod.abs() + b.abs()),
                ));
            }
        }
        v
    }

    /// Runs every code path on one shape: the bits of [`reference_i8`], which is itself within the
    /// stated bound of the exact value.
    fn check_shape(rng: &mut TestRng, rows: usize, k: usize, n: usize, with_bias: bool) {
        let (inp, w, b) = (f32s(rng, rows * k), f32s(rng, n * k), f32s(rng, n));
        for levels in [127, 63] {
            check_packed(&inp, &w, &b, rows, k, n, with_bias, levels);
        }
    }

    /// [`check_shape`] with the weight on `levels` (63: the AVX2 kernel's unsigned-input path).
    #[allow(clippy::too_many_arguments)]
    fn check_packed(
        inp: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        k: usize,
        n: usize,
        with_bias: bool,
        levels: u8,
    ) {
        let bias = with_bias.then_some(b);
        let packed = PackedI8::quantize_levels(w, n, k, levels).unwrap();
        assert!(packed.max_q <= levels);
        let want = reference_i8(inp, &packed, bias, rows);
        for (i, ((e, bound), &got)) in exact_with_bound(inp, &packed, bias, rows)
            .into_iter()
            .zip(&want)
            .enumerate()
        {
            assert!(
                (f64::from(got) - e).abs() <= bound,
                "{rows}x{k}x{n} element {i}: {got} vs exact {e} (bound {bound:e})"
            );
        }
        for (flavor, name) in flavors() {
            let mut out = vec![f32::NAN; rows * n];
            product(flavor, &mut out, inp, &packed, bias, rows, None).unwrap();
            if let Some(i) = (0..rows * n).find(|&i| out[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{name} {rows}x{k}x{n} bias {with_bias} levels {levels}: element {i} is {} where the i64 reference gives {}",
                    out[i], want[i]
                );
            }
        }
    }

    /// Every kernel gives the bits of the i64 reference on shapes with ragged edges: `in_dim` not a
    /// multiple of 4 or 64, `out_dim` not a multiple of 16 or 32, rows not a multiple of any block
    /// and more than one cache block, with and without a bias.
    #[test]
    fn kernels_equal_the_integer_reference() {
        let mut rng = TestRng::new(31);
        for (rows, k, n) in [
            (1, 1, 1),
            (1, 3, 17),
            (2, 5, 33),
            (5, 40, 17),
            (7, 64, 16),
            (13, 65, 31),
            (33, 100, 48),
            (61, 97, 45),
            (97, 384, 70),
            (150, 130, 96),
            (3, 1536, 40),
        ] {
            for with_bias in [false, true] {
                check_shape(&mut rng, rows, k, n, with_bias);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Random shapes, the same exact comparison.
        #[test]
        fn kernels_equal_the_integer_reference_on_random_shapes(
            rows in 1usize..80,
            k in 1usize..200,
            n in 1usize..70,
            with_bias: bool,
            seed in 0u64..1000,
        ) {
            check_shape(&mut TestRng::new(seed), rows, k, n, with_bias);
        }
    }

    /// Extreme quantized values: every weight at ±127 and every input at an end of its row's range
    /// (u = 0 or 255), in mixed rows and in one-sided rows (all positive: u − zx = 255; all negative:
    /// u − zx = −255, AVX2's |u − 128| = 128), so the sums and AVX2's pair sums (±32,512) are at their
    /// largest.
    #[test]
    fn saturating_values_are_exact() {
        let (rows, k, n) = (13, 515, 35);
        let sign = |i: usize, s: usize| if (i * 7 + s).is_multiple_of(3) { -1.0 } else { 1.0 };
        let mut inp: Vec<f32> = (0..rows * k).map(|i| 2.5 * sign(i, 1)).collect();
        inp[..k].fill(2.5);
        inp[k..2 * k].fill(-2.5);
        let w: Vec<f32> = (0..n * k).map(|i| 0.75 * sign(i, 2)).collect();
        let packed = PackedI8::quantize_levels(&w, n, k, 127).unwrap();
        assert!((0..k).all(|p| packed.get(3, p).abs() == 127));
        let want = reference_i8(&inp, &packed, None, rows);
        // all the same sign as well: the largest sums
        let ones = vec![1.0f32; rows * k];
        let want_ones = reference_i8(
            &ones,
            &PackedI8::quantize(&vec![-1.0; n * k], n, k).unwrap(),
            None,
            rows,
        );
        assert!(
            want_ones.iter().all(|&v| (v + k as f32).abs() < 1e-4 * k as f32),
            "{want_ones:?}"
        );
        // 7-bit weights at ±63 with inputs at u = 255: the AVX2 kernel's unsigned path at its largest
        let packed63 = PackedI8::quantize_levels(&w, n, k, 63).unwrap();
        assert_eq!(packed63.max_q, 63);
        let want63 = reference_i8(&inp, &packed63, None, rows);
        for (flavor, name) in flavors() {
            let mut out = vec![f32::NAN; rows * n];
            product(flavor, &mut out, &inp, &packed, None, rows, None).unwrap();
            assert_eq!(out, want, "{name}");
            product(flavor, &mut out, &inp, &packed63, None, rows, None).unwrap();
            assert_eq!(out, want63, "{name}, weights within ±63");
            let neg = PackedI8::quantize(&vec![-1.0; n * k], n, k).unwrap();
            product(flavor, &mut out, &ones, &neg, None, rows, None).unwrap();
            assert_eq!(out, want_ones, "{name}");
        }
    }

    /// Zero rows leave the output alone; an all-zero input row (scale 0) gives exactly the bias, and
    /// an all-zero weight row gives its bias too: no NaN anywhere.
    #[test]
    fn zero_rows_and_zero_scales() {
        let (k, n) = (37, 20);
        let mut rng = TestRng::new(32);
        let mut w = f32s(&mut rng, n * k);
        w[5 * k..6 * k].fill(0.0);
        let bias = f32s(&mut rng, n);
        let packed = PackedI8::quantize(&w, n, k).unwrap();
        assert_eq!(packed.scales()[5], 0.0);
        let mut inp = f32s(&mut rng, 3 * k);
        inp[k..2 * k].fill(0.0);
        // a subnormal row is a zero row
        inp[2 * k] = 1e-40;
        inp[2 * k + 1..3 * k].fill(0.0);
        for (flavor, name) in flavors() {
            let mut empty: Vec<f32> = Vec::new();
            product(flavor, &mut empty, &[], &packed, Some(&bias), 0, None).unwrap();
            for b in [None, Some(&bias[..])] {
                let mut out = vec![f32::NAN; 3 * n];
                product(flavor, &mut out, &inp, &packed, b, 3, None).unwrap();
                assert!(out.iter().all(|v| v.is_finite()), "{name}: {out:?}");
                let bias_or_zero = |j: usize| b.map_or(0.0, |b| b[j]);
                for j in 0..n {
                    assert_eq!(out[n + j], bias_or_zero(j), "{name} zero row, column {j}");
                    assert_eq!(
                        out[2 * n + j],
                        bias_or_zero(j),
                        "{name} subnormal row, column {j}"
                    );
                }
                assert_eq!(out[5], bias_or_zero(5), "{name} zero weight row");
            }
        }
    }

    /// `quantize_row_i8`: the scale, the range, ties to even, the round trip within half a step.
    #[test]
    fn quantize_row_rounds_to_nearest() {
        let mut q = [0i8; 6];
        // absmax 127: the multiplier is exactly 1, so the halves are ties (to even)
        let s = quantize_row_i8(&[-127.0, 63.5, 0.5, 1.5, -2.5, 0.0], &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [-127, 64, 0, 2, -2, 0]);
        let mut rng = TestRng::new(33);
        let x = gaussian(&mut rng, 1000);
        let mut q = vec![0i8; 1000];
        let s = quantize_row_i8(&x, &mut q);
        assert_eq!(s, x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
        assert!(q.iter().any(|&v| v.abs() == 127) && q.iter().all(|&v| v != -128));
        for (&v, &qv) in x.iter().zip(&q) {
            assert!((f64::from(v) - f64::from(qv) * f64::from(s)).abs() <= 0.5001 * f64::from(s));
        }
        let mut z = [1i8; 3];
        assert_eq!(quantize_row_i8(&[0.0, -0.0, 0.0], &mut z), 0.0);
        assert_eq!(z, [0; 3]);
    }

    /// `quantize_row_u8`: the range with zero in it, the zero point, ties to even, the round trip within
    /// half a step (one step at the clamped ends), and the degenerate rows.
    #[test]
    fn quantize_row_u8_covers_the_range() {
        let mut q = [0u8; 7];
        // range [0, 255]: the multiplier is exactly 1, zero point 0, the halves are ties (to even)
        let (s, zx) = quantize_row_u8(&[255.0, 0.5, 1.5, 2.5, 0.0, 3.49, 254.5], &mut q);
        assert_eq!((s, zx), (1.0, 0));
        assert_eq!(q, [255, 0, 2, 2, 0, 3, 254]);
        // one-sided negative row: hi = 0 is in the range, the zero point is 255
        let mut q = [0u8; 3];
        let (s, zx) = quantize_row_u8(&[-255.0, -1.0, -0.0], &mut q);
        assert_eq!((s, zx), (1.0, 255));
        assert_eq!(q, [0, 254, 255]);
        // mixed: [-1, 4] over 255 steps, zero point round(51) = 51
        let mut q = [0u8; 3];
        let (s, zx) = quantize_row_u8(&[-1.0, 0.0, 4.0], &mut q);
        assert_eq!(zx, 51);
        assert_eq!(s, 5.0 / 255.0);
        assert_eq!(q, [0, 51, 255]);
        let mut rng = TestRng::new(38);
        let mut x = gaussian(&mut rng, 1000);
        x.iter_mut().for_each(|v| *v += 0.7);
        let mut q = vec![0u8; 1000];
        let (s, zx) = quantize_row_u8(&x, &mut q);
        let (lo, hi) = x.iter().fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert_eq!(s, (hi - lo) / 255.0);
        assert!(q.contains(&0) && q.contains(&255));
        let err = |v: f32, u: u8| (f64::from(v) - f64::from(i32::from(u) - zx) * f64::from(s)).abs();
        assert!(
            x.iter()
                .zip(&q)
                .all(|(&v, &u)| err(v, u) <= 1.0001 * f64::from(s))
        );
        let within_half = x
            .iter()
            .zip(&q)
            .filter(|&(&v, &u)| err(v, u) <= 0.5001 * f64::from(s))
            .count();
        assert!(within_half >= 998, "{within_half}");
        let mut z = [7u8; 3];
        assert_eq!(quantize_row_u8(&[0.0, -0.0, 1e-40], &mut z), (0.0, 0));
        assert_eq!(z, [0; 3]);
        let (s, _) = quantize_row_u8(&[1.0, f32::NAN, 0.0], &mut z);
        assert!(s.is_nan(), "a NaN row is visible, not silently zero");
        let (s, _) = quantize_row_u8(&[1.0, f32::NEG_INFINITY, 0.0], &mut z);
        assert!(s.is_nan());
    }

    /// The packed layout: `get` gives the quantized weight, the column sums match, padding is zero,
    /// and `from_quantized` of the same values packs the same bytes.
    #[test]
    fn packing_and_from_quantized() {
        let (n, k) = (35, 23);
        let mut rng = TestRng::new(34);
        let w = f32s(&mut rng, n * k);
        let p = PackedI8::quantize_levels(&w, n, k, 127).unwrap();
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0.0; n];
        for j in 0..n {
            scales[j] = quantize_row_i8(&w[j * k..(j + 1) * k], &mut q[j * k..(j + 1) * k]);
        }
        for j in 0..n {
            for kk in 0..k {
                assert_eq!(p.get(j, kk), q[j * k + kk]);
            }
            assert_eq!(
                p.col_sums()[j],
                q[j * k..(j + 1) * k].iter().map(|&v| i32::from(v)).sum::<i32>()
            );
        }
        assert_eq!(p.scales(), &scales[..]);
        let mut deq = vec![1.0; 3];
        p.dequantize_into(&mut deq);
        for j in 0..n {
            for kk in 0..k {
                assert_eq!(
                    deq[j * k + kk],
                    f32::from(q[j * k + kk]) * scales[j],
                    "({j}, {kk})"
                );
            }
        }
        assert_eq!((p.panels, p.groups), (4, 6));
        assert_eq!(p.memory_bytes(), 4 * 6 * 64 + 2 * 4 * 64);
        let nonzero = p.data.iter().filter(|&&v| v != 0).count();
        assert_eq!(nonzero, q.iter().filter(|&&v| v != 0).count(), "padding is zero");
        let r = PackedI8::from_quantized(&q, &scales, n, k).unwrap();
        assert_eq!((r.data, r.scales, r.col_sums), (p.data, p.scales, p.col_sums));
        q[7] = -128;
        assert!(PackedI8::from_quantized(&q, &scales, n, k).is_err());
        q[7] = 0;
        scales[3] = f32::NAN;
        assert!(PackedI8::from_quantized(&q, &scales, n, k).is_err());
        assert!(PackedI8::quantize(&w[1..], n, k).is_err());
        assert!(PackedI8::quantize(&[], 0, MAX_IN_DIM + 1).is_err());
    }

    /// Against the f32 product of the unquantized values, Gaussian inputs and weights: relative
    /// Frobenius error at most 2e-2 (about 1e-2 is typical of 8-bit absmax quantization at this width).
    #[test]
    fn close_to_f32_linear() {
        let (rows, k, n) = (64, 384, 128);
        let mut rng = TestRng::new(35);
        let (inp, w, b) = (
            gaussian(&mut rng, rows * k),
            gaussian(&mut rng, n * k),
            gaussian(&mut rng, n),
        );
        let mut f32_out = vec![0.0f32; rows * n];
        crate::cpu::linear_forward(&mut f32_out, &inp, &w, Some(&b), rows, k, n).unwrap();
        let packed = PackedI8::quantize(&w, n, k).unwrap();
        let mut out = vec![0.0f32; rows * n];
        linear_forward_i8(&mut out, &inp, &packed, Some(&b), rows).unwrap();
        let (num, den) = out
            .iter()
            .zip(&f32_out)
            .fold((0.0f64, 0.0f64), |(n, d), (&o, &f)| {
                (n + f64::from(o - f).powi(2), d + f64::from(f).powi(2))
            });
        let e = (num / den).sqrt();
        assert!(e < 2e-2, "int8 vs f32 relative error {e}");
        assert!(e > 1e-4, "the product was not quantized? {e}");
    }

    /// The fused GELU gives the bits of the product followed by `gelu_forward`, on every code path.
    #[test]
    fn gelu_epilogue_equals_product_then_gelu() {
        let mut rng = TestRng::new(36);
        for (rows, k, n) in [(1, 3, 5), (61, 97, 45), (100, 40, 70), (13, 384, 1536)] {
            let (inp, w, bias) = (f32s(&mut rng, rows * k), f32s(&mut rng, n * k), f32s(&mut rng, n));
            let packed = PackedI8::quantize(&w, n, k).unwrap();
            for kind in [GeluKind::Erf, GeluKind::Tanh] {
                for (flavor, name) in flavors() {
                    let (mut fused, mut pre, mut want) =
                        (vec![f32::NAN; rows * n], vec![0.0; rows * n], vec![0.0; rows * n]);
                    product(flavor, &mut fused, &inp, &packed, Some(&bias), rows, Some(kind)).unwrap();
                    product(flavor, &mut pre, &inp, &packed, Some(&bias), rows, None).unwrap();
                    crate::cpu::gelu_forward(&mut want, &pre, rows * n, kind).unwrap();
                    assert_eq!(fused, want, "{name} {rows}x{k}x{n} {kind:?}");
                }
                let mut public = vec![f32::NAN; rows * n];
                linear_forward_i8_gelu(&mut public, &inp, &packed, Some(&bias), rows, kind).unwrap();
                let mut want = vec![0.0; rows * n];
                crate::cpu::gelu_forward(
                    &mut want,
                    &reference_i8(&inp, &packed, Some(&bias), rows),
                    rows * n,
                    kind,
                )
                .unwrap();
                assert_eq!(public, want);
            }
        }
    }

    /// The bits do not depend on the thread count, nor on how the work is split (rows only, or rows
    /// and columns for a few rows).
    #[test]
    fn thread_count_does_not_change_the_bits() {
        let mut rng = TestRng::new(37);
        for (rows, k, n) in [(1, 200, 300), (5, 64, 100), (130, 96, 70)] {
            let (inp, w, b) = (f32s(&mut rng, rows * k), f32s(&mut rng, n * k), f32s(&mut rng, n));
            let packed = PackedI8::quantize(&w, n, k).unwrap();
            let want = reference_i8(&inp, &packed, Some(&b), rows);
            for threads in [1, 2, 3, 7] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for (flavor, name) in flavors() {
                    let mut out = vec![f32::NAN; rows * n];
                    pool.install(|| product(flavor, &mut out, &inp, &packed, Some(&b), rows, None))
                        .unwrap();
                    assert_eq!(out, want, "{name} {rows}x{k}x{n}, {threads} threads");
                }
            }
        }
    }

    /// The weight levels follow the kernel: ±63 exactly where the AVX2 kernel runs the products.
    #[test]
    fn weight_levels_follow_the_kernel() {
        let want = if int8_kernel() == Int8Kernel::Avx2 {
            63
        } else {
            127
        };
        assert_eq!(weight_levels(), want);
        let p = PackedI8::quantize(&[0.5, -1.0, 0.25, 1.0], 2, 2).unwrap();
        assert_eq!(p.max_q, want);
        assert!(PackedI8::quantize_levels(&[1.0], 1, 1, 0).is_err());
        assert!(PackedI8::quantize_levels(&[1.0], 1, 1, 128).is_err());
    }

    #[test]
    fn self_check_passes_for_every_kernel_present() {
        let (present, absent) = int8_kernels_present();
        for kern in present {
            int8_self_check(kern).unwrap();
        }
        for kern in absent {
            let e = int8_self_check(kern).unwrap_err();
            assert!(e.contains(kern.name()) && e.contains("lacks"), "{e}");
        }
    }

    #[test]
    fn kernel_override_names_a_kernel_this_cpu_has() {
        assert_eq!(kernel_override(None), Ok(None));
        assert_eq!(kernel_override(Some(" ")), Ok(None));
        assert_eq!(kernel_override(Some("Portable")), Ok(Some(Int8Kernel::Portable)));
        let err = kernel_override(Some("vnni")).unwrap_err();
        assert!(
            err.contains("unknown kernel `vnni`") && err.contains("avx512-vnni"),
            "{err}"
        );
        for k in Int8Kernel::ALL {
            match kernel_override(Some(k.name())) {
                Ok(got) => assert_eq!(got, Some(k)),
                Err(e) => assert!(!k.available() && e.contains(k.needs()), "{e}"),
            }
        }
    }

    #[test]
    fn rejects_bad_lengths_and_absent_kernels() {
        let packed = PackedI8::quantize(&[0.5; 6], 2, 3).unwrap();
        let mut out = vec![0.0; 4];
        assert!(linear_forward_i8(&mut out, &[0.0; 5], &packed, None, 2).is_err());
        assert!(linear_forward_i8(&mut out, &[0.0; 6], &packed, Some(&[0.0]), 2).is_err());
        assert!(linear_forward_i8(&mut out[..3], &[0.0; 6], &packed, None, 2).is_err());
        for k in int8_kernels_present().1 {
            let e = linear_forward_i8_with(k, &mut out, &[0.0; 6], &packed, None, 2).unwrap_err();
            assert!(e.to_string().contains("lacks"), "{e}");
        }
    }
}
