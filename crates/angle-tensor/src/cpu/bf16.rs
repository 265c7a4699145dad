//! bf16 linear layers: `out = bf16(inp) · bf16(W)ᵀ + b`, products accumulated in f32, on Intel
//! AMX tiles where the CPU has them (Sapphire Rapids and later: about 1 TFLOP/s per core against
//! about 150 GFLOP/s for f32 FMA), on AVX512-BF16 (`bf16_simd.rs`; twice the f32 rate on AMD Zen 4)
//! or AVX2, and with a portable implementation of the same math everywhere else; the backward's
//! two products too (`linear_backward_bf16`).
//!
//! Precision is the caller's choice (`--precision bf16`, or `auto` where a kernel beats f32): inputs
//! and weights are rounded to bf16 (8 bits of mantissa, round to nearest even, as
//! `torch.bfloat16`), the sums are f32. Embeddings then differ from the f32 path by about 1e-3
//! relative.
//!
//! Layout: the weight `[out, in]` is packed once into AMX's "VNNI" tile layout: for each block of
//! 16 output columns and 32 input features a 16 × 64-byte tile whose row `r` holds, for each of
//! the 16 columns `j`, the pair `(W[j, 2r], W[j, 2r + 1])`. Input rows are converted to bf16 per
//! call into a per-thread scratch (grown once, reused).

use std::cell::RefCell;

use rayon::prelude::*;

use super::bf16_simd;
use super::gelu::{GeluKind, gelu_in_place};
use crate::error::{TensorError, arg_err, check_len};

/// Input features per tile (64 bytes of bf16).
pub(super) const TK: usize = 32;
/// Output columns per tile.
pub(super) const TN: usize = 16;
/// Rows per tile.
const TM: usize = 16;
/// u16 elements in one packed weight tile.
pub(super) const TILE: usize = TK * TN;

/// Rounds to the nearest bf16, ties to even (NaN stays a quiet NaN).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    // Branch-free (a select) so that loops over it vectorise.
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) as u16) | 0x0040;
    if x.is_nan() { quiet_nan } else { rounded }
}

/// The f32 value of a bf16.
#[inline]
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// A `[out_dim, in_dim]` f32 weight (PyTorch's Linear layout) rounded to bf16 and packed into
/// tiles: `out_dim` padded to a multiple of 32, `in_dim` to a multiple of 32, with zeros.
#[derive(Debug, Clone, Default)]
pub struct PackedBf16 {
    pub(super) out_dim: usize,
    pub(super) in_dim: usize,
    /// `in_dim` rounded up to whole tiles.
    pub(super) k_tiles: usize,
    /// `out_dim` rounded up to pairs of tiles (the kernel's 32 columns).
    n_tiles: usize,
    /// Read by every kernel but the portable one (AMX tiles; AVX2 and AVX512-BF16 read the
    /// same pair rows).
    pub(super) tiles: Vec<u16>,
    /// On CPUs without AMX: the weight rounded to bf16, as f32 `[out, in]`, for the portable
    /// kernel (which then is an f32 product of bf16 values: as fast as the f32 path).
    rounded: Vec<f32>,
}

impl PackedBf16 {
    /// Packs `weight` (`[out_dim, in_dim]`, row-major): the product is `x · Wᵀ`.
    pub fn pack(weight: &[f32], out_dim: usize, in_dim: usize) -> Result<Self, TensorError> {
        let mut p = Self::default();
        p.pack_into(weight, out_dim, in_dim)?;
        Ok(p)
    }

    /// As [`PackedBf16::pack`], reusing this value's buffers (no allocation once they are big
    /// enough: bf16 training repacks every weight after each AdamW step).
    pub fn pack_into(&mut self, weight: &[f32], out_dim: usize, in_dim: usize) -> Result<(), TensorError> {
        check_len("PackedBf16::pack", "weight", weight.len(), out_dim * in_dim)?;
        self.pack_with(out_dim, in_dim, weight, false);
        Ok(())
    }

    /// Packs the transpose of `weight` (`[out_dim, in_dim]`): the product is `x · W` for
    /// `x [rows, out_dim]`, giving `[rows, in_dim]` (a linear layer's input gradient).
    pub fn pack_transposed(weight: &[f32], out_dim: usize, in_dim: usize) -> Result<Self, TensorError> {
        let mut p = Self::default();
        p.pack_transposed_into(weight, out_dim, in_dim)?;
        Ok(p)
    }

    /// As [`PackedBf16::pack_transposed`], reusing this value's buffers.
    pub fn pack_transposed_into(
        &mut self,
        weight: &[f32],
        out_dim: usize,
        in_dim: usize,
    ) -> Result<(), TensorError> {
        check_len(
            "PackedBf16::pack_transposed",
            "weight",
            weight.len(),
            out_dim * in_dim,
        )?;
        self.pack_with(in_dim, out_dim, weight, true);
        Ok(())
    }

    /// Packs the `n × k` matrix `v(col, kk)` = `src[col·k + kk]`, or `src[kk·n + col]` when
    /// `transposed`. Each tile row holds, for 16 columns, the bf16 pairs of two consecutive k;
    /// it is written whole, from contiguous reads (bf16 training repacks every weight after each
    /// AdamW step, so this is hot).
    fn pack_with(&mut self, n: usize, k: usize, src: &[f32], transposed: bool) {
        let k_tiles = k.div_ceil(TK);
        let n_tiles = n.div_ceil(2 * TN) * 2;
        let tiles = &mut self.tiles;
        // The padding of ragged shapes must be zero; whole tiles are all written below, so a repack of a
        // weight of whole tiles (every MiniLM / Qwen shape) skips the memset.
        if !n.is_multiple_of(2 * TN) || !k.is_multiple_of(TK) {
            tiles.clear();
        }
        tiles.resize(n_tiles * k_tiles * TILE, 0);
        let w = |col: usize, kk: usize| {
            if transposed {
                src[kk * n + col]
            } else {
                src[col * k + kk]
            }
        };
        tiles
            .par_chunks_mut(k_tiles * TILE)
            .enumerate()
            .for_each(|(nt, col_tiles)| {
                let c0 = nt * TN;
                let cols = TN.min(n.saturating_sub(c0));
                // the padding tile of an odd tile count stays zero
                if cols > 0 {
                    bf16_simd::pack_tile_column(src, n, k, c0, cols, transposed, col_tiles);
                }
            });
        self.rounded.clear();
        if bf16_kernel() == Bf16Kernel::Portable {
            self.rounded
                .extend((0..n * k).map(|i| bf16_to_f32(f32_to_bf16(w(i / k, i % k)))));
        }
        (self.out_dim, self.in_dim, self.k_tiles, self.n_tiles) = (n, k, k_tiles, n_tiles);
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tiles.len() * 2 + self.rounded.len() * 4
    }

