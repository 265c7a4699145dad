//! `Mlp`: the feed-forward block, `Wo(act(Wi x))`, or gated as ModernBERT's GeGLU:
//! `Wo(act(a) ⊙ g)` with `a, g = Wi(x).chunk(2)`. No residual and no norm: the layer adds those.

use angle_tensor::cpu::{GeluKind, gelu_backward, gelu_forward};
use angle_tensor::rng::derive_seed;

use super::linear::{Linear, LinearState};
use super::vars::{Grads, Weights};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[I, H]`, or `[2I, H]` when gated.
    pub wi: Linear,
    /// `[H, I]`
    pub wo: Linear,
    pub act: GeluKind,
    pub gated: bool,
}

#[derive(Debug, Clone, Default)]
pub struct MlpState {
    /// `Wi x`, `[N, I]` or `[N, 2I]`.
    pre: Vec<f32>,
    /// The activation's input (gated: the first half of `pre`, contiguous) and output.
    a: Vec<f32>,
    act: Vec<f32>,
    /// `Wo`'s input: `act`, or `act ⊙ g` when gated.
    mid: Vec<f32>,
    dmid: Vec<f32>,
    dact: Vec<f32>,
    da: Vec<f32>,
    dpre: Vec<f32>,
    lin_i: LinearState,
    lin_o: LinearState,
}

impl MlpState {
    /// Floats held (activations and work buffers).
    pub fn floats(&self) -> usize {
        [
            &self.pre, &self.a, &self.act, &self.mid, &self.dmid, &self.dact, &self.da, &self.dpre,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
            + self.lin_i.floats()
            + self.lin_o.floats()
    }
}

impl Mlp {
    fn inter(&self) -> usize {
        self.wo.in_dim
    }

    pub fn forward(
        &self,
        w: &Weights<'_>,
        st: &mut MlpState,
        out: &mut [f32],
        inp: &[f32],
        rows: usize,
        lora_seed: Option<u64>,
    ) -> Result<()> {
        let i = self.inter();
        st.pre.resize(rows * self.wi.out_dim, 0.0);
        self.wi.forward(
            w,
            &mut st.lin_i,
            &mut st.pre,
            inp,
            rows,
            lora_seed.map(|s| derive_seed(s, 0)),
        )?;
        st.act.resize(rows * i, 0.0);
        if self.gated {
            st.a.clear();
            st.a.extend(st.pre.chunks_exact(2 * i).flat_map(|r| &r[..i]));
            gelu_forward(&mut st.act, &st.a, rows * i, self.act)?;
            st.mid.clear();
            st.mid.extend(
                st.pre
                    .chunks_exact(2 * i)
                    .zip(st.act.chunks_exact(i))
                    .flat_map(|(p, a)| a.iter().zip(&p[i..]).map(|(a, g)| a * g)),
            );
        } else {
            gelu_forward(&mut st.act, &st.pre, rows * i, self.act)?;
        }
        let mid = if self.gated { &st.mid } else { &st.act };
        self.wo.forward(
            w,
            &mut st.lin_o,
            out,
            mid,
            rows,
            lora_seed.map(|s| derive_seed(s, 1)),
        )
    }

    /// Adds the gradients and `dinp`.
    pub fn backward(
        &self,
        w: &Weights<'_>,
        g: &mut Grads<'_>,
        st: &mut MlpState,
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        rows: usize,
    ) -> Result<()> {
        let i = self.inter();
        st.dmid.clear();
        st.dmid.resize(rows * i, 0.0);
        let mid = if self.gated { &st.mid } else { &st.act };
        self.wo
            .backward(w, g, &mut st.lin_o, Some(&mut st.dmid), dout, mid, rows)?;
        st.dpre.clear();
        st.dpre.resize(rows * self.wi.out_dim, 0.0);
        if self.gated {
            // d act = d mid ⊙ g;  d g = d mid ⊙ act
            st.dact.clear();
            st.dact.extend(
                st.dmid
                    .chunks_exact(i)
                    .zip(st.pre.chunks_exact(2 * i))
                    .flat_map(|(d, p)| d.iter().zip(&p[i..]).map(|(d, g)| d * g)),
            );
            st.da.clear();
            st.da.resize(rows * i, 0.0);
            gelu_backward(&mut st.da, &st.a, &st.dact, rows * i, self.act)?;
            for (t, dp) in st.dpre.chunks_exact_mut(2 * i).enumerate() {
                let (dmid, act) = (&st.dmid[t * i..][..i], &st.act[t * i..][..i]);
                dp[..i].copy_from_slice(&st.da[t * i..][..i]);
                dp[i..]
                    .iter_mut()
                    .zip(dmid.iter().zip(act))
                    .for_each(|(d, (m, a))| *d = m * a);
            }
        } else {
            gelu_backward(&mut st.dpre, &st.pre, &st.dmid, rows * i, self.act)?;
        }
        self.wi
            .backward(w, g, &mut st.lin_i, Some(dinp), &st.dpre, inp, rows)
    }
}
