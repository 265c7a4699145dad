//! The vector int8 micro-kernels beside the portable one (`int8.rs` quantizes, splits the work and
//! calls [`block`] for each micro-block of `mr` rows × one or two 16-column panels). All read the
//! packed weight of [`PackedI8`](super::int8::PackedI8): for each group of 4 input features, 64 bytes
//! holding 16 columns' 4 values, one 32-bit lane per column.
//!
//! - **AVX512-VNNI**: 12 rows × 32 columns of i32 sums in 24 zmm registers; per group of 4 features,
//!   two weight loads, one 32-bit broadcast of each row's 4 inputs (`u` as u8) and one `vpdpbusd` (64
//!   u8 × i8 products summed into 16 i32 lanes) per row and 16 columns. Sums start from
//!   `−zx · Σ_k qW[j, k]` to take the row's zero point away.
//! - **AVX-VNNI**: the same loop on ymm (6 rows × 16 columns), `vpdpbusd` in its VEX encoding
//!   (`_mm256_dpbusd_avx_epi32`). Tests also run this loop with the EVEX encoding of the same
//!   instruction (`_mm256_dpbusd_epi32`, AVX512-VNNI + AVX512VL), so CPUs with AVX512-VNNI but no
//!   AVX-VNNI (AMD Zen 4) check everything but the encoding.
//! - **AVX2**: the inputs as `v = u − 128` (`vpmaddubsw` saturates its i16 pair sums, and `255 · 127
//!   · 2` does not fit): `vpmaddubsw(|v|, qW · sign v)` (pair sums at most `2 · 128 · 127` = 32,512,
//!   exact), `vpmaddwd` by ones to i32, `vpaddd`; 4 rows × 16 columns; sums start from
//!   `(128 − zx) · Σ_k qW[j, k]`. On weights within ±63 (what [`weight_levels`](super::int8::weight_levels)
//!   quantizes to where this is the kernel) it takes `u` as it is instead, `vpmaddubsw(u, qW)` (pair sums at
//!   most `2 · 255 · 63` = 32,130), sums started from `−zx · Σ qW` as VNNI's: 7 instead of 10 instructions
//!   per row, group of 4 and 16 columns.
//!
//! Every kernel ends in the same epilogue, `f32(acc) · (sx · sW) + b` (`vcvtdq2ps`, two `vmulps`,
//! `vaddps`: no fused multiply-add), the bits of the portable kernel's.

use super::int8::{Block, Flavor};

pub(super) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX512F + AVX512BW (the quantizer's widest version).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn avx512bw_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub(super) fn avx512_vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512bw_available() && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
pub(super) fn avx512_vl_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub(super) fn avx_vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One micro-block on a vector flavor.
///
/// # Safety
/// The CPU has the flavor's features (never the portable one: `int8.rs` runs that itself); `blk` is
/// valid as [`Block`] describes, with `mr` at most the flavor's row block.
pub(super) unsafe fn block(flavor: Flavor, blk: &Block) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract.
    unsafe {
        x86::block(flavor, blk)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = blk;
        unreachable!("no vector int8 kernel off x86-64 ({flavor:?})")
    }
}

