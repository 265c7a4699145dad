//! `Embeddings`: word (+ position + token type) embeddings, `LayerNorm`, dropout (BERT's
//! `BertEmbeddings`, ELECTRA's and ALBERT's, whose width `embedding_size` may differ from the hidden
//! size; ModernBERT's `tok_embeddings` + `norm` without positions, which RoPE supplies).

use angle_tensor::cpu::{dropout_backward, dropout_forward, embedding_backward, embedding_forward};
use rayon::prelude::*;

use super::norm::{LayerNorm, NormState};
use super::vars::{Grads, Var, VarBuilder, Weights, path};
use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct Embeddings {
    pub word: Var,
    /// Absolute positions `[max_positions, dim]` and the id of position 0 (RoBERTa counts from
    /// `pad_token_id + 1`); `None` for rotary models.
    pub position: Option<(Var, usize)>,
    pub token_type: Option<Var>,
    pub norm: LayerNorm,
    pub dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub dropout: f64,
}

/// Settings of an [`Embeddings`] block.
#[derive(Debug, Clone)]
pub struct EmbeddingsConfig {
    pub dim: usize,
    pub vocab: usize,
    /// `(max_positions, first position id)`; `None`: no position table.
    pub positions: Option<(usize, usize)>,
    /// Token-type vocabulary; 0: no token-type table.
    pub type_vocab: usize,
    pub eps: f64,
    pub norm_bias: bool,
    pub dropout: f64,
    /// Module names: the word table, the position table, the type table, the norm.
    pub names: [&'static str; 4],
}

#[derive(Debug, Clone, Default)]
pub struct EmbeddingsState {
    positions: Vec<u32>,
    types: Vec<u32>,
    /// The sum of the tables (the norm's input) and the normed rows (dropout's input).
    sum: Vec<f32>,
    normed: Vec<f32>,
    norm: NormState,
    dsum: Vec<f32>,
    dnormed: Vec<f32>,
    seed: Option<u64>,
}

impl EmbeddingsState {
    /// Floats held (ids counted as one float each).
    pub fn floats(&self) -> usize {
        self.positions.len()
            + self.types.len()
            + [&self.sum, &self.normed, &self.dsum, &self.dnormed]
                .iter()
                .map(|v| v.len())
                .sum::<usize>()
            + self.norm.floats()
    }
}

impl Embeddings {
    pub fn new(vb: &mut VarBuilder, module: &str, c: &EmbeddingsConfig) -> Embeddings {
        let [w, p, t, n] = c.names;
        Embeddings {
            word: vb.tensor(&path(module, path(w, "weight")), &[c.vocab, c.dim]),
            position: c
                .positions
                .map(|(max, first)| (vb.tensor(&path(module, path(p, "weight")), &[max, c.dim]), first)),
            token_type: (c.type_vocab > 0)
                .then(|| vb.tensor(&path(module, path(t, "weight")), &[c.type_vocab, c.dim])),
            norm: LayerNorm::new(vb, &path(module, n), c.dim, c.eps, c.norm_bias),
            dim: c.dim,
            vocab: c.vocab,
            max_positions: c.positions.map_or(usize::MAX, |(m, _)| m),
            type_vocab: c.type_vocab,
            dropout: c.dropout,
        }
    }