    /// `W[col, k]` as stored (bf16).
    #[inline]
    fn get(&self, col: usize, k: usize) -> u16 {
        let (nt, j) = (col / TN, col % TN);
        let (kt, r, e) = (k / TK, (k % TK) / 2, k % 2);
        self.tiles[(nt * self.k_tiles + kt) * TILE + r * 2 * TN + 2 * j + e]
    }
}

/// Which implementation the bf16 products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`: two bf16 products per f32 lane and instruction).
    Avx512Bf16,
    /// AVX2 + FMA: the weight kept in bf16 and widened to f32 in the kernel.
    Avx2,
    /// Plain Rust, any CPU: the inputs rounded, then our f32 product (faer) of the rounded values.
    Portable,
}

impl Bf16Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Bf16Kernel; 4] = [
        Bf16Kernel::Amx,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Avx2,
        Bf16Kernel::Portable,
    ];

    /// `amx`, `avx512-bf16`, `avx2`, `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
            Bf16Kernel::Avx2 => "avx2",
            Bf16Kernel::Portable => "portable",
        }
    }

    /// The kernel [`Bf16Kernel::name`] gives, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// The CPU features this kernel needs (for skip messages).
    pub fn needs(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "AMX-TILE + AMX-BF16 (and the kernel's permission for tile state)",
            Bf16Kernel::Avx512Bf16 => "AVX512F + AVX512-BF16",
            Bf16Kernel::Avx2 => "AVX2 + FMA",
            Bf16Kernel::Portable => "nothing",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Amx => amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Kernel::Amx => false,
            Bf16Kernel::Avx512Bf16 => bf16_simd::avx512_bf16_available(),
            Bf16Kernel::Avx2 => bf16_simd::avx2_available(),
            Bf16Kernel::Portable => true,
        }
    }

    /// Whether its products can beat our f32 products (faer), as measured
    /// (`crates/angle-tensor/README.md`): AMX always does (2.9–4.2× on a Xeon); AVX512-BF16 on
    /// some cores only (0.5–1.1× on Intel Xeons, about 2× on AMD Zen 4: `angle_encoder`'s
    /// `auto_precision_for` decides from the vendor). AVX2 widening does not: it loses to faer on
    /// the AMD EPYC here, as does the portable kernel (same speed plus the rounding).
    pub fn beats_f32(self) -> bool {
        matches!(self, Bf16Kernel::Amx | Bf16Kernel::Avx512Bf16)
    }
}

/// The kernel bf16 products run on this CPU: AMX, else AVX512-BF16, else the faster of the
/// portable and AVX2 kernels here (portable: see [`Bf16Kernel::beats_f32`]).
/// `ANGLE_BF16_KERNEL=amx|avx512-bf16|avx2|portable` picks one the CPU has instead (to compare
/// kernels end to end on one machine); a name it does not know or a kernel this CPU lacks is
/// reported once on stderr and the automatic choice stands here (a library call cannot fail over
/// it); programs refuse it up front with [`requested_bf16_kernel`] (the `angle` binary,
/// `cargo xtask kernels`).
pub fn bf16_kernel() -> Bf16Kernel {
    use std::sync::OnceLock;
    static K: OnceLock<Bf16Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        let auto = automatic_kernel();
        match kernel_override(std::env::var("ANGLE_BF16_KERNEL").ok().as_deref()) {
            Ok(Some(k)) => k,
            Ok(None) => auto,
            Err(why) => {
                eprintln!("warning: ANGLE_BF16_KERNEL: {why}; using {}", auto.name());
                auto
            }
        }
    })
}

