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
//!
//! Where AVX512-BF16 is present it also does the packing (weights after every AdamW step of bf16
//! training, activations for every weight gradient): `vcvtne2ps2bf16` rounds 32 values and `vpermw`
//! pairs them, instead of a scalar loop. And the AVX512-BF16 weight gradient `doutᵀ · inp` never
//! transposes `dout` (a strided pass over it that cost as much as the product on the decoder's
//! shapes): the kernel broadcasts one bf16 pair per row of A, and [`pair_rows`] writes the pairs
//! `(dout[2p, o], dout[2p + 1, o])` from two contiguous rows of `dout`, in blocks of MC columns so
//! that a row block's pairs are one contiguous stream.

use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(test)]
use super::bf16::f32_to_bf16;
use super::bf16::{PackedBf16, TILE, TK, TN, Then};
use super::gelu::{GeluKind, gelu_in_place};

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
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
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

/// `out = bf16(inp) · W + bias` on `rows` rows, stored, added (`Then::Add`: no bias) or through
/// GELU (`Then::Gelu`: AVX512-BF16 only; the AVX2 family's caller applies it after). The caller
/// checked the lengths and that the CPU has the family's features.
pub(super) fn linear(
    family: Family,
    out: &mut [f32],
    inp: &[f32],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    then: Then,
) {
    let accumulate = then == Then::Add;
    let gelu = match then {
        Then::Gelu(kind) => Some(kind),
        _ => None,
    };
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
                Family::Avx512Bf16 => unsafe { x86::avx512_task(o, x, w, bias, r, accumulate, gelu) },
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (family, o, x, r, bias, accumulate, gelu);
        });
}

