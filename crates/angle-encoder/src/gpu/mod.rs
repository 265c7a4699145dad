//! The encoder on one CUDA device: the same [`BertConfig`], [`ParamLayout`] and flat buffers as the
//! CPU [`crate::Encoder`] (parameters, gradients and AdamW moments are one device allocation each,
//! at the very same offsets), the same forward and backward (ops from `angle_tensor::cuda`, each
//! checked against the CPU op it mirrors), pooling, the AnglE objective and AdamW: one training
//! step runs entirely on the device; the host uploads the batch and reads the loss.
//!
//! Precision: activations are `T` (f32, or bf16 for mixed precision); parameters, gradients,
//! optimizer state, pooled embeddings and the loss are f32. With bf16, matrix products read a bf16
//! copy of the weights that the AdamW kernel refreshes, and accumulate in f32.
//!
//! Memory is allocated once, in [`GpuEncoder::new`], for a [`GpuCapacity`]; [`GpuEncoder::memory`]
//! reports it.

use angle_tensor::cuda::check::Elem;
use angle_tensor::cuda::{
    self as k, AngleObjective, AttentionSaved, AttentionShape, DSlice, DeviceBuffer, Gpu, GpuError,
};
use angle_tensor::rng::derive_seed;

use crate::config::{Activation, BertConfig};
use crate::model::{AdamW, Encoder};
use crate::params::ParamLayout;
use crate::pooling::Pooling;

/// Errors of the GPU model.
#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The batch does not fit the config (ids, lengths, offsets).
    #[error("batch: {0}")]
    Batch(String),
    /// The batch does not fit the capacity the device memory was sized for.
    #[error("capacity: {0}")]
    Capacity(String),
    /// The model uses something the GPU path lacks.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, GpuModelError>;

/// The largest batch the device buffers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuCapacity {
    pub max_seqs: usize,
    pub max_seq_len: usize,
    /// Σ len (at most `max_seqs * max_seq_len`).
    pub max_tokens: usize,
}

/// One layer's saved activations (train mode keeps every layer's).
struct LayerActs<T: Elem> {
    q: DeviceBuffer<T>,
    k: DeviceBuffer<T>,
    v: DeviceBuffer<T>,
    probs: DeviceBuffer<T>,
    ctx: DeviceBuffer<T>,
    res1: DeviceBuffer<T>,
    ln1: DeviceBuffer<T>,
    mean1: DeviceBuffer<f32>,
    rstd1: DeviceBuffer<f32>,
    fc1: DeviceBuffer<T>,
    gelu: DeviceBuffer<T>,
    res2: DeviceBuffer<T>,
    mean2: DeviceBuffer<f32>,
    rstd2: DeviceBuffer<f32>,
}

/// Shared scratch for forward and backward.
struct Scratch<T: Elem> {
    qkv: DeviceBuffer<T>,
    scores: DeviceBuffer<T>,
    ctxp: DeviceBuffer<T>,
    proj: DeviceBuffer<T>,
    dx: DeviceBuffer<T>,
    dln1: DeviceBuffer<T>,
    dproj: DeviceBuffer<T>,
    dctx: DeviceBuffer<T>,
    dgelu: DeviceBuffer<T>,
    dqkv: DeviceBuffer<T>,
    dpad: [DeviceBuffer<T>; 4],
}

/// Batch tensors on the device.
struct BatchBufs {
    ids: DeviceBuffer<i32>,
    positions: DeviceBuffer<i32>,
    types: DeviceBuffer<i32>,
    offsets: DeviceBuffer<i32>,
    pbase: DeviceBuffer<i64>,
    labels: DeviceBuffer<f32>,
}

/// Host copies of a batch in the device's integer types, reused by every [`GpuEncoder::stage`].
#[derive(Default)]
struct HostBatch {
    ids: Vec<i32>,
    positions: Vec<i32>,
    types: Vec<i32>,
    offsets: Vec<i32>,
    pbase: Vec<i64>,
}

/// The staged batch's shape (host side).
#[derive(Debug, Clone)]
struct Staged {
    n: usize,
    b: usize,
    shape: AttentionShape,
}

/// Bytes of device memory by purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuMemory {
    pub params: usize,
    pub grads: usize,
    pub moments: usize,
    pub weight_copy: usize,
    pub activations: usize,
    pub total: usize,
}