fn automatic_kernel() -> Bf16Kernel {
    [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
        .into_iter()
        .find(|k| k.available())
        .unwrap_or(if AVX2_OVER_PORTABLE && Bf16Kernel::Avx2.available() {
            Bf16Kernel::Avx2
        } else {
            Bf16Kernel::Portable
        })
}

/// The kernel `ANGLE_BF16_KERNEL` asks for (`None` when unset or empty); `Err` names what is
/// wrong with it: an unknown name, or a kernel this CPU lacks and the features it needs.
pub fn requested_bf16_kernel() -> Result<Option<Bf16Kernel>, String> {
    kernel_override(std::env::var("ANGLE_BF16_KERNEL").ok().as_deref())
        .map_err(|why| format!("ANGLE_BF16_KERNEL: {why}"))
}

/// The kernel `ANGLE_BF16_KERNEL` names (`None` when unset or empty), if this CPU has it.
fn kernel_override(value: Option<&str>) -> Result<Option<Bf16Kernel>, String> {
    let Some(name) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let names = Bf16Kernel::ALL.map(|k| k.name()).join(", ");
    let k = Bf16Kernel::from_name(name).ok_or_else(|| format!("unknown kernel `{name}` (one of {names})"))?;
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

/// Whether the AVX2 kernel is preferred to the portable one where both run (measured on the
/// AMD EPYC here, `cargo bench -p angle-benches --bench kernels -- bf16`).
const AVX2_OVER_PORTABLE: bool = true;

/// Checks `kernel` against f64 sums of the same bf16-rounded values on ragged shapes (rows,
/// columns and features that fill no tile, more rows than one cache block): the forward product
/// with a bias, a second product added on top, the backward's three gradients (the input
/// gradient through a transposed pack, the weight gradient, the bias sums), and the fused GELU,
/// which must give the bits of the product followed by `gelu_forward` (both forms). `Ok` is the
/// worst relative error seen (each must be below 1e-5); `Err` names the kernel and the product
/// that failed. A few milliseconds: `auto` runs it before it trusts AVX512-BF16 (a kernel
/// written without such a CPU to run on), `cargo xtask kernels` on every kernel present.
pub fn bf16_self_check(kernel: Bf16Kernel) -> Result<f64, String> {
    let (rows, k, n) = (61, 97, 45);
    let fail = |what: &str, e: TensorError| format!("{} kernel, {what}: {e}", kernel.name());
    let val = |len: usize, s: u64| -> Vec<f32> {
        (0..len)
            .map(|i| (crate::rng::uniform(s, i as u64) * 2.0 - 1.0) as f32)
            .collect()
    };
    let (x, w, bias, dy) = (val(rows * k, 1), val(n * k, 2), val(n, 3), val(rows * n, 4));
    let r = |v: f32| f64::from(bf16_to_f32(f32_to_bf16(v)));
    // Σ_p a[i, p] b[j, p] over bf16-rounded values, in f64; `at(i, p)` and `bt(j, p)` index them.
    let sums = |m: usize,
                c: usize,
                depth: usize,
                at: &dyn Fn(usize, usize) -> f64,
                bt: &dyn Fn(usize, usize) -> f64| {
        (0..m * c)
            .map(|idx| (0..depth).map(|p| at(idx / c, p) * bt(idx % c, p)).sum::<f64>())
            .collect::<Vec<f64>>()
    };
    let xw = sums(rows, n, k, &|i, p| r(x[i * k + p]), &|j, p| r(w[j * k + p]));
    let mut worst = 0.0f64;
    let mut check = |what: &str, got: &[f32], want: &[f64]| {
        let e = rel_err(got, want);
        if e.is_finite() && e < 1e-5 {
            worst = worst.max(e);
            Ok(())
        } else {
            Err(format!(
                "{} kernel, {what}: relative error {e:e} against an f64 sum of the same bf16 values",
                kernel.name()
            ))
        }
    };

    let packed = PackedBf16::pack(&w, n, k).map_err(|e| fail("pack", e))?;
    let mut out = vec![f32::NAN; rows * n];
    bf16_product(kernel, &mut out, &x, &packed, Some(&bias), rows, Then::Store)
        .map_err(|e| fail("forward", e))?;
    let with_bias = |times: f64| -> Vec<f64> {
        xw.iter()
            .enumerate()
            .map(|(i, s)| times * s + f64::from(bias[i % n]))
            .collect()
    };
    check("forward", &out, &with_bias(1.0))?;
    let stored = out.clone();
    bf16_product(kernel, &mut out, &x, &packed, None, rows, Then::Add).map_err(|e| fail("accumulate", e))?;
    check("accumulate", &out, &with_bias(2.0))?;

    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        let (mut fused, mut want) = (vec![f32::NAN; rows * n], vec![0.0f32; rows * n]);
        bf16_product(
            kernel,
            &mut fused,
            &x,
            &packed,
            Some(&bias),
            rows,
            Then::Gelu(kind),
        )
        .map_err(|e| fail("fused GELU", e))?;
        super::gelu::gelu_forward(&mut want, &stored, rows * n, kind).map_err(|e| fail("GELU", e))?;
        if let Some(i) = (0..rows * n).find(|&i| fused[i].to_bits() != want[i].to_bits()) {
            return Err(format!(
                "{} kernel, fused {kind:?} GELU: element {i} is {} where the product then gelu_forward gives {}",
                kernel.name(),
                fused[i],
                want[i]
            ));
        }
    }

    // A layer `[out n, in k]`: dx += dy · W, dw += dyᵀ · x, db += Σ_rows dy, onto non-zero contents.
    let (dx0, dw0, db0) = (val(rows * k, 5), val(n * k, 6), val(n, 7));
    let wt = PackedBf16::pack_transposed(&w, n, k).map_err(|e| fail("transposed pack", e))?;
    let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
    linear_backward_bf16_with(kernel, &mut dx, &mut dw, Some(&mut db), &dy, &x, &wt, rows, k, n)
        .map_err(|e| fail("backward", e))?;
    let plus = |old: &[f32], s: Vec<f64>| -> Vec<f64> {
        old.iter().zip(s).map(|(&o, s)| f64::from(o) + s).collect()
    };
    let want_dx = plus(
        &dx0,
        sums(rows, k, n, &|i, j| r(dy[i * n + j]), &|p, j| r(w[j * k + p])),
    );
    let want_dw = plus(
        &dw0,
        sums(n, k, rows, &|j, i| r(dy[i * n + j]), &|p, i| r(x[i * k + p])),
    );
    let want_db = plus(
        &db0,
        (0..n)
            .map(|j| (0..rows).map(|i| f64::from(dy[i * n + j])).sum())
            .collect(),
    );
    check("backward dinp", &dx, &want_dx)?;
    check("backward dweight", &dw, &want_dw)?;
    check("backward dbias", &db, &want_db)?;
    Ok(worst)
}

/// `‖got − want‖ / ‖want‖`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

/// The kernels this CPU has, and those it lacks (tests run the first, name the second).
pub fn bf16_kernels_present() -> (Vec<Bf16Kernel>, Vec<Bf16Kernel>) {
    Bf16Kernel::ALL.into_iter().partition(|k| k.available())
}

thread_local! {
    /// Input rows in bf16, `rows × k_tiles·32`, zero-padded.
    static SCRATCH: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `out[rows, out_dim] = bf16(inp) · bf16(W)ᵀ + bias` with f32 sums (`bias` in f32).
pub fn linear_forward_bf16(
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
) -> Result<(), TensorError> {
    linear_forward_bf16_with(bf16_kernel(), out, inp, weight, bias, rows)
}

/// `out[rows, out_dim] += bf16(inp) · bf16(W)ᵀ` with f32 sums (backward's input gradient with
/// a [`PackedBf16::pack_transposed`] weight adds this way).
pub fn linear_accumulate_bf16(
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedBf16,
    rows: usize,
) -> Result<(), TensorError> {
    bf16_product(bf16_kernel(), out, inp, weight, None, rows, Then::Add)
}

thread_local! {
    /// The weight gradient's `doutᵀ`: `[out_dim, rows]` f32 (AMX, AVX2, portable) or bf16 pair
    /// rows of `dout` (AVX512-BF16); and the activations packed for it.
    static DOUT_T: RefCell<(Vec<f32>, Vec<u16>, PackedBf16)> = RefCell::new(Default::default());
}

/// A linear layer's backward with bf16 products and f32 sums, adding into every gradient:
/// `dinp += dout · W` (through `weight_t`, the layer's [`PackedBf16::pack_transposed`] weight),
/// `dweight += doutᵀ · inp` (the activations are packed per call), `dbias += Σ_rows dout` (f32).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_bf16(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight_t: &PackedBf16,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<(), TensorError> {
    linear_backward_bf16_with(
        bf16_kernel(),
        dinp,
        dweight,
        dbias,
        dout,
        inp,
        weight_t,
        rows,
        in_dim,
        out_dim,
    )
}

/// As [`linear_backward_bf16`] with a chosen kernel for both products (tests and the kernel
/// bench compare them; a kernel the CPU lacks is an error).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_bf16_with(
    kernel: Bf16Kernel,
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight_t: &PackedBf16,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<(), TensorError> {
    const OP: &str = "linear_backward_bf16";
    check_len(OP, "dout", dout.len(), rows * out_dim)?;
    check_len(OP, "inp", inp.len(), rows * in_dim)?;
    check_len(OP, "dweight", dweight.len(), out_dim * in_dim)?;
    if (weight_t.out_dim, weight_t.in_dim) != (in_dim, out_dim) {
        return Err(arg_err(
            OP,
            "weight_t",
            format!(
                "packed {}x{}, expected the transpose of a {out_dim}x{in_dim} weight",
                weight_t.out_dim, weight_t.in_dim
            ),
        ));
    }
    if let Some(db) = dbias {
        check_len(OP, "dbias", db.len(), out_dim)?;
        crate::cpu::linear::column_sums_add(db, dout, rows, out_dim);
    }
    bf16_product(kernel, dinp, dout, weight_t, None, rows, Then::Add)?;
    if rows == 0 {
        return Ok(());
    }
    // dweight [out, in] += doutᵀ [out, rows] · inp [rows, in]: inp is the "weight" of a
    // product whose inputs are the rows of doutᵀ.
    // Taken out while rayon runs (see `portable`), put back after.
    let (mut t, mut pairs, mut inp_packed) = DOUT_T.with(|b| std::mem::take(&mut *b.borrow_mut()));
    inp_packed.pack_transposed_into(inp, rows, in_dim)?;
    let result = if kernel == Bf16Kernel::Avx512Bf16 {
        // doutᵀ's pairs (dout[2p, o], dout[2p + 1, o]) straight from row pairs of dout: no transpose.
        let len = bf16_simd::pair_rows_len(rows, out_dim);
        if pairs.len() < len {
            pairs.resize(len, 0);
        }
        bf16_simd::pair_rows(dout, rows, out_dim, &mut pairs[..len]);
        bf16_simd::accumulate_pair_rows(dweight, &pairs[..len], out_dim, &inp_packed);
        Ok(())
    } else {
        if t.len() < out_dim * rows {
            t.resize(out_dim * rows, 0.0);
        }
        let dt = &mut t[..out_dim * rows];
        dt.par_chunks_mut(rows).enumerate().for_each(|(o, row)| {
            for (r, d) in row.iter_mut().enumerate() {
                *d = dout[r * out_dim + o];
            }
        });
        bf16_product(kernel, dweight, dt, &inp_packed, None, out_dim, Then::Add)
    };
    DOUT_T.with(|b| *b.borrow_mut() = (t, pairs, inp_packed));
    result
}

/// As [`linear_forward_bf16`] with a chosen kernel (tests compare them; `Amx` on a CPU without it
/// is an error).
pub fn linear_forward_bf16_with(
    kernel: Bf16Kernel,
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
) -> Result<(), TensorError> {
    bf16_product(kernel, out, inp, weight, bias, rows, Then::Store)
}

/// What a product does with its sums: store them (with the bias), add them to `out`, or store
/// their GELU (applied to each block of C while it is in L1 where the kernel can).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    Store,
    Add,
    Gelu(GeluKind),
}

