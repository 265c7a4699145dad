//! The two vector bf16 kernel families beside AMX, both reading the weight in the packed tile
//! layout of [`PackedBf16`] (for each 16 output columns, pair rows of `(W[j, 2p], W[j, 2p + 1])`):
//!
//! - **AVX2 + FMA** (every x86-64 CPU since Haswell / Zen 1): the weight stays bf16 in memory
//!   (half the bytes of f32) and is widened in the kernel: a bf16 is the top half of an f32, so
//!   one 32-bit lane holding a pair gives the even element by a 16-bit left shift and the odd one
//!   by masking the low half. Inputs are rounded to bf16 (nearest even) into an f32 scratch, the
//!   sums are f32 FMAs over a 6 × 16 register block.
//! - **AVX512-BF16** (Zen 4/5, Cooper Lake, Sapphire Rapids and later): `vdpbf16ps` multiplies
//!   16 lanes of bf16 pairs and adds both products into f32 sums: one instruction per pair of k
//!   and 16 columns, over a 12 × 32 register block. Inputs are rounded with `vcvtne2ps2bf16`
//!   (nearest even, as [`f32_to_bf16`]; the instruction flushes subnormal inputs below 1.2e-38 to
//!   zero, the only difference from the other kernels' rounding).
//!
//! Both split the rows between rayon threads (whole blocks), convert each thread's rows once,
//! and walk them in cache blocks of [`MC`] rows so that a block of A stays in L2 while every
//! column panel of the weight streams past it.

use std::cell::RefCell;

use rayon::prelude::*;

use super::bf16::{PackedBf16, TILE, TK, TN};

/// Rows per cache block (a multiple of both kernels' row blocks).
const MC: usize = 48;