/// `out[m_total, n] += A · W`, A given as **pair rows** (as [`pair_rows`] writes them: for each
/// block of [`MC`] rows and each pair `p < w.in_dim.div_ceil(2)`, the MC pairs `(bf16 A[m, 2p],
/// bf16 A[m, 2p + 1])`). This is the weight gradient's `doutᵀ · inp` with `dout`'s rows paired
/// instead of transposed: the kernel broadcasts one 32-bit pair per row either way, so only the
/// strides differ, and blocking by MC rows keeps a row block's pairs one contiguous stream.
/// AVX512-BF16 only (the caller checked the CPU).
pub(super) fn accumulate_pair_rows(out: &mut [f32], pairs: &[u16], m_total: usize, w: &PackedBf16) {
    let (n, np) = (w.out_dim, w.in_dim.div_ceil(2));
    assert!(out.len() >= m_total * n && pairs.len() >= pair_rows_len(2 * np, m_total));
    let threads = rayon::current_num_threads().max(1);
    let per = m_total.div_ceil(MC).div_ceil(threads) * MC;
    out[..m_total * n]
        .par_chunks_mut(per.max(1) * n)
        .enumerate()
        .for_each(|(t, o)| {
            let rows = o.len() / n.max(1);
            let a = ALayout {
                // `per` is whole MC blocks
                ptr: pairs[t * (per / MC) * 2 * np * MC..].as_ptr(),
                block: 2 * np * MC,
                row: 2,
                pair: 2 * MC,
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX512-BF16 (caller); `a` addresses this task's MC blocks of
            // every pair, inside `pairs` (asserted above).
            unsafe {
                x86::avx512_blocks(o, a, w, None, rows, true, None)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (a, o, rows);
        });
}

/// The u16 length of [`pair_rows`]' output for `rows × cols`.
pub(super) fn pair_rows_len(rows: usize, cols: usize) -> usize {
    2 * rows.div_ceil(2) * cols.div_ceil(MC) * MC
}

/// Writes `src [rows, cols]` (row-major f32) as bf16 pairs of rows, the A operand of
/// [`accumulate_pair_rows`] (whose rows are `src`'s columns): for column block `cb` (MC columns),
/// pair `p` and column `c` of the block, the two u16 at `2·((cb·P + p)·MC + c)` are `(bf16 src[2p, c],
/// bf16 src[2p + 1, c])`, with `P = rows.div_ceil(2)` and zero for the missing row of an odd `rows`.
/// AVX512-BF16 only (the caller checked the CPU); `dst` holds [`pair_rows_len`] values.
pub(super) fn pair_rows(src: &[f32], rows: usize, cols: usize, dst: &mut [u16]) {
    let np = rows.div_ceil(2);
    assert!(src.len() >= rows * cols && dst.len() >= pair_rows_len(rows, cols));
    dst[..pair_rows_len(rows, cols)]
        .par_chunks_mut(2 * np * MC)
        .enumerate()
        .for_each(|(cb, d)| {
            let (c0, mc) = (cb * MC, MC.min(cols - cb * MC));
            for (p, d) in d.chunks_exact_mut(2 * MC).enumerate() {
                let a = &src[2 * p * cols + c0..][..mc];
                let b = (2 * p + 1 < rows).then(|| &src[(2 * p + 1) * cols + c0..][..mc]);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller checked the CPU; `d` holds 2·MC ≥ 2·mc values.
                unsafe {
                    x86::interleave_avx512(a, b, d)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (a, b, d);
            }
        });
}

/// Packs one 16-column tile column (`col_tiles`: all `k_tiles` tiles of columns `c0..c0 + cols`) of
/// the `n × k` matrix `v(col, kk)` = `src[col·k + kk]`, or `src[kk·n + col]` when `transposed`, in
/// [`PackedBf16`]'s pair layout, rounding to nearest even. `col_tiles` comes zeroed (padding stays
/// zero). With AVX512-BF16 the rounding and pairing are vector instructions; otherwise scalar.
pub(super) fn pack_tile_column(
    src: &[f32],
    n: usize,
    k: usize,
    c0: usize,
    cols: usize,
    transposed: bool,
    col_tiles: &mut [u16],
) {
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16_available() {
        // SAFETY: checked the CPU; the reads stay in `src` (n × k) and the writes in `col_tiles`.
        unsafe {
            if transposed {
                x86::pack_transposed_avx512(src, n, k, c0, cols, col_tiles)
            } else {
                x86::pack_rows_avx512(src, k, c0, cols, col_tiles)
            }
        }
        return;
    }
    pack_tile_column_scalar(src, n, k, c0, cols, transposed, col_tiles);
}

/// [`pack_tile_column`] without vector instructions (any CPU; the reference of the vector packs).
fn pack_tile_column_scalar(
    src: &[f32],
    n: usize,
    k: usize,
    c0: usize,
    cols: usize,
    transposed: bool,
    col_tiles: &mut [u16],
) {
    use super::bf16::f32_to_bf16;
    for (kt, tile) in col_tiles.chunks_exact_mut(TILE).enumerate() {
        let pairs = (k - kt * TK).min(TK).div_ceil(2);
        for (r, row) in tile.chunks_exact_mut(2 * TN).take(pairs).enumerate() {
            let k0 = kt * TK + 2 * r;
            let has_k1 = k0 + 1 < k;
            if transposed {
                for (j, &v) in src[k0 * n + c0..][..cols].iter().enumerate() {
                    row[2 * j] = f32_to_bf16(v);
                }
                if has_k1 {
                    for (j, &v) in src[(k0 + 1) * n + c0..][..cols].iter().enumerate() {
                        row[2 * j + 1] = f32_to_bf16(v);
                    }
                }
            } else {
                for j in 0..cols {
                    let rowj = &src[(c0 + j) * k + k0..];
                    row[2 * j] = f32_to_bf16(rowj[0]);
                    if has_k1 {
                        row[2 * j + 1] = f32_to_bf16(rowj[1]);
                    }
                }
            }
        }
    }
}

/// Where a task's bf16 A operand is: the pair `(A[i, 2p], A[i, 2p + 1])` is the two u16 at
/// `ptr + (i / MC)·block + (i % MC)·row + p·pair` (row-major bf16 rows: `row` = padded width,
/// `block` = MC·row, `pair` = 2; [`pair_rows`]: `row` = 2, `pair` = 2·MC, `block` = 2·MC·pairs).
#[derive(Clone, Copy)]
pub(super) struct ALayout {
    ptr: *const u16,
    block: usize,
    row: usize,
    pair: usize,
}

// SAFETY: a read-only view handed to rayon tasks that only read through it.
unsafe impl Send for ALayout {}
unsafe impl Sync for ALayout {}

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

    /// `dst[2j] = bf16(a[j])`, `dst[2j + 1] = bf16(b[j])` (0 without `b`), 16 pairs at a time:
    /// `vcvtne2ps2bf16` rounds both halves, `vpermw` interleaves them.
    ///
    /// # Safety
    /// AVX512F/BW and AVX512-BF16; `b` (if any) is as long as `a`; `dst` holds `2·a.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn interleave_avx512(a: &[f32], b: Option<&[f32]>, dst: &mut [u16]) {
        let len = a.len();
        assert!(dst.len() >= 2 * len && b.is_none_or(|b| b.len() >= len));
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
            18, 2, 17, 1, 16, 0,
        );
        let mut j = 0;
        while j < len {
            let m = 16.min(len - j);
            let lanes: __mmask16 = if m == 16 { !0 } else { (1u16 << m) - 1 };
            // SAFETY: masked loads read only `m` values from j, inside `a` and `b`; the masked
            // store writes only 2m values from 2j, inside `dst`.
            unsafe {
                let va = _mm512_maskz_loadu_ps(lanes, a.as_ptr().add(j));
                let vb = match b {
                    Some(b) => _mm512_maskz_loadu_ps(lanes, b.as_ptr().add(j)),
                    None => _mm512_setzero_ps(),
                };
                // low 16 results from the second operand (a), high 16 from the first (b)
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(vb, va));
                let pairs = _mm512_permutexvar_epi16(idx, v);
                let store: __mmask32 = if m == 16 { !0 } else { (1u32 << (2 * m)) - 1 };
                _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(2 * j).cast(), store, pairs);
            }
            j += 16;
        }
    }

    /// [`pack_tile_column`] for `src[kk·n + col]` (a row-major `[k, n]` source): every pair row of
    /// the tile column is two source rows' 16 columns, rounded and interleaved at once.
    ///
    /// # Safety
    /// As [`interleave_avx512`]; `src` holds `k × n`, `c0 + cols ≤ n`, `col_tiles` all k tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_transposed_avx512(
        src: &[f32],
        n: usize,
        k: usize,
        c0: usize,
        cols: usize,
        col_tiles: &mut [u16],
    ) {
        for p in 0..k.div_ceil(2) {
            let (kt, r) = (p / (TK / 2), p % (TK / 2));
            let a = &src[2 * p * n + c0..][..cols];
            let b = (2 * p + 1 < k).then(|| &src[(2 * p + 1) * n + c0..][..cols]);
            // SAFETY: as this function's contract.
            unsafe { interleave_avx512(a, b, &mut col_tiles[kt * TILE + r * 2 * TN..][..2 * cols]) };
        }
    }

    /// [`pack_tile_column`] for `src[col·k + kk]` (PyTorch's `[n, k]` weight): each column's row is
    /// rounded 32 values at a time, and its 16 pairs go to 16 tile rows.
    ///
    /// # Safety
    /// As [`interleave_avx512`]; `src` holds rows `c0..c0 + cols` of `k`, `col_tiles` all k tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_rows_avx512(
        src: &[f32],
        k: usize,
        c0: usize,
        cols: usize,
        col_tiles: &mut [u16],
    ) {
        let mut pairs = [0u32; TK / 2];
        for j in 0..cols {
            let row = &src[(c0 + j) * k..][..k];
            for (kt, chunk) in row.chunks(TK).enumerate() {
                let m = chunk.len();
                let lo: __mmask16 = if m >= 16 { !0 } else { (1u16 << m) - 1 };
                let hi: __mmask16 = if m >= 32 {
                    !0
                } else if m > 16 {
                    (1u16 << (m - 16)) - 1
                } else {
                    0
                };
                // SAFETY: masked loads stay inside `chunk`; `pairs` holds 16 u32.
                unsafe {
                    let v0 = _mm512_maskz_loadu_ps(lo, chunk.as_ptr());
                    let v1 = _mm512_maskz_loadu_ps(hi, chunk.as_ptr().add(16.min(m)));
                    let v = _mm512_cvtne2ps_pbh(v1, v0);
                    _mm512_storeu_si512(
                        pairs.as_mut_ptr().cast(),
                        std::mem::transmute::<__m512bh, __m512i>(v),
                    );
                }
                let tile = &mut col_tiles[kt * TILE..][..TILE];
                for (r, &pair) in pairs.iter().enumerate().take(m.div_ceil(2)) {
                    tile[r * 2 * TN + 2 * j] = pair as u16;
                    tile[r * 2 * TN + 2 * j + 1] = (pair >> 16) as u16;
                }
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

    /// AVX512-BF16 rows of one thread: round into the scratch, then [`avx512_blocks`].
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
        gelu: Option<GeluKind>,
    ) {
        let k = w.in_dim;
        let kp = w.k_tiles * TK;
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
        let layout = ALayout {
            ptr: a.as_ptr(),
            block: MC * kp,
            row: kp,
            pair: 2,
        };
        // SAFETY: `a` holds r rows of kp ≥ 2·pairs values.
        unsafe { avx512_blocks(o, layout, w, bias, r, accumulate, gelu) };
        SCRATCH_BF16.with(|b| *b.borrow_mut() = s);
    }

    /// `r` rows of C (`o`, row stride out_dim) from bf16 A at `a`: cache blocks × 32-column panel
    /// pairs × row blocks of 12; with `gelu`, each finished block of C goes through it at once.
    ///
    /// # Safety
    /// AVX512F and AVX512-BF16; `a` addresses `r` rows of `in_dim.div_ceil(2)` pairs.
    pub(super) unsafe fn avx512_blocks(
        o: &mut [f32],
        a: ALayout,
        w: &PackedBf16,
        bias: Option<&[f32]>,
        r: usize,
        accumulate: bool,
        gelu: Option<GeluKind>,
    ) {
        let n = w.out_dim;
        let pairs = w.in_dim.div_ceil(2);
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
                    // SAFETY: row i of A is inside the caller's view.
                    let ai = unsafe { a.ptr.add(i0 / MC * a.block + (i - i0) * a.row) };
                    let c = &mut o[i * n + j0..];
                    // SAFETY: as in `avx2_task`, with two panels of `pairs` rows each.
                    unsafe {
                        macro_rules! go {
                            ($($m:literal)*) => {
                                match mr {
                                    $($m => avx512_block::<$m>(ai, a.row, a.pair, b0, b1, pairs, c, n, cols, init, j0),)*
                                    _ => unreachable!(),
                                }
                            };
                        }
                        go!(1 2 3 4 5 6 7 8 9 10 11 12)
                    }
                    if let Some(kind) = gelu {
                        for row in o[i * n..].chunks_mut(n).take(mr) {
                            gelu_in_place(&mut row[j0..j0 + cols], kind);
                        }
                    }
                    i += mr;
                }
            }
        }
    }

    /// `MR` rows × 32 columns of C (panels `b0`, `b1`) over all `pairs` pair rows.
    ///
    /// # Safety
    /// AVX512F and AVX512-BF16; `a` addresses `MR` rows (stride `lda` u16) of `pairs` bf16 pairs
    /// (stride `pstride` u16); `b0`/`b1` address `pairs` rows of 32 u16; `c` holds `MR` rows of
    /// `cols ≤ 32` at `ldc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx512_block<const MR: usize>(
        a: *const u16,
        lda: usize,
        pstride: usize,
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
                    let pair = a.add(i * lda + p * pstride).cast::<i32>().read_unaligned();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::TestRng;

    /// Values with exact bf16 ties (x.5 ulp of bf16) besides random ones, so rounding is checked.
    fn values(rng: &mut TestRng, n: usize) -> Vec<f32> {
        rng.vec(n)
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if i % 7 == 0 {
                    1.0 + (2 * (i % 5) + 1) as f32 / 256.0
                } else {
                    v as f32
                }
            })
            .collect()
    }

    /// The AVX512-BF16 packs and pair rows give the scalar packs' bits (ragged n and k, both layouts).
    #[test]
    fn vector_packs_equal_scalar_packs() {
        if !avx512_bf16_available() {
            eprintln!("vector packs skipped: this CPU lacks AVX512F/BW + AVX512-BF16");
            return;
        }
        let mut rng = TestRng::new(21);
        for (n, k) in [(1, 1), (16, 32), (17, 33), (45, 97), (100, 7)] {
            let src = values(&mut rng, n * k);
            let k_tiles = k.div_ceil(TK);
            for transposed in [false, true] {
                for c0 in (0..n).step_by(TN) {
                    let cols = TN.min(n - c0);
                    let (mut vector, mut scalar) = (vec![0u16; k_tiles * TILE], vec![0u16; k_tiles * TILE]);
                    pack_tile_column(&src, n, k, c0, cols, transposed, &mut vector);
                    pack_tile_column_scalar(&src, n, k, c0, cols, transposed, &mut scalar);
                    assert_eq!(vector, scalar, "{n}x{k} transposed {transposed} columns {c0}..");
                }
            }
            // pair rows of src read as [k rows, n columns]
            let mut pairs = vec![7u16; pair_rows_len(k, n)];
            pair_rows(&src, k, n, &mut pairs);
            let np = k.div_ceil(2);
            for p in 0..np {
                for c in 0..n {
                    let at = 2 * ((c / MC * np + p) * MC + c % MC);
                    let second = if 2 * p + 1 < k {
                        f32_to_bf16(src[(2 * p + 1) * n + c])
                    } else {
                        0
                    };
                    assert_eq!(
                        (pairs[at], pairs[at + 1]),
                        (f32_to_bf16(src[2 * p * n + c]), second),
                        "{k}x{n} pair {p} column {c}"
                    );
                }
            }
        }
    }
}