/// `bf16(inp) · bf16(W)ᵀ + bias` into `out` as `then` says; checks lengths and the kernel.
fn bf16_product(
    kernel: Bf16Kernel,
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    then: Then,
) -> Result<(), TensorError> {
    const OP: &str = "linear_forward_bf16";
    let (n, k) = (weight.out_dim, weight.in_dim);
    check_len(OP, "out", out.len(), rows * n)?;
    check_len(OP, "inp", inp.len(), rows * k)?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), n)?;
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    if !kernel.available() {
        return Err(arg_err(
            OP,
            "kernel",
            format!(
                "this CPU lacks {} for the {} kernel",
                kernel.needs(),
                kernel.name()
            ),
        ));
    }
    let accumulate = then == Then::Add;
    match kernel {
        Bf16Kernel::Portable => portable(out, inp, weight, bias, rows, accumulate)?,
        Bf16Kernel::Avx2 => bf16_simd::linear(bf16_simd::Family::Avx2, out, inp, weight, bias, rows, then),
        // the one kernel whose blocks end in an epilogue (GELU while C is in L1)
        Bf16Kernel::Avx512Bf16 => {
            bf16_simd::linear(bf16_simd::Family::Avx512Bf16, out, inp, weight, bias, rows, then);
            return Ok(());
        }
        Bf16Kernel::Amx => {
            #[cfg(target_arch = "x86_64")]
            let done = amx::available() && {
                amx::linear(out, inp, weight, bias, rows, accumulate);
                true
            };
            #[cfg(not(target_arch = "x86_64"))]
            let done = false;
            if !done {
                return Err(arg_err(
                    OP,
                    "kernel",
                    "this CPU has no AMX-BF16 (or the kernel refused tile state)",
                ));
            }
        }
    }
    if let Then::Gelu(kind) = then {
        out[..rows * n]
            .par_chunks_mut(1 << 13)
            .for_each(|c| gelu_in_place(c, kind));
    }
    Ok(())
}

