//! Where the encoder runs: `--device cpu` (the default) or `--device cuda` (with the `cuda` feature),
//! and on the GPU in which precision (`--precision f32 | tf32 | bf16`: [`Precision`], the one type every device
//! and model shares; [`crate::precision`] decides what each device offers).
//!
//! On the GPU the encoder's forward, pooling, backward, gradient norm, clipping and AdamW run on the
//! device ([`angle_encoder::gpu::GpuEncoder`]: f32 with TF32 products by default, exact f32, or bf16
//! mixed precision with f32 master weights). The AnglE objective runs on the device too when the
//! kernel covers the run's loss ([`GpuModel::use_device_objective`]: format A, no in-batch
//! negatives); otherwise it stays on the host with the very same [`angle_loss::AngleLoss`] as on
//! the CPU (one `[B, H]` download and upload per micro-batch). `ANGLE_GPU_HOST_LOSS=1` forces the
//! host objective (to compare the two). The host [`Encoder`] stays the copy that evaluation and
//! checkpoints read: [`GpuModel::download_into`] refreshes it first.
//!
//! Everything that depends on the feature lives in this file; without it, [`GpuModel::new`] says how
//! to rebuild.

use std::fmt;
use std::str::FromStr;

use angle_encoder::{AdamW, Encoder, Pooling};
use angle_loss::{AngleLossConfig, DataFormat, LossParts};
pub use angle_tensor::Precision;

use crate::backbone::{Backbone, BertCpu, Packed, Sizes};
use crate::error::{Result, TrainError};

/// The message for `--device cuda` in a build without CUDA.
pub const NO_CUDA: &str = "built without the `cuda` feature; rebuild with --features cuda";

/// The objective kernel keeps 12 floats per pair in shared memory, beside its own 128 bytes
/// (48 KiB in all without opting in).
pub const MAX_DEVICE_OBJECTIVE_PAIRS: usize = 1000;

/// The environment variable that keeps the objective on the host in a GPU run.
pub const HOST_LOSS_ENV: &str = "ANGLE_GPU_HOST_LOSS";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(Precision),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            // TF32 tensor cores unless --precision says otherwise
            "cuda" | "gpu" => Ok(Device::Cuda(Precision::Tf32)),
            _ => Err(format!("unknown device {s:?} (cpu or cuda)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(p) => write!(f, "cuda ({p})"),
        }
    }
}

/// Why the device objective cannot compute `cfg` on `format` (`masked`: duplicate texts are
/// masked by text id, which the kernel does not do); `None` when it can.
pub fn device_objective_gap(cfg: &AngleLossConfig, format: DataFormat) -> Option<&'static str> {
    if format != DataFormat::A {
        Some("the GPU objective covers format A only")
    } else if cfg.ibn_w != 0.0 {
        // The kernel takes angle-emb's integer reading of the labels for in-batch positives and
        // has no text-id mask; the host's in-batch term differs on graded labels and duplicates.
        Some("in-batch negatives (ibn_w > 0) stay on the host")
    } else {
        None
    }
}

/// The encoder (and its optimizer state) on CUDA device 0, sized for `max_seqs` sequences of at
/// most `max_seq_len` tokens.
pub struct GpuModel {
    inner: imp::Inner,
    device_objective: bool,
    /// Pairs per micro-batch at most (format A), for the objective kernel's shared memory.
    max_pairs: usize,
}

impl fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GpuModel")
    }
}

impl GpuModel {
    /// Uploads `enc`'s parameters and moments. Errors (no feature, no driver, unsupported pooling or
    /// activation) are returned, never panicked on.
    pub fn new(
        enc: &Encoder,
        pooling: Pooling,
        precision: Precision,
        max_seqs: usize,
        max_seq_len: usize,
    ) -> Result<Self> {
        Ok(GpuModel {
            inner: imp::Inner::new(enc, pooling, precision, max_seqs, max_seq_len)?,
            device_objective: false,
            max_pairs: max_seqs / 2,
        })
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        self.inner.zero_grad()
    }