/// The encoder, its optimizer state and its activation arena on one device.
pub struct GpuEncoder<T: Elem> {
    pub gpu: Gpu,
    pub config: BertConfig,
    pub layout: ParamLayout,
    pub cap: GpuCapacity,
    pub pooling: Pooling,
    params: DeviceBuffer<f32>,
    grads: DeviceBuffer<f32>,
    adam_m: DeviceBuffer<f32>,
    adam_v: DeviceBuffer<f32>,
    /// bf16 weights for the products (mixed precision only).
    wcopy: Option<DeviceBuffer<half::bf16>>,
    /// The layout's undecayed ranges as `[start, end)` pairs (`None` when there are none).
    no_decay: Option<DeviceBuffer<i64>>,
    emb: DeviceBuffer<T>,
    emb_mean: DeviceBuffer<f32>,
    emb_rstd: DeviceBuffer<f32>,
    /// layer inputs: slot l is layer l's input, slot L the output.
    layer_io: Vec<DeviceBuffer<T>>,
    layers: Vec<LayerActs<T>>,
    s: Scratch<T>,
    batch: BatchBufs,
    host: HostBatch,
    pub pooled: DeviceBuffer<f32>,
    dpooled: DeviceBuffer<f32>,
    loss: DeviceBuffer<f32>,
    norm_sq: DeviceBuffer<f32>,
    pub objective: AngleObjective,
    staged: Option<Staged>,
    memory: GpuMemory,
    dropout_seed: Option<u64>,
    /// When on, every op synchronises and its time is added to `prof` (op name -> ms, calls).
    profiling: bool,
    prof: std::cell::RefCell<Vec<(&'static str, f64, usize)>>,
}

impl<T: Elem> std::fmt::Debug for GpuEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEncoder")
            .field("cap", &self.cap)
            .field("memory", &self.memory)
            .finish()
    }
}

