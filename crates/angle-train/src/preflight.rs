//! Option checks that run before anything heavy is read: a combination that cannot run is refused here, naming
//! the option, instead of after the model, the data and the untrained model's validation have been loaded (or
//! at step 0, or at the end of training). Only `config.json` (and an adapter's `adapter_config.json`) is read,
//! where the model's family, width or depth decides.

use std::path::{Path, PathBuf};

use angle_encoder::{Activation, BertConfig, Pooling};

use crate::checkpoint::{OPTIMIZER, TRAINER_STATE};
use crate::config::TrainConfig;
use crate::decoder::{ADAPTER_CONFIG, is_decoder_folder};
use crate::device::{Device, NO_CUDA};
use crate::error::{Result, TrainError};

fn refuse<T>(msg: String) -> Result<T> {
    Err(TrainError::Config(msg))
}

/// The two families a model folder can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    /// `adapter`: a peft adapter folder on a decoder base.
    Decoder {
        adapter: bool,
    },
    /// ELECTRA, ALBERT, ModernBERT (or a BERT-family base with LoRA): `angle-models`' blocks.
    /// `adapter`: a peft adapter folder on an encoder base.
    Blocks {
        adapter: bool,
    },
}

/// What the checks need to know of a model: its family and shape, from `config.json` alone.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub dir: PathBuf,
    /// The folder of the weights: `dir`, or an adapter's base.
    pub base: PathBuf,
    pub family: Family,
    pub hidden: usize,
    pub layers: usize,
    /// BERT family: the activation (the GPU has the erf GELU only).
    pub activation: Option<Activation>,
    /// BERT family: the larger of `hidden_dropout_prob` and `attention_probs_dropout_prob`.
    pub dropout: f64,
}

impl ModelShape {
    /// Reads the folder's `config.json` (an adapter folder: its base's, `base_model` overriding the adapter's
    /// `base_model_name_or_path`).
    pub fn read(dir: &Path, base_model: Option<&Path>) -> Result<Self> {
        let adapter = dir.join(ADAPTER_CONFIG).is_file();
        let block_type =
            crate::blocks::model_type(dir)?.is_some_and(|t| crate::blocks::BLOCK_TYPES.contains(&t.as_str()));
        if block_type || (adapter && crate::blocks::uses_blocks(dir, false, base_model)?) {
            let base = match adapter {
                true => crate::decoder::adapter_base(dir, base_model)?,
                false => dir.to_path_buf(),
            };
            let b = angle_models::model::EncoderBlocks::from_config(&base.join("config.json"))
                .map_err(|e| TrainError::Encoder(e.to_string()))?;
            return Ok(ModelShape {
                dir: dir.to_path_buf(),
                base,
                family: Family::Blocks { adapter },
                hidden: b.hidden_size,
                layers: b.uses.len(),
                activation: None,
                dropout: b.max_dropout(),
            });
        }
        if is_decoder_folder(dir)? {
            let adapter = dir.join(ADAPTER_CONFIG).is_file();
            let base = match adapter {
                true => crate::decoder::adapter_base(dir, base_model)?,
                false => dir.to_path_buf(),
            };
            let c = angle_decoder::DecoderConfig::from_dir(&base)
                .map_err(|e| TrainError::Encoder(e.to_string()))?;
            return Ok(ModelShape {
                dir: dir.to_path_buf(),
                base,
                family: Family::Decoder { adapter },
                hidden: c.hidden_size,
                layers: c.num_hidden_layers,
                activation: None,
                dropout: 0.0,
            });
        }
        let c =
            BertConfig::from_file(dir.join("config.json")).map_err(|e| TrainError::Encoder(e.to_string()))?;
        Ok(ModelShape {
            dir: dir.to_path_buf(),
            base: dir.to_path_buf(),
            family: Family::Bert,
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            activation: Some(c.hidden_act),
            dropout: c.hidden_dropout_prob.max(c.attention_probs_dropout_prob) as f64,
        })
    }