    /// Forward over one packed batch (dropout with `dropout` when given), the pooled `[B, H]`
    /// embeddings into `pooled`.
    pub fn forward_pooled(
        &mut self,
        ids: &[u32],
        types: &[u32],
        offsets: &[usize],
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        self.inner.forward_pooled(ids, types, offsets, dropout, pooled)
    }

    /// Backward of the last forward from `d loss / d pooled`, added into the gradients.
    pub fn backward(&mut self, dpooled: &[f32]) -> Result<()> {
        self.inner.backward(dpooled)
    }

    /// Sets the device objective to `cfg` when the kernel covers it on `format` (and
    /// [`HOST_LOSS_ENV`] is not set): then [`Self::device_objective`] is true and the trainer
    /// calls [`Self::forward_objective_backward`]. Returns what the trainer should log once.
    pub fn use_device_objective(&mut self, cfg: &AngleLossConfig, format: DataFormat) -> String {
        let forced = std::env::var_os(HOST_LOSS_ENV).is_some_and(|v| v != "0" && !v.is_empty());
        let gap = if forced {
            Some("forced by ANGLE_GPU_HOST_LOSS")
        } else if self.max_pairs > MAX_DEVICE_OBJECTIVE_PAIRS {
            Some("more pairs per batch than the objective kernel's shared memory holds")
        } else {
            device_objective_gap(cfg, format)
        };
        self.device_objective = gap.is_none();
        if self.device_objective {
            self.inner.set_objective(cfg);
            "device: the AnglE objective runs on the GPU".into()
        } else {
            format!(
                "device: the AnglE objective runs on the host ({})",
                gap.unwrap_or_default()
            )
        }
    }

    /// Whether [`Self::use_device_objective`] put the objective on the device.
    pub fn device_objective(&self) -> bool {
        self.device_objective
    }

    /// One micro-batch with the objective on the device: forward (dropout with `dropout`), the
    /// objective on the pooled embeddings with `labels` (one per pair), backward of
    /// `scale · loss` added into the gradients. Returns the unscaled loss and its parts (the
    /// objectives that ran; each part is unweighted, as the host's are). Reads 4 floats back.
    pub fn forward_objective_backward(
        &mut self,
        ids: &[u32],
        types: &[u32],
        offsets: &[usize],
        labels: &[f32],
        dropout: Option<u64>,
        scale: f32,
    ) -> Result<(f32, LossParts<f32>)> {
        if !self.device_objective {
            return Err(TrainError::Device(
                "forward_objective_backward without a device objective".into(),
            ));
        }
        self.inner
            .forward_objective_backward(ids, types, offsets, labels, dropout, scale)
    }

    pub fn grad_norm(&mut self) -> Result<f64> {
        self.inner.grad_norm()
    }

    /// Clips to `max_norm` (when given) and takes AdamW step `t` (from 1).
    pub fn adamw_step(&mut self, hp: &AdamW, t: u64, max_norm: Option<f32>) -> Result<()> {
        self.inner.adamw_step(hp, t, max_norm)
    }

