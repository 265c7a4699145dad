//! Multi-head self-attention over packed sequences; kernels in `attention.cu`, products through
//! cuBLAS strided-batched over a padded `[B, heads, T, d]` layout (T = the longest sequence of
//! the batch). Padded rows and columns are zeros and the softmax masks columns `j >= len_b`,
//! so the real rows equal [`crate::cpu::attention_forward`]'s, dropout numbering included.

use super::blas::{Gemm, MatOp, gemm_strided_batched};
use super::context::{Gpu, GpuError, KernelSource, check_len, dim, kargs};
use super::memory::{DSlice, DType};

pub(crate) const SRC: KernelSource = KernelSource {
    file: "attention.cu",
    src: include_str!("attention.cu"),
};

/// Dimensions of one batch's attention.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Longest sequence (the padded length).
    pub t_max: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    /// Real tokens N (`seq_offsets[batch]`).
    pub rows: usize,
}

impl AttentionShape {
    /// From host `seq_offsets` (as the CPU op takes them).
    pub fn new(seq_offsets: &[usize], n_heads: usize, hidden: usize) -> Self {
        let t_max = seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        Self {
            batch: seq_offsets.len().saturating_sub(1),
            t_max,
            n_heads,
            head_dim: hidden.checked_div(n_heads).unwrap_or(0),
            rows: *seq_offsets.last().unwrap_or(&0),
        }
    }
    fn hidden(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// (padded q/k/v/ctx length, scores length) for a shape: each of q, k, v, the saved
/// probabilities and the scratch buffers is one of these.
pub fn attention_scratch_len(s: &AttentionShape) -> (usize, usize) {
    let bh = s.batch * s.n_heads;
    (bh * s.t_max * s.head_dim, bh * s.t_max * s.t_max)
}

/// The dropout numbering's base of each sequence: `Σ_{b'<b} heads · len_b'²` (upload as i64).
pub fn attention_pbase(seq_offsets: &[usize], n_heads: usize) -> Vec<i64> {
    let mut out = Vec::new();
    attention_pbase_into(seq_offsets, n_heads, &mut out);
    out
}

/// [`attention_pbase`] into `out` (cleared first; no allocation once it has the capacity).
pub fn attention_pbase_into(seq_offsets: &[usize], n_heads: usize, out: &mut Vec<i64>) {
    out.clear();
    let mut acc = 0i64;
    for w in seq_offsets.windows(2) {
        out.push(acc);
        acc += (n_heads * (w[1] - w[0]) * (w[1] - w[0])) as i64;
    }
}

fn geo_args(op: &'static str, s: &AttentionShape) -> Result<[i32; 4], GpuError> {
    // the kernels index the padded layouts with 32-bit arithmetic
    let (pl, sl) = attention_scratch_len(s);
    dim(op, "padded q/k/v length", pl)?;
    dim(op, "scores length", sl)?;
    Ok([
        dim(op, "batch", s.batch)?,
        dim(op, "n_heads", s.n_heads)?,
        dim(op, "t_max", s.t_max)?,
        dim(op, "head_dim", s.head_dim)?,
    ])
}

/// Whether the permutes may move 4 consecutive `d` at a time: head rows of whole groups and
/// every view they touch aligned for 4-element accesses.
pub(crate) fn permute_vectorised<T: DType>(s: &AttentionShape, views: &[DSlice<T>]) -> bool {
    s.head_dim.is_multiple_of(4) && views.iter().all(|&v| super::gelu::aligned4(v))
}

/// The permute kernels' launch: `(vectorised name, scalar name)` picked by `vec`, grid over the
/// padded length (a quarter of it when vectorised), and `hd` (`hd / 4` when vectorised).
fn permute_launch(
    vec: bool,
    names: (&'static str, &'static str),
    pl: usize,
    hd: i32,
) -> (&'static str, u32, i32) {
    if vec {
        (names.0, super::grid_1d(pl / 4), hd / 4)
    } else {
        (names.1, super::grid_1d(pl), hd)
    }
}

fn batched(
    ta: MatOp,
    tb: MatOp,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    lda: usize,
    ldb: usize,
    ldc: usize,
    sa: usize,
    sb: usize,
    sc: usize,
    batch: usize,
) -> Gemm {
    Gemm {
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        beta: 0.0,
        lda,
        ldb,
        ldc,
        stride_a: sa,
        stride_b: sb,
        stride_c: sc,
        batch,
    }
}

/// Saved by [`attention_forward`] for [`attention_backward`]: padded q, k, v (bias added) and
/// the softmax probabilities (before dropout).
#[derive(Debug, Clone, Copy)]
pub struct AttentionSaved<T> {
    pub q: DSlice<T>,
    pub k: DSlice<T>,
    pub v: DSlice<T>,
    pub probs: DSlice<T>,
}

/// `out[N, H] = softmax(Q Kᵀ / √d) V` per sequence and head, from `qkv[N, 3H]` (+ `qkv_bias`,
/// the Q/K/V linear's bias, added here). `scores` (scores length) and `ctx` (padded length)
/// are scratch. `offsets` (i32, B + 1) and `pbase` (i64, B) are on the device.
pub fn attention_forward<T: DType>(
    gpu: &Gpu,
    out: DSlice<T>,
    saved: AttentionSaved<T>,
    scores: DSlice<T>,
    ctx: DSlice<T>,
    qkv: DSlice<T>,
    qkv_bias: Option<DSlice<f32>>,
    offsets: DSlice<i32>,
    pbase: DSlice<i64>,
    s: &AttentionShape,
    dropout: Option<(f32, u64)>,
) -> Result<(), GpuError> {
    const OP: &str = "attention_forward";
    let h = s.hidden();
    let (pl, sl) = attention_scratch_len(s);
    check_len(OP, "out", out.len(), s.rows * h)?;
    check_len(OP, "qkv", qkv.len(), s.rows * 3 * h)?;
    for (name, v) in [("q", saved.q), ("k", saved.k), ("v", saved.v), ("ctx", ctx)] {
        check_len(OP, name, v.len(), pl)?;
    }
    check_len(OP, "probs", saved.probs.len(), sl)?;
    check_len(OP, "scores", scores.len(), sl)?;
    check_len(OP, "offsets", offsets.len(), s.batch + 1)?;
    check_len(OP, "pbase", pbase.len(), s.batch)?;
    if let Some(b) = qkv_bias {
        check_len(OP, "qkv_bias", b.len(), 3 * h)?;
    }
    let [b, nh, tm, hd] = geo_args(OP, s)?;
    let vec = permute_vectorised(s, &[saved.q, saved.k, saved.v, qkv, ctx, out]);
    let (name, grid, hdk) = permute_launch(
        vec,
        (
            super::kname::<T>("qkv_permute4_f32", "qkv_permute4_bf16"),
            super::kname::<T>("qkv_permute_f32", "qkv_permute_bf16"),
        ),
        pl,
        hd,
    );
    gpu.launch(
        &SRC,
        name,
        (grid, 1, 1),
        256,
        0,
        &mut kargs![
            saved.q,
            saved.k,
            saved.v,
            qkv,
            qkv_bias.unwrap_or(DSlice::null()),
            offsets,
            b,
            nh,
            tm,
            hdk
        ],
    )?;
    let (t, d, bh) = (s.t_max, s.head_dim, s.batch * s.n_heads);
    let scale = 1.0 / (d as f32).sqrt();
    // scores (row-major [i][j] = q_i·k_j) = column-major Kᵀ·Q.
    let g = batched(
        MatOp::T,
        MatOp::N,
        t,
        t,
        d,
        scale,
        d,
        d,
        t,
        t * d,
        t * d,
        t * t,
        bh,
    );
    gemm_strided_batched(gpu, g, saved.k, saved.q, scores)?;
    let (p, seed) = dropout.unwrap_or((0.0, 0));
    let (thr, dscale) = super::dropout::params(OP, p)?;
    let rows = bh * t;
    gpu.launch(
        &SRC,
        super::kname::<T>("attn_softmax_forward_f32", "attn_softmax_forward_bf16"),
        (rows.div_ceil(8).max(1) as u32, 1, 1),
        256,
        0,
        &mut kargs![
            saved.probs,
            scores,
            scores,
            offsets,
            pbase,
            b,
            nh,
            tm,
            thr,
            dscale,
            seed,
            i32::from(p > 0.0)
        ],
    )?;
    let pmat = if p > 0.0 { scores } else { saved.probs };
    // ctx (row-major [i][d] = Σ_j P[i][j] v_j[d]) = column-major V·P.
    let g = batched(MatOp::N, MatOp::N, d, t, t, 1.0, d, t, d, t * d, t * t, t * d, bh);
    gemm_strided_batched(gpu, g, saved.v, pmat, ctx)?;
    let (name, grid, hdk) = permute_launch(
        vec,
        (
            super::kname::<T>("attn_unpermute4_f32", "attn_unpermute4_bf16"),
            super::kname::<T>("attn_unpermute_f32", "attn_unpermute_bf16"),
        ),
        pl,
        hd,
    );
    gpu.launch(
        &SRC,
        name,
        (grid, 1, 1),
        256,
        0,
        &mut kargs![out, ctx, offsets, b, nh, tm, hdk],
    )
}

/// Backward of [`attention_forward`]: `dqkv (+)= ...` (added when `accumulate`), from `dout
/// [N, H]` and what forward saved. `scores` (scores length) and `dq`, `dk`, `dv`, `dctx`
/// (padded length) are scratch. The Q/K/V bias gradient is [`super::bias_grad`] of `dqkv`.
pub fn attention_backward<T: DType>(
    gpu: &Gpu,
    dqkv: DSlice<T>,
    accumulate: bool,
    dout: DSlice<T>,
    saved: AttentionSaved<T>,
    scores: DSlice<T>,
    grads: [DSlice<T>; 4],
    offsets: DSlice<i32>,
    pbase: DSlice<i64>,
    s: &AttentionShape,
    dropout: Option<(f32, u64)>,
) -> Result<(), GpuError> {
    const OP: &str = "attention_backward";
    let h = s.hidden();
    let (pl, sl) = attention_scratch_len(s);
    let [dq, dk, dv, dctx] = grads;
    check_len(OP, "dqkv", dqkv.len(), s.rows * 3 * h)?;
    check_len(OP, "dout", dout.len(), s.rows * h)?;
    for (name, v) in [
        ("q", saved.q),
        ("k", saved.k),
        ("v", saved.v),
        ("dq", dq),
        ("dk", dk),
        ("dv", dv),
        ("dctx", dctx),
    ] {
        check_len(OP, name, v.len(), pl)?;
    }
    check_len(OP, "probs", saved.probs.len(), sl)?;
    check_len(OP, "scores", scores.len(), sl)?;
    let [b, nh, tm, hd] = geo_args(OP, s)?;
    let (t, d, bh) = (s.t_max, s.head_dim, s.batch * s.n_heads);
    let scale = 1.0 / (d as f32).sqrt();
    let (p, seed) = dropout.unwrap_or((0.0, 0));
    let (thr, dscale) = super::dropout::params(OP, p)?;
    let vec = permute_vectorised(s, &[dqkv, dout, dq, dk, dv, dctx]);
    let (name, grid, hdk) = permute_launch(
        vec,
        (
            super::kname::<T>("attn_unpermute_backward4_f32", "attn_unpermute_backward4_bf16"),
            super::kname::<T>("attn_unpermute_backward_f32", "attn_unpermute_backward_bf16"),
        ),
        pl,
        hd,
    );
    gpu.launch(
        &SRC,
        name,
        (grid, 1, 1),
        256,
        0,
        &mut kargs![dctx, dout, offsets, b, nh, tm, hdk],
    )?;
    let pmat = if p > 0.0 {
        gpu.launch(
            &SRC,
            super::kname::<T>("attn_dropout_regen_f32", "attn_dropout_regen_bf16"),
            (super::grid_1d(sl), 1, 1),
            256,
            0,
            &mut kargs![scores, saved.probs, offsets, pbase, b, nh, tm, thr, dscale, seed],
        )?;
        scores
    } else {
        saved.probs
    };
    // dV = P_dropᵀ dY: column-major dctx · Pᵀ.
    let g = batched(MatOp::N, MatOp::T, d, t, t, 1.0, d, t, d, t * d, t * t, t * d, bh);
    gemm_strided_batched(gpu, g, dctx, pmat, dv)?;
    // dP = dY Vᵀ: column-major Vᵀ · dctx.
    let g = batched(MatOp::T, MatOp::N, t, t, d, 1.0, d, d, t, t * d, t * d, t * t, bh);
    gemm_strided_batched(gpu, g, saved.v, dctx, scores)?;
    gpu.launch(
        &SRC,
        super::kname::<T>("attn_softmax_backward_f32", "attn_softmax_backward_bf16"),
        ((bh * t).div_ceil(8).max(1) as u32, 1, 1),
        256,
        0,
        &mut kargs![
            scores,
            saved.probs,
            offsets,
            pbase,
            b,
            nh,
            tm,
            thr,
            dscale,
            seed,
            i32::from(p > 0.0)
        ],
    )?;
    // dQ = dS K / √d: column-major K · dS; dK = dSᵀ Q / √d: column-major Q · dSᵀ.
    let g = batched(
        MatOp::N,
        MatOp::N,
        d,
        t,
        t,
        scale,
        d,
        t,
        d,
        t * d,
        t * t,
        t * d,
        bh,
    );
    gemm_strided_batched(gpu, g, saved.k, scores, dq)?;
    let g = batched(
        MatOp::N,
        MatOp::T,
        d,
        t,
        t,
        scale,
        d,
        t,
        d,
        t * d,
        t * t,
        t * d,
        bh,
    );
    gemm_strided_batched(gpu, g, saved.q, scores, dk)?;
    let (name, grid, hdk) = permute_launch(
        vec,
        (
            super::kname::<T>("qkv_permute_backward4_f32", "qkv_permute_backward4_bf16"),
            super::kname::<T>("qkv_permute_backward_f32", "qkv_permute_backward_bf16"),
        ),
        pl,
        hd,
    );
    gpu.launch(
        &SRC,
        name,
        (grid, 1, 1),
        256,
        0,
        &mut kargs![dqkv, dq, dk, dv, offsets, b, nh, tm, hdk, i32::from(accumulate)],
    )
}
