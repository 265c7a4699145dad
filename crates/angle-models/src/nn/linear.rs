//! `Linear` (torch's `nn.Linear`, weight `[out, in]`), with optional bias and optional LoRA adapters.
//!
//! One block holds every weight form, so every family gets every form: trainable f32, frozen (a LoRA
//! run's base), and adapters on any of the Hugging Face modules it stands for. Several modules may be
//! fused into one block (BERT's query, key and value: one `[3H, H]` product); each keeps its own
//! adapter, which adds into its own columns of the output. A weight that does not train may have a packed
//! copy ([`PackedWeights`](super::vars::PackedWeights)): int8, whose forward runs on the int8 kernels and
//! whose backward input gradient multiplies by the copy dequantized (the weight the forward used); or bf16,
//! both products on the bf16 kernels (f32 sums).

thread_local! {
    /// A dequantized int8 weight for backward's `dy · W` (grown once, reused).
    static DEQUANTIZED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

use std::ops::Range;

use std::cell::RefCell;

use angle_tensor::cpu::{
    LoraShape, MatMut, MatRef, dropout_backward, dropout_forward, gemm, linear_accumulate_bf16,
    linear_backward, linear_forward, linear_forward_bf16, linear_forward_i8, lora_backward, lora_forward,
};
use angle_tensor::rng::derive_seed;

use super::lora::LoraSpec;
use super::vars::{Grads, Init, Packed, Var, VarBuilder, Weights, path};
use crate::error::Result;

/// A LoRA adapter on the output columns `cols` of a [`Linear`].
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The Hugging Face module it adapts (`encoder.layer.0.attention.self.query`).
    pub module: String,
    pub a: Var,
    pub b: Var,
    pub r: usize,
    pub scale: f64,
    pub dropout: f64,
    pub cols: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// The Hugging Face modules this block stands for (one, or several fused).
    pub modules: Vec<String>,
    pub weight: Var,
    pub bias: Option<Var>,
    pub in_dim: usize,
    pub out_dim: usize,
    pub adapters: Vec<Adapter>,
}

/// What one use of a [`Linear`] keeps for backward (LoRA only: the plain product needs just its input).
#[derive(Debug, Clone, Default)]
pub struct LinearState {
    /// Per adapter: the dropped-out input (empty without dropout) and `x·Aᵀ`.
    xd: Vec<Vec<f32>>,
    xa: Vec<Vec<f32>>,
    /// Scratch: one adapter's output columns, their gradient, `d(x·Aᵀ)`, `d xd`.
    cols: Vec<f32>,
    dxa: Vec<f32>,
    dxd: Vec<f32>,
    seed: Option<u64>,
}

impl LinearState {
    /// Floats held (LoRA's saved inputs and work buffers).
    pub fn floats(&self) -> usize {
        let per_adapter: usize = self.xd.iter().chain(&self.xa).map(Vec::len).sum();
        per_adapter + self.cols.len() + self.dxa.len() + self.dxd.len()
    }
}

