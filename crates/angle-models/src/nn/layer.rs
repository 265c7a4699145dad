//! Transformer layers composed of the blocks: `BertLayer` (post-norm: BERT, RoBERTa, ELECTRA, ALBERT's
//! `AlbertLayer`) and `ModernBertLayer` (pre-norm, ModernBERT's `ModernBertEncoderLayer`).

use angle_tensor::cpu::{dropout_backward, dropout_forward_inplace};
use angle_tensor::rng::derive_seed;

use super::attention::{Attention, AttentionSeeds, AttentionState};
use super::mlp::{Mlp, MlpState};
use super::norm::{LayerNorm, NormState};
use super::vars::{Grads, Weights};
use crate::error::{ModelError, Result};

/// Dropout seeds of one layer in one step (train mode).
#[derive(Debug, Clone, Copy)]
pub struct LayerSeeds {
    /// Attention probabilities, attention output, feed-forward output (BERT's three sites).
    pub probs: u64,
    pub attn_out: u64,
    pub ffn_out: u64,
    /// LoRA input dropout.
    pub lora: u64,
}

/// BERT's layer: `h = LN1(x + drop(Attn(x)))`, `out = LN2(h + drop(Mlp(h)))`.
#[derive(Debug, Clone)]
pub struct BertLayer {
    pub attention: Attention,
    pub attn_norm: LayerNorm,
    pub mlp: Mlp,
    pub out_norm: LayerNorm,
    pub hidden_dropout: f64,
}

/// ModernBERT's layer: `r = x + Attn(attn_norm(x))`, `out = r + Mlp(mlp_norm(r))`; the first layer has
/// no attention norm (an identity).
#[derive(Debug, Clone)]
pub struct ModernBertLayer {
    pub attn_norm: Option<LayerNorm>,
    pub attention: Attention,
    pub mlp_norm: LayerNorm,
    pub mlp: Mlp,
}

/// A layer of either kind.
#[derive(Debug, Clone)]
pub enum Layer {
    Bert(BertLayer),
    ModernBert(ModernBertLayer),
}

/// What one use of a layer keeps (ALBERT runs one layer's weights several times: one state per use).
#[derive(Debug, Clone, Default)]
pub struct LayerState {
    attn: AttentionState,
    mlp: MlpState,
    n1: NormState,
    n2: NormState,
    /// Attention output, first residual sum, its norm, feed-forward output, second residual sum.
    attn_out: Vec<f32>,
    res1: Vec<f32>,
    h1: Vec<f32>,
    ffn: Vec<f32>,
    res2: Vec<f32>,
    d1: Vec<f32>,
    d2: Vec<f32>,
    d3: Vec<f32>,
    seeds: Option<LayerSeeds>,
}

impl LayerState {
    /// Floats held (activations and work buffers of this use).
    pub fn floats(&self) -> usize {
        [
            &self.attn_out,
            &self.res1,
            &self.h1,
            &self.ffn,
            &self.res2,
            &self.d1,
            &self.d2,
            &self.d3,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
            + self.attn.floats()
            + self.mlp.floats()
            + self.n1.floats()
            + self.n2.floats()
    }
}

fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

impl Layer {
    pub fn hidden(&self) -> usize {
        match self {
            Layer::Bert(l) => l.attn_norm.dim,
            Layer::ModernBert(l) => l.mlp_norm.dim,
        }
    }

    /// `out [N, H]` from `x [N, H]`.
    pub fn forward(
        &self,
        w: &Weights<'_>,
        st: &mut LayerState,
        out: &mut [f32],
        x: &[f32],
        seq_offsets: &[usize],
        seeds: Option<LayerSeeds>,
    ) -> Result<()> {
        let n = x.len();
        let rows = *seq_offsets.last().unwrap_or(&0);
        st.seeds = seeds;
        let attn_seeds = seeds.map(|s| AttentionSeeds {
            probs: s.probs,
            lora: derive_seed(s.lora, 0),
        });
        let mlp_seed = seeds.map(|s| derive_seed(s.lora, 1));
        match self {
            Layer::Bert(l) => {
                let p = l.hidden_dropout as f32;
                st.attn_out.resize(n, 0.0);
                l.attention
                    .forward(w, &mut st.attn, &mut st.attn_out, x, seq_offsets, attn_seeds)?;
                if let Some(s) = seeds.filter(|_| p > 0.0) {
                    dropout_forward_inplace(&mut st.attn_out, n, p, s.attn_out)?;
                }
                st.res1.clear();
                st.res1.extend(x.iter().zip(&st.attn_out).map(|(a, b)| a + b));
                st.h1.resize(n, 0.0);
                l.attn_norm.forward(w, &mut st.n1, &mut st.h1, &st.res1, rows)?;
                st.ffn.resize(n, 0.0);
                l.mlp
                    .forward(w, &mut st.mlp, &mut st.ffn, &st.h1, rows, mlp_seed)?;
                if let Some(s) = seeds.filter(|_| p > 0.0) {
                    dropout_forward_inplace(&mut st.ffn, n, p, s.ffn_out)?;
                }
                st.res2.clear();
                st.res2.extend(st.h1.iter().zip(&st.ffn).map(|(a, b)| a + b));
                l.out_norm.forward(w, &mut st.n2, out, &st.res2, rows)
            }
            Layer::ModernBert(l) => {
                let a: &[f32] = match &l.attn_norm {
                    Some(norm) => {
                        st.h1.resize(n, 0.0);
                        norm.forward(w, &mut st.n1, &mut st.h1, x, rows)?;
                        &st.h1
                    }
                    None => x,
                };
                st.attn_out.resize(n, 0.0);
                l.attention
                    .forward(w, &mut st.attn, &mut st.attn_out, a, seq_offsets, attn_seeds)?;
                st.res1.clear();
                st.res1.extend(x.iter().zip(&st.attn_out).map(|(a, b)| a + b));
                st.res2.resize(n, 0.0);
                l.mlp_norm.forward(w, &mut st.n2, &mut st.res2, &st.res1, rows)?;
                st.ffn.resize(n, 0.0);
                l.mlp
                    .forward(w, &mut st.mlp, &mut st.ffn, &st.res2, rows, mlp_seed)?;
                out.iter_mut()
                    .zip(st.res1.iter().zip(&st.ffn))
                    .for_each(|(o, (a, b))| *o = a + b);
                Ok(())
            }
        }
    }