    /// `out [N, dim]`: the embeddings of the packed batch. `dropout`: the site's seed (train mode).
    pub fn forward(
        &self,
        w: &Weights<'_>,
        st: &mut EmbeddingsState,
        out: &mut [f32],
        ids: &[u32],
        type_ids: Option<&[u32]>,
        seq_offsets: &[usize],
        dropout: Option<u64>,
    ) -> Result<()> {
        let (n, d) = (ids.len(), self.dim);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(ModelError::Batch(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        st.sum.resize(n * d, 0.0);
        match (&self.position, &self.token_type) {
            (Some((pos, first)), Some(typ)) => {
                st.positions.clear();
                for win in seq_offsets.windows(2) {
                    let len = win[1] - win[0];
                    if first + len > self.max_positions {
                        return Err(ModelError::Batch(format!(
                            "a sequence of {len} tokens is longer than the model's {} positions",
                            self.max_positions - first
                        )));
                    }
                    st.positions.extend((0..len).map(|t| (first + t) as u32));
                }
                st.types.clear();
                match type_ids {
                    Some(t) => st.types.extend_from_slice(t),
                    None => st.types.resize(n, 0),
                }
                if let Some(&bad) = st.types.iter().find(|&&t| t as usize >= self.type_vocab) {
                    return Err(ModelError::Batch(format!(
                        "token type {bad} is outside the {} types",
                        self.type_vocab
                    )));
                }
                let (wt, pt, tt) = (w.get(&self.word), w.get(pos), w.get(typ));
                embedding_forward(&mut st.sum, ids, &st.positions, &st.types, wt, pt, tt, n, d)?;
            }
            (None, None) => {
                let table = w.get(&self.word);
                st.sum
                    .par_chunks_mut(d.max(1))
                    .zip(ids.par_iter())
                    .for_each(|(row, &id)| row.copy_from_slice(&table[id as usize * d..][..d]));
            }
            _ => {
                return Err(ModelError::State(
                    "embeddings need both position and type tables, or neither".into(),
                ));
            }
        }
        st.seed = dropout.filter(|_| self.dropout > 0.0);
        match st.seed {
            Some(seed) => {
                st.normed.resize(n * d, 0.0);
                self.norm.forward(w, &mut st.norm, &mut st.normed, &st.sum, n)?;
                dropout_forward(out, &st.normed, n * d, self.dropout as f32, seed)?;
            }
            None => self.norm.forward(w, &mut st.norm, out, &st.sum, n)?,
        }
        Ok(())
    }

    /// Adds the tables' and the norm's gradients from `dout [N, dim]`.
    pub fn backward(
        &self,
        w: &Weights<'_>,
        g: &mut Grads<'_>,
        st: &mut EmbeddingsState,
        dout: &[f32],
        ids: &[u32],
    ) -> Result<()> {
        let (n, d) = (ids.len(), self.dim);
        let dnormed = match st.seed {
            Some(seed) => {
                st.dnormed.clear();
                st.dnormed.resize(n * d, 0.0);
                dropout_backward(&mut st.dnormed, dout, n * d, self.dropout as f32, seed)?;
                &st.dnormed[..]
            }
            None => dout,
        };
        st.dsum.clear();
        st.dsum.resize(n * d, 0.0);
        self.norm
            .backward(w, g, &mut st.norm, &mut st.dsum, dnormed, &st.sum, n)?;
        if !self.word.trainable() {
            return Ok(());
        }
        match (&self.position, &self.token_type) {
            (Some((pos, _)), Some(typ)) => {
                // the three tables are distinct ranges of one buffer: split it
                let (w0, p0, t0) = (self.word.range.clone(), pos.range.clone(), typ.range.clone());
                let mut parts = [(w0, 0usize), (p0, 1), (t0, 2)];
                parts.sort_by_key(|(r, _)| r.start);
                let mut rest: &mut [f32] = g.g;
                let mut consumed = 0;
                let mut slices: [Option<&mut [f32]>; 3] = [None, None, None];
                for (r, k) in parts {
                    let (_, tail) = rest.split_at_mut(r.start - consumed);
                    let (mine, tail) = tail.split_at_mut(r.len());
                    slices[k] = Some(mine);
                    consumed = r.end;
                    rest = tail;
                }
                let [dw, dp, dt] = slices.map(|s| s.expect("three tables"));
                embedding_backward(dw, dp, dt, &st.dsum, ids, &st.positions, &st.types, n, d)?;
            }
            _ => {
                let dw = g.get(&self.word).expect("trainable");
                for (t, &id) in ids.iter().enumerate() {
                    let row = &mut dw[id as usize * d..][..d];
                    row.iter_mut()
                        .zip(&st.dsum[t * d..][..d])
                        .for_each(|(a, &b)| *a += b);
                }
            }
        }
        Ok(())
    }
}
