//! The activation arena: every buffer the forward and backward passes touch, allocated once from the
//! capacity (max tokens, max sequence length, layers) and reused for every batch that fits.
//!
//! Regions are laid out by capacity, and a batch uses the first `N` rows of each. The buffers are
//! allocated zeroed, which the allocator serves with fresh pages that become resident only when written,
//! so an arena sized for the worst case costs memory only for the batches that actually come.

use crate::config::BertConfig;

/// What the arena can hold: the largest batch, in tokens and in sequence length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Σ len over the batch (e.g. 64 texts x max length 64 = 4096).
    pub max_tokens: usize,
    /// The longest sequence; with `max_tokens` it bounds Σ len² by `max_tokens * max_seq_len`.
    pub max_seq_len: usize,
}

/// Train mode saves every layer's activations for backward; eval mode keeps one layer's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Activations of one forward pass (and, in train mode, the gradient scratch of the backward pass).
#[derive(Debug)]
pub struct Activations {
    pub(crate) mode: Mode,
    pub(crate) cap: Capacity,
    pub(crate) dims: Dims,
    /// Batch of the last forward: token ids, positions, type ids, sequence offsets.
    pub(crate) ids: Vec<u32>,
    pub(crate) positions: Vec<u32>,
    pub(crate) type_ids: Vec<u32>,
    pub(crate) seq_offsets: Vec<usize>,
    /// `Some(seed)` when the last forward ran dropout.
    pub(crate) dropout_seed: Option<u64>,
    /// Whether the last forward saved what backward needs.
    pub(crate) ready_for_backward: bool,

    // forward, one slot per layer in train mode (one slot in eval mode; `layer_in` has two there)
    pub(crate) emb_sum: Vec<f32>,
    pub(crate) emb_mean: Vec<f32>,
    pub(crate) emb_rstd: Vec<f32>,
    /// Input of layer l (after the embeddings' or previous layer's dropout/LN); slot L is the output.
    pub(crate) layer_in: Vec<f32>,
    pub(crate) qkv: Vec<f32>,
    pub(crate) probs: Vec<f32>,
    pub(crate) ctx: Vec<f32>,
    pub(crate) res1: Vec<f32>,
    pub(crate) ln1: Vec<f32>,
    pub(crate) mean1: Vec<f32>,
    pub(crate) rstd1: Vec<f32>,
    pub(crate) fc1: Vec<f32>,
    pub(crate) gelu: Vec<f32>,
    pub(crate) res2: Vec<f32>,
    pub(crate) mean2: Vec<f32>,
    pub(crate) rstd2: Vec<f32>,
    /// A dense output before its dropout and residual.
    pub(crate) proj: Vec<f32>,
    /// Dropped-out attention probabilities (forward) and their gradient (backward).
    pub(crate) probs_scratch: Vec<f32>,

    // backward (train mode only)
    pub(crate) dhidden: Vec<f32>,
    pub(crate) dx: Vec<f32>,
    pub(crate) dres: Vec<f32>,
    pub(crate) dproj: Vec<f32>,
    pub(crate) dln1: Vec<f32>,
    pub(crate) dctx: Vec<f32>,
    pub(crate) dqkv: Vec<f32>,
    pub(crate) dgelu: Vec<f32>,
    pub(crate) dfc1: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub h: usize,
    pub i: usize,
    pub heads: usize,
    pub layers: usize,
}

/// Float counts of every region, shared by allocation and the memory report.
struct Sizes {
    per_layer_slots: usize,
    layer_in_slots: usize,
    /// per token, once: emb_sum, its mean and rstd, proj, and the backward scratch in train mode
    token: usize,
    /// per token per layer slot: qkv, ctx, res1, ln1, res2, four LN statistics, fc1, gelu
    token_layer: usize,
    /// per Σlen² per layer slot: the softmax probabilities of every head
    s2_layer: usize,
    /// per Σlen², once: dropped-out probabilities / their gradient (train mode)
    s2_scratch: usize,
}

impl Sizes {
    fn new(d: Dims, mode: Mode) -> Sizes {
        let train = mode == Mode::Train;
        Sizes {
            per_layer_slots: if train { d.layers } else { 1 },
            layer_in_slots: if train { d.layers + 1 } else { 2 },
            // dhidden, dx, dres, dproj, dln1, dctx (6h), dqkv (3h), dgelu, dfc1 (2i)
            token: 2 * d.h + 2 + if train { 9 * d.h + 2 * d.i } else { 0 },
            token_layer: 7 * d.h + 4 + 2 * d.i,
            s2_layer: d.heads,
            s2_scratch: if train { d.heads } else { 0 },
        }
    }
}