impl Linear {
    /// The module at `module` (`{module}.weight`, `{module}.bias`).
    pub fn new(
        vb: &mut VarBuilder,
        lora: Option<&LoraSpec>,
        module: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Linear {
        Self::fused(vb, lora, &[module.to_string()], in_dim, out_dim, bias)
    }

    /// Modules of `out_each` outputs each, fused into one product (their weights back to back).
    pub fn fused(
        vb: &mut VarBuilder,
        lora: Option<&LoraSpec>,
        modules: &[String],
        in_dim: usize,
        out_each: usize,
        bias: bool,
    ) -> Linear {
        let names = |s: &str| modules.iter().map(|m| path(m, s)).collect::<Vec<_>>();
        let weight = vb.fused(&names("weight"), &[out_each, in_dim]);
        let bias = bias.then(|| vb.fused(&names("bias"), &[out_each]));
        let mut adapters = Vec::new();
        for (i, m) in modules.iter().enumerate() {
            let Some(spec) = lora.filter(|s| s.targets_module(m)) else {
                continue;
            };
            let seed = derive_seed(spec.seed, vb.entries.len() as u64);
            let a = vb.adapter(
                &path(m, "lora_A.weight"),
                &[spec.r, in_dim],
                Init::KaimingUniform { fan_in: in_dim, seed },
            );
            let b = vb.adapter(&path(m, "lora_B.weight"), &[out_each, spec.r], Init::Zero);
            adapters.push(Adapter {
                module: m.clone(),
                a,
                b,
                r: spec.r,
                scale: spec.scale(),
                dropout: spec.dropout,
                cols: i * out_each..(i + 1) * out_each,
            });
        }
        Linear {
            modules: modules.to_vec(),
            weight,
            bias,
            in_dim,
            out_dim: out_each * modules.len(),
            adapters,
        }
    }

    /// `out = inp · Wᵀ + b` plus each adapter's branch; `dropout` is the step's seed for LoRA dropout
    /// (train mode), `None` in eval mode.
    pub fn forward(
        &self,
        w: &Weights<'_>,
        st: &mut LinearState,
        out: &mut [f32],
        inp: &[f32],
        rows: usize,
        dropout: Option<u64>,
    ) -> Result<()> {
        let bias = self.bias.as_ref().map(|b| w.get(b));
        match w.packed.get(&self.weight) {
            Some(Packed::Int8(q)) => linear_forward_i8(out, inp, q, bias, rows)?,
            Some(Packed::Bf16 { fwd, .. }) => linear_forward_bf16(out, inp, fwd, bias, rows)?,
            None => linear_forward(
                out,
                inp,
                w.get(&self.weight),
                bias,
                rows,
                self.in_dim,
                self.out_dim,
            )?,
        }
        if self.adapters.is_empty() {
            return Ok(());
        }
        st.seed = dropout;
        st.xd.resize_with(self.adapters.len(), Vec::new);
        st.xa.resize_with(self.adapters.len(), Vec::new);
        for (k, ad) in self.adapters.iter().enumerate() {
            let x = match dropout.filter(|_| ad.dropout > 0.0) {
                Some(seed) => {
                    let xd = &mut st.xd[k];
                    xd.resize(inp.len(), 0.0);
                    dropout_forward(xd, inp, inp.len(), ad.dropout as f32, derive_seed(seed, k as u64))?;
                    &st.xd[k][..]
                }
                None => inp,
            };
            let s = self.lora_shape(ad, rows);
            st.xa[k].resize(rows * ad.r, 0.0);
            let width = ad.cols.len();
            st.cols.clear();
            st.cols.resize(rows * width, 0.0);
            lora_forward(&mut st.cols, &mut st.xa[k], x, w.get(&ad.a), w.get(&ad.b), s)?;
            for (o, c) in out
                .chunks_exact_mut(self.out_dim)
                .zip(st.cols.chunks_exact(width))
            {
                o[ad.cols.clone()].iter_mut().zip(c).for_each(|(o, c)| *o += c);
            }
        }
        Ok(())
    }

    fn lora_shape(&self, ad: &Adapter, rows: usize) -> LoraShape {
        LoraShape {
            rows,
            in_dim: self.in_dim,
            out_dim: ad.cols.len(),
            r: ad.r,
            scale: ad.scale,
        }
    }

    /// Adds the gradients of the last [`Linear::forward`] of this use: the weight's and bias's (when
    /// trainable), the adapters', and `dinp += dout · W` (+ the adapters' part) when `dinp` is given.
    pub fn backward(
        &self,
        w: &Weights<'_>,
        g: &mut Grads<'_>,
        st: &mut LinearState,
        mut dinp: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        rows: usize,
    ) -> Result<()> {
        let (i, o) = (self.in_dim, self.out_dim);
        let weight = w.get(&self.weight);
        match g.pair(&self.weight, self.bias.as_ref()) {
            (Some(dw), db) => linear_backward(dinp.as_deref_mut(), dw, db, dout, inp, weight, rows, i, o)?,
            (None, db) => {
                if let Some(db) = db {
                    for row in dout.chunks_exact(o) {
                        db.iter_mut().zip(row).for_each(|(d, &x)| *d += x);
                    }
                }
                if let Some(dx) = dinp.as_deref_mut() {
                    // frozen weight: only the input's gradient, dx += dy · W (W as the forward used it)
                    let mut product = |weight: &[f32]| {
                        gemm(
                            1.0,
                            MatRef::new(dout, rows, o),
                            MatRef::new(weight, o, i),
                            1.0,
                            MatMut::new(dx, rows, i),
                        )
                    };
                    match w.packed.get(&self.weight) {
                        Some(Packed::Int8(q)) => {
                            DEQUANTIZED.with(|d| product(q.dequantize_into(&mut d.borrow_mut())))?
                        }
                        Some(Packed::Bf16 { bwd: Some(bwd), .. }) => {
                            linear_accumulate_bf16(dx, dout, bwd, rows)?
                        }
                        _ => product(weight)?,
                    }
                }
            }
        }
        for (k, ad) in self.adapters.iter().enumerate() {
            let width = ad.cols.len();
            st.cols.clear();
            for row in dout.chunks_exact(o) {
                st.cols.extend_from_slice(&row[ad.cols.clone()]);
            }
            let s = self.lora_shape(ad, rows);
            st.dxa.resize(rows * ad.r, 0.0);
            let drop = st.seed.filter(|_| ad.dropout > 0.0);
            let x = if drop.is_some() { &st.xd[k][..] } else { inp };
            let (ga, gb) = g.pair(&ad.a, Some(&ad.b));
            let (ga, gb) = (ga.expect("adapters train"), gb.expect("adapters train"));
            let (wa, wb) = (w.get(&ad.a), w.get(&ad.b));
            match (dinp.as_deref_mut(), drop) {
                (Some(dx), Some(seed)) => {
                    st.dxd.clear();
                    st.dxd.resize(rows * i, 0.0);
                    lora_backward(
                        Some(&mut st.dxd),
                        ga,
                        gb,
                        &mut st.dxa,
                        &st.cols,
                        x,
                        &st.xa[k],
                        wa,
                        wb,
                        s,
                    )?;
                    let seed = derive_seed(seed, k as u64);
                    dropout_backward(dx, &st.dxd, rows * i, ad.dropout as f32, seed)?;
                }
                (dx, _) => lora_backward(dx, ga, gb, &mut st.dxa, &st.cols, x, &st.xa[k], wa, wb, s)?,
            }
            debug_assert_eq!(st.cols.len(), rows * width);
        }
        Ok(())
    }
}