    /// The largest dropout probability a training forward of this model applies under `c`.
    fn dropout(&self, c: &TrainConfig) -> f64 {
        match self.family {
            Family::Bert | Family::Blocks { .. } => {
                self.dropout.max(c.lora.as_ref().map_or(0.0, |l| l.dropout))
            }
            Family::Decoder { .. } => c.lora.as_ref().map_or(0.0, |l| l.dropout),
        }
    }

    fn is_decoder(&self) -> bool {
        matches!(self.family, Family::Decoder { .. })
    }

    /// `--append-eos` appends the token `tokenizer_config.json` names (in the folder whose `tokenizer.json` the
    /// loaders read): a folder that names none is refused before the weights load.
    fn check_append_eos(&self) -> Result<()> {
        let tok_dir = match self.dir.join("tokenizer.json").is_file() {
            true => &self.dir,
            false => &self.base,
        };
        let p = tok_dir.join("tokenizer_config.json");
        let named = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("eos_token").is_some_and(|e| !e.is_null()));
        if !named {
            return refuse(format!(
                "--append-eos: {} names no eos_token to append",
                p.display()
            ));
        }
        Ok(())
    }
}

/// Everything `angle train` can check before it reads data or weights: the options alone, then the model's
/// `config.json` (the checkpoint's when resuming), then the output folder.
pub fn check_train(
    config: &TrainConfig,
    resume: Option<&Path>,
    device: Device,
    overwrite: bool,
) -> Result<()> {
    check_train_options(config, device)?;
    let dir = match resume {
        Some(r) => resume_dir(r)?,
        None => crate::hub::model_dir(&config.model)?,
    };
    let shape = ModelShape::read(&dir, None)?;
    check_train_model(config, &shape, device)?;
    check_train_output(config, resume.is_some(), overwrite)
}