thread_local! {
    /// AVX2: input rows rounded to bf16, as f32, `rows × kp`, zero-padded.
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// AVX512-BF16: input rows in bf16, `rows × kp`, zero-padded.
    static SCRATCH_BF16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub(super) fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Which vector kernel [`linear`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Avx2,
    Avx512Bf16,
}

/// `out = (accumulate ? out : 0) + bf16(inp) · W + bias` on `rows` rows. The caller checked the
/// lengths and that the CPU has the family's features.
pub(super) fn linear(
    family: Family,
    out: &mut [f32],
    inp: &[f32],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    accumulate: bool,
) {
    let (n, k) = (w.out_dim, w.in_dim);
    let threads = rayon::current_num_threads().max(1);
    let per = rows.div_ceil(MC).div_ceil(threads) * MC;
    out[..rows * n]
        .par_chunks_mut(per * n)
        .zip(inp[..rows * k].par_chunks(per * k))
        .for_each(|(o, x)| {
            let r = x.len() / k.max(1);
            #[cfg(target_arch = "x86_64")]
            match family {
                // SAFETY: the caller checked the CPU features; shapes come from the checked views.
                Family::Avx2 => unsafe { x86::avx2_task(o, x, w, bias, r, accumulate) },
                // SAFETY: as above.
                Family::Avx512Bf16 => unsafe { x86::avx512_task(o, x, w, bias, r, accumulate) },
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (family, o, x, r, bias, accumulate);
        });
}

/// What a block's sums start from, for `rows × cols` of C at `c` (row stride `ldc`).
#[derive(Clone, Copy)]
enum Init<'a> {
    Zero,
    Bias(&'a [f32]),
    Load,
}

/// Copies a row block's sums (`acc`, `MR × width` values, row-major) into C's valid part.
#[inline(always)]
fn store_edge(c: &mut [f32], ldc: usize, tmp: &[f32], width: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        c[i * ldc..i * ldc + cols].copy_from_slice(&tmp[i * width..i * width + cols]);
    }
}

// The AVX-512 intrinsics are stable since Rust 1.89, above the workspace MSRV (1.85): building
// needs 1.89 (the toolchain here is 1.95); raising the MSRV is the lead's call.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// AVX2 rows of one thread: round into the scratch, then cache blocks × panels × row blocks.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `o` is `r × out_dim`, `x` is `r × in_dim`.
    pub(super) unsafe fn avx2_task(
        o: &mut [f32],
        x: &[f32],
        w: &PackedBf16,
        bias: Option<&[f32]>,
        r: usize,
        accumulate: bool,
    ) {
        let (n, k) = (w.out_dim, w.in_dim);
        let kp = w.k_tiles * TK;
        let pairs = k.div_ceil(2);
        // Taken out while this task runs (a nested rayon task on this thread finds it empty).
        let mut s = SCRATCH_F32.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if s.len() < r * kp {
            s.resize(r * kp, 0.0);
        }
        let a = &mut s[..r * kp];
        for (i, row) in a.chunks_exact_mut(kp).enumerate() {
            for (d, &v) in row[..k].iter_mut().zip(&x[i * k..(i + 1) * k]) {
                *d = super::super::bf16::bf16_to_f32(super::super::bf16::f32_to_bf16(v));
            }
            row[k..].fill(0.0);
        }
        let init = if accumulate {
            Init::Load
        } else {
            bias.map_or(Init::Zero, Init::Bias)
        };
        for i0 in (0..r).step_by(MC) {
            let mc = MC.min(r - i0);
            for nt in 0..n.div_ceil(TN) {
                let b = w.tiles[nt * w.k_tiles * TILE..].as_ptr();
                let j0 = nt * TN;
                let cols = TN.min(n - j0);
                let mut i = i0;
                while i < i0 + mc {
                    let mr = 6.min(i0 + mc - i);
                    let a = a[i * kp..].as_ptr();
                    let c = &mut o[i * n + j0..];
                    // SAFETY: `a` holds `mr` rows of `kp ≥ 2·pairs` values at stride kp; the
                    // panel holds `pairs` pair rows; `c` has `mr` rows of `cols` at stride n.
                    unsafe {
                        match mr {
                            6 => avx2_block::<6>(a, kp, b, pairs, c, n, cols, init, j0),
                            5 => avx2_block::<5>(a, kp, b, pairs, c, n, cols, init, j0),
                            4 => avx2_block::<4>(a, kp, b, pairs, c, n, cols, init, j0),
                            3 => avx2_block::<3>(a, kp, b, pairs, c, n, cols, init, j0),
                            2 => avx2_block::<2>(a, kp, b, pairs, c, n, cols, init, j0),
                            _ => avx2_block::<1>(a, kp, b, pairs, c, n, cols, init, j0),
                        }
                    }
                    i += mr;
                }
            }
        }
        SCRATCH_F32.with(|b| *b.borrow_mut() = s);
    }

    /// `MR` rows × 16 columns of C over all `pairs` pair rows of one weight panel.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` addresses `MR` rows of `2·pairs` f32 at stride `lda`; `b` addresses
    /// `pairs` rows of 32 u16; `c` holds `MR` rows of `cols ≤ 16` values at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_block<const MR: usize>(
        a: *const f32,
        lda: usize,
        b: *const u16,
        pairs: usize,
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        init: Init,
        j0: usize,
    ) {
        let mut tmp = [0.0f32; 6 * 16];
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // SAFETY: the caller's contract bounds every pointer read below.
        unsafe {
            match init {
                Init::Zero => {}
                Init::Bias(bias) => {
                    let mut row = [0.0f32; 16];
                    row[..cols].copy_from_slice(&bias[j0..j0 + cols]);
                    let (b0, b1) = (
                        _mm256_loadu_ps(row.as_ptr()),
                        _mm256_loadu_ps(row.as_ptr().add(8)),
                    );
                    for acc in acc.iter_mut() {
                        *acc = [b0, b1];
                    }
                }
                Init::Load => {
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let mut row = [0.0f32; 16];
                        row[..cols].copy_from_slice(&c[i * ldc..i * ldc + cols]);
                        *acc = [
                            _mm256_loadu_ps(row.as_ptr()),
                            _mm256_loadu_ps(row.as_ptr().add(8)),
                        ];
                    }
                }
            }
            let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
            for p in 0..pairs {
                let bp = b.add(p * 2 * TN) as *const __m256i;
                // 32-bit lane j: (W[j, 2p] low, W[j, 2p + 1] high); columns 0–7, then 8–15
                let r0 = _mm256_loadu_si256(bp);
                let r1 = _mm256_loadu_si256(bp.add(1));
                let e0 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(r0));
                let e1 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(r1));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(i * lda + 2 * p));
                    acc[0] = _mm256_fmadd_ps(x, e0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, e1, acc[1]);
                }
                let o0 = _mm256_castsi256_ps(_mm256_and_si256(r0, hi));
                let o1 = _mm256_castsi256_ps(_mm256_and_si256(r1, hi));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(i * lda + 2 * p + 1));
                    acc[0] = _mm256_fmadd_ps(x, o0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, o1, acc[1]);
                }
            }
            if cols == 16 {
                for (i, acc) in acc.iter().enumerate() {
                    let dst = c[i * ldc..i * ldc + 16].as_mut_ptr();
                    _mm256_storeu_ps(dst, acc[0]);
                    _mm256_storeu_ps(dst.add(8), acc[1]);
                }
            } else {
                for (i, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(tmp[i * 16..].as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(tmp[i * 16 + 8..].as_mut_ptr(), acc[1]);
                }
                store_edge(c, ldc, &tmp, 16, MR, cols);
            }
        }
    }

    /// Rounds `src` to bf16 into `dst` (same length) with `vcvtne2ps2bf16`, 32 at a time.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
        let mut i = 0;
        let mut pad = [0.0f32; 32];
        let mut out = [0u16; 32];
        while i < src.len() {
            let len = 32.min(src.len() - i);
            let p = if len == 32 {
                src[i..].as_ptr()
            } else {
                pad[..len].copy_from_slice(&src[i..]);
                pad[len..].fill(0.0);
                pad.as_ptr()
            };
            // SAFETY: `p` addresses 32 f32; `out` holds 32 u16.
            unsafe {
                // the second operand gives the low 16 results, the first the high 16
                let v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p));
                _mm512_storeu_si512(
                    out.as_mut_ptr().cast(),
                    std::mem::transmute::<__m512bh, __m512i>(v),
                );
            }
            dst[i..i + len].copy_from_slice(&out[..len]);
            i += 32;
        }
    }

    /// AVX512-BF16 rows of one thread: round into the scratch, then cache blocks × 32-column
    /// panel pairs × row blocks.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512-BF16; `o` is `r × out_dim`, `x` is `r × in_dim`.
    pub(super) unsafe fn avx512_task(
        o: &mut [f32],
        x: &[f32],
        w: &PackedBf16,
        bias: Option<&[f32]>,
        r: usize,
        accumulate: bool,
    ) {
        let (n, k) = (w.out_dim, w.in_dim);
        let kp = w.k_tiles * TK;
        let pairs = k.div_ceil(2);
        let mut s = SCRATCH_BF16.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if s.len() < r * kp {
            s.resize(r * kp, 0);
        }
        let a = &mut s[..r * kp];
        for (i, row) in a.chunks_exact_mut(kp).enumerate() {
            // SAFETY: the caller checked the features.
            unsafe { to_bf16_avx512(&x[i * k..(i + 1) * k], &mut row[..k]) };
            row[k..].fill(0);
        }
        let init = if accumulate {
            Init::Load
        } else {
            bias.map_or(Init::Zero, Init::Bias)
        };
        for i0 in (0..r).step_by(MC) {
            let mc = MC.min(r - i0);
            // the pack has an even number of 16-column tiles (zero-padded)
            for jp in 0..n.div_ceil(2 * TN) {
                let b0 = w.tiles[2 * jp * w.k_tiles * TILE..].as_ptr();
                let b1 = w.tiles[(2 * jp + 1) * w.k_tiles * TILE..].as_ptr();
                let j0 = jp * 2 * TN;
                let cols = (2 * TN).min(n - j0);
                let mut i = i0;
                while i < i0 + mc {
                    let mr = 12.min(i0 + mc - i);
                    let a = a[i * kp..].as_ptr();
                    let c = &mut o[i * n + j0..];
                    // SAFETY: as in `avx2_task`, with two panels of `pairs` rows each.
                    unsafe {
                        macro_rules! go {
                            ($($m:literal)*) => {
                                match mr {
                                    $($m => avx512_block::<$m>(a, kp, b0, b1, pairs, c, n, cols, init, j0),)*
                                    _ => unreachable!(),
                                }
                            };
                        }
                        go!(1 2 3 4 5 6 7 8 9 10 11 12)
                    }
                    i += mr;
                }
            }
        }
        SCRATCH_BF16.with(|b| *b.borrow_mut() = s);
    }

    /// `MR` rows × 32 columns of C (panels `b0`, `b1`) over all `pairs` pair rows.
    ///
    /// # Safety
    /// AVX512F and AVX512-BF16; `a` addresses `MR` rows of `2·pairs` bf16 at stride `lda`;
    /// `b0`/`b1` address `pairs` rows of 32 u16; `c` holds `MR` rows of `cols ≤ 32` at `ldc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx512_block<const MR: usize>(
        a: *const u16,
        lda: usize,
        b0: *const u16,
        b1: *const u16,
        pairs: usize,
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        init: Init,
        j0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // SAFETY: the caller's contract bounds every pointer read below.
        unsafe {
            match init {
                Init::Zero => {}
                Init::Bias(bias) => {
                    let mut row = [0.0f32; 32];
                    row[..cols].copy_from_slice(&bias[j0..j0 + cols]);
                    let v = [
                        _mm512_loadu_ps(row.as_ptr()),
                        _mm512_loadu_ps(row.as_ptr().add(16)),
                    ];
                    for acc in acc.iter_mut() {
                        *acc = v;
                    }
                }
                Init::Load => {
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let mut row = [0.0f32; 32];
                        row[..cols].copy_from_slice(&c[i * ldc..i * ldc + cols]);
                        *acc = [
                            _mm512_loadu_ps(row.as_ptr()),
                            _mm512_loadu_ps(row.as_ptr().add(16)),
                        ];
                    }
                }
            }
            for p in 0..pairs {
                // 32-bit lane j: (W[j, 2p], W[j, 2p + 1]), the pair layout vdpbf16ps reads
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(p * 2 * TN).cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(p * 2 * TN).cast()));
                for (i, acc) in acc.iter_mut().enumerate() {
                    // the pair (x[i, 2p], x[i, 2p + 1]) in every lane
                    let pair = a.add(i * lda + 2 * p).cast::<i32>().read_unaligned();
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
                }
            }
            if cols == 32 {
                for (i, acc) in acc.iter().enumerate() {
                    let dst = c[i * ldc..i * ldc + 32].as_mut_ptr();
                    _mm512_storeu_ps(dst, acc[0]);
                    _mm512_storeu_ps(dst.add(16), acc[1]);
                }
            } else {
                let mut tmp = [0.0f32; 12 * 32];
                for (i, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(tmp[i * 32..].as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(tmp[i * 32 + 16..].as_mut_ptr(), acc[1]);
                }
                store_edge(c, ldc, &tmp, 32, MR, cols);
            }
        }
    }
}