/// `out = gelu(bf16(inp) · bf16(W)ᵀ + bias)`: an eval-mode FFN's first product and its activation in one
/// pass (AVX512-BF16 applies GELU to each block of `out` while it is in L1; the other kernels after the
/// product). Same values as [`linear_forward_bf16`] then [`gelu_forward`](crate::cpu::gelu_forward).
pub fn linear_forward_bf16_gelu(
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    kind: GeluKind,
) -> Result<(), TensorError> {
    linear_forward_bf16_gelu_with(bf16_kernel(), out, inp, weight, bias, rows, kind)
}

/// As [`linear_forward_bf16_gelu`] with a chosen kernel (a kernel the CPU lacks is an error).
pub fn linear_forward_bf16_gelu_with(
    kernel: Bf16Kernel,
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    kind: GeluKind,
) -> Result<(), TensorError> {
    bf16_product(kernel, out, inp, weight, bias, rows, Then::Gelu(kind))
}

thread_local! {
    /// The portable kernel's input rows rounded to bf16 (as f32).
    static ROUNDED_INPUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Inputs rounded to bf16, then the f32 product: every product of two bf16 values is exact in
/// f32, so this differs from AMX only in the order of the sums.
fn portable(
    out: &mut [f32],
    inp: &[f32],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    accumulate: bool,
) -> Result<(), TensorError> {
    let (n, k) = (w.out_dim, w.in_dim);
    // An AMX machine keeps no rounded copy (tests compare the kernels there): unpack one.
    let unpacked;
    let weight: &[f32] = if w.rounded.is_empty() {
        unpacked = (0..n * k)
            .map(|i| bf16_to_f32(w.get(i / k, i % k)))
            .collect::<Vec<f32>>();
        &unpacked
    } else {
        &w.rounded
    };
    // Taken out of the thread-local while rayon runs (a task stolen onto this thread may call
    // us again: it then finds an empty buffer instead of a held borrow), put back after.
    let mut buf = ROUNDED_INPUT.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < rows * k {
        buf.resize(rows * k, 0.0);
    }
    let x = &mut buf[..rows * k];
    x.par_chunks_mut(4096)
        .zip(inp[..rows * k].par_chunks(4096))
        .for_each(|(d, s)| {
            for (d, &v) in d.iter_mut().zip(s) {
                *d = bf16_to_f32(f32_to_bf16(v));
            }
        });
    let result = if accumulate {
        use crate::cpu::{MatMut, MatRef, gemm};
        gemm(
            1.0,
            MatRef::new(x, rows, k),
            MatRef::new(weight, n, k).t(),
            1.0,
            MatMut::new(&mut out[..rows * n], rows, n),
        )
    } else {
        crate::cpu::linear_forward(out, x, weight, bias, rows, k, n)
    };
    ROUNDED_INPUT.with(|b| *b.borrow_mut() = buf);
    result
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::{PackedBf16, SCRATCH, TILE, TK, TM, TN, f32_to_bf16};

    /// Linux: ask for the AMX tile data state (XFEATURE_XTILEDATA) before the first tile op.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    pub(super) fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID.(EAX=7, ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            // `unsafe` for Rust < 1.87, where `__cpuid_count` is an unsafe fn.
            #[allow(unused_unsafe)]
            // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this runs on.
            let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
            let cpu = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
            // SAFETY: a plain syscall with integer arguments.
            cpu && unsafe {
                libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
            }
        })
    }

    /// Palette 1, eight tiles of 16 rows × 64 bytes: tmm0–3 the 32 × 32 f32 block of C, tmm4–5
    /// two 16-row slices of A, tmm6–7 two 16-column slices of B.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = {
        let mut colsb = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut t = 0;
        while t < 8 {
            colsb[t] = 64;
            rows[t] = TM as u8;
            t += 1;
        }
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb,
            rows,
        }
    };

    pub(super) fn linear(
        out: &mut [f32],
        inp: &[f32],
        w: &PackedBf16,
        bias: Option<&[f32]>,
        rows: usize,
        accumulate: bool,
    ) {
        let (n, k) = (w.out_dim, w.in_dim);
        let threads = rayon::current_num_threads().max(1);
        // One task per thread, whole 32-row blocks each (the weight is re-read per task, so fewer,
        // equal tasks beat many small ones).
        let per = rows.div_ceil(2 * TM).div_ceil(threads) * 2 * TM;
        out[..rows * n]
            .par_chunks_mut(per * n)
            .zip(inp[..rows * k].par_chunks(per * k))
            .for_each(|(o, x)| {
                let r = x.len() / k.max(1);
                // SAFETY: `available()` was checked by the caller; shapes come from the checked views.
                unsafe { task(o, x, w, bias, r, accumulate) };
            });
    }

    /// Converts `r` rows to bf16 and runs every 32 × 32 block of them.
    ///
    /// # Safety
    /// AMX is available and permitted; `o` is `r × out_dim`, `x` is `r × in_dim`.
    unsafe fn task(
        o: &mut [f32],
        x: &[f32],
        w: &PackedBf16,
        bias: Option<&[f32]>,
        r: usize,
        accumulate: bool,
    ) {
        let (n, k) = (w.out_dim, w.in_dim);
        let kp = w.k_tiles * TK;
        let rp = r.div_ceil(2 * TM) * 2 * TM;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < rp * kp {
                s.resize(rp * kp, 0);
            }
            let a = &mut s[..rp * kp];
            for (i, row) in a.chunks_exact_mut(kp).enumerate() {
                if i < r {
                    to_bf16(&x[i * k..(i + 1) * k], &mut row[..k]);
                    row[k..].fill(0);
                } else {
                    row.fill(0);
                }
            }
            // An edge block's 32 × 32 sums, row-major.
            let mut c = [0.0f32; 4 * TM * TN];
            // SAFETY: caller's contract; the config is valid for palette 1.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
            for jp in 0..w.n_tiles / 2 {
                let b0 = w.tiles[(2 * jp) * w.k_tiles * TILE..].as_ptr();
                let b1 = w.tiles[(2 * jp + 1) * w.k_tiles * TILE..].as_ptr();
                let j0 = jp * 2 * TN;
                let full_cols = j0 + 2 * TN <= n;
                for ib in 0..rp / (2 * TM) {
                    let a0 = a[ib * 2 * TM * kp..].as_ptr();
                    let a1 = a[(ib * 2 + 1) * TM * kp..].as_ptr();
                    let i0 = ib * 2 * TM;
                    if full_cols && i0 + 2 * TM <= r {
                        // Whole block: start from the bias, store straight into `o`.
                        let dst = o[i0 * n + j0..].as_mut_ptr();
                        let init = if accumulate {
                            Init::Load
                        } else {
                            bias.map_or(Init::Zero, |b| Init::Row(b[j0..].as_ptr()))
                        };
                        // SAFETY: 32 rows × 32 columns of `o` from (i0, j0) are inside it; the
                        // bias has 32 values from j0.
                        unsafe { block(a0, a1, kp * 2, b0, b1, w.k_tiles, init, dst, n * 4) };
                        continue;
                    }
                    // Edge block: through `c`, then the valid part with the bias.
                    // SAFETY: tiles read inside `a` (rp × kp) and the packed weight; C goes to `c`.
                    unsafe {
                        block(
                            a0,
                            a1,
                            kp * 2,
                            b0,
                            b1,
                            w.k_tiles,
                            Init::Zero,
                            c.as_mut_ptr(),
                            2 * TN * 4,
                        )
                    };
                    for ii in 0..(2 * TM).min(r.saturating_sub(i0)) {
                        let orow = &mut o[(i0 + ii) * n..(i0 + ii + 1) * n];
                        for jj in 0..(2 * TN).min(n.saturating_sub(j0)) {
                            let base = if accumulate { orow[j0 + jj] } else { 0.0 };
                            orow[j0 + jj] = base + c[ii * 2 * TN + jj] + bias.map_or(0.0, |b| b[j0 + jj]);
                        }
                    }
                }
            }
            // SAFETY: gives the tile state back (cheaper context switches).
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        });
    }

    /// Rounds a row to bf16 (AVX-512 is there on every AMX CPU: the branch-free loop
    /// vectorises 16 wide).
    fn to_bf16(src: &[f32], dst: &mut [u16]) {
        // SAFETY: AMX CPUs have AVX-512F/BW (the caller checked AMX).
        unsafe { to_bf16_avx512(src, dst) }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = f32_to_bf16(v);
        }
    }

    /// What a block's sums start from.
    #[derive(Clone, Copy)]
    enum Init {
        Zero,
        /// 32 bias values, repeated down the rows.
        Row(*const f32),
        /// The block's current values in C (accumulate).
        Load,
    }

    /// One 32 × 32 block of C over all k tiles, written as four 16 × 16 f32 tiles at `c` with
    /// `c_stride` bytes between rows (A rows 0–15 × B columns 0–15 at `c`, × 16–31 at `c + 16`,
    /// rows 16–31 at `c + 16 rows`). The sums start from `init`.
    ///
    /// # Safety
    /// Tile config loaded; `a0`/`a1` address 16 rows of `k_tiles · 32` bf16 at `stride` bytes;
    /// `b0`/`b1` address `k_tiles` packed tiles; `c` addresses 32 rows of 32 f32 at `c_stride`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        a0: *const u16,
        a1: *const u16,
        stride: usize,
        b0: *const u16,
        b1: *const u16,
        k_tiles: usize,
        init: Init,
        c: *mut f32,
        c_stride: usize,
    ) {
        const B_STRIDE: usize = 2 * TN * 2;
        // SAFETY: caller's contract (addresses), tile registers hold only our values.
        unsafe {
            match init {
                // A zero stride repeats the bias row in all 16 rows of each tile.
                Init::Row(b) => asm!(
                    "tileloadd tmm0, [{b0} + {z}*1]",
                    "tileloadd tmm1, [{b1} + {z}*1]",
                    "tileloadd tmm2, [{b0} + {z}*1]",
                    "tileloadd tmm3, [{b1} + {z}*1]",
                    b0 = in(reg) b,
                    b1 = in(reg) b.add(TN),
                    z = in(reg) 0usize,
                    options(nostack, readonly)
                ),
                Init::Load => {
                    let lower = c.byte_add(TM * c_stride);
                    asm!(
                        "tileloadd tmm0, [{c0} + {s}*1]",
                        "tileloadd tmm1, [{c1} + {s}*1]",
                        "tileloadd tmm2, [{c2} + {s}*1]",
                        "tileloadd tmm3, [{c3} + {s}*1]",
                        c0 = in(reg) c,
                        c1 = in(reg) c.add(TN),
                        c2 = in(reg) lower,
                        c3 = in(reg) lower.add(TN),
                        s = in(reg) c_stride,
                        options(nostack, readonly)
                    )
                }
                Init::Zero => asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                ),
            }
            for kt in 0..k_tiles {
                asm!(
                    // Tiles are not renamed: each load comes right before its first use, so
                    // loads overlap the previous products (1.6x over loading all four first).
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kt * TK),
                    a1 = in(reg) a1.add(kt * TK),
                    b0 = in(reg) b0.add(kt * TILE),
                    b1 = in(reg) b1.add(kt * TILE),
                    sa = in(reg) stride,
                    sb = in(reg) B_STRIDE,
                    options(nostack, readonly)
                );
            }
            let lower = c.byte_add(TM * c_stride);
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(TN),
                c2 = in(reg) lower,
                c3 = in(reg) lower.add(TN),
                s = in(reg) c_stride,
                options(nostack)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::TestRng;

    /// The kernels this CPU has: every kernel test runs on each of them and skips the others
    /// (`kernel_coverage` says which, in CI's log).
    fn kernels() -> Vec<Bf16Kernel> {
        bf16_kernels_present().0
    }

    /// One line for CI's log (`.ci/run` runs this test with `--nocapture`): which kernels this
    /// binary's bf16 tests checked and which they skipped because the CPU lacks them. A skip is not a
    /// pass: `cargo xtask kernels --require NAME` fails where a kernel is missing.
    #[test]
    fn kernel_coverage() {
        let (present, absent) = bf16_kernels_present();
        let names = |ks: &[Bf16Kernel]| ks.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
        let lacks: Vec<String> = absent
            .iter()
            .map(|k| format!("{} [{}]", k.name(), k.needs()))
            .collect();
        eprintln!(
            "angle-tensor bf16 kernels checked: {}; skipped (CPU lacks): {}",
            names(&present),
            if lacks.is_empty() {
                "none".into()
            } else {
                lacks.join(", ")
            }
        );
        assert!(present.contains(&Bf16Kernel::Portable));
        assert!(
            present.contains(&bf16_kernel()),
            "the kernel in use is one the tests check"
        );
        assert_eq!(present.len() + absent.len(), Bf16Kernel::ALL.len());
    }

    fn f32s(rng: &mut TestRng, n: usize) -> Vec<f32> {
        rng.vec(n).iter().map(|&v| v as f32).collect()
    }

    /// The f64 value of `v` rounded to bf16.
    fn rounded(v: f32) -> f64 {
        f64::from(bf16_to_f32(f32_to_bf16(v)))
    }

    fn reference(inp: &[f32], w: &[f32], bias: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| rounded(inp[i * k + p]) * rounded(w[j * k + p]))
                    .sum();
                out[i * n + j] = s + f64::from(bias[j]);
            }
        }
        out
    }

    #[test]
    fn self_check_passes_for_every_kernel_present() {
        let (present, absent) = bf16_kernels_present();
        for kern in present {
            // f32 sums are not f64 sums: an error of exactly zero would mean the check compared nothing
            let e = bf16_self_check(kern).unwrap();
            assert!(e > 0.0 && e < 1e-5, "{}: {e}", kern.name());
        }
        for kern in absent {
            let e = bf16_self_check(kern).unwrap_err();
            assert!(e.contains("lacks") && e.contains(kern.name()), "{e}");
        }
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0)
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
    }

    /// Both kernels against an f64 sum of the same bf16-rounded values, on shapes with ragged
    /// edges (rows, columns and features not multiples of the tiles).
    #[test]
    fn kernels_match_reference() {
        let mut rng = TestRng::new(11);
        for (rows, k, n) in [
            (1, 1, 1),
            (5, 40, 17),
            (33, 64, 33),
            (70, 384, 96),
            (150, 100, 70),
            (97, 65, 50),
        ] {
            let inp = f32s(&mut rng, rows * k);
            let w = f32s(&mut rng, n * k);
            let bias = f32s(&mut rng, n);
            let packed = PackedBf16::pack(&w, n, k).unwrap();
            let want = reference(&inp, &w, &bias, rows, k, n);
            for kern in kernels() {
                let mut out = vec![f32::NAN; rows * n];
                linear_forward_bf16_with(kern, &mut out, &inp, &packed, Some(&bias), rows).unwrap();
                let e = rel_err(&out, &want);
                assert!(e < 1e-5, "{kern:?} {rows}x{k}x{n}: relative error {e}");
            }
        }
    }

    /// `out += x · W` through a transposed pack (a linear layer's input gradient), both kernels,
    /// ragged shapes, against an f64 sum of the rounded values plus the old contents.
    #[test]
    fn transposed_accumulate_matches_reference() {
        let mut rng = TestRng::new(12);
        for (rows, out_dim, in_dim) in [(3, 5, 7), (40, 64, 48), (70, 100, 33), (101, 47, 61)] {
            let dy = f32s(&mut rng, rows * out_dim);
            let w = f32s(&mut rng, out_dim * in_dim);
            let old = f32s(&mut rng, rows * in_dim);
            let packed = PackedBf16::pack_transposed(&w, out_dim, in_dim).unwrap();
            assert_eq!((packed.out_dim(), packed.in_dim()), (in_dim, out_dim));
            let want: Vec<f64> = (0..rows * in_dim)
                .map(|idx| {
                    let (i, j) = (idx / in_dim, idx % in_dim);
                    let s: f64 = (0..out_dim)
                        .map(|p| rounded(dy[i * out_dim + p]) * rounded(w[p * in_dim + j]))
                        .sum();
                    s + f64::from(old[idx])
                })
                .collect();
            for kern in kernels() {
                let mut out = old.clone();
                bf16_product(kern, &mut out, &dy, &packed, None, rows, Then::Add).unwrap();
                let e = rel_err(&out, &want);
                assert!(e < 1e-5, "{kern:?} {rows}x{out_dim}x{in_dim}: relative error {e}");
            }
        }
    }

    /// All three gradients of a bf16 linear backward against f64 sums of the bf16-rounded
    /// values (bias sums in f32 from the unrounded `dout`), added onto existing contents.
    #[test]
    fn backward_matches_reference() {
        let mut rng = TestRng::new(13);
        for (rows, in_dim, out_dim) in [(5, 7, 3), (37, 40, 70), (90, 64, 48)] {
            let (x, w, dy) = (
                f32s(&mut rng, rows * in_dim),
                f32s(&mut rng, out_dim * in_dim),
                f32s(&mut rng, rows * out_dim),
            );
            let (dx0, dw0, db0) = (
                f32s(&mut rng, rows * in_dim),
                f32s(&mut rng, out_dim * in_dim),
                f32s(&mut rng, out_dim),
            );
            let want_dx: Vec<f64> = (0..rows * in_dim)
                .map(|i| {
                    let (a, j) = (i / in_dim, i % in_dim);
                    f64::from(dx0[i])
                        + (0..out_dim)
                            .map(|o| rounded(dy[a * out_dim + o]) * rounded(w[o * in_dim + j]))
                            .sum::<f64>()
                })
                .collect();
            let want_dw: Vec<f64> = (0..out_dim * in_dim)
                .map(|i| {
                    let (o, j) = (i / in_dim, i % in_dim);
                    f64::from(dw0[i])
                        + (0..rows)
                            .map(|a| rounded(dy[a * out_dim + o]) * rounded(x[a * in_dim + j]))
                            .sum::<f64>()
                })
                .collect();
            let want_db: Vec<f64> = (0..out_dim)
                .map(|o| f64::from(db0[o]) + (0..rows).map(|a| f64::from(dy[a * out_dim + o])).sum::<f64>())
                .collect();
            let wt = PackedBf16::pack_transposed(&w, out_dim, in_dim).unwrap();
            for kern in kernels() {
                let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
                linear_backward_bf16_with(
                    kern,
                    &mut dx,
                    &mut dw,
                    Some(&mut db),
                    &dy,
                    &x,
                    &wt,
                    rows,
                    in_dim,
                    out_dim,
                )
                .unwrap();
                for (name, got, want) in [
                    ("dx", &dx, &want_dx),
                    ("dw", &dw, &want_dw),
                    ("db", &db, &want_db),
                ] {
                    let e = rel_err(got, want);
                    assert!(
                        e < 1e-5,
                        "{kern:?} {rows}x{in_dim}x{out_dim} {name}: relative error {e}"
                    );
                }
            }
            let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
            // a weight packed the other way round is refused
            let wrong = PackedBf16::pack(&w, out_dim, in_dim).unwrap();
            if in_dim != out_dim {
                assert!(
                    linear_backward_bf16(&mut dx, &mut dw, None, &dy, &x, &wrong, rows, in_dim, out_dim)
                        .is_err()
                );
            }
        }
    }

    /// On every kernel present, the fused product + GELU gives the bits of the same kernel's product
    /// followed by `gelu_forward` (ragged shapes: edge blocks, more rows than a cache block; both GELU
    /// forms), and `linear_forward_bf16_gelu` is the kernel in use.
    #[test]
    fn gelu_epilogue_equals_product_then_gelu() {
        let mut rng = TestRng::new(14);
        for (rows, k, n) in [(1, 3, 5), (61, 97, 45), (100, 40, 70), (13, 384, 1536)] {
            let (inp, w, bias) = (f32s(&mut rng, rows * k), f32s(&mut rng, n * k), f32s(&mut rng, n));
            let packed = PackedBf16::pack(&w, n, k).unwrap();
            for kind in [GeluKind::Erf, GeluKind::Tanh] {
                for kern in kernels() {
                    let (mut fused, mut pre, mut want) =
                        (vec![f32::NAN; rows * n], vec![0.0; rows * n], vec![0.0; rows * n]);
                    linear_forward_bf16_gelu_with(kern, &mut fused, &inp, &packed, Some(&bias), rows, kind)
                        .unwrap();
                    linear_forward_bf16_with(kern, &mut pre, &inp, &packed, Some(&bias), rows).unwrap();
                    crate::cpu::gelu_forward(&mut want, &pre, rows * n, kind).unwrap();
                    assert_eq!(fused, want, "{} {rows}x{k}x{n} {kind:?}", kern.name());
                    if kern == bf16_kernel() {
                        let mut public = vec![f32::NAN; rows * n];
                        linear_forward_bf16_gelu(&mut public, &inp, &packed, Some(&bias), rows, kind)
                            .unwrap();
                        assert_eq!(public, fused, "{rows}x{k}x{n} {kind:?}");
                    }
                }
            }
        }
    }

    /// A repack into used buffers gives the bits of a fresh pack, for whole-tile and ragged shapes, both forms
    /// (stale values must not survive where the memset is skipped, nor padding be lost where it is not).
    #[test]
    fn repacking_into_used_buffers_equals_a_fresh_pack() {
        let mut rng = TestRng::new(15);
        for (n, k) in [(64, 96), (45, 97), (32, 32)] {
            let (old, w) = (f32s(&mut rng, n * k), f32s(&mut rng, n * k));
            let (mut a, mut b) = (
                PackedBf16::pack(&old, n, k).unwrap(),
                PackedBf16::pack_transposed(&old, k, n).unwrap(),
            );
            a.pack_into(&w, n, k).unwrap();
            b.pack_transposed_into(&w, k, n).unwrap();
            assert_eq!(a.tiles, PackedBf16::pack(&w, n, k).unwrap().tiles, "{n}x{k}");
            assert_eq!(
                b.tiles,
                PackedBf16::pack_transposed(&w, k, n).unwrap().tiles,
                "{n}x{k} transposed"
            );
        }
    }

    #[test]
    fn close_to_f32_linear() {
        let (rows, k, n) = (64, 384, 128);
        let mut rng = TestRng::new(5);
        let inp = f32s(&mut rng, rows * k);
        let w = f32s(&mut rng, n * k);
        let mut f32_out = vec![0.0f32; rows * n];
        crate::cpu::linear_forward(&mut f32_out, &inp, &w, None, rows, k, n).unwrap();
        let mut out = vec![0.0f32; rows * n];
        linear_forward_bf16(&mut out, &inp, &PackedBf16::pack(&w, n, k).unwrap(), None, rows).unwrap();
        let want: Vec<f64> = f32_out.iter().map(|&v| f64::from(v)).collect();
        let e = rel_err(&out, &want);
        assert!(e < 1e-2, "bf16 vs f32 relative error {e}");
    }

    #[test]
    fn kernel_override_names_a_kernel_this_cpu_has() {
        assert_eq!(kernel_override(None), Ok(None));
        assert_eq!(kernel_override(Some(" ")), Ok(None));
        assert_eq!(kernel_override(Some("Portable")), Ok(Some(Bf16Kernel::Portable)));
        let err = kernel_override(Some("avx3")).unwrap_err();
        assert!(
            err.contains("unknown kernel `avx3`") && err.contains("avx512-bf16"),
            "{err}"
        );
        for k in Bf16Kernel::ALL {
            match kernel_override(Some(k.name())) {
                Ok(got) => assert_eq!(got, Some(k)),
                Err(e) => assert!(!k.available() && e.contains(k.needs()), "{e}"),
            }
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let packed = PackedBf16::pack(&[0.0; 6], 2, 3).unwrap();
        let mut out = vec![0.0; 4];
        assert!(linear_forward_bf16(&mut out, &[0.0; 5], &packed, None, 2).is_err());
        assert!(linear_forward_bf16(&mut out, &[0.0; 6], &packed, Some(&[0.0]), 2).is_err());
        assert!(PackedBf16::pack(&[0.0; 5], 2, 3).is_err());
    }
}