/// The checks of `angle train` that need neither the model nor the data.
pub fn check_train_options(c: &TrainConfig, device: Device) -> Result<()> {
    c.validate()?;
    check_device(device)?;
    // Dataset names, per-dataset formats and objectives, the sampler.
    crate::datasets::check(c)?;
    if let Some(t) = &c.teacher {
        crate::distill::check_settings(t, c)?;
    }
    // A hub dataset is resolved (and checked) when the run reads it.
    if let Some(dir) = c
        .valid_retrieval
        .as_ref()
        .filter(|d| !d.to_string_lossy().starts_with("hf://"))
    {
        crate::retrieval::check_beir_dir(dir, "dev")
            .map_err(|e| TrainError::Config(format!("--valid-retrieval: {e}")))?;
    }
    if let Some(cols) = &c.columns {
        cols.parse::<angle_data::ColumnMap>()
            .map_err(|e| TrainError::Config(format!("--columns: {e}")))?;
    }
    for (flag, p) in [
        ("--text-prompt", &c.text_prompt),
        ("--query-prompt", &c.query_prompt),
        ("--doc-prompt", &c.doc_prompt),
    ] {
        if let Some(p) = p {
            angle_data::Prompt::new(p.clone()).map_err(|e| TrainError::Config(format!("{flag}: {e}")))?;
        }
    }
    if let Some(l) = &c.lora {
        if l.r == 0 {
            return refuse("--lora-r 0: the LoRA rank must be at least 1".into());
        }
        if !l.alpha.is_finite() {
            return refuse(format!("--lora-alpha {}: must be finite", l.alpha));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return refuse(format!("--lora-dropout {}: must be in [0, 1)", l.dropout));
        }
        if l.targets.split(',').all(|t| t.trim().is_empty()) {
            return refuse("--lora-targets: no target modules".into());
        }
    }
    if let Some(m) = &c.max_shard_size
        && angle_models::weights::parse_shard_size(m).is_none()
    {
        return refuse(format!(
            "--max-shard-size {m:?}: give 5GB, 500MB, 2GiB or a number of bytes"
        ));
    }
    if let Some(n) = c.grad_cache {
        if n == 0 {
            return refuse("--grad-cache 0: a chunk holds at least one text".into());
        }
        if c.ese.is_some() {
            return refuse(
                "--grad-cache with --ese: ESE backpropagates every layer's pooled output, which a chunked re-run does \
                 not keep; --matryoshka-dims works with --grad-cache"
                    .into(),
            );
        }
        if c.teacher.as_ref().is_some_and(|t| t.pooling == "all") {
            return refuse(
                "--grad-cache with --teacher-pooling all: the token-level term needs every token of the batch at \
                 once; pool the teacher (cls, mean, ...) or drop --grad-cache"
                    .into(),
            );
        }
    }
    match (c.load_kbit, &c.lora) {
        (None, _) => {}
        (Some(8), Some(_)) => {
            if let Device::Cuda(_) = device {
                return refuse("--load-kbit 8 runs on the CPU's int8 kernels (--device cpu)".into());
            }
        }
        (Some(8), None) => {
            return refuse(
                "--load-kbit 8 quantizes the frozen base of a LoRA run: give --lora-r (full fine-tuning trains the \
                 weights themselves)"
                    .into(),
            );
        }
        (Some(4), _) => {
            return refuse("--load-kbit 4: 4-bit bases are not offered yet; --load-kbit 8 is".into());
        }
        (Some(k), _) => return refuse(format!("--load-kbit {k}: 8 is the one offered (4 later)")),
    }
    if let Some(e) = &c.ese {
        if e.compression_size == 0 {
            return refuse("--ese-compression-size 0: must be at least 1".into());
        }
        if !(e.kl_temperature.is_finite() && e.kl_temperature > 0.0) {
            return refuse(format!(
                "--ese-kl-temperature {}: must be finite and positive",
                e.kl_temperature
            ));
        }
        if let Device::Cuda(_) = device {
            return refuse(
                "--ese trains every layer's embedding, which runs on the CPU only: use --device cpu".into(),
            );
        }
    }
    if let Some(m) = &c.matryoshka {
        angle_loss::Matryoshka::new(m.dims.clone(), m.weights.clone()).map_err(|e| {
            TrainError::Config(format!(
                "--matryoshka-dims {} / --matryoshka-weights: {e}",
                join(&m.dims)
            ))
        })?;
    }
    check_unsupervised_options(c)?;
    check_angle_widths(c, None)
}

/// Whether some training dataset is read as format U (its two views differ only by dropout).
fn trains_unsupervised(c: &TrainConfig) -> Result<bool> {
    let sources = crate::datasets::sources(&c.train)?;
    let formats = crate::datasets::formats(c.format.as_deref(), &sources)?;
    Ok(formats.contains(&Some(angle_data::Format::U)))
}

/// Format U learns from the difference between two dropout masks: without dropout both views are the same
/// vector and the in-batch objective teaches nothing.
fn check_unsupervised_options(c: &TrainConfig) -> Result<()> {
    if !trains_unsupervised(c)? {
        return Ok(());
    }
    if !c.dropout {
        return refuse(
            "--dropout false with unsupervised data (format U): its two views of a text differ only by their \
             dropout masks, so without dropout they are identical and nothing is learned; leave dropout on"
                .into(),
        );
    }
    if c.teacher.is_some() {
        return refuse(
            "--teacher with unsupervised data (format U): distillation runs on formats A, B and C".into(),
        );
    }
    Ok(())
}

/// `--device cuda` in a build without the `cuda` feature can never run: refused before anything loads.
pub fn check_device(device: Device) -> Result<()> {
    if matches!(device, Device::Cuda(_)) && !cfg!(feature = "cuda") {
        return Err(TrainError::Device(NO_CUDA.into()));
    }
    Ok(())
}