    /// Copies the device's parameters and moments into `enc` (before evaluating or saving).
    pub fn download_into(&self, enc: &mut Encoder) -> Result<()> {
        self.inner.download_into(enc)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use angle_encoder::gpu::{GpuCapacity, GpuEncoder, GpuModelError};
    use angle_encoder::{AdamW, Encoder, Pooling};
    use angle_loss::{AngleLossConfig, AnglePooling, LossParts};
    use angle_tensor::cuda::Gpu;
    use angle_tensor::cuda::check::Elem;

    use super::Precision;
    use crate::error::{Result, TrainError};

    fn err(e: GpuModelError) -> TrainError {
        TrainError::Device(e.to_string())
    }

    /// One encoder type per activation precision (f32 serves both F32 and TF32: the products'
    /// mode is the process-wide cuBLAS switch).
    pub(super) enum Inner {
        F32(Model<f32>),
        Bf16(Model<half::bf16>),
    }

    pub(super) struct Model<T: Elem> {
        enc: GpuEncoder<T>,
        /// The objective's weights as configured (the kernel gets them times the micro-batch scale).
        weights: (f32, f32, f32, f32, bool),
    }

    /// `$body` with `$m` bound to the model, whatever its precision.
    macro_rules! each {
        ($self:expr, $m:ident => $body:expr) => {
            match $self {
                Inner::F32($m) => $body,
                Inner::Bf16($m) => $body,
            }
        };
    }

    impl Inner {
        pub(super) fn new(
            enc: &Encoder,
            pooling: Pooling,
            precision: Precision,
            max_seqs: usize,
            max_seq_len: usize,
        ) -> Result<Self> {
            let gpu = Gpu::new(0).map_err(|e| TrainError::Device(e.to_string()))?;
            // F32 means exact f32 products; TF32 and bf16 runs keep cuBLAS's tensor-core modes.
            gpu.set_tf32(precision != Precision::F32);
            let cap = GpuCapacity {
                max_seqs: max_seqs.max(1),
                max_seq_len,
                max_tokens: max_seqs.max(1) * max_seq_len,
            };
            Ok(match precision {
                Precision::F32 | Precision::Tf32 => Inner::F32(Model::new(gpu, enc, pooling, cap)?),
                Precision::Bf16 => Inner::Bf16(Model::new(gpu, enc, pooling, cap)?),
                Precision::Int8 => {
                    return Err(TrainError::Config(
                        "int8 products run on the CPU; the GPU computes in f32, tf32 or bf16".into(),
                    ));
                }
            })
        }

        pub(super) fn zero_grad(&mut self) -> Result<()> {
            each!(self, m => m.enc.zero_grad().map_err(err))
        }

        pub(super) fn forward_pooled(
            &mut self,
            ids: &[u32],
            types: &[u32],
            offsets: &[usize],
            dropout: Option<u64>,
            pooled: &mut Vec<f32>,
        ) -> Result<()> {
            each!(self, m => m.forward_pooled(ids, types, offsets, dropout, pooled))
        }

        pub(super) fn backward(&mut self, dpooled: &[f32]) -> Result<()> {
            each!(self, m => {
                m.enc.set_dpooled(dpooled).map_err(err)?;
                m.enc.backward().map_err(err)
            })
        }

        pub(super) fn set_objective(&mut self, cfg: &AngleLossConfig) {
            let w = (
                cfg.cosine_w as f32,
                cfg.cosine_tau as f32,
                cfg.angle_w as f32,
                cfg.angle_tau as f32,
                cfg.angle_pooling == AnglePooling::Mean,
            );
            each!(self, m => m.weights = w)
        }

        pub(super) fn forward_objective_backward(
            &mut self,
            ids: &[u32],
            types: &[u32],
            offsets: &[usize],
            labels: &[f32],
            dropout: Option<u64>,
            scale: f32,
        ) -> Result<(f32, LossParts<f32>)> {
            each!(self, m => m.forward_objective_backward(ids, types, offsets, labels, dropout, scale))
        }

        pub(super) fn grad_norm(&mut self) -> Result<f64> {
            each!(self, m => Ok(m.enc.grad_norm().map_err(err)? as f64))
        }

        pub(super) fn adamw_step(&mut self, hp: &AdamW, t: u64, max_norm: Option<f32>) -> Result<()> {
            each!(self, m => m.enc.adamw_step(hp, t, max_norm).map_err(err))
        }

        pub(super) fn download_into(&self, enc: &mut Encoder) -> Result<()> {
            each!(self, m => {
                let p = m.enc.download_params().map_err(err)?;
                let (mo, v) = m.enc.download_moments().map_err(err)?;
                enc.buffers.params.copy_from_slice(&p);
                enc.buffers.adam_m = mo;
                enc.buffers.adam_v = v;
                Ok(())
            })
        }
    }

    impl<T: Elem> Model<T> {
        fn new(gpu: Gpu, enc: &Encoder, pooling: Pooling, cap: GpuCapacity) -> Result<Self> {
            let mut g = GpuEncoder::<T>::new(gpu, enc.config.clone(), &enc.buffers.params, pooling, cap)
                .map_err(err)?;
            // An encoder loaded for inference has no moments yet (the device's start at zero).
            if !enc.buffers.adam_m.is_empty() {
                g.upload_moments(&enc.buffers.adam_m, &enc.buffers.adam_v)
                    .map_err(err)?;
            }
            Ok(Model {
                enc: g,
                weights: (0.0, 20.0, 0.0, 20.0, false),
            })
        }

        fn forward_pooled(
            &mut self,
            ids: &[u32],
            types: &[u32],
            offsets: &[usize],
            dropout: Option<u64>,
            pooled: &mut Vec<f32>,
        ) -> Result<()> {
            self.enc.stage(ids, Some(types), offsets, None).map_err(err)?;
            self.enc.forward(dropout).map_err(err)?;
            self.enc.download_pooled_into(pooled).map_err(err)?;
            Ok(())
        }

        fn forward_objective_backward(
            &mut self,
            ids: &[u32],
            types: &[u32],
            offsets: &[usize],
            labels: &[f32],
            dropout: Option<u64>,
            scale: f32,
        ) -> Result<(f32, LossParts<f32>)> {
            let (cw, ct, aw, at, mean) = self.weights;
            // The objective is linear in its weights: scaled weights give `scale · dL/dy` (the
            // micro-batch mean) with no extra kernel; the parts stay unweighted.
            let o = &mut self.enc.objective;
            o.cosine_w = cw * scale;
            o.cosine_tau = ct;
            o.angle_w = aw * scale;
            o.angle_tau = at;
            o.angle_mean = mean;
            o.ibn_w = 0.0;
            self.enc
                .stage(ids, Some(types), offsets, Some(labels))
                .map_err(err)?;
            self.enc.forward(dropout).map_err(err)?;
            self.enc.loss().map_err(err)?;
            self.enc.backward().map_err(err)?;
            let [_, cos, angle, _] = self.enc.read_loss_parts().map_err(err)?;
            // The host's sum, in f64 as the host's AngleLoss forms it.
            let mut loss = 0.0f64;
            let mut parts = LossParts::default();
            if cw > 0.0 {
                loss += f64::from(cw) * f64::from(cos);
                parts.cosine = Some(cos);
            }
            if aw > 0.0 {
                loss += f64::from(aw) * f64::from(angle);
                parts.angle = Some(angle);
            }
            Ok((loss as f32, parts))
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use angle_encoder::{AdamW, Encoder, Pooling};
    use angle_loss::{AngleLossConfig, LossParts};

    use super::Precision;
    use crate::error::{Result, TrainError};

    /// Never built: [`Inner::new`] is the only way to one, and it fails.
    pub(super) enum Inner {}

    fn no_cuda() -> TrainError {
        TrainError::Device(super::NO_CUDA.into())
    }

    impl Inner {
        pub(super) fn new(_: &Encoder, _: Pooling, _: Precision, _: usize, _: usize) -> Result<Self> {
            Err(no_cuda())
        }
        pub(super) fn zero_grad(&mut self) -> Result<()> {
            match *self {}
        }
        pub(super) fn forward_pooled(
            &mut self,
            _: &[u32],
            _: &[u32],
            _: &[usize],
            _: Option<u64>,
            _: &mut Vec<f32>,
        ) -> Result<()> {
            match *self {}
        }
        pub(super) fn backward(&mut self, _: &[f32]) -> Result<()> {
            match *self {}
        }
        pub(super) fn set_objective(&mut self, _: &AngleLossConfig) {
            match *self {}
        }
        pub(super) fn forward_objective_backward(
            &mut self,
            _: &[u32],
            _: &[u32],
            _: &[usize],
            _: &[f32],
            _: Option<u64>,
            _: f32,
        ) -> Result<(f32, LossParts<f32>)> {
            match *self {}
        }
        pub(super) fn grad_norm(&mut self) -> Result<f64> {
            match *self {}
        }
        pub(super) fn adamw_step(&mut self, _: &AdamW, _: u64, _: Option<f32>) -> Result<()> {
            match *self {}
        }
        pub(super) fn download_into(&self, _: &mut Encoder) -> Result<()> {
            match *self {}
        }
    }
}

/// The BERT-family encoder on CUDA device 0 behind the [`Backbone`] interface.
///
/// Training runs on the device. The host [`Encoder`] stays the copy that checkpoints read and, for a
/// training backbone, that validation runs on (as before: evaluation in f32 on the host); it is
/// refreshed from the device only when read after a step. A backbone reserved for inference only
/// (`train_seqs == 0`) embeds on the device.
pub struct GpuBert {
    host: BertCpu,
    precision: Precision,
    gpu: Option<GpuModel>,
    /// The host copy is older than the device's parameters.
    host_stale: bool,
    embed_on_device: bool,
    /// The clipping norm of the coming AdamW step.
    clip: Option<f32>,
}

impl GpuBert {
    /// Saves (from the host copy) split into shards above `bytes`.
    pub fn with_max_shard_bytes(mut self, bytes: u64) -> Self {
        self.host.max_shard_bytes = bytes;
        self
    }

    pub fn new(enc: Encoder, pooling: Pooling, precision: Precision) -> Self {
        GpuBert {
            host: BertCpu::new(enc, pooling),
            precision,
            gpu: None,
            host_stale: false,
            embed_on_device: false,
            clip: None,
        }
    }

    fn gpu(&mut self) -> Result<&mut GpuModel> {
        self.gpu
            .as_mut()
            .ok_or_else(|| TrainError::Device("GPU backbone used before reserve()".into()))
    }

    fn sync_host(&mut self) -> Result<()> {
        if self.host_stale {
            if let Some(g) = self.gpu.as_ref() {
                g.download_into(&mut self.host.enc)?;
            }
            self.host_stale = false;
        }
        Ok(())
    }
}

impl Backbone for GpuBert {
    fn describe(&self) -> String {
        let c = &self.host.enc.config;
        format!(
            "{} ({} layers, hidden {}) on cuda, {}",
            c.model_type, c.num_hidden_layers, c.hidden_size, self.precision
        )
    }

    fn hidden_size(&self) -> usize {
        self.host.hidden_size()
    }

    fn pooling(&self) -> Pooling {
        self.host.pooling()
    }

    fn reserve(&mut self, s: Sizes) -> Result<()> {
        self.embed_on_device = s.train_seqs == 0;
        let seqs = if self.embed_on_device {
            s.embed_seqs
        } else {
            s.train_seqs
        };
        let pooling = self.host.pooling();
        self.gpu = Some(GpuModel::new(
            &self.host.enc,
            pooling,
            self.precision,
            seqs,
            s.max_len,
        )?);
        // Validation of a training run embeds on the host.
        self.host.reserve(Sizes {
            train_seqs: 0,
            embed_seqs: if self.embed_on_device { 0 } else { s.embed_seqs },
            max_len: s.max_len,
        })
    }

    fn embed(&mut self, batch: &Packed<'_>, pooled: &mut Vec<f32>) -> Result<()> {
        if self.embed_on_device {
            let g = self.gpu()?;
            return g.forward_pooled(
                batch.input_ids,
                batch.token_type_ids,
                batch.seq_offsets,
                None,
                pooled,
            );
        }
        self.sync_host()?;
        self.host.embed(batch, pooled)
    }

    fn forward_train(
        &mut self,
        batch: &Packed<'_>,
        dropout: Option<u64>,
        pooled: &mut Vec<f32>,
    ) -> Result<()> {
        self.gpu()?.forward_pooled(
            batch.input_ids,
            batch.token_type_ids,
            batch.seq_offsets,
            dropout,
            pooled,
        )
    }

    fn backward(&mut self, _batch: &Packed<'_>, dpooled: &[f32]) -> Result<()> {
        self.gpu()?.backward(dpooled)
    }

    fn use_fused_objective(&mut self, cfg: &AngleLossConfig, format: DataFormat) -> Option<String> {
        let g = self.gpu.as_mut()?;
        let msg = g.use_device_objective(cfg, format);
        // Said either way: where the objective runs is worth a line in the log.
        eprintln!("{msg}");
        g.device_objective().then_some(msg)
    }

    fn fused_step(
        &mut self,
        batch: &Packed<'_>,
        labels: &[f32],
        dropout: Option<u64>,
        scale: f32,
    ) -> Result<(f32, LossParts<f32>)> {
        self.gpu()?.forward_objective_backward(
            batch.input_ids,
            batch.token_type_ids,
            batch.seq_offsets,
            labels,
            dropout,
            scale,
        )
    }

    fn num_layers(&self) -> usize {
        self.host.num_layers()
    }

    fn zero_grad(&mut self) -> Result<()> {
        self.host.zero_grad()?;
        match self.gpu.as_mut() {
            Some(g) => g.zero_grad(),
            None => Ok(()),
        }
    }

    fn clip_grad_norm(&mut self, max_norm: Option<f32>) -> Result<f64> {
        // The device clips inside its AdamW step, from this same norm.
        self.clip = max_norm;
        self.gpu()?.grad_norm()
    }

    fn adamw_step(&mut self, hp: &AdamW, t: u64) -> Result<()> {
        let clip = self.clip;
        self.gpu()?.adamw_step(hp, t, clip)?;
        self.host_stale = true;
        Ok(())
    }

    fn trainable_len(&self) -> usize {
        self.host.trainable_len()
    }

    fn moments(&mut self) -> Result<(&[f32], &[f32])> {
        self.sync_host()?;
        self.host.moments()
    }

    fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        if self.gpu.is_some() {
            return Err(TrainError::Device(
                "moments must be restored before reserve()".into(),
            ));
        }
        self.host.set_moments(m, v)
    }

    fn write_weights(&mut self, dir: &std::path::Path, files_from: &std::path::Path) -> Result<()> {
        self.sync_host()?;
        self.host.write_weights(dir, files_from)
    }
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(Precision::Tf32)));
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("fp16".parse::<Precision>().is_err());
    }

    #[test]
    fn device_objective_covers_format_a_without_in_batch_negatives() {
        let mut cfg = crate::config::default_recipe_loss();
        assert_eq!(device_objective_gap(&cfg, DataFormat::A), None);
        assert!(device_objective_gap(&cfg, DataFormat::B).is_some());
        cfg.ibn_w = 1.0;
        assert!(device_objective_gap(&cfg, DataFormat::A).is_some());
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let cfg = angle_encoder::BertConfig::bert(8, 1, 2, 16, 10, 8);
        let n = angle_encoder::ParamLayout::new(&cfg).total;
        let enc = Encoder::from_params(cfg, vec![0.01; n]).unwrap();
        let mut gpu = GpuBert::new(enc, Pooling::Mean, Precision::Bf16);
        let sizes = Sizes {
            train_seqs: 2,
            embed_seqs: 2,
            max_len: 8,
        };
        let e = gpu.reserve(sizes).unwrap_err();
        assert!(e.to_string().contains(NO_CUDA), "{e}");
    }
}
