//! `Attention`: the fused query/key/value product, multi-head attention over packed sequences and the
//! output projection. Bidirectional; optionally rotary (ModernBERT) and windowed (ModernBERT's local
//! layers: token `i` sees `|i − j| <= window`). Plain attention runs the fused-`qkv` op, which also
//! drops attention probabilities (BERT's `attention_probs_dropout_prob`); rotary attention splits the
//! product into `q`, `k`, `v`, rotates `q` and `k`, and runs the grouped-query op.

use angle_tensor::cpu::{
    AttentionDropout, GqaShape, attention_backward, attention_forward, attention_probs_len,
    gqa_attention_backward, gqa_attention_forward, rope_backward, rope_forward, rope_tables,
};
use angle_tensor::rng::derive_seed;

use super::linear::{Linear, LinearState};
use super::vars::{Grads, Weights};
use crate::error::Result;

/// Rotary tables for one base.
#[derive(Debug, Clone)]
pub struct Rope {
    pub theta: f64,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pub max_len: usize,
}

impl Rope {
    pub fn new(theta: f64, head_dim: usize, max_len: usize) -> Rope {
        let (cos, sin) = rope_tables::<f32>(theta, head_dim, max_len);
        Rope {
            theta,
            cos,
            sin,
            max_len,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    /// `[3H, in]`: query, key, value.
    pub qkv: Linear,
    /// `[H, H]`
    pub out: Linear,
    pub heads: usize,
    pub head_dim: usize,
    pub rope: Option<Rope>,
    pub window: Option<usize>,
    /// Attention-probability dropout (plain attention only).
    pub probs_dropout: f64,
}

#[derive(Debug, Clone, Default)]
pub struct AttentionState {
    qkv: Vec<f32>,
    /// Rotary path: the rotated query and key, and the value, each `[N, H]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    scratch: Vec<f32>,
    ctx: Vec<f32>,
    dctx: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dqkv: Vec<f32>,
    lin_qkv: LinearState,
    lin_out: LinearState,
    probs_seed: Option<u64>,
}

impl AttentionState {
    /// Floats held (activations and work buffers).
    pub fn floats(&self) -> usize {
        [
            &self.qkv,
            &self.q,
            &self.k,
            &self.v,
            &self.probs,
            &self.scratch,
            &self.ctx,
            &self.dctx,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.dqkv,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
            + self.lin_qkv.floats()
            + self.lin_out.floats()
    }
}

/// Dropout seeds of one use: probabilities, and the LoRA dropouts of the two products.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSeeds {
    pub probs: u64,
    pub lora: u64,
}

impl Attention {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `out [N, H]` = attention of `inp [N, in]` (the output projection included, no residual).
    pub fn forward(
        &self,
        w: &Weights<'_>,
        st: &mut AttentionState,
        out: &mut [f32],
        inp: &[f32],
        seq_offsets: &[usize],
        seeds: Option<AttentionSeeds>,
    ) -> Result<()> {
        let (n, h) = (*seq_offsets.last().unwrap_or(&0), self.hidden());
        let lora = |t: u64| seeds.map(|s| derive_seed(s.lora, t));
        st.qkv.resize(n * 3 * h, 0.0);
        self.qkv
            .forward(w, &mut st.lin_qkv, &mut st.qkv, inp, n, lora(0))?;
        let plen = attention_probs_len(seq_offsets, self.heads);
        st.probs.resize(plen, 0.0);
        st.ctx.resize(n * h, 0.0);
        match &self.rope {
            None if self.window.is_none() => {
                st.probs_seed = seeds.filter(|_| self.probs_dropout > 0.0).map(|s| s.probs);
                let dropout = st.probs_seed.map(|seed| AttentionDropout {
                    p: self.probs_dropout,
                    seed,
                });
                if dropout.is_some() {
                    st.scratch.resize(plen, 0.0);
                }
                attention_forward(
                    &mut st.ctx,
                    &mut st.probs,
                    &mut st.scratch,
                    &st.qkv,
                    seq_offsets,
                    self.heads,
                    h,
                    dropout,
                )?;
            }
            rope => {
                for (buf, part) in [(&mut st.q, 0), (&mut st.k, 1), (&mut st.v, 2)] {
                    buf.clear();
                    buf.extend(
                        st.qkv
                            .chunks_exact(3 * h)
                            .flat_map(|r| &r[part * h..(part + 1) * h]),
                    );
                }
                if let Some(r) = rope {
                    let longest = seq_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
                    if longest > r.max_len {
                        return Err(crate::ModelError::Batch(format!(
                            "a sequence of {longest} tokens is longer than the model's {} positions",
                            r.max_len
                        )));
                    }
                    rope_forward(&mut st.q, &r.cos, &r.sin, seq_offsets, self.heads, self.head_dim)?;
                    rope_forward(&mut st.k, &r.cos, &r.sin, seq_offsets, self.heads, self.head_dim)?;
                }
                gqa_attention_forward(
                    &mut st.ctx,
                    &mut st.probs,
                    &st.q,
                    &st.k,
                    &st.v,
                    seq_offsets,
                    self.shape(),
                )?;
            }
        }
        self.out.forward(w, &mut st.lin_out, out, &st.ctx, n, lora(1))
    }

    fn shape(&self) -> GqaShape {
        GqaShape {
            n_heads: self.heads,
            n_kv_heads: self.heads,
            head_dim: self.head_dim,
            causal: false,
            window: self.window,
        }
    }

    /// Adds the gradients of the last forward of this use, and `dinp += d out / d inp · dout`.
    pub fn backward(
        &self,
        w: &Weights<'_>,
        g: &mut Grads<'_>,
        st: &mut AttentionState,
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        seq_offsets: &[usize],
    ) -> Result<()> {
        let (n, h) = (*seq_offsets.last().unwrap_or(&0), self.hidden());
        st.dctx.clear();
        st.dctx.resize(n * h, 0.0);
        self.out
            .backward(w, g, &mut st.lin_out, Some(&mut st.dctx), dout, &st.ctx, n)?;
        st.dqkv.clear();
        st.dqkv.resize(n * 3 * h, 0.0);
        let plen = st.probs.len();
        st.scratch.resize(plen, 0.0);
        match &self.rope {
            None if self.window.is_none() => {
                let dropout = st.probs_seed.map(|seed| AttentionDropout {
                    p: self.probs_dropout,
                    seed,
                });
                attention_backward(
                    &mut st.dqkv,
                    &mut st.scratch,
                    &st.dctx,
                    &st.qkv,
                    &st.probs,
                    seq_offsets,
                    self.heads,
                    h,
                    dropout,
                )?;
            }
            rope => {
                for d in [&mut st.dq, &mut st.dk, &mut st.dv] {
                    d.clear();
                    d.resize(n * h, 0.0);
                }
                gqa_attention_backward(
                    &mut st.dq,
                    &mut st.dk,
                    &mut st.dv,
                    &mut st.scratch,
                    &st.dctx,
                    &st.q,
                    &st.k,
                    &st.v,
                    &st.probs,
                    seq_offsets,
                    self.shape(),
                )?;
                if let Some(r) = rope {
                    rope_backward(&mut st.dq, &r.cos, &r.sin, seq_offsets, self.heads, self.head_dim)?;
                    rope_backward(&mut st.dk, &r.cos, &r.sin, seq_offsets, self.heads, self.head_dim)?;
                }
                for (row, t) in st.dqkv.chunks_exact_mut(3 * h).zip(0..n) {
                    row[..h].copy_from_slice(&st.dq[t * h..][..h]);
                    row[h..2 * h].copy_from_slice(&st.dk[t * h..][..h]);
                    row[2 * h..].copy_from_slice(&st.dv[t * h..][..h]);
                }
            }
        }
        self.qkv
            .backward(w, g, &mut st.lin_qkv, Some(dinp), &st.dqkv, inp, n)
    }
}