/// The angle objective splits every embedding it sees into real and imaginary halves: each width it will be
/// given (the model's, each Matryoshka width, ESE's compressed width) must be even. Refused whatever the data
/// format (format B does not use the angle objective, and `--angle-w 0` says so).
fn check_angle_widths(c: &TrainConfig, hidden: Option<usize>) -> Result<()> {
    if c.loss.angle_w <= 0.0 {
        return Ok(());
    }
    let why = |what: String| {
        refuse(format!(
            "{what} is odd, and the angle objective (--angle-w {}) needs an even embedding dimension (real and \
             imaginary halves): give an even width, or --angle-w 0",
            c.loss.angle_w
        ))
    };
    if let Some(m) = &c.matryoshka
        && let Some(d) = m.dims.iter().find(|&&d| d % 2 == 1)
    {
        return why(format!("--matryoshka-dims {}: {d}", join(&m.dims)));
    }
    if let Some(e) = &c.ese
        && e.compression_size % 2 == 1
    {
        return why(format!("--ese-compression-size {}", e.compression_size));
    }
    if let Some(h) = hidden
        && h % 2 == 1
    {
        return why(format!("the model's hidden size {h}"));
    }
    Ok(())
}

/// The checks of `angle train` against the model's family and shape.
pub fn check_train_model(c: &TrainConfig, m: &ModelShape, device: Device) -> Result<()> {
    let dir = m.dir.display();
    match m.family {
        Family::Bert | Family::Blocks { .. } => {
            // LoRA or checkpointing of a BERT-family encoder: angle-models' blocks (as `load_backbone` does)
            let blocks =
                c.lora.is_some() || c.gradient_checkpointing || matches!(m.family, Family::Blocks { .. });
            if let Some(spec) = crate::decoder::settings_for(c)
                .lora
                .as_ref()
                .map(crate::blocks::lora_spec)
            {
                // the targets against this encoder's modules, from config.json alone
                let mut vb = angle_models::nn::VarBuilder::new(true);
                angle_models::families::build(&m.base.join("config.json"), &mut vb, Some(&spec)).map_err(
                    |e| TrainError::Config(format!("--lora-targets {:?}: {e}", spec.targets.join(","))),
                )?;
            }
            if blocks {
                let what = if c.lora.is_some() {
                    "a LoRA run of an encoder"
                } else if c.gradient_checkpointing && matches!(m.family, Family::Bert) {
                    "a gradient-checkpointed BERT-family run (angle-models' blocks)"
                } else {
                    "this encoder family"
                };
                if c.ese.is_some() {
                    return refuse(format!(
                        "--ese: {what} ({dir}) has no layered forward yet; BERT without LoRA or checkpointing has"
                    ));
                }
                if let Device::Cuda(_) = device {
                    return refuse(format!("--device cuda: {what} ({dir}) runs on the CPU so far"));
                }
            }
            if c.bidirectional || c.bidirectional_from.is_some() {
                return refuse(format!(
                    "--bidirectional / --bidirectional-from: {dir} is an encoder (always bidirectional); the \
                     options are for the decoder family (llama, mistral, qwen2, qwen3)"
                ));
            }
        }
        Family::Decoder { .. } => {
            if let Some(lora) = crate::decoder::settings_for(c).lora {
                lora.target_mask().map_err(|e| {
                    TrainError::Config(format!("--lora-targets {:?}: {e}", lora.targets.join(",")))
                })?;
            }
            if let Some(k) = c.bidirectional_from {
                if c.bidirectional {
                    return refuse(format!(
                        "--bidirectional-from {k} with --bidirectional: the latter makes every layer bidirectional; \
                         give one"
                    ));
                }
                if k > m.layers {
                    return refuse(format!(
                        "--bidirectional-from {k}: {dir} has {} layers (0..={})",
                        m.layers, m.layers
                    ));
                }
            }
            if c.ese.is_some() {
                return refuse(format!(
                    "--ese: {dir} is a decoder-family model, which has no layered forward yet (ESE trains every \
                     layer's embedding; the BERT family on the CPU has it); --matryoshka-dims works on decoders"
                ));
            }
            if let Device::Cuda(_) = device {
                return refuse(format!(
                    "--device cuda: {dir} is a decoder-family model, which runs on the CPU so far (--device cpu)"
                ));
            }
        }
    }
    let adapter_folder = matches!(
        m.family,
        Family::Decoder { adapter: true } | Family::Blocks { adapter: true }
    );
    if c.merge_lora && !adapter_folder && c.lora.is_none() {
        return refuse(format!(
            "--merge-lora needs a LoRA run (--lora-r ...): {dir} trains without an adapter to merge"
        ));
    }
    let h = m.hidden;
    if let Some(e) = &c.ese {
        if e.compression_size > h {
            return refuse(format!(
                "--ese-compression-size {}: wider than the model's hidden size {h} ({dir})",
                e.compression_size
            ));
        }
        if m.layers == 0 {
            return refuse(format!(
                "--ese needs a model with at least one layer ({dir} has none)"
            ));
        }
    }
    if let Some(mt) = &c.matryoshka
        && let Some(d) = mt.dims.iter().find(|&&d| d > h)
    {
        return refuse(format!(
            "--matryoshka-dims {}: {d} is wider than the model's hidden size {h} ({dir})",
            join(&mt.dims)
        ));
    }
    check_angle_widths(c, Some(h))?;
    if trains_unsupervised(c)? && m.dropout(c) <= 0.0 {
        return refuse(format!(
            "unsupervised data (format U) needs dropout, and {dir} trains without any ({}): the two views of a \
             text would be identical",
            match m.family {
                Family::Bert =>
                    "hidden_dropout_prob and attention_probs_dropout_prob are 0 in its config.json (and no \
                     --lora-dropout is given)",
                Family::Blocks { .. } =>
                    "every dropout of its config.json is 0 (and no --lora-dropout is given)",
                Family::Decoder { .. } =>
                    "decoders drop out only on a LoRA branch: give --lora-r with --lora-dropout > 0",
            }
        ));
    }
    if c.append_eos {
        m.check_append_eos()?;
    }
    if let Device::Cuda(_) = device {
        check_gpu_model(m, &c.pooling)?;
    }
    Ok(())
}

