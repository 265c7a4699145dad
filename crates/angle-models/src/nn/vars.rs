//! Where a block's weights live: every tensor has its Hugging Face name, a shape and a range in one of
//! two flat buffers: the trainable parameters (with gradients and AdamW moments of the same layout) or
//! the frozen ones (a LoRA run's base: no gradient, no moments).
//!
//! Blocks find their weights by module path, as candle's `VarBuilder` does
//! (`vb.tensor(&path(&p, "query.weight"), ..)`), but a block keeps only [`Var`]s (ranges): the values stay in
//! the flat buffers, which the optimizer and the gradient norm walk as one slice each (llm.c).

use std::collections::HashMap;
use std::ops::Range;

use angle_tensor::cpu::{PackedBf16, PackedI8};

/// Which flat buffer a tensor lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    Trainable,
    Frozen,
}

/// A tensor's place: its buffer and its range there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub store: Store,
    pub range: Range<usize>,
}

impl Var {
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn trainable(&self) -> bool {
        self.store == Store::Trainable
    }
}

/// How a tensor is filled when it is not read from the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Read from the base checkpoint by name.
    Checkpoint,
    /// LoRA's A: peft's `kaiming_uniform_(a = √5)`, U(−1/√fan_in, 1/√fan_in), from a seed.
    KaimingUniform { fan_in: usize, seed: u64 },
    /// LoRA's B: zero.
    Zero,
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarEntry {
    /// The checkpoint name (no `bert.` / `model.` prefix); a LoRA tensor has peft's module path.
    pub name: String,
    pub shape: Vec<usize>,
    pub var: Var,
    pub init: Init,
}

/// The layout being built: blocks ask for tensors by name, in module order.
#[derive(Debug, Clone, Default)]
pub struct VarBuilder {
    pub entries: Vec<VarEntry>,
    index: HashMap<String, usize>,
    pub trainable_len: usize,
    pub frozen_len: usize,
    /// Base tensors go to the frozen buffer (a LoRA run), else to the trainable one.
    pub freeze_base: bool,
}

/// `prefix.name`, or `name` at the root.
pub fn path(prefix: &str, name: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl VarBuilder {
    pub fn new(freeze_base: bool) -> Self {
        VarBuilder {
            freeze_base,
            ..Default::default()
        }
    }

    fn push(&mut self, name: &str, shape: &[usize], store: Store, init: Init) -> Var {
        if let Some(&i) = self.index.get(name) {
            // a shared module (ALBERT's layer groups): every user gets the same tensor
            return self.entries[i].var.clone();
        }
        let len: usize = shape.iter().product();
        let next = match store {
            Store::Trainable => &mut self.trainable_len,
            Store::Frozen => &mut self.frozen_len,
        };
        let var = Var {
            store,
            range: *next..*next + len,
        };
        *next += len;
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push(VarEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            var: var.clone(),
            init,
        });
        var
    }

    /// A checkpoint tensor (trainable, or frozen in a LoRA run). Asking again for a name gives the same
    /// tensor: shared weights accumulate the gradients of every user.
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Var {
        let store = if self.freeze_base {
            Store::Frozen
        } else {
            Store::Trainable
        };
        self.push(name, shape, store, Init::Checkpoint)
    }

    /// Several checkpoint tensors back to back, seen as one (BERT's query, key and value weights form one
    /// `[3H, H]` matrix, so one product computes all three).
    pub fn fused(&mut self, names: &[String], shape_each: &[usize]) -> Var {
        let vars: Vec<Var> = names.iter().map(|n| self.tensor(n, shape_each)).collect();
        let (first, last) = (&vars[0], &vars[vars.len() - 1]);
        debug_assert!(vars.windows(2).all(|w| w[0].range.end == w[1].range.start));
        Var {
            store: first.store,
            range: first.range.start..last.range.end,
        }
    }

    /// A tensor that is always trained and not read from the base checkpoint (LoRA's A and B).
    pub fn adapter(&mut self, name: &str, shape: &[usize], init: Init) -> Var {
        self.push(name, shape, Store::Trainable, init)
    }

    pub fn get(&self, name: &str) -> Option<&VarEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

/// A linear weight that does not train, copied for other products: int8 (quantized per output channel)
/// or bf16 (packed for `x · Wᵀ`, and transposed for backward's `dy · W`).
#[derive(Debug, Clone)]
pub enum Packed {
    Int8(PackedI8),
    /// `bwd` (transposed) only where a backward will run.
    Bf16 {
        fwd: PackedBf16,
        bwd: Option<PackedBf16>,
    },
}

/// The packed copies of the linear weights that do not train (`Model::set_precision`: a model that only
/// encodes, or a LoRA run's base), by the tensor they copy; a [`Linear`](super::Linear) with one runs its
/// products on them.
#[derive(Debug, Clone, Default)]
pub struct PackedWeights {
    packs: HashMap<(Store, usize), Packed>,
}

impl PackedWeights {
    pub fn insert(&mut self, v: &Var, pack: Packed) {
        self.packs.insert((v.store, v.range.start), pack);
    }

    pub fn get(&self, v: &Var) -> Option<&Packed> {
        self.packs.get(&(v.store, v.range.start))
    }

    /// Bytes held by the copies.
    pub fn bytes(&self) -> usize {
        let bytes = |p: &Packed| match p {
            Packed::Int8(q) => q.memory_bytes(),
            Packed::Bf16 { fwd, bwd } => fwd.bytes() + bwd.as_ref().map_or(0, PackedBf16::bytes),
        };
        self.packs.values().map(bytes).sum()
    }
}

/// Read access to both buffers (and the packed copies, when there are any).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub trainable: &'a [f32],
    pub frozen: &'a [f32],
    pub packed: &'a PackedWeights,
}

impl<'a> Weights<'a> {
    pub fn get(&self, v: &Var) -> &'a [f32] {
        match v.store {
            Store::Trainable => &self.trainable[v.range.clone()],
            Store::Frozen => &self.frozen[v.range.clone()],
        }
    }
}

/// The gradient buffer (trainable tensors only); a frozen tensor's gradient goes nowhere.
pub struct Grads<'a> {
    pub g: &'a mut [f32],
}

impl Grads<'_> {
    /// The gradient of `v`, `None` when it is frozen.
    pub fn get(&mut self, v: &Var) -> Option<&mut [f32]> {
        v.trainable().then(|| &mut self.g[v.range.clone()])
    }

    /// The gradients of two distinct tensors at once (a weight and its bias).
    pub fn pair(&mut self, a: &Var, b: Option<&Var>) -> (Option<&mut [f32]>, Option<&mut [f32]>) {
        let b = b.filter(|b| b.trainable());
        match (a.trainable(), b) {
            (false, None) => (None, None),
            (true, None) => (Some(&mut self.g[a.range.clone()]), None),
            (false, Some(b)) => (None, Some(&mut self.g[b.range.clone()])),
            (true, Some(b)) => {
                let (ra, rb) = (a.range.clone(), b.range.clone());
                if ra.end <= rb.start {
                    let (lo, hi) = self.g.split_at_mut(rb.start);
                    (Some(&mut lo[ra]), Some(&mut hi[..rb.len()]))
                } else {
                    let (lo, hi) = self.g.split_at_mut(ra.start);
                    (Some(&mut hi[..ra.len()]), Some(&mut lo[rb]))
                }
            }
        }
    }
}