impl<T: Elem> GpuEncoder<T> {
    /// Uploads `params` (laid out by `ParamLayout::new(config)`) and allocates everything for `cap`.
    pub fn new(
        gpu: Gpu,
        config: BertConfig,
        params: &[f32],
        pooling: Pooling,
        cap: GpuCapacity,
    ) -> Result<Self> {
        if config.hidden_act != Activation::GeluErf {
            return Err(GpuModelError::Unsupported(
                "only the erf GELU has a CUDA kernel".into(),
            ));
        }
        if !matches!(pooling, Pooling::Mean | Pooling::Cls) {
            return Err(GpuModelError::Unsupported(format!(
                "pooling {} on the GPU",
                pooling.name()
            )));
        }
        let layout = ParamLayout::new(&config);
        if params.len() != layout.total {
            return Err(GpuModelError::Batch(format!(
                "{} parameters for a layout of {}",
                params.len(),
                layout.total
            )));
        }
        let (h, inter, nh) = (
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
        );
        let n = cap.max_tokens;
        let hd = h / nh;
        let pad = cap.max_seqs * nh * cap.max_seq_len * hd;
        let sc = cap.max_seqs * nh * cap.max_seq_len * cap.max_seq_len;
        let before = gpu.allocated_bytes();
        let p = gpu.alloc::<f32>(layout.total)?;
        gpu.upload(p.view(), params)?;
        let grads = gpu.alloc::<f32>(layout.total)?;
        let adam_m = gpu.alloc::<f32>(layout.total)?;
        let adam_v = gpu.alloc::<f32>(layout.total)?;
        let wcopy = if T::NAME == "bf16" {
            let w = gpu.alloc::<half::bf16>(layout.total)?;
            k::cast_f32_to_bf16(&gpu, w.view(), p.view())?;
            Some(w)
        } else {
            None
        };
        let bounds = k::no_decay_bounds(&layout.no_decay);
        let no_decay = if bounds.is_empty() {
            None
        } else {
            let b = gpu.alloc::<i64>(bounds.len())?;
            gpu.upload(b.view(), &bounds)?;
            Some(b)
        };
        let after_params = gpu.allocated_bytes();
        let a = |len: usize| gpu.alloc::<T>(len);
        let f = |len: usize| gpu.alloc::<f32>(len);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            layers.push(LayerActs {
                q: a(pad)?,
                k: a(pad)?,
                v: a(pad)?,
                probs: a(sc)?,
                ctx: a(n * h)?,
                res1: a(n * h)?,
                ln1: a(n * h)?,
                mean1: f(n)?,
                rstd1: f(n)?,
                fc1: a(n * inter)?,
                gelu: a(n * inter)?,
                res2: a(n * h)?,
                mean2: f(n)?,
                rstd2: f(n)?,
            });
        }
        let layer_io = (0..=config.num_hidden_layers)
            .map(|_| a(n * h))
            .collect::<std::result::Result<_, _>>()?;
        let s = Scratch {
            qkv: a(n * 3 * h)?,
            scores: a(sc)?,
            ctxp: a(pad)?,
            proj: a(n * h)?,
            dx: a(n * h)?,
            dln1: a(n * h)?,
            dproj: a(n * h)?,
            dctx: a(n * h)?,
            dgelu: a(n * inter)?,
            dqkv: a(n * 3 * h)?,
            dpad: [a(pad)?, a(pad)?, a(pad)?, a(pad)?],
        };
        let pairs = cap.max_seqs / 2;
        let batch = BatchBufs {
            ids: gpu.alloc(n)?,
            positions: gpu.alloc(n)?,
            types: gpu.alloc(n)?,
            offsets: gpu.alloc(cap.max_seqs + 1)?,
            pbase: gpu.alloc(cap.max_seqs)?,
            labels: f(pairs.max(1))?,
        };
        let objective = AngleObjective::new(&gpu, pairs.max(1))?;
        let enc = Self {
            emb: a(n * h)?,
            emb_mean: f(n)?,
            emb_rstd: f(n)?,
            layer_io,
            layers,
            s,
            batch,
            host: HostBatch {
                ids: Vec::with_capacity(n),
                positions: Vec::with_capacity(n),
                types: Vec::with_capacity(n),
                offsets: Vec::with_capacity(cap.max_seqs + 1),
                pbase: Vec::with_capacity(cap.max_seqs),
            },
            pooled: f(cap.max_seqs * h)?,
            dpooled: f(cap.max_seqs * h)?,
            // total, then the unweighted cosine, angle and in-batch parts
            loss: f(4)?,
            norm_sq: f(1)?,
            objective,
            memory: GpuMemory::default(),
            staged: None,
            dropout_seed: None,
            profiling: false,
            prof: std::cell::RefCell::new(Vec::new()),
            params: p,
            grads,
            adam_m,
            adam_v,
            wcopy,
            no_decay,
            gpu,
            config,
            layout,
            cap,
            pooling,
        };
        let total = enc.gpu.allocated_bytes() - before;
        let fb = enc.layout.total * 4;
        let memory = GpuMemory {
            params: fb,
            grads: fb,
            moments: 2 * fb,
            weight_copy: if T::NAME == "bf16" {
                enc.layout.total * 2
            } else {
                0
            },
            activations: total - (after_params - before),
            total,
        };
        Ok(Self { memory, ..enc })
    }

    /// From a CPU encoder (its parameters and default pooling).
    pub fn from_encoder(gpu: Gpu, enc: &Encoder, cap: GpuCapacity) -> Result<Self> {
        Self::new(
            gpu,
            enc.config.clone(),
            &enc.buffers.params,
            enc.default_pooling,
            cap,
        )
    }

    pub fn memory(&self) -> GpuMemory {
        self.memory
    }

    /// The parameters, back on the host (e.g. to save a checkpoint with the CPU encoder).
    pub fn download_params(&self) -> Result<Vec<f32>> {
        Ok(self.gpu.download(self.params.view())?)
    }

    /// The gradients of the last backward, on the host.
    pub fn download_grads(&self) -> Result<Vec<f32>> {
        Ok(self.gpu.download(self.grads.view())?)
    }

    /// The last hidden state `[N, H]` of the staged batch, on the host (f32).
    pub fn download_hidden(&self) -> Result<Vec<f32>> {
        let st = self.staged()?;
        let l = self.config.num_hidden_layers;
        let v = self.layer_io[l].view().slice(0..st.n * self.config.hidden_size)?;
        Ok(self.gpu.download(v)?.into_iter().map(T::to_f32).collect())
    }

    /// The pooled embeddings `[B, H]` of the last forward, on the host.
    pub fn download_pooled(&self) -> Result<Vec<f32>> {
        let st = self.staged()?;
        Ok(self
            .gpu
            .download(self.pooled.view().slice(0..st.b * self.config.hidden_size)?)?)
    }

    /// [`Self::download_pooled`] into `out` (resized to `[B, H]`; no allocation once it is large
    /// enough).
    pub fn download_pooled_into(&self, out: &mut Vec<f32>) -> Result<()> {
        let st = self.staged()?;
        let len = st.b * self.config.hidden_size;
        out.resize(len, 0.0);
        Ok(self.gpu.download_into(self.pooled.view().slice(0..len)?, out)?)
    }

    fn staged(&self) -> Result<&Staged> {
        self.staged
            .as_ref()
            .ok_or_else(|| GpuModelError::Batch("no batch staged".into()))
    }

    /// Checks a packed batch against the config and capacity and uploads it (with `labels`, one
    /// per pair, when training).
    pub fn stage(
        &mut self,
        input_ids: &[u32],
        token_type_ids: Option<&[u32]>,
        seq_offsets: &[usize],
        labels: Option<&[f32]>,
    ) -> Result<()> {
        let cfg = &self.config;
        let bad = |m: String| Err(GpuModelError::Batch(m));
        let n = input_ids.len();
        if seq_offsets.len() < 2 || seq_offsets[0] != 0 || seq_offsets[seq_offsets.len() - 1] != n {
            return bad(format!("seq_offsets must hold B + 1 >= 2 entries from 0 to {n}"));
        }
        let b = seq_offsets.len() - 1;
        if b > self.cap.max_seqs || n > self.cap.max_tokens {
            return Err(GpuModelError::Capacity(format!(
                "{b} sequences / {n} tokens; sized for {} / {}",
                self.cap.max_seqs, self.cap.max_tokens
            )));
        }
        // Checked in full before anything is uploaded; the host copies reuse their buffers.
        let hb = &mut self.host;
        hb.positions.clear();
        for (i, w) in seq_offsets.windows(2).enumerate() {
            if w[1] <= w[0] {
                return bad(format!("sequence {i} is empty (or offsets decrease)"));
            }
            let len = w[1] - w[0];
            if len > self.cap.max_seq_len || len > cfg.max_sequence_length() {
                return Err(GpuModelError::Capacity(format!(
                    "sequence {i} has {len} tokens; limit {}",
                    self.cap.max_seq_len.min(cfg.max_sequence_length())
                )));
            }
            hb.positions
                .extend((0..len).map(|p| (p + cfg.position_offset) as i32));
        }
        if let Some((t, id)) = input_ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= cfg.vocab_size)
        {
            return bad(format!(
                "input_ids[{t}] = {id} is outside the vocabulary of {}",
                cfg.vocab_size
            ));
        }
        hb.types.clear();
        match token_type_ids {
            Some(tt) => {
                if tt.len() != n {
                    return bad(format!("{} token_type_ids for {n} tokens", tt.len()));
                }
                if let Some((t, id)) = tt
                    .iter()
                    .enumerate()
                    .find(|&(_, &id)| id as usize >= cfg.type_vocab_size)
                {
                    return bad(format!(
                        "token_type_ids[{t}] = {id}; type_vocab_size is {}",
                        cfg.type_vocab_size
                    ));
                }
                hb.types.extend(tt.iter().map(|&x| x as i32));
            }
            None => hb.types.resize(n, 0),
        }
        if let Some(l) = labels
            && l.len() * 2 != b
        {
            return bad(format!("{} labels for {b} sequences (one per pair)", l.len()));
        }
        hb.ids.clear();
        hb.ids.extend(input_ids.iter().map(|&x| x as i32));
        hb.offsets.clear();
        hb.offsets.extend(seq_offsets.iter().map(|&x| x as i32));
        let nh = cfg.num_attention_heads;
        k::attention_pbase_into(seq_offsets, nh, &mut hb.pbase);
        let g = &self.gpu;
        g.upload(self.batch.ids.view().slice(0..n)?, &hb.ids)?;
        g.upload(self.batch.positions.view().slice(0..n)?, &hb.positions)?;
        g.upload(self.batch.types.view().slice(0..n)?, &hb.types)?;
        g.upload(self.batch.offsets.view().slice(0..b + 1)?, &hb.offsets)?;
        g.upload(self.batch.pbase.view().slice(0..b)?, &hb.pbase)?;
        if let Some(l) = labels {
            g.upload(self.batch.labels.view().slice(0..l.len())?, l)?;
        }
        self.staged = Some(Staged {
            n,
            b,
            shape: AttentionShape::new(seq_offsets, nh, cfg.hidden_size),
        });
        Ok(())
    }

    /// Turns per-op timing on (each op then waits for the device: slower, for profiles only)
    /// and clears what was collected.
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
        self.prof.borrow_mut().clear();
    }

    /// Per-op totals since [`Self::set_profiling`]: (op, milliseconds, calls), largest first.
    pub fn profile(&self) -> Vec<(&'static str, f64, usize)> {
        let mut v = self.prof.borrow().clone();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    fn tick(&self) -> Option<std::time::Instant> {
        if self.profiling {
            let _ = self.gpu.synchronize();
            Some(std::time::Instant::now())
        } else {
            None
        }
    }

    fn tock(&self, op: &'static str, t: Option<std::time::Instant>) {
        if let Some(t) = t {
            let _ = self.gpu.synchronize();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut p = self.prof.borrow_mut();
            match p.iter_mut().find(|e| e.0 == op) {
                Some(e) => {
                    e.1 += ms;
                    e.2 += 1;
                }
                None => p.push((op, ms, 1)),
            }
        }
    }

    /// Sentence embeddings `[B, H]` of a packed batch (eval mode: no dropout), e.g. for
    /// `angle encode --device cuda`.
    pub fn embed(
        &mut self,
        input_ids: &[u32],
        token_type_ids: Option<&[u32]>,
        seq_offsets: &[usize],
    ) -> Result<Vec<f32>> {
        self.stage(input_ids, token_type_ids, seq_offsets, None)?;
        self.forward(None)?;
        self.download_pooled()
    }

    /// Replaces the parameters (e.g. after loading a checkpoint on the host); refreshes the bf16
    /// weight copy. Optimizer state is kept.
    pub fn upload_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.layout.total {
            return Err(GpuModelError::Batch(format!(
                "{} parameters for a layout of {}",
                params.len(),
                self.layout.total
            )));
        }
        self.gpu.upload(self.params.view(), params)?;
        if let Some(w) = &self.wcopy {
            k::cast_f32_to_bf16(&self.gpu, w.view(), self.params.view())?;
        }
        Ok(())
    }

    /// Replaces the AdamW moments (e.g. when resuming from a checkpoint).
    pub fn upload_moments(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        if m.len() != self.layout.total || v.len() != self.layout.total {
            return Err(GpuModelError::Batch(format!(
                "moments of {} and {} values for a layout of {}",
                m.len(),
                v.len(),
                self.layout.total
            )));
        }
        self.gpu.upload(self.adam_m.view(), m)?;
        self.gpu.upload(self.adam_v.view(), v)?;
        Ok(())
    }

    /// The AdamW moments `(m, v)`, on the host (e.g. to save a training checkpoint).
    pub fn download_moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.gpu.download(self.adam_m.view())?,
            self.gpu.download(self.adam_v.view())?,
        ))
    }

    /// The global L2 norm of the gradients (waits for the device), for logging and the
    /// finite check; [`Self::adamw_step`] clips from its own device-side norm.
    pub fn grad_norm(&mut self) -> Result<f32> {
        k::grad_norm_sq(&self.gpu, self.norm_sq.view(), self.grads.view())?;
        Ok(self.gpu.download(self.norm_sq.view())?[0].sqrt())
    }

    /// Weight views for the products: the f32 parameters, or their bf16 copy.
    fn w(&self, r: &std::ops::Range<usize>) -> Result<DSlice<T>> {
        Ok(match &self.wcopy {
            Some(c) => c.view().slice(r.clone())?.cast::<T>()?,
            None => self.params.view().slice(r.clone())?.cast::<T>()?,
        })
    }
    fn p(&self, r: &std::ops::Range<usize>) -> Result<DSlice<f32>> {
        Ok(self.params.view().slice(r.clone())?)
    }
    fn g(&self, r: &std::ops::Range<usize>) -> Result<DSlice<f32>> {
        Ok(self.grads.view().slice(r.clone())?)
    }

    /// Forward over the staged batch, then pooling into [`Self::pooled`]. `dropout_seed`:
    /// `Some(step seed)` runs the config's dropout with the CPU encoder's streams.
    pub fn forward(&mut self, dropout_seed: Option<u64>) -> Result<()> {
        let st = self.staged()?.clone();
        self.dropout_seed = dropout_seed;
        let cfg = self.config.clone();
        let gpu = &self.gpu;
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (n, b) = (st.n, st.b);
        let nh_ = n * h;
        let eps = cfg.layer_norm_eps;
        let (p_hidden, p_attn) = match dropout_seed {
            Some(_) => (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob),
            None => (0.0, 0.0),
        };
        let seed = |tag: u64| dropout_seed.map_or(0, |s| derive_seed(s, tag));
        let e = &self.layout.embeddings;
        let cut = |x: &DeviceBuffer<T>, len: usize| x.view().slice(0..len);
        let cutf = |x: &DeviceBuffer<f32>, len: usize| x.view().slice(0..len);
        let offs = cut_i(&self.batch.offsets, b + 1)?;
        let pbase = self.batch.pbase.view().slice(0..b)?;
        let emb = cut(&self.emb, nh_)?;
        let _pt = self.tick();
        k::embedding_forward(
            gpu,
            emb,
            self.batch.ids.view().slice(0..n)?,
            self.batch.positions.view().slice(0..n)?,
            self.batch.types.view().slice(0..n)?,
            self.p(&e.word)?,
            self.p(&e.position)?,
            self.p(&e.token_type)?,
            n,
            h,
        )?;
        self.tock("embedding_forward", _pt);
        let x0 = cut(&self.layer_io[0], nh_)?;
        let _pt = self.tick();
        k::residual_layernorm_forward(
            gpu,
            x0,
            emb,
            cutf(&self.emb_mean, n)?,
            cutf(&self.emb_rstd, n)?,
            emb,
            None,
            None,
            self.p(&e.ln_weight)?,
            self.p(&e.ln_bias)?,
            n,
            h,
            eps,
            0.0,
            0,
        )?;
        self.tock("residual_layernorm_forward", _pt);
        if p_hidden > 0.0 {
            let _pt = self.tick();
            k::dropout_forward(gpu, x0, x0, nh_, p_hidden, seed(0))?;
            self.tock("dropout_forward", _pt);
        }
        let (pl, sl) = k::attention_scratch_len(&st.shape);
        for (l, w) in self.layout.layers.iter().enumerate() {
            let la = &self.layers[l];
            let x = cut(&self.layer_io[l], nh_)?;
            let qkv = cut(&self.s.qkv, 3 * nh_)?;
            let _pt = self.tick();
            k::linear_forward(gpu, qkv, x, self.w(&w.qkv_weight)?, None, n, h, 3 * h)?;
            self.tock("linear_forward", _pt);
            let saved = AttentionSaved {
                q: cut(&la.q, pl)?,
                k: cut(&la.k, pl)?,
                v: cut(&la.v, pl)?,
                probs: cut(&la.probs, sl)?,
            };
            let ctx = cut(&la.ctx, nh_)?;
            let drop = (p_attn > 0.0).then(|| (p_attn, seed(1 + 3 * l as u64)));
            let _pt = self.tick();
            k::attention_forward(
                gpu,
                ctx,
                saved,
                cut(&self.s.scores, sl)?,
                cut(&self.s.ctxp, pl)?,
                qkv,
                Some(self.p(&w.qkv_bias)?),
                offs,
                pbase,
                &st.shape,
                drop,
            )?;
            self.tock("attention_forward", _pt);
            let proj = cut(&self.s.proj, nh_)?;
            let _pt = self.tick();
            k::linear_forward(gpu, proj, ctx, self.w(&w.attn_out_weight)?, None, n, h, h)?;
            self.tock("linear_forward", _pt);
            let ln1 = cut(&la.ln1, nh_)?;
            let _pt = self.tick();
            k::residual_layernorm_forward(
                gpu,
                ln1,
                cut(&la.res1, nh_)?,
                cutf(&la.mean1, n)?,
                cutf(&la.rstd1, n)?,
                proj,
                Some(self.p(&w.attn_out_bias)?),
                Some(x),
                self.p(&w.attn_ln_weight)?,
                self.p(&w.attn_ln_bias)?,
                n,
                h,
                eps,
                p_hidden,
                seed(2 + 3 * l as u64),
            )?;
            self.tock("residual_layernorm_forward", _pt);
            let fc1 = cut(&la.fc1, n * inter)?;
            let act = cut(&la.gelu, n * inter)?;
            let _pt = self.tick();
            k::linear_forward(gpu, fc1, ln1, self.w(&w.ffn_in_weight)?, None, n, h, inter)?;
            self.tock("linear_forward", _pt);
            let _pt = self.tick();
            k::bias_gelu_forward(gpu, act, fc1, Some(self.p(&w.ffn_in_bias)?), n, inter)?;
            self.tock("bias_gelu_forward", _pt);
            let _pt = self.tick();
            k::linear_forward(gpu, proj, act, self.w(&w.ffn_out_weight)?, None, n, inter, h)?;
            self.tock("linear_forward", _pt);
            let _pt = self.tick();
            k::residual_layernorm_forward(
                gpu,
                cut(&self.layer_io[l + 1], nh_)?,
                cut(&la.res2, nh_)?,
                cutf(&la.mean2, n)?,
                cutf(&la.rstd2, n)?,
                proj,
                Some(self.p(&w.ffn_out_bias)?),
                Some(ln1),
                self.p(&w.ffn_ln_weight)?,
                self.p(&w.ffn_ln_bias)?,
                n,
                h,
                eps,
                p_hidden,
                seed(3 + 3 * l as u64),
            )?;
            self.tock("residual_layernorm_forward", _pt);
        }
        let last = cut(&self.layer_io[cfg.num_hidden_layers], nh_)?;
        let _pt = self.tick();
        k::pooling_forward(
            gpu,
            cutf(&self.pooled, b * h)?,
            last,
            offs,
            b,
            n,
            h,
            self.pool_kind(),
        )?;
        self.tock("pooling_forward", _pt);
        Ok(())
    }

    fn pool_kind(&self) -> k::Pooling {
        match self.pooling {
            Pooling::Cls => k::Pooling::Cls,
            _ => k::Pooling::Mean,
        }
    }

    /// The objective on the pooled embeddings of the last forward: the loss stays on the device
    /// (see [`Self::read_loss`]) and its gradient feeds [`Self::backward`].
    pub fn loss(&mut self) -> Result<()> {
        let st = self.staged()?;
        let h = self.config.hidden_size;
        let pairs = st.b / 2;
        if pairs * 2 != st.b {
            return Err(GpuModelError::Batch(format!(
                "{} sequences do not form pairs",
                st.b
            )));
        }
        let _pt = self.tick();
        k::angle_objective(
            &self.gpu,
            &self.objective,
            self.loss.view(),
            self.dpooled.view().slice(0..st.b * h)?,
            self.pooled.view().slice(0..st.b * h)?,
            self.batch.labels.view().slice(0..pairs)?,
            pairs,
            h,
        )?;
        self.tock("angle_objective", _pt);
        Ok(())
    }

    /// Uploads `d loss / d pooled` (instead of [`Self::loss`]), e.g. from a CPU objective.
    pub fn set_dpooled(&mut self, d: &[f32]) -> Result<()> {
        let st = self.staged()?;
        let len = st.b * self.config.hidden_size;
        self.gpu.upload(self.dpooled.view().slice(0..len)?, d)?;
        Ok(())
    }

    /// The loss of the last [`Self::loss`] (waits for the device).
    pub fn read_loss(&self) -> Result<f32> {
        Ok(self.gpu.download(self.loss.view())?[0])
    }

    /// The last [`Self::loss`]'s total and its unweighted cosine, angle and in-batch parts (0 for
    /// an objective of weight 0), in that order (waits for the device).
    pub fn read_loss_parts(&self) -> Result<[f32; 4]> {
        let mut v = [0.0f32; 4];
        self.gpu.download_into(self.loss.view(), &mut v)?;
        Ok(v)
    }

    /// Clears the gradients.
    pub fn zero_grad(&self) -> Result<()> {
        Ok(self.gpu.zero(self.grads.view())?)
    }

    /// Backward from the pooled gradient to every parameter gradient (added into the flat
    /// gradient buffer, as the CPU encoder does).
    pub fn backward(&mut self) -> Result<()> {
        let st = self.staged()?.clone();
        let cfg = self.config.clone();
        let gpu = &self.gpu;
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (n, b) = (st.n, st.b);
        let nh_ = n * h;
        let dropout_seed = self.dropout_seed;
        let (p_hidden, p_attn) = match dropout_seed {
            Some(_) => (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob),
            None => (0.0, 0.0),
        };
        let seed = |tag: u64| dropout_seed.map_or(0, |s| derive_seed(s, tag));
        let cut = |x: &DeviceBuffer<T>, len: usize| x.view().slice(0..len);
        let cutf = |x: &DeviceBuffer<f32>, len: usize| x.view().slice(0..len);
        let offs = cut_i(&self.batch.offsets, b + 1)?;
        let pbase = self.batch.pbase.view().slice(0..b)?;
        let (pl, sl) = k::attention_scratch_len(&st.shape);
        let dx = cut(&self.s.dx, nh_)?;
        let dln1 = cut(&self.s.dln1, nh_)?;
        let dproj = cut(&self.s.dproj, nh_)?;
        let dctx = cut(&self.s.dctx, nh_)?;
        let dgelu = cut(&self.s.dgelu, n * inter)?;
        let dqkv = cut(&self.s.dqkv, 3 * nh_)?;
        let _pt = self.tick();
        k::pooling_backward(
            gpu,
            dx,
            cutf(&self.dpooled, b * h)?,
            offs,
            b,
            n,
            h,
            self.pool_kind(),
            false,
        )?;
        self.tock("pooling_backward", _pt);
        for (l, w) in self.layout.layers.iter().enumerate().rev() {
            let la = &self.layers[l];
            // out = LN2(dropout(fc2 + b2) + ln1)
            let _pt = self.tick();
            k::residual_layernorm_backward(
                gpu,
                Some(dproj),
                Some(dln1),
                self.g(&w.ffn_ln_weight)?,
                self.g(&w.ffn_ln_bias)?,
                dx,
                cut(&la.res2, nh_)?,
                cutf(&la.mean2, n)?,
                cutf(&la.rstd2, n)?,
                self.p(&w.ffn_ln_weight)?,
                n,
                h,
                p_hidden,
                seed(3 + 3 * l as u64),
                false,
            )?;
            self.tock("residual_layernorm_backward", _pt);
            // fc2 = gelu · W2ᵀ + b2
            let _pt = self.tick();
            k::linear_backward(
                gpu,
                Some(dgelu),
                false,
                self.g(&w.ffn_out_weight)?,
                Some(self.g(&w.ffn_out_bias)?),
                dproj,
                cut(&la.gelu, n * inter)?,
                self.w(&w.ffn_out_weight)?,
                n,
                inter,
                h,
            )?;
            self.tock("linear_backward", _pt);
            let _pt = self.tick();
            k::bias_gelu_backward(gpu, dgelu, cut(&la.fc1, n * inter)?, dgelu, n * inter, false)?;
            self.tock("bias_gelu_backward", _pt);
            // fc1 = ln1 · W1ᵀ + b1 (dln1 already holds the residual branch)
            let _pt = self.tick();
            k::linear_backward(
                gpu,
                Some(dln1),
                true,
                self.g(&w.ffn_in_weight)?,
                Some(self.g(&w.ffn_in_bias)?),
                dgelu,
                cut(&la.ln1, nh_)?,
                self.w(&w.ffn_in_weight)?,
                n,
                h,
                inter,
            )?;
            self.tock("linear_backward", _pt);
            // ln1 = LN1(dropout(attn_out + bo) + x)
            let _pt = self.tick();
            k::residual_layernorm_backward(
                gpu,
                Some(dproj),
                Some(dx),
                self.g(&w.attn_ln_weight)?,
                self.g(&w.attn_ln_bias)?,
                dln1,
                cut(&la.res1, nh_)?,
                cutf(&la.mean1, n)?,
                cutf(&la.rstd1, n)?,
                self.p(&w.attn_ln_weight)?,
                n,
                h,
                p_hidden,
                seed(2 + 3 * l as u64),
                false,
            )?;
            self.tock("residual_layernorm_backward", _pt);
            let _pt = self.tick();
            k::linear_backward(
                gpu,
                Some(dctx),
                false,
                self.g(&w.attn_out_weight)?,
                Some(self.g(&w.attn_out_bias)?),
                dproj,
                cut(&la.ctx, nh_)?,
                self.w(&w.attn_out_weight)?,
                n,
                h,
                h,
            )?;
            self.tock("linear_backward", _pt);
            let saved = AttentionSaved {
                q: cut(&la.q, pl)?,
                k: cut(&la.k, pl)?,
                v: cut(&la.v, pl)?,
                probs: cut(&la.probs, sl)?,
            };
            let dpad = [
                cut(&self.s.dpad[0], pl)?,
                cut(&self.s.dpad[1], pl)?,
                cut(&self.s.dpad[2], pl)?,
                cut(&self.s.dpad[3], pl)?,
            ];
            let drop = (p_attn > 0.0).then(|| (p_attn, seed(1 + 3 * l as u64)));
            let _pt = self.tick();
            k::attention_backward(
                gpu,
                dqkv,
                false,
                dctx,
                saved,
                cut(&self.s.scores, sl)?,
                dpad,
                offs,
                pbase,
                &st.shape,
                drop,
            )?;
            self.tock("attention_backward", _pt);
            let _pt = self.tick();
            k::linear_backward(
                gpu,
                Some(dx),
                true,
                self.g(&w.qkv_weight)?,
                Some(self.g(&w.qkv_bias)?),
                dqkv,
                cut(&self.layer_io[l], nh_)?,
                self.w(&w.qkv_weight)?,
                n,
                h,
                3 * h,
            )?;
            self.tock("linear_backward", _pt);
        }
        // x0 = dropout(LN(emb))
        let e = &self.layout.embeddings;
        let _pt = self.tick();
        k::dropout_backward(gpu, dproj, dx, nh_, p_hidden, seed(0), false)?;
        self.tock("dropout_backward", _pt);
        let demb = dln1;
        let _pt = self.tick();
        k::residual_layernorm_backward(
            gpu,
            Some(demb),
            None,
            self.g(&e.ln_weight)?,
            self.g(&e.ln_bias)?,
            dproj,
            cut(&self.emb, nh_)?,
            cutf(&self.emb_mean, n)?,
            cutf(&self.emb_rstd, n)?,
            self.p(&e.ln_weight)?,
            n,
            h,
            0.0,
            0,
            false,
        )?;
        self.tock("residual_layernorm_backward", _pt);
        let _pt = self.tick();
        k::embedding_backward(
            gpu,
            self.g(&e.word)?,
            self.g(&e.position)?,
            self.g(&e.token_type)?,
            demb,
            self.batch.ids.view().slice(0..n)?,
            self.batch.positions.view().slice(0..n)?,
            self.batch.types.view().slice(0..n)?,
            n,
            h,
        )?;
        self.tock("embedding_backward", _pt);
        Ok(())
    }

    /// One AdamW step `t` (from 1) over the flat buffer, clipping the global gradient norm to
    /// `max_norm` first when given (norm and clip stay on the device).
    pub fn adamw_step(&mut self, hp: &AdamW, t: u64, max_norm: Option<f32>) -> Result<()> {
        let clip = match max_norm {
            Some(mx) => {
                let _pt = self.tick();
                k::grad_norm_sq(&self.gpu, self.norm_sq.view(), self.grads.view())?;
                self.tock("grad_norm_sq", _pt);
                Some((self.norm_sq.view(), mx))
            }
            None => None,
        };
        let _pt = self.tick();
        k::adamw_update(
            &self.gpu,
            self.params.view(),
            self.grads.view(),
            self.adam_m.view(),
            self.adam_v.view(),
            self.wcopy.as_ref().map(|w| w.view()),
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.eps,
            hp.weight_decay,
            self.no_decay.as_ref().map_or(DSlice::null(), |b| b.view()),
            t,
            clip,
        )?;
        self.tock("adamw_update", _pt);
        Ok(())
    }

    /// One training step on the staged batch: zero grads, forward (dropout with `seed`), loss,
    /// backward, AdamW. Queued on the device; read the loss with [`Self::read_loss`].
    pub fn train_step(&mut self, hp: &AdamW, t: u64, seed: Option<u64>, max_norm: Option<f32>) -> Result<()> {
        self.zero_grad()?;
        self.forward(seed)?;
        self.loss()?;
        self.backward()?;
        self.adamw_step(hp, t, max_norm)
    }
}

fn cut_i(x: &DeviceBuffer<i32>, len: usize) -> Result<DSlice<i32>> {
    Ok(x.view().slice(0..len)?)
}