/// What the GPU encoder lacks, known from `config.json` and the pooling.
fn check_gpu_model(m: &ModelShape, pooling: &str) -> Result<()> {
    if let Some(p) = Pooling::parse(pooling)
        && !matches!(p, Pooling::Mean | Pooling::Cls)
    {
        return refuse(format!(
            "--pooling {pooling} with --device cuda: the GPU pools mean or cls (--device cpu has every pooling)"
        ));
    }
    if let Some(a) = m.activation
        && a != Activation::GeluErf
    {
        return refuse(format!(
            "--device cuda: {} uses {}, and only the erf GELU has a CUDA kernel (--device cpu runs it)",
            m.dir.display(),
            a.hf_name()
        ));
    }
    Ok(())
}

/// The output folder: an earlier run there is kept unless `--overwrite` or `--resume` says otherwise, and
/// `--merge-lora` never writes over an earlier merged model.
pub fn check_train_output(c: &TrainConfig, resuming: bool, overwrite: bool) -> Result<()> {
    if !resuming && !overwrite {
        crate::trainer::refuse_earlier_run(&c.output)?;
    }
    let merged = c.output.join(crate::trainer::MERGED);
    if c.merge_lora && merged.exists() {
        return refuse(format!(
            "--merge-lora: {} exists (an earlier run's merged model): remove it or choose another --output",
            merged.display()
        ));
    }
    Ok(())
}

/// Every data file is there to be read: a missing one fails before the model loads, as opening it would.
pub fn check_data_files<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Result<()> {
    for f in files {
        std::fs::metadata(f).map_err(|e| TrainError::Data(format!("{}: {e}", f.display())))?;
    }
    Ok(())
}