// The AVX-512 and AVX-VNNI intrinsics are stable since Rust 1.89, above the workspace MSRV (1.88), as
// for the bf16 kernels (`bf16_simd.rs`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::int8::{GROUP, GROUP_BYTES, PANEL};
    use super::*;

    /// Calls `$f::<MR>(blk)` for the block's row count.
    macro_rules! by_mr {
        ($f:ident, $blk:expr, $($m:literal)*) => {
            match $blk.mr {
                $($m => $f::<$m>($blk),)*
                m => unreachable!("{m} rows in an int8 micro-block"),
            }
        };
    }

    /// # Safety
    /// As [`super::block`].
    pub(super) unsafe fn block(flavor: Flavor, blk: &Block) {
        // SAFETY: the caller's contract (features present, pointers valid).
        unsafe {
            match flavor {
                Flavor::Avx512Vnni => by_mr!(vnni512, blk, 1 2 3 4 5 6 7 8 9 10 11 12),
                Flavor::AvxVnni => by_mr!(avx_vnni, blk, 1 2 3 4 5 6),
                #[cfg(test)]
                Flavor::AvxVnniEvex => by_mr!(avx_vnni_evex, blk, 1 2 3 4 5 6),
                Flavor::Avx2 => by_mr!(avx2, blk, 1 2 3 4),
                Flavor::Avx2Unsigned => by_mr!(avx2_unsigned, blk, 1 2 3 4),
                Flavor::Portable => unreachable!("the portable kernel has no vector block"),
            }
        }
    }

    /// The broadcast of row `i`'s 4 quantized inputs of group `p`, as one i32.
    ///
    /// # Safety
    /// Row `i < mr` and group `p < groups` of the block.
    #[inline(always)]
    unsafe fn group_of(blk: &Block, i: usize, p: usize) -> i32 {
        // SAFETY: the caller's contract; the read may be unaligned.
        unsafe { (blk.a.add(i * blk.lda + p * GROUP) as *const i32).read_unaligned() }
    }

    /// `MR` rows × 32 columns (two panels) on AVX512-VNNI.
    ///
    /// # Safety
    /// AVX512F, AVX512BW and AVX512-VNNI; `blk` as [`Block`] with `mr == MR`, two panels.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni512<const MR: usize>(blk: &Block) {
        // SAFETY: every pointer below stays inside what `Block` addresses: two panels of `groups`
        // group rows, 32 padded column values, `MR` rows of inputs, `MR` rows of `cols` outputs.
        unsafe {
            let b0 = blk.b;
            let b1 = blk.b.add(blk.groups * GROUP_BYTES);
            let sums = [
                _mm512_loadu_si512(blk.col_sums as *const __m512i),
                _mm512_loadu_si512(blk.col_sums.add(PANEL) as *const __m512i),
            ];
            let mut acc: [[__m512i; 2]; MR] = std::array::from_fn(|i| {
                let corr = _mm512_set1_epi32(*blk.corr.add(i));
                [
                    _mm512_mullo_epi32(corr, sums[0]),
                    _mm512_mullo_epi32(corr, sums[1]),
                ]
            });
            for p in 0..blk.groups {
                let w0 = _mm512_loadu_si512(b0.add(p * GROUP_BYTES) as *const __m512i);
                let w1 = _mm512_loadu_si512(b1.add(p * GROUP_BYTES) as *const __m512i);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(group_of(blk, i, p));
                    acc[0] = _mm512_dpbusd_epi32(acc[0], x, w0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], x, w1);
                }
            }
            let sw = [_mm512_loadu_ps(blk.sw), _mm512_loadu_ps(blk.sw.add(PANEL))];
            let bias = [_mm512_loadu_ps(blk.bias), _mm512_loadu_ps(blk.bias.add(PANEL))];
            let cols = blk.cols;
            let mask = |lo: usize| -> __mmask16 {
                match cols.saturating_sub(lo) {
                    0 => 0,
                    c if c >= PANEL => 0xffff,
                    c => (1u16 << c) - 1,
                }
            };
            let masks = [mask(0), mask(PANEL)];
            for (i, acc) in acc.iter().enumerate() {
                let sx = _mm512_set1_ps(*blk.sx.add(i));
                let c = blk.c.add(i * blk.ldc);
                for v in 0..2 {
                    if masks[v] == 0 {
                        continue;
                    }
                    let s = _mm512_mul_ps(sx, sw[v]);
                    let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[v]), s), bias[v]);
                    if masks[v] == 0xffff {
                        _mm512_storeu_ps(c.add(v * PANEL), y);
                    } else {
                        _mm512_mask_storeu_ps(c.add(v * PANEL), masks[v], y);
                    }
                }
            }
        }
    }

    /// AVX2's exact signed product of groups: `|x| · (w · sign x)` by `vpmaddubsw` (`|x| ≤ 128` read as
    /// unsigned, `|w| ≤ 127`: pair sums at most 2 · 128 · 127, no saturation), then the pairs summed into
    /// i32 by `vpmaddwd` with ones.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot_avx2(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// AVX2 on weights within ±63: `vpmaddubsw(u, w)` takes the unsigned inputs as they are (pair sums at
    /// most 2 · 255 · 63 = 32,130, no saturation), `vpmaddwd` with ones to i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot_avx2_unsigned(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(x, w);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// `vpdpbusd` in its VEX encoding (AVX-VNNI).
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    fn dot_avx_vnni(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, x, w)
    }

    /// The same instruction in its EVEX encoding (AVX512-VNNI + AVX512VL): tests only.
    #[cfg(test)]
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    fn dot_evex(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, x, w)
    }

    /// Declares a 256-bit micro-kernel: `MR` rows × one 16-column panel, `$dot` per group and 8
    /// columns, the sums started from each row's correction times `Σ qW`.
    macro_rules! block256 {
        ($(#[$meta:meta])* $name:ident, $features:literal, $dot:ident) => {
            $(#[$meta])*
            /// # Safety
            /// The CPU has the features named; `blk` as [`Block`] with `mr == MR`, one panel.
            #[target_feature(enable = $features)]
            unsafe fn $name<const MR: usize>(blk: &Block) {
                // SAFETY: every pointer below stays inside what `Block` addresses (one panel of
                // `groups` group rows, 16 padded column values, `MR` input rows, `MR` × `cols` outputs).
                unsafe {
                    let sums = [
                        _mm256_loadu_si256(blk.col_sums as *const __m256i),
                        _mm256_loadu_si256(blk.col_sums.add(8) as *const __m256i),
                    ];
                    let mut acc: [[__m256i; 2]; MR] = std::array::from_fn(|i| {
                        let corr = _mm256_set1_epi32(*blk.corr.add(i));
                        [_mm256_mullo_epi32(corr, sums[0]), _mm256_mullo_epi32(corr, sums[1])]
                    });
                    for p in 0..blk.groups {
                        let w = blk.b.add(p * GROUP_BYTES);
                        let w0 = _mm256_loadu_si256(w as *const __m256i);
                        let w1 = _mm256_loadu_si256(w.add(32) as *const __m256i);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let x = _mm256_set1_epi32(group_of(blk, i, p));
                            acc[0] = $dot(acc[0], x, w0);
                            acc[1] = $dot(acc[1], x, w1);
                        }
                    }
                    let sw = [_mm256_loadu_ps(blk.sw), _mm256_loadu_ps(blk.sw.add(8))];
                    let bias = [_mm256_loadu_ps(blk.bias), _mm256_loadu_ps(blk.bias.add(8))];
                    let mut tmp = [0.0f32; PANEL];
                    for (i, acc) in acc.iter().enumerate() {
                        let sx = _mm256_set1_ps(*blk.sx.add(i));
                        let full = blk.cols == PANEL;
                        let c = blk.c.add(i * blk.ldc);
                        for v in 0..2 {
                            let s = _mm256_mul_ps(sx, sw[v]);
                            let y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[v]), s), bias[v]);
                            if full {
                                _mm256_storeu_ps(c.add(8 * v), y);
                            } else {
                                _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * v), y);
                            }
                        }
                        if !full {
                            std::ptr::copy_nonoverlapping(tmp.as_ptr(), c, blk.cols);
                        }
                    }
                }
            }
        };
    }

    block256!(avx_vnni, "avx2,avxvnni", dot_avx_vnni);
    block256!(
        #[cfg(test)]
        avx_vnni_evex,
        "avx2,avx512f,avx512vl,avx512vnni",
        dot_evex
    );
    block256!(avx2, "avx2", dot_avx2);
    block256!(avx2_unsigned, "avx2", dot_avx2_unsigned);
}