    /// Adds the gradients of the last forward of this use and `dx += d out / d x · dout`.
    pub fn backward(
        &self,
        w: &Weights<'_>,
        g: &mut Grads<'_>,
        st: &mut LayerState,
        dx: &mut [f32],
        dout: &[f32],
        x: &[f32],
        seq_offsets: &[usize],
    ) -> Result<()> {
        let n = x.len();
        let rows = *seq_offsets.last().unwrap_or(&0);
        let LayerState {
            attn,
            mlp,
            n1,
            n2,
            attn_out: _,
            res1,
            h1,
            ffn: _,
            res2,
            d1,
            d2,
            d3,
            seeds,
        } = st;
        match self {
            Layer::Bert(l) => {
                let p = l.hidden_dropout as f32;
                let drop = seeds.filter(|_| p > 0.0);
                // d res2, then the residual: d h1 = d res2 + Mlp's part
                let dres2 = zeroed(d1, n);
                l.out_norm.backward(w, g, n2, dres2, dout, res2, rows)?;
                d2.clear();
                d2.extend_from_slice(dres2);
                let dffn: &[f32] = match drop {
                    Some(s) => {
                        let d = zeroed(d3, n);
                        dropout_backward(d, dres2, n, p, s.ffn_out)?;
                        d
                    }
                    None => dres2,
                };
                l.mlp.backward(w, g, mlp, d2, dffn, h1, rows)?;
                let dres1 = zeroed(d1, n);
                l.attn_norm.backward(w, g, n1, dres1, d2, res1, rows)?;
                dx.iter_mut().zip(dres1.iter()).for_each(|(a, b)| *a += b);
                let dattn: &[f32] = match drop {
                    Some(s) => {
                        let d = zeroed(d3, n);
                        dropout_backward(d, dres1, n, p, s.attn_out)?;
                        d
                    }
                    None => dres1,
                };
                l.attention.backward(w, g, attn, dx, dattn, x, seq_offsets)
            }
            Layer::ModernBert(l) => {
                // out = res1 + Mlp(mlp_norm(res1)); res1 = x + Attn(attn_norm(x))
                d1.clear();
                d1.extend_from_slice(dout);
                let dm = zeroed(d2, n);
                l.mlp.backward(w, g, mlp, dm, dout, res2, rows)?;
                l.mlp_norm.backward(w, g, n2, d1, dm, res1, rows)?;
                dx.iter_mut().zip(d1.iter()).for_each(|(a, b)| *a += b);
                match &l.attn_norm {
                    Some(norm) => {
                        let da = zeroed(d3, n);
                        l.attention.backward(w, g, attn, da, d1, h1, seq_offsets)?;
                        norm.backward(w, g, n1, dx, da, x, rows)
                    }
                    None => l.attention.backward(w, g, attn, dx, d1, x, seq_offsets),
                }
            }
        }
    }

    /// Refuses train-mode dropout this layer cannot apply.
    pub fn check_dropout(&self, ModernBertDropout { attention, mlp }: ModernBertDropout) -> Result<()> {
        if let Layer::ModernBert(_) = self
            && (attention > 0.0 || mlp > 0.0)
        {
            return Err(ModelError::State(format!(
                "ModernBERT dropout inside a layer (attention_dropout {attention}, mlp_dropout {mlp}) is not \
                 implemented; set both to 0 in config.json to train"
            )));
        }
        Ok(())
    }
}

/// ModernBERT's in-layer dropout settings (refused in train mode when not 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct ModernBertDropout {
    pub attention: f64,
    pub mlp: f64,
}