/// A `--resume` folder that is a training checkpoint (weights, trainer state and moments), not `best/` or a
/// run folder.
pub fn resume_dir(path: &Path) -> Result<PathBuf> {
    let dir = crate::atomic::resolve(path)?;
    for f in [TRAINER_STATE, OPTIMIZER] {
        if !dir.join(f).is_file() {
            let hint = match dir.join(crate::trainer::CHECKPOINT_LAST).is_dir() {
                true => format!(
                    ": resume from {}",
                    dir.join(crate::trainer::CHECKPOINT_LAST).display()
                ),
                false => " (best/ and exported models hold weights only; resume from checkpoint-last)".into(),
            };
            return refuse(format!(
                "--resume {}: not a training checkpoint, no {f}{hint}",
                path.display()
            ));
        }
    }
    Ok(dir)
}

/// The model options of `encode`, `similarity`, `eval` and `export` that need neither weights nor data.
#[derive(Debug, Clone, Default)]
pub struct EmbedOptions<'a> {
    pub device: Device,
    pub pooling: Option<&'a str>,
    pub layers: Option<usize>,
    pub dim: Option<usize>,
    pub max_length: Option<usize>,
    pub bidirectional: bool,
    pub append_eos: bool,
    /// `angle eval` scores the angle measure too, which needs an even width.
    pub even_width: bool,
}

/// The checks of the inference commands before the model folder is read.
pub fn check_embed_options(o: &EmbedOptions<'_>) -> Result<()> {
    check_device(o.device)?;
    if let Some(p) = o.pooling
        && Pooling::parse(p).is_none()
    {
        return refuse(format!(
            "--pooling {p:?}: expected mean, cls, max, cls_avg, last or a token index"
        ));
    }
    if o.max_length == Some(0) {
        return refuse("--max-length 0: a text needs at least one token".into());
    }
    Ok(())
}

/// The checks of the inference commands against the model's `config.json` (the `layers` and `dim` given or,
/// failing that, the folder's defaults).
pub fn check_embed_model(o: &EmbedOptions<'_>, m: &ModelShape) -> Result<()> {
    let dir = m.dir.display();
    if let Some(n) = o.layers {
        if m.family != Family::Bert {
            return refuse(
                "--layers is offered for the BERT family (BERT, RoBERTa, XLM-R) without LoRA so far (ESE training)"
                    .into(),
            );
        }
        if n == 0 || n > m.layers {
            let d = m.layers;
            return refuse(format!("--layers {n}: {dir} has {d} layers (1..={d})"));
        }
    }
    let h = m.hidden;
    if let Some(d) = o.dim
        && (d == 0 || d > h)
    {
        return refuse(format!(
            "--dim {d}: the model's embeddings have {h} dimensions (1..={h})"
        ));
    }
    if o.append_eos {
        m.check_append_eos()?;
    }
    if o.bidirectional && !m.is_decoder() {
        return refuse(format!(
            "--bidirectional: {dir} is a BERT-family model; the option is for the decoder family"
        ));
    }
    if let Device::Cuda(_) = o.device {
        if m.family != Family::Bert {
            return refuse(format!(
                "--device cuda: {dir} runs on the CPU so far (--device cpu): the GPU has the BERT family"
            ));
        }
        if let Some(p) = o.pooling {
            check_gpu_model(m, p)?;
        }
    }
    let width = o.dim.unwrap_or(h).min(h);
    if o.even_width && width % 2 == 1 {
        return refuse(format!(
            "{}: eval scores the angle measure, which needs an even embedding size{}",
            match o.dim {
                Some(d) => format!("--dim {d}"),
                None => format!("{dir} has {h} dimensions"),
            },
            if o.dim.is_some() {
                " (give an even --dim)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// A folder a command is about to create must not exist yet (checked before the model loads).
pub fn check_new_folder(flag: &str, path: &Path) -> Result<()> {
    if path.exists() {
        return refuse(format!(
            "{flag} {}: exists already; give a new folder",
            path.display()
        ));
    }
    Ok(())
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}
