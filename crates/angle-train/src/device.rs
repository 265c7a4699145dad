//! Where the encoder runs: `--device cpu` (the default) or `--device cuda` (with the `cuda` feature).
//!
//! On the GPU the encoder's forward, pooling, backward, gradient norm, clipping and AdamW run on the
//! device ([`angle_encoder::gpu::GpuEncoder`], f32 with TF32 products); the AnglE objective stays on
//! the host with the very same [`angle_loss::AngleLoss`] as on the CPU, so every loss option, data
//! format and duplicate mask keeps its meaning (one `[B, H]` download and upload per micro-batch).
//! The host [`Encoder`] stays the copy that evaluation and checkpoints read:
//! [`GpuModel::download_into`] refreshes it first.
//!
//! Everything that depends on the feature lives in this file; without it, [`GpuModel::new`] says how
//! to rebuild.

use std::fmt;
use std::str::FromStr;

use angle_encoder::{AdamW, Encoder, Pooling};

use crate::error::Result;

/// The message for `--device cuda` in a build without CUDA.
pub const NO_CUDA: &str = "built without the `cuda` feature; rebuild with --features cuda";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            _ => Err(format!("unknown device {s:?} (cpu or cuda)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// The encoder (and its optimizer state) on CUDA device 0, sized for `max_seqs` sequences of at
/// most `max_seq_len` tokens.
pub struct GpuModel {
    inner: imp::Inner,
}

impl fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GpuModel")
    }
}

impl GpuModel {
    /// Uploads `enc`'s parameters and moments. Errors (no feature, no driver, unsupported pooling or
    /// activation) are returned, never panicked on.
    pub fn new(enc: &Encoder, pooling: Pooling, max_seqs: usize, max_seq_len: usize) -> Result<Self> {
        Ok(GpuModel {
            inner: imp::Inner::new(enc, pooling, max_seqs, max_seq_len)?,
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
    use angle_tensor::cuda::Gpu;

    use crate::error::{Result, TrainError};

    fn err(e: GpuModelError) -> TrainError {
        TrainError::Device(e.to_string())
    }

    pub(super) struct Inner {
        enc: GpuEncoder<f32>,
    }

    impl Inner {
        pub(super) fn new(
            enc: &Encoder,
            pooling: Pooling,
            max_seqs: usize,
            max_seq_len: usize,
        ) -> Result<Self> {
            let gpu = Gpu::new(0).map_err(|e| TrainError::Device(e.to_string()))?;
            let cap = GpuCapacity {
                max_seqs: max_seqs.max(1),
                max_seq_len,
                max_tokens: max_seqs.max(1) * max_seq_len,
            };
            let mut g = GpuEncoder::<f32>::new(gpu, enc.config.clone(), &enc.buffers.params, pooling, cap)
                .map_err(err)?;
            // An encoder loaded for inference has no moments yet (the device's start at zero).
            if !enc.buffers.adam_m.is_empty() {
                g.upload_moments(&enc.buffers.adam_m, &enc.buffers.adam_v)
                    .map_err(err)?;
            }
            Ok(Inner { enc: g })
        }

        pub(super) fn zero_grad(&mut self) -> Result<()> {
            self.enc.zero_grad().map_err(err)
        }

        pub(super) fn forward_pooled(
            &mut self,
            ids: &[u32],
            types: &[u32],
            offsets: &[usize],
            dropout: Option<u64>,
            pooled: &mut Vec<f32>,
        ) -> Result<()> {
            self.enc.stage(ids, Some(types), offsets, None).map_err(err)?;
            self.enc.forward(dropout).map_err(err)?;
            *pooled = self.enc.download_pooled().map_err(err)?;
            Ok(())
        }

        pub(super) fn backward(&mut self, dpooled: &[f32]) -> Result<()> {
            self.enc.set_dpooled(dpooled).map_err(err)?;
            self.enc.backward().map_err(err)
        }

        pub(super) fn grad_norm(&mut self) -> Result<f64> {
            Ok(self.enc.grad_norm().map_err(err)? as f64)
        }

        pub(super) fn adamw_step(&mut self, hp: &AdamW, t: u64, max_norm: Option<f32>) -> Result<()> {
            self.enc.adamw_step(hp, t, max_norm).map_err(err)
        }

        pub(super) fn download_into(&self, enc: &mut Encoder) -> Result<()> {
            let p = self.enc.download_params().map_err(err)?;
            let (m, v) = self.enc.download_moments().map_err(err)?;
            enc.buffers.params.copy_from_slice(&p);
            enc.buffers.adam_m = m;
            enc.buffers.adam_v = v;
            Ok(())
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use angle_encoder::{AdamW, Encoder, Pooling};

    use crate::error::{Result, TrainError};

    /// Never built: [`Inner::new`] is the only way to one, and it fails.
    pub(super) enum Inner {}

    fn no_cuda() -> TrainError {
        TrainError::Device(super::NO_CUDA.into())
    }

    impl Inner {
        pub(super) fn new(_: &Encoder, _: Pooling, _: usize, _: usize) -> Result<Self> {
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

/// `Some(model)` for `--device cuda`, `None` for the CPU.
pub fn for_device(
    device: Device,
    enc: &Encoder,
    pooling: Pooling,
    max_seqs: usize,
    max_seq_len: usize,
) -> Result<Option<GpuModel>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => GpuModel::new(enc, pooling, max_seqs, max_seq_len).map(Some),
    }
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda));
        assert!("tpu".parse::<Device>().is_err());
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let cfg = angle_encoder::BertConfig::bert(8, 1, 2, 16, 10, 8);
        let n = angle_encoder::ParamLayout::new(&cfg).total;
        let enc = Encoder::from_params(cfg, vec![0.01; n]).unwrap();
        let e = for_device(Device::Cuda, &enc, Pooling::Mean, 2, 8).unwrap_err();
        assert!(e.to_string().contains(NO_CUDA), "{e}");
        assert!(
            for_device(Device::Cpu, &enc, Pooling::Mean, 2, 8)
                .unwrap()
                .is_none()
        );
    }
}