impl Activations {
    pub fn new(cfg: &BertConfig, cap: Capacity, mode: Mode) -> Self {
        let dims = Dims {
            h: cfg.hidden_size,
            i: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
        };
        let s = Sizes::new(dims, mode);
        let t = cap.max_tokens;
        let s2 = cap.max_tokens * cap.max_seq_len;
        let (h, i, nh) = (dims.h, dims.i, dims.heads);
        let per = |x: usize| vec![0.0f32; s.per_layer_slots * x];
        let train = mode == Mode::Train;
        let back = |x: usize| if train { vec![0.0f32; x] } else { Vec::new() };
        Activations {
            mode,
            cap,
            dims,
            ids: Vec::with_capacity(t),
            positions: Vec::with_capacity(t),
            type_ids: Vec::with_capacity(t),
            seq_offsets: Vec::with_capacity(t + 1),
            dropout_seed: None,
            ready_for_backward: false,
            emb_sum: vec![0.0; t * h],
            emb_mean: vec![0.0; t],
            emb_rstd: vec![0.0; t],
            layer_in: vec![0.0; s.layer_in_slots * t * h],
            qkv: per(t * 3 * h),
            probs: per(s2 * nh),
            ctx: per(t * h),
            res1: per(t * h),
            ln1: per(t * h),
            mean1: per(t),
            rstd1: per(t),
            fc1: per(t * i),
            gelu: per(t * i),
            res2: per(t * h),
            mean2: per(t),
            rstd2: per(t),
            proj: vec![0.0; t * h],
            probs_scratch: back(s2 * nh),
            dhidden: back(t * h),
            dx: back(t * h),
            dres: back(t * h),
            dproj: back(t * h),
            dln1: back(t * h),
            dctx: back(t * h),
            dqkv: back(t * 3 * h),
            dgelu: back(t * i),
            dfc1: back(t * i),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn capacity(&self) -> Capacity {
        self.cap
    }

    /// Bytes reserved (address space; pages become resident as batches use them).
    pub fn bytes_reserved(&self) -> usize {
        let s = Sizes::new(self.dims, self.mode);
        bytes(
            &s,
            self.dims,
            self.cap.max_tokens,
            self.cap.max_tokens * self.cap.max_seq_len,
        )
    }

    /// Activation bytes one sequence of `seq_len` tokens occupies in this mode (what a batch costs per
    /// sequence, llm.c's "activation memory"): tokens times the per-token regions plus its attention maps.
    pub fn bytes_per_sequence(cfg: &BertConfig, seq_len: usize, mode: Mode) -> usize {
        let dims = Dims {
            h: cfg.hidden_size,
            i: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
        };
        bytes(&Sizes::new(dims, mode), dims, seq_len, seq_len * seq_len)
    }

    /// Tokens of the last forward.
    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Sequence offsets of the last forward (B + 1 entries).
    pub fn seq_offsets(&self) -> &[usize] {
        &self.seq_offsets
    }

    /// The last hidden state `[N, H]` of the last forward.
    pub fn hidden(&self) -> &[f32] {
        let (n, h) = (self.num_tokens(), self.dims.h);
        let slot = self.layer_in_slot(self.dims.layers);
        &self.layer_in[slot * self.cap.max_tokens * h..][..n * h]
    }

    /// The output `[N, H]` of layer `l` in the last forward: `l = 0` the embedding output (after its dropout),
    /// `l = num_hidden_layers` the last hidden state. A train-mode arena keeps every layer's; an eval-mode arena
    /// only the last (`None` otherwise, and for `l` past the depth).
    pub fn layer_output(&self, l: usize) -> Option<&[f32]> {
        let layers = self.dims.layers;
        if l > layers || (self.mode == Mode::Eval && l != layers) {
            return None;
        }
        let (n, h) = (self.num_tokens(), self.dims.h);
        let slot = self.layer_in_slot(l);
        Some(&self.layer_in[slot * self.cap.max_tokens * h..][..n * h])
    }

    /// The gradient of the last hidden state `[N, H]` (train mode): zeroed by each forward; pooling backward
    /// adds into it, and [`crate::Encoder::backward`] reads it.
    pub fn dhidden_mut(&mut self) -> &mut [f32] {
        let n = (self.num_tokens() * self.dims.h).min(self.dhidden.len());
        &mut self.dhidden[..n]
    }

    /// Both at once, for a pooling backward that needs the forward's values.
    pub fn hidden_and_dhidden_mut(&mut self) -> (&[f32], &mut [f32]) {
        let (n, h) = (self.num_tokens(), self.dims.h);
        let slot = self.layer_in_slot(self.dims.layers);
        let hidden = &self.layer_in[slot * self.cap.max_tokens * h..][..n * h];
        let dn = (n * h).min(self.dhidden.len());
        (hidden, &mut self.dhidden[..dn])
    }

    pub(crate) fn layer_slot(&self, l: usize) -> usize {
        if self.mode == Mode::Train { l } else { 0 }
    }

    pub(crate) fn layer_in_slot(&self, l: usize) -> usize {
        if self.mode == Mode::Train { l } else { l % 2 }
    }
}

fn bytes(s: &Sizes, d: Dims, tokens: usize, s2: usize) -> usize {
    let floats = tokens * s.token
        + s.layer_in_slots * tokens * d.h
        + s.per_layer_slots * (tokens * s.token_layer + s2 * s.s2_layer)
        + s2 * s.s2_scratch;
    // ids, positions, type ids
    4 * floats + 3 * 4 * tokens
}
