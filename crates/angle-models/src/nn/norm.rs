//! `LayerNorm` (torch's `nn.LayerNorm`, with or without bias).

use angle_tensor::cpu::{layernorm_backward, layernorm_forward};

use super::vars::{Grads, Var, VarBuilder, Weights, path};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Option<Var>,
    pub dim: usize,
    pub eps: f32,
    /// The bias of a bias-free norm (the op always adds one).
    zeros: Vec<f32>,
}

/// What one use keeps for backward: each row's mean and 1/std; sinks for gradients that go nowhere.
#[derive(Debug, Clone, Default)]
pub struct NormState {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    sink_w: Vec<f32>,
    sink_b: Vec<f32>,
}

impl NormState {
    /// Floats held.
    pub fn floats(&self) -> usize {
        self.mean.len() + self.rstd.len() + self.sink_w.len() + self.sink_b.len()
    }
}

impl LayerNorm {
    /// The module at `module` (`{module}.weight`, and `{module}.bias` when `bias`).
    pub fn new(vb: &mut VarBuilder, module: &str, dim: usize, eps: f64, bias: bool) -> LayerNorm {
        LayerNorm {
            weight: vb.tensor(&path(module, "weight"), &[dim]),
            bias: bias.then(|| vb.tensor(&path(module, "bias"), &[dim])),
            dim,
            eps: eps as f32,
            zeros: if bias { Vec::new() } else { vec![0.0; dim] },
        }
    }

    fn bias<'a>(&'a self, w: &Weights<'a>) -> &'a [f32] {
        self.bias.as_ref().map_or(&self.zeros[..], |b| w.get(b))
    }

    pub fn forward(
        &self,
        w: &Weights<'_>,
        st: &mut NormState,
        out: &mut [f32],
        inp: &[f32],
        rows: usize,
    ) -> Result<()> {
        st.mean.resize(rows, 0.0);
        st.rstd.resize(rows, 0.0);
        let (weight, bias) = (w.get(&self.weight), self.bias(w));
        layernorm_forward(
            out,
            &mut st.mean,
            &mut st.rstd,
            inp,
            weight,
            bias,
            rows,
            self.dim,
            self.eps,
        )?;
        Ok(())
    }

    /// Adds `dinp` and the weight's (and bias's) gradients.
    pub fn backward(
        &self,
        w: &Weights<'_>,
        g: &mut Grads<'_>,
        st: &mut NormState,
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        rows: usize,
    ) -> Result<()> {
        let NormState {
            mean,
            rstd,
            sink_w,
            sink_b,
        } = st;
        sink_w.resize(self.dim, 0.0);
        sink_b.resize(self.dim, 0.0);
        let (dw, db) = g.pair(&self.weight, self.bias.as_ref());
        let (dw, db) = (dw.unwrap_or(sink_w), db.unwrap_or(sink_b));
        let weight = w.get(&self.weight);
        layernorm_backward(dinp, dw, db, dout, inp, weight, mean, rstd, rows, self.dim)?;
        Ok(())
    }
}
