//! `angle`: train AnglE sentence embeddings, encode texts, score STS data.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use angle_encoder::Pooling;
use angle_train::backbone::Backbone;
use angle_train::device::Device;
use angle_train::embed::{Embedder, LoadOptions, ModelDefaults, load_backbone};
use angle_train::precision::{CpuPath, Requested};
use angle_train::quantize::Quantization;
use angle_train::stats::cosine;
use angle_train::{TrainConfig, TrainOptions};
use anyhow::{Context, bail};
use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "angle",
    version,
    about = "AnglE sentence embeddings: train, encode, evaluate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model (BERT family, or a decoder LLM in full or with LoRA) with the AnglE objectives.
    Train(Box<TrainArgs>),
    /// Embed lines of text (a file or stdin) into JSONL or .npy.
    Encode(EncodeArgs),
    /// Cosine similarity of texts under a model.
    Similarity(SimilarityArgs),
    /// Spearman and Pearson (× 100) of five similarity measures on STS files (STS-B CSV, STS TSV, format A), or
    /// retrieval metrics on a BEIR folder (--retrieval).
    Eval(EvalArgs),
    /// Mine hard negatives for (query, positive) pairs: format-C JSONL for `angle train`.
    Mine(Box<MineArgs>),
    /// Fold a LoRA adapter into its base model: a full checkpoint that transformers loads.
    Merge(MergeArgs),
    /// Save a model as it encodes under --layers/--dim: a smaller Hugging Face checkpoint (the first N layers)
    /// whose angle_config.json makes --dim K the default.
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A new folder for the exported model.
    #[arg(long)]
    output: PathBuf,
    /// Split the weights into shards above this size (`5GB`, `500MB`, bytes), with model.safetensors.index.json.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
}

#[derive(Args)]
struct MergeArgs {
    /// The adapter folder (peft layout: adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// The base model [default: the adapter's base_model_name_or_path].
    #[arg(long)]
    base_model: Option<PathBuf>,
    /// A new folder for the merged model.
    #[arg(long)]
    output: PathBuf,
    /// Split the weights into shards above this size (`5GB`, `500MB`, bytes), with model.safetensors.index.json.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
}

/// Boolean options (`--dropout`, `--skip-invalid`, ...) take `true` or `false` and mean it; alone they mean true.
#[derive(Args)]
#[command(args_override_self = true)]
struct TrainArgs {
    /// Model directory (Hugging Face layout: config.json, model.safetensors, tokenizer.json), or a Hugging Face
    /// Hub id ORG/NAME[@REVISION] (through the HF cache; a local path of that name wins).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data: CSV, TSV, JSONL or parquet in angle-emb format A (text1,text2,label), B (query,positive)
    /// or C (query,positive,negative). Several files, a folder of shards, or hf://datasets/ORG/NAME[/FOLDER]
    /// (its --split), read as one dataset; or several datasets as NAME=PATH each (every batch from one of them,
    /// see --sampler, --objective).
    #[arg(long, num_args = 1.., action = ArgAction::Append)]
    train: Vec<PathBuf>,
    /// The split of a hub dataset given to --train.
    #[arg(long)]
    split: Option<String>,
    /// Validation data with scores (format A; files, a folder or a hub dataset, as --train): evaluated every
    /// --eval-steps, the best checkpoint kept.
    #[arg(long, num_args = 1.., action = ArgAction::Append)]
    valid: Vec<PathBuf>,
    /// The split of a hub dataset given to --valid.
    #[arg(long)]
    valid_split: Option<String>,
    /// Output directory: checkpoint-last/, best/, metrics.jsonl, training.svg, summary.json.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue the run saved in this checkpoint-last directory (same data and options).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Replace an earlier run's checkpoints in --output (refused without it).
    #[arg(long)]
    overwrite: bool,
    /// Run even where the memory estimate printed at start-up exceeds the memory this machine has
    /// available (refused without it).
    #[arg(long)]
    no_memory_check: bool,
    /// Where the encoder trains: cpu, or cuda (a build with `--features cuda`; mean or cls pooling).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Arithmetic of the products: auto, f32 (exact), tf32 (GPU: TF32 tensor cores) or bf16 (bf16 products,
    /// f32 master weights and optimizer state; on the GPU bf16 activations too) [default: auto: tf32 on cuda;
    /// on the CPU a resumed run's own, else bf16 where a bf16 kernel beats f32 here (AMX, AVX512-BF16 on AMD
    /// Zen 4; printed as `precision: …`) for the BERT family, else f32]. An 8-bit base is --load-kbit 8.
    #[arg(long, default_value = "auto")]
    precision: Requested,

    /// Force the data format: A, B, C or U (unsupervised), or per named dataset NAME=B,OTHER=U [default: from
    /// the columns; U is never detected].
    #[arg(long)]
    format: Option<String>,
    /// Unsupervised, SimCSE-style (format U): one text per row (a `text` column, or a plain file of one sentence
    /// per line); each text is its own positive under two dropout masks, the batch's other texts its negatives.
    /// The objective defaults become SimCSE's: --ibn-w 1, --cosine-w 0, --angle-w 0 (give them to add terms).
    #[arg(long)]
    unsupervised: bool,
    /// Column renames, e.g. sentence1:text1,sentence2:text2,score:label.
    #[arg(long)]
    columns: Option<String>,
    /// Prompt for format-A texts, with a {text} placeholder.
    #[arg(long)]
    text_prompt: Option<String>,
    /// Prompt for queries (formats B, C), with {text}.
    #[arg(long)]
    query_prompt: Option<String>,
    /// Prompt for positives and negatives (formats B, C), with {text}.
    #[arg(long)]
    doc_prompt: Option<String>,
    /// Maximum tokens per text, special tokens included [default: 64].
    #[arg(long)]
    max_length: Option<usize>,
    /// Skip malformed rows (counted in the summary) instead of stopping at the first [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    skip_invalid: Option<bool>,
    /// Batch texts of similar length together (changes batch composition) [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    group_by_length: Option<bool>,
    /// Drop examples whose text already occurs in the batch (angle-emb's filter_duplicate) instead of masking
    /// them in the loss [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    drop_duplicates: Option<bool>,

    /// Weight of the cosine (CoSENT) objective [default: 1; 0 with --unsupervised].
    #[arg(long)]
    cosine_w: Option<f64>,
    /// Weight of in-batch negatives (format A; format U's InfoNCE over the two views) / query-positive contrast
    /// (format C) [default: 0; 1 with --unsupervised].
    #[arg(long)]
    ibn_w: Option<f64>,
    /// Weight of the angle objective (format U: the two views labelled 1 against the batch's other pairs
    /// labelled 0) [default: 1; 0 with --unsupervised].
    #[arg(long)]
    angle_w: Option<f64>,
    /// Weight of the query-positive-negative contrast (format C) [default: 1].
    #[arg(long)]
    cln_w: Option<f64>,
    /// Scale of the cosine objective [default: 20].
    #[arg(long)]
    cosine_tau: Option<f64>,
    /// Scale of in-batch negatives and the contrastive objectives [default: 20].
    #[arg(long)]
    ibn_tau: Option<f64>,
    /// Scale of the angle objective [default: 20].
    #[arg(long)]
    angle_tau: Option<f64>,
    /// Pooling of the angle objective: sum or mean [default: sum].
    #[arg(long)]
    angle_pooling: Option<String>,
    /// Sentence pooling: mean, cls, max, cls_avg, last or a token index [default: mean].
    #[arg(long)]
    pooling: Option<String>,
    /// Dropout as the model's config.json sets it (true) or none (false) [default: true].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    dropout: Option<bool>,

    /// Passes over the training data [default: 3].
    #[arg(long)]
    epochs: Option<u32>,
    /// Stop after this many optimizer steps (overrides --epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// GradCache (cached in-batch negatives): embed each batch in chunks of N texts, compute the objective on
    /// the whole batch, backpropagate chunk by chunk: in-batch negatives over the whole batch at the memory of
    /// N texts, for one more forward per chunk. (--grad-accum splits a step into separate batches instead.)
    #[arg(long, value_name = "N")]
    grad_cache: Option<usize>,
    /// Keep each layer's input only and recompute the layer inside backward: activation memory of about one
    /// hidden state per layer plus one layer's working set, for one more forward (ELECTRA, ALBERT, ModernBERT and
    /// any encoder with --lora-*) [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    gradient_checkpointing: Option<bool>,
    /// Full and merged saves above this size are split into shards with model.safetensors.index.json
    /// (`5GB`, `500MB`, bytes; transformers' max_shard_size) [default: 5GB].
    #[arg(long, value_name = "SIZE")]
    max_shard_size: Option<String>,
    /// The products of validation's embeddings on the CPU: f32, bf16 or int8 (the BERT family; the decoder
    /// family and angle-models' blocks validate in their training products) [default: f32].
    #[arg(long, value_name = "PRECISION")]
    valid_precision: Option<angle_train::precision::Precision>,
    /// Examples (pairs for format A) per micro-batch [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long, alias = "gradient-accumulation-steps")]
    grad_accum: Option<usize>,
    /// Peak learning rate [default: 5e-5].
    #[arg(long, alias = "learning-rate")]
    lr: Option<f32>,
    /// Linear warmup steps; then linear decay to 0 [default: 0].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// AdamW decoupled weight decay [default: 0].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Clip the global gradient norm to this; 0 disables [default: 0].
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// Seed of the data order, list-field draws and dropout [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N steps; 0 = at each epoch's end [default: 0].
    #[arg(long)]
    eval_steps: Option<u64>,
    /// Save checkpoint-last every N steps; 0 = at each epoch's end [default: 0].
    #[arg(long)]
    save_steps: Option<u64>,
    /// Write a metrics.jsonl record every N steps [default: 10].
    #[arg(long)]
    log_steps: Option<u64>,
    /// Texts per batch when evaluating [default: 64].
    #[arg(long)]
    eval_batch_size: Option<usize>,
    /// Worker threads; 0 = all cores [default: 0].
    #[arg(long)]
    threads: Option<usize>,
    /// Show a progress bar (on a terminal; plain log lines otherwise) [default: true].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    progress: Option<bool>,

    /// Decoder family: train a LoRA adapter of this rank on the frozen base (any --lora-* option turns LoRA
    /// on) [default: 32 with LoRA; without LoRA options the whole model trains].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA scale numerator: the update is (alpha / r) B A [default: 32].
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout on the LoRA branch's input [default: 0.1].
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Modules to adapt: names such as q_proj,v_proj, or all-linear [default: all-linear].
    #[arg(long)]
    lora_targets: Option<String>,
    /// LoRA: hold the frozen base's linear weights in 8 bits (int8 per output channel; forward products on the
    /// int8 kernels, input gradients through the dequantized weights; LoRA's A and B, norms and AdamW f32), as
    /// angle-emb's --load_kbit 8 [default: the checkpoint's dtype]. 4 bits is not offered yet.
    #[arg(long)]
    load_kbit: Option<u8>,
    /// LoRA: also write <output>/merged, the adapter folded into the base weights [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    merge_lora: Option<bool>,
    /// Decoder family: bidirectional attention instead of causal [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    bidirectional: Option<bool>,
    /// Decoder family: causal attention in the layers before K, bidirectional from layer K on (BiLLM,
    /// angle-emb's BiLLM_START_INDEX); --bidirectional is every layer.
    #[arg(long, value_name = "K")]
    bidirectional_from: Option<usize>,
    /// Append the tokenizer's EOS token to every text after truncation [default: false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    append_eos: Option<bool>,
    #[command(flatten)]
    ese: angle_train::ese::EseArgs,
    #[command(flatten)]
    datasets: angle_train::datasets::DatasetArgs,
    #[command(flatten)]
    distill: angle_train::distill::DistillArgs,
}

impl TrainArgs {
    /// The configuration these arguments give, and the config keys they set explicitly.
    fn to_config(&self) -> (TrainConfig, Vec<String>) {
        let mut c = TrainConfig::default();
        let mut set = Vec::new();
        macro_rules! take {
            ($field:ident => $($target:ident).+) => {
                if let Some(v) = &self.$field {
                    c.$($target).+ = v.clone().into();
                    set.push(stringify!($($target).+).replace(' ', ""));
                }
            };
        }
        take!(model => model);
        take!(split => train_split);
        take!(valid_split => valid_split);
        for (given, key, target) in [
            (&self.train, "train", &mut c.train),
            (&self.valid, "valid", &mut c.valid),
        ] {
            if !given.is_empty() {
                *target = given.clone();
                set.push(key.to_string());
            }
        }
        take!(output => output);
        take!(max_length => max_length);
        take!(skip_invalid => skip_invalid);
        take!(group_by_length => group_by_length);
        take!(drop_duplicates => drop_duplicates);
        take!(cosine_w => loss.cosine_w);
        take!(ibn_w => loss.ibn_w);
        take!(angle_w => loss.angle_w);
        take!(cln_w => loss.cln_w);
        take!(cosine_tau => loss.cosine_tau);
        take!(ibn_tau => loss.ibn_tau);
        take!(angle_tau => loss.angle_tau);
        take!(pooling => pooling);
        take!(dropout => dropout);
        take!(epochs => epochs);
        take!(batch_size => batch_size);
        take!(grad_accum => grad_accum);
        take!(lr => lr);
        take!(warmup_steps => warmup_steps);
        take!(weight_decay => weight_decay);
        take!(max_grad_norm => max_grad_norm);
        take!(seed => seed);
        take!(eval_steps => eval_steps);
        take!(save_steps => save_steps);
        take!(log_steps => log_steps);
        take!(eval_batch_size => eval_batch_size);
        take!(threads => threads);
        macro_rules! take_opt {
            ($field:ident) => {
                if self.$field.is_some() {
                    c.$field = self.$field.clone();
                    set.push(stringify!($field).to_string());
                }
            };
        }
        take_opt!(format);
        if self.unsupervised {
            // `--format` too is checked by run_train: both must agree.
            if c.format.is_none() {
                c.format = Some("U".into());
                set.push("format".into());
            }
            for (given, key, value, target) in [
                (self.ibn_w, "loss.ibn_w", 1.0, &mut c.loss.ibn_w),
                (self.cosine_w, "loss.cosine_w", 0.0, &mut c.loss.cosine_w),
                (self.angle_w, "loss.angle_w", 0.0, &mut c.loss.angle_w),
            ] {
                if given.is_none() {
                    *target = value;
                    set.push(key.into());
                }
            }
        }
        take_opt!(columns);
        take_opt!(text_prompt);
        take_opt!(query_prompt);
        take_opt!(doc_prompt);
        take_opt!(max_steps);
        take_opt!(grad_cache);
        take!(gradient_checkpointing => gradient_checkpointing);
        take_opt!(max_shard_size);
        take_opt!(valid_precision);
        take!(merge_lora => merge_lora);
        take_opt!(load_kbit);
        take!(bidirectional => bidirectional);
        take_opt!(bidirectional_from);
        take!(append_eos => append_eos);
        if self.lora_r.is_some()
            || self.lora_alpha.is_some()
            || self.lora_dropout.is_some()
            || self.lora_targets.is_some()
        {
            let d = angle_train::config::LoraSettings::default();
            c.lora = Some(angle_train::config::LoraSettings {
                r: self.lora_r.unwrap_or(d.r),
                alpha: self.lora_alpha.unwrap_or(d.alpha),
                dropout: self.lora_dropout.unwrap_or(d.dropout),
                targets: self.lora_targets.clone().unwrap_or(d.targets),
            });
            set.push("lora".into());
        }
        self.ese.apply(&mut c, &mut set);
        self.datasets.apply(&mut c, &mut set);
        self.distill.apply(&mut c, &mut set);
        (c, set)
    }
}

#[derive(Args)]
struct ModelArgs {
    /// Model or checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Sentence pooling [default: what the directory says: angle_config.json, then 1_Pooling/config.json].
    #[arg(long)]
    pooling: Option<String>,
    /// Prompt with a {text} placeholder applied to every text [default: the model's text prompt, if any].
    #[arg(long)]
    prompt: Option<String>,
    /// Maximum tokens per text [default: the directory's max_seq_length, else 512].
    #[arg(long)]
    max_length: Option<usize>,
    /// Texts per forward pass [default: 64].
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Worker threads; 0 = all cores.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where the encoder runs: cpu, or cuda (a build with `--features cuda`; mean or cls pooling).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Arithmetic: auto, f32, tf32, bf16 or int8 (see `angle train --help`) [default: auto: tf32 on cuda;
    /// on the CPU bf16 where a bf16 kernel beats f32 there (AMX, AVX512-BF16), else f32; printed].
    /// On the CPU, bf16 runs the linear layers' products in bf16 with f32 sums (embeddings within ~1e-3), int8
    /// on int8 weights (per output channel) and u8 activations (per row) with i32 sums (cosine to f32 ~0.999).
    #[arg(long, default_value = "auto")]
    precision: Requested,
    /// Hold the linear weights in 8 bits: the same as --precision int8 (angle-emb's --load_kbit 8).
    #[arg(long)]
    load_kbit: Option<u8>,
    /// Use only the first N layers (a model trained with --ese) [default: all].
    #[arg(long)]
    layers: Option<usize>,
    /// Keep the first K dimensions of each embedding (--ese / --matryoshka-dims models) [default: all].
    #[arg(long)]
    dim: Option<usize>,
    /// A LoRA adapter folder's base model [default: the adapter's base_model_name_or_path].
    #[arg(long)]
    base_model: Option<PathBuf>,
    /// Decoder family: bidirectional attention [default: as the checkpoint was trained, else false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    bidirectional: Option<bool>,
    /// Decoder family: bidirectional attention from layer K on [default: as the checkpoint was trained].
    #[arg(long, value_name = "K")]
    bidirectional_from: Option<usize>,
    /// Append the tokenizer's EOS token to every text [default: as the checkpoint was trained, else false].
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    append_eos: Option<bool>,
}

#[derive(Args)]
struct EncodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Scale each embedding to unit length.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    normalize: bool,
    /// Text file, one text per line [default: stdin].
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output: FILE.npy (float32 [n, dim]) or JSONL ({"text", "embedding"} per line) [default: JSONL on stdout].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Quantize the embeddings as sentence-transformers' quantize_embeddings does: int8 or uint8 (per-dimension
    /// ranges from the embeddings, or from --calibration), binary or ubinary (sign bits packed 8 to a byte);
    /// .npy output is then int8 / uint8 ([n, dim], or [n, dim/8] packed), JSONL integers.
    #[arg(long)]
    quantize: Option<String>,
    /// --quantize int8|uint8: calibrate the ranges on the embeddings of this file's texts (one per line)
    /// instead of the encoded ones.
    #[arg(long, requires = "quantize")]
    calibration: Option<PathBuf>,
}

#[derive(Args)]
struct SimilarityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Two or more texts: the cosine of the first with each other one.
    #[arg(required = true, num_args = 2..)]
    texts: Vec<String>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// STS data, one or more files or folders: STS-B CSV (sentence1,sentence2,score), STS TSV (score, s1, s2)
    /// or format-A files, parquet in the Hugging Face STS layout, or hf://datasets/ORG/NAME (its --split). One
    /// model load; a table per file and the mean.
    #[arg(long, required_unless_present = "retrieval", conflicts_with = "retrieval", num_args = 1..)]
    data: Vec<PathBuf>,
    /// A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): NDCG@10, MRR@10, MAP@100, Recall@1/10/100
    /// and Accuracy@1/10 of the exact cosine ranking of the whole corpus (sentence-transformers'
    /// InformationRetrievalEvaluator's metrics).
    #[arg(long)]
    retrieval: Option<PathBuf>,
    /// Prompt for --retrieval queries, with {text} [default: --prompt, or the model's text prompt].
    #[arg(long, requires = "retrieval")]
    query_prompt: Option<String>,
    /// Prompt for --retrieval documents, with {text} [default: --prompt, or the model's text prompt].
    #[arg(long, requires = "retrieval")]
    doc_prompt: Option<String>,
    /// --retrieval: also write the normalised embeddings it scored into this new folder (queries.npy,
    /// corpus.npy, ids.json), e.g. for `scripts/retrieval/ir_check.py`.
    #[arg(long, requires = "retrieval")]
    save_embeddings: Option<PathBuf>,
    /// The split of hub datasets given to --data, or the qrels file of --retrieval.
    #[arg(long, default_value = "test")]
    split: String,
    /// Print a markdown table instead of text.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    markdown: bool,
    /// Skip malformed rows (counted) instead of stopping.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    skip_invalid: bool,
    /// Print one JSON object instead of text.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    json: bool,
    /// Also score the cosine of quantized embeddings (int8, uint8, binary, ubinary), as sentence-transformers'
    /// EmbeddingSimilarityEvaluator(precision=...) does: what the quantization costs, beside float32.
    #[arg(long, conflicts_with = "retrieval")]
    quantize: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SamplingArg {
    Top,
    Random,
}

#[derive(Args)]
struct MineArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// (query, positive) pairs: CSV, TSV, JSONL or parquet in format B or C (C's negatives are not read), files or
    /// folders read as one dataset, or hf://datasets/ORG/NAME (its --split).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// The split of a hub dataset given to --data.
    #[arg(long, default_value = "train")]
    split: String,
    /// Column renames, e.g. anchor:query,answer:positive.
    #[arg(long)]
    columns: Option<String>,
    /// More candidate texts besides the positives: .jsonl (`text`, with `title` joined before it) or a text
    /// file, one text per line.
    #[arg(long, num_args = 1..)]
    corpus: Vec<PathBuf>,
    /// The format-C JSONL to write (query, positive, negative; several negatives as a list of alternatives).
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing --output (refused without it).
    #[arg(long)]
    overwrite: bool,
    /// Skip this many of the most similar candidates that pass the margins (often unlabelled positives).
    #[arg(long, default_value_t = 0)]
    range_min: usize,
    /// Keep at most this many of the candidates that pass the margins. As sentence-transformers, the margins see
    /// the range_max + (most positives of one query) + 1 nearest candidates, the query's own positives among them.
    #[arg(long, default_value_t = 10)]
    range_max: usize,
    /// A negative must score at most the cosine of the query's hardest positive minus this.
    #[arg(long, alias = "absolute-margin")]
    margin: Option<f32>,
    /// A negative must score at most the hardest positive's cosine − |that cosine| × this.
    #[arg(long)]
    relative_margin: Option<f32>,
    /// A negative must score at most this cosine.
    #[arg(long)]
    max_score: Option<f32>,
    /// Negatives per pair.
    #[arg(long, default_value_t = 3)]
    num_negatives: usize,
    /// Which of the candidates that pass: the most similar, or a seeded random choice.
    #[arg(long, value_enum, default_value = "top")]
    sampling: SamplingArg,
    /// Seed of --sampling random.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Prompt for queries, with {text} [default: --prompt, or the model's text prompt].
    #[arg(long)]
    query_prompt: Option<String>,
    /// Prompt for positives and corpus texts, with {text} [default: --prompt, or the model's text prompt].
    #[arg(long)]
    doc_prompt: Option<String>,
    /// Where embeddings are cached, by model and text hash, so that a rerun does not encode again [default:
    /// $XDG_CACHE_HOME/angle/embeddings, else ~/.cache/angle/embeddings].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the embedding cache.
    #[arg(long)]
    no_cache: bool,
    /// Skip malformed rows of --data (counted) instead of stopping.
    #[arg(long)]
    skip_invalid: bool,
}

/// User errors (a bad flag value, a bad row, a missing file) print their message and causes, never a backtrace,
/// even with `RUST_BACKTRACE` set: backtraces are for bugs, which panic.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    angle_train::precision::check_bf16_kernel_env()?;
    match cli.command {
        Command::Train(a) => run_train(&a),
        Command::Encode(a) => run_encode(&a),
        Command::Similarity(a) => run_similarity(&a),
        Command::Eval(a) => run_eval(&a),
        Command::Mine(a) => run_mine(&a),
        Command::Merge(a) => run_merge(&a),
        Command::Export(a) => run_export(&a),
    }
}

fn set_threads(n: usize) -> anyhow::Result<()> {
    if n > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    Ok(())
}

fn run_train(a: &TrainArgs) -> anyhow::Result<()> {
    if let (true, Some(f)) = (a.unsupervised, &a.format)
        && f.trim().parse::<angle_data::Format>().ok() != Some(angle_data::Format::U)
    {
        bail!("--unsupervised reads every dataset as format U; --format {f:?} says otherwise (leave it out)");
    }
    let (given, explicit) = a.to_config();
    if let Some(name) = &a.angle_pooling {
        // Parsed through the loss crate's own serde names.
        serde_json::from_value::<angle_loss::AnglePooling>(serde_json::Value::String(name.clone()))
            .with_context(|| format!("--angle-pooling {name:?}: expected sum or mean"))?;
    }
    let mut given = given;
    let mut explicit = explicit;
    if let Some(name) = &a.angle_pooling {
        given.loss.angle_pooling = serde_json::from_value(serde_json::Value::String(name.clone()))?;
        explicit.push("loss.angle_pooling".into());
    }
    // Before anything is read or written: a precision the device lacks is refused here.
    let device = angle_train::precision::device(a.device, a.precision)?;
    let config = match &a.resume {
        Some(dir) => {
            angle_train::preflight::resume_dir(dir)?;
            TrainConfig::merge_for_resume(&read_saved_config(dir)?, &given, &explicit)?
        }
        None => {
            if a.model.is_none() || a.train.is_empty() || a.output.is_none() {
                bail!("angle train needs --model, --train and --output (or --resume DIR)");
            }
            // Before the model's name is even resolved: the options that are wrong whatever the model.
            angle_train::preflight::check_train_options(&given, device)?;
            let dir = angle_train::hub::model_dir(&given.model)?;
            if !explicit.iter().any(|k| k == "pooling") && angle_train::decoder::is_decoder_folder(&dir)? {
                // LLM embedders pool the last token unless the checkpoint's sentence-transformers config says otherwise.
                given.pooling = angle_train::decoder::default_pooling(&dir)?.name();
            }
            given
        }
    };
    // The model's config.json and the output folder, before the precision is chosen and anything loads.
    angle_train::preflight::check_train(&config, a.resume.as_deref(), device, a.overwrite)?;
    // `auto` decided (and printed) here; the trainer records the choice in the checkpoints
    let cpu_precision = match device {
        Device::Cpu => angle_train::precision::for_training(a.precision, &config, a.resume.is_some())?,
        Device::Cuda(_) => Default::default(),
    };
    set_threads(config.threads)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("second Ctrl-C: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("Ctrl-C: saving checkpoint-last after this step (press again to quit at once)");
        })
        .context("installing the Ctrl-C handler")?;
    }
    let opts = TrainOptions {
        stop,
        progress: a.progress.unwrap_or(true),
        halt_after: None,
        device,
        cpu_precision,
        overwrite: a.overwrite,
        no_memory_check: a.no_memory_check,
    };
    let s = angle_train::train(config, a.resume.as_deref(), &opts)?;
    println!("== run summary");
    println!(
        "steps {}/{} ({:.2} epochs){}",
        s.steps,
        s.total_steps,
        s.epochs,
        if s.interrupted { ", interrupted" } else { "" }
    );
    println!(
        "training {:.1} s ({:.1} pairs/s, {:.0} tokens/s), evaluation {:.1} s, wall {:.1} s",
        s.train_seconds, s.pairs_per_s, s.tokens_per_s, s.eval_seconds, s.wall_seconds
    );
    if s.train_cpu_seconds > 0.0 {
        println!(
            "CPU time of the training steps {:.1} s on {} threads (≈ {:.1} s with the cores to itself)",
            s.train_cpu_seconds,
            s.threads,
            s.train_cpu_seconds / s.threads.max(1) as f64
        );
    }
    if let (Some(b), Some(step)) = (s.best_spearman, s.best_step) {
        println!(
            "best validation Spearman {b:.2} at step {step} → {}",
            s.output.join("best").display()
        );
    }
    if let Some(e) = &s.last_eval {
        println!(
            "last validation: Spearman {:.2} Pearson {:.2}",
            e.spearman, e.pearson
        );
    }
    println!(
        "skipped rows: train {}, valid {}; texts truncated: {}",
        s.skipped_train_rows, s.skipped_valid_rows, s.truncated_texts
    );
    if let Some(peak) = s.peak_rss_bytes {
        let estimate = s
            .memory_estimate_bytes
            .map_or("none".to_string(), angle_train::memory::gb);
        println!(
            "peak resident set {} (estimate at start-up {estimate})",
            angle_train::memory::gb(peak)
        );
    }
    println!("output: {}", s.output.display());
    if s.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// The `train` section of a checkpoint's angle_config.json.
fn read_saved_config(dir: &Path) -> anyhow::Result<TrainConfig> {
    let dir = angle_train::atomic::resolve(dir)?;
    let path = dir.join(angle_train::checkpoint::ANGLE_CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: angle_train::checkpoint::AngleConfigFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(v.train)
}

/// Model, tokenizer, embedder and prompt for a model directory under the command's options.
struct Loaded {
    model: Box<dyn Backbone>,
    tok: angle_data::TextTokenizer,
    emb: Embedder,
    prompt: Option<angle_data::Prompt>,
    /// Everything that decides the embeddings but the texts and prompts: the embedding cache's key.
    identity: String,
}

/// `even_width`: the command scores the angle measure (`eval`), which needs an even embedding width.
fn load(m: &ModelArgs, even_width: bool) -> anyhow::Result<Loaded> {
    load_sharded(m, even_width, None)
}

/// [`load`] for a model that will be saved in shards above `max_shard_bytes` (`angle export`).
fn load_sharded(m: &ModelArgs, even_width: bool, max_shard_bytes: Option<u64>) -> anyhow::Result<Loaded> {
    use angle_train::preflight::{EmbedOptions, ModelShape, check_embed_model, check_embed_options};
    let mut check = EmbedOptions {
        device: m.device,
        pooling: m.pooling.as_deref(),
        layers: m.layers,
        dim: m.dim,
        max_length: m.max_length,
        bidirectional: m.bidirectional == Some(true),
        append_eos: false,
        even_width,
    };
    check_embed_options(&check)?;
    if let (Some(true), Some(k)) = (m.bidirectional, m.bidirectional_from) {
        bail!(
            "--bidirectional-from {k} with --bidirectional: the latter makes every layer bidirectional; give one"
        );
    }
    // A hub id becomes its cache snapshot here; everything below reads a folder.
    let dir = angle_train::hub::model_dir(&m.model)?;
    let defaults = ModelDefaults::from_dir(&dir)?;
    // Against config.json (and the folder's own --layers / --dim / pooling defaults) before any weight is read.
    let pooling_name = m.pooling.clone().unwrap_or_else(|| defaults.pooling.name());
    check.pooling = Some(&pooling_name);
    check.layers = m.layers.or(defaults.layers);
    check.dim = m.dim.or(defaults.dim);
    check.bidirectional = m.bidirectional.unwrap_or(defaults.bidirectional);
    check.append_eos = m.append_eos.unwrap_or(defaults.append_eos);
    check_embed_model(&check, &ModelShape::read(&dir, m.base_model.as_deref())?)?;
    let prompt = match m.prompt.clone().or(defaults.text_prompt.clone()) {
        Some(p) => Some(angle_data::Prompt::new(p).with_context(|| match m.prompt {
            Some(_) => "--prompt",
            None => "the model's text prompt",
        })?),
        None => None,
    };
    let device = angle_train::precision::device(m.device, m.precision)?;
    let cpu_precision = match device {
        Device::Cpu => {
            let path = CpuPath::of(&dir, false, m.base_model.as_deref())?;
            angle_train::precision::for_encoding(m.precision, m.load_kbit, path)?
        }
        Device::Cuda(_) if m.load_kbit.is_some() => bail!("--load-kbit 8 runs on the CPU (--device cpu)"),
        Device::Cuda(_) => Default::default(),
    };
    set_threads(m.threads)?;
    let pooling = match &m.pooling {
        Some(p) => Some(Pooling::parse(p).with_context(|| format!("unknown pooling {p:?}"))?),
        None => None,
    };
    let max_len = m.max_length.or(defaults.max_length).unwrap_or(512);
    let opts = LoadOptions {
        device,
        pooling,
        cpu_inference: cpu_precision,
        cpu_train: Default::default(),
        decoder: angle_train::decoder::DecoderSettings {
            lora: None,
            bidirectional: m.bidirectional.unwrap_or(defaults.bidirectional),
            bidirectional_from: m.bidirectional_from.or(defaults.bidirectional_from),
            base_model: m.base_model.clone(),
            inference_only: true,
            gradient_checkpointing: false,
            max_shard_bytes,
        },
        append_eos: m.append_eos.unwrap_or(defaults.append_eos),
        layers: m.layers.or(defaults.layers),
    };
    let identity = format!(
        "{}|base={:?}|layers={:?}|bidirectional={}/{:?}|append_eos={}|precision={cpu_precision}|device={:?}",
        angle_train::embed_cache::model_identity(&dir),
        m.base_model
            .as_deref()
            .map(angle_train::embed_cache::model_identity),
        opts.layers,
        opts.decoder.bidirectional,
        opts.decoder.bidirectional_from,
        opts.append_eos,
        opts.device,
    );
    let (mut model, tok) = load_backbone(&dir, max_len, opts)?;
    let emb = Embedder::new(m.batch_size, tok.max_len()).with_dim(m.dim.or(defaults.dim));
    model.reserve(emb.sizes())?;
    let identity = format!(
        "{identity}|pooling={}|max_len={}|width={}",
        model.pooling().name(),
        tok.max_len(),
        emb.out_dim(&*model)
    );
    Ok(Loaded {
        model,
        tok,
        emb,
        prompt,
        identity,
    })
}

fn embed_lines(l: &mut Loaded, texts: &[String]) -> anyhow::Result<Vec<f32>> {
    let prompted: Vec<String> = match &l.prompt {
        Some(p) => texts.iter().map(|t| p.apply(t)).collect(),
        None => texts.to_vec(),
    };
    let mut out = Vec::new();
    l.emb.embed_texts(&mut *l.model, &l.tok, &prompted, &mut out)?;
    Ok(out)
}

fn run_encode(a: &EncodeArgs) -> anyhow::Result<()> {
    let quantize: Option<Quantization> = a.quantize.as_deref().map(str::parse).transpose()?;
    if a.calibration.is_some() && !quantize.is_some_and(Quantization::needs_ranges) {
        bail!(
            "--calibration calibrates int8 / uint8 ranges; --quantize {} takes the sign",
            a.quantize.as_deref().unwrap_or("")
        );
    }
    let calibration: Option<Vec<String>> = match &a.calibration {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--calibration: reading {}", p.display()))?
                .lines()
                .map(str::to_owned)
                .collect(),
        ),
        None => None,
    };
    // The output's folder and the input before the model loads: neither is worth a load to find missing.
    if let Some(dir) = a.output.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        bail!("--output: {} is not a folder", dir.display());
    }
    let from_file: Option<Vec<String>> = match &a.input {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--input: reading {}", p.display()))?
                .lines()
                .map(str::to_owned)
                .collect(),
        ),
        None => None,
    };
    let mut l = load(&a.model, false)?;
    // stdin after the load, so that a model that fails to load says so before anyone types.
    let lines: Vec<String> = match from_file {
        Some(lines) => lines,
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("reading stdin")?,
    };
    // Every line is embedded, empty ones too (as the tokenizer encodes them): output row i is input line i.
    let texts = lines;
    let h = l.emb.out_dim(&*l.model);
    let mut emb = if texts.is_empty() {
        Vec::new()
    } else {
        embed_lines(&mut l, &texts)?
    };
    if a.normalize {
        normalize_rows(&mut emb, h);
    }
    if let Some(q) = quantize {
        let ranges = match calibration {
            Some(texts) => {
                let mut cal = embed_lines(&mut l, &texts)?;
                if a.normalize {
                    normalize_rows(&mut cal, h);
                }
                Some(angle_train::quantize::Ranges::of(&cal, h).context("--calibration")?)
            }
            None => None,
        };
        let quantized = angle_train::quantize::quantize(&emb, h, q, ranges.as_ref())?;
        return write_quantized(a.output.as_deref(), &texts, &quantized);
    }
    match &a.output {
        Some(p) if p.extension().is_some_and(|e| e == "npy") => {
            let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            let mut w = BufWriter::new(f);
            angle_train::npy::write_npy_f32(&mut w, &emb, texts.len(), h)?;
            w.flush()?;
        }
        Some(p) => {
            let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            write_jsonl(&mut BufWriter::new(f), &texts, &emb, h)?;
        }
        None => write_jsonl(&mut BufWriter::new(std::io::stdout().lock()), &texts, &emb, h)?,
    }
    Ok(())
}

fn normalize_rows(emb: &mut [f32], h: usize) {
    for row in emb.chunks_mut(h) {
        let norm = row
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt()
            .max(1e-12) as f32;
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// `angle encode --quantize`: `.npy` of int8 / uint8, or JSONL with integer embeddings.
fn write_quantized(
    output: Option<&Path>,
    texts: &[String],
    q: &angle_train::quantize::Quantized,
) -> anyhow::Result<()> {
    let jsonl = |w: &mut dyn Write| -> anyhow::Result<()> {
        for (r, t) in texts.iter().enumerate() {
            let line =
                serde_json::json!({"text": t, "embedding": q.row_values(r), "quantization": q.kind.name()});
            writeln!(w, "{line}")?;
        }
        w.flush()?;
        Ok(())
    };
    match output {
        Some(p) if p.extension().is_some_and(|e| e == "npy") => {
            let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            let mut w = BufWriter::new(f);
            angle_train::npy::write_npy(&mut w, q.npy_descr(), &q.bytes, q.rows, q.cols())?;
            w.flush()?;
            Ok(())
        }
        Some(p) => {
            let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            jsonl(&mut BufWriter::new(f))
        }
        None => jsonl(&mut BufWriter::new(std::io::stdout().lock())),
    }
}

fn write_jsonl(w: &mut impl Write, texts: &[String], emb: &[f32], h: usize) -> anyhow::Result<()> {
    for (t, row) in texts.iter().zip(emb.chunks(h)) {
        let line = serde_json::json!({"text": t, "embedding": row});
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    Ok(())
}

fn run_similarity(a: &SimilarityArgs) -> anyhow::Result<()> {
    let mut l = load(&a.model, false)?;
    let emb = embed_lines(&mut l, &a.texts)?;
    let h = l.emb.out_dim(&*l.model);
    let first = &emb[..h];
    for (k, t) in a.texts.iter().enumerate().skip(1) {
        println!("{:.4}\t{t}", cosine(first, &emb[k * h..(k + 1) * h]));
    }
    Ok(())
}

fn run_export(a: &ExportArgs) -> anyhow::Result<()> {
    angle_train::preflight::check_new_folder("--output", &a.output)?;
    let shard = parse_shard_size(&a.max_shard_size)?;
    let mut l = load_sharded(&a.model, false, Some(shard))?;
    let dir = angle_train::hub::model_dir(&a.model.model)?;
    // The source's training record carries over (prompts, pooling, how it was trained); else a fresh one.
    let saved = dir.join(angle_train::checkpoint::ANGLE_CONFIG);
    let mut config = if saved.is_file() {
        read_saved_config(&dir)?
    } else {
        TrainConfig {
            model: a.model.model.clone(),
            ..TrainConfig::default()
        }
    };
    config.max_length = l.tok.max_len();
    config.pooling = l.model.pooling().name();
    let dim = l.emb.out_dim(&*l.model);
    let dim = (dim < l.model.hidden_size()).then_some(dim);
    angle_train::checkpoint::export_model_dir(&a.output, &mut *l.model, &dir, &config, dim)?;
    println!(
        "exported {} layers{} to {}",
        l.model.num_layers(),
        dim.map(|d| format!(", --dim {d} by default")).unwrap_or_default(),
        a.output.display()
    );
    Ok(())
}

/// `--max-shard-size` in bytes.
fn parse_shard_size(text: &str) -> anyhow::Result<u64> {
    angle_models::weights::parse_shard_size(text)
        .with_context(|| format!("--max-shard-size {text:?}: give 5GB, 500MB, 2GiB or a number of bytes"))
}

fn run_merge(a: &MergeArgs) -> anyhow::Result<()> {
    if !a.adapter.join(angle_train::decoder::ADAPTER_CONFIG).is_file() {
        bail!(
            "{}: not an adapter folder (no {})",
            a.adapter.display(),
            angle_train::decoder::ADAPTER_CONFIG
        );
    }
    angle_train::preflight::check_new_folder("--output", &a.output)?;
    let shard = parse_shard_size(&a.max_shard_size)?;
    let base = if angle_train::blocks::uses_blocks(&a.adapter, true, a.base_model.as_deref())? {
        use angle_train::backbone::Backbone;
        let (mut model, _) =
            angle_train::blocks::load_blocks(&a.adapter, None, None, a.base_model.as_deref(), true)?;
        model.max_shard_bytes = shard;
        model.write_merged(&a.output, &a.adapter)?;
        model.base().to_path_buf()
    } else {
        let settings = angle_train::decoder::DecoderSettings {
            base_model: a.base_model.clone(),
            max_shard_bytes: Some(shard),
            ..Default::default()
        };
        let (model, _) = angle_train::decoder::load_decoder(&a.adapter, None, &settings)?;
        angle_train::decoder::write_merged(&model, &a.output, &a.adapter)?;
        model.base
    };
    println!(
        "{}: {} merged into {}",
        a.output.display(),
        a.adapter.display(),
        base.display()
    );
    Ok(())
}

fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    use angle_train::suite;
    if let Some(dir) = &a.retrieval {
        return run_eval_retrieval(a, dir);
    }
    // Hub datasets become their split's files in the cache; each file is its own table.
    let mut inputs = Vec::new();
    for d in &a.data {
        match angle_hub::resolve_dataset(d, &a.split) {
            Some(r) => inputs.extend(r?.1),
            None => inputs.push(d.clone()),
        }
    }
    let files = suite::collect_files(&inputs)?;
    let quantize: Option<Quantization> = a.quantize.as_deref().map(str::parse).transpose()?;
    let mut l = load(&a.model, true)?;
    let prompts = angle_data::Prompts {
        text: l.prompt.clone(),
        ..Default::default()
    };
    let sets = suite::load_all(&files, &l.tok, &prompts, a.skip_invalid)?;
    let r = suite::evaluate_suite(&mut *l.model, &mut l.emb, &sets, quantize)?;
    if a.json {
        println!("{}", suite::to_json(&r, &l.model.pooling().name()));
    } else if a.markdown {
        print!("{}", suite::render_markdown(&r));
    } else {
        print!("{}", suite::render_text(&r));
        println!("pooling {}", l.model.pooling().name());
    }
    Ok(())
}

/// A prompt option, else the model's prompt (`--prompt` or its text prompt).
fn side_prompt(
    flag: &str,
    given: &Option<String>,
    model: &Option<angle_data::Prompt>,
) -> anyhow::Result<Option<angle_data::Prompt>> {
    match given {
        Some(p) => Ok(Some(
            angle_data::Prompt::new(p.clone()).with_context(|| flag.to_string())?,
        )),
        None => Ok(model.clone()),
    }
}

fn run_eval_retrieval(a: &EvalArgs, dir: &Path) -> anyhow::Result<()> {
    use angle_train::retrieval;
    // The folder's three parts and the prompts before the model loads; the files are read before it too, so that
    // a bad qrels line is not found after minutes of loading.
    let dir = &angle_train::hub::beir_dir(dir, &a.split)?;
    retrieval::check_beir_dir(dir, &a.split)?;
    if let Some(out) = &a.save_embeddings {
        angle_train::preflight::check_new_folder("--save-embeddings", out)?;
    }
    for (flag, p) in [
        ("--query-prompt", &a.query_prompt),
        ("--doc-prompt", &a.doc_prompt),
    ] {
        if let Some(p) = p {
            angle_data::Prompt::new(p.clone()).with_context(|| flag.to_string())?;
        }
    }
    let set = retrieval::load_beir(dir, &a.split, a.skip_invalid)?;
    let mut l = load(&a.model, false)?;
    let prompts = retrieval::RetrievalPrompts {
        query: side_prompt("--query-prompt", &a.query_prompt, &l.prompt)?,
        doc: side_prompt("--doc-prompt", &a.doc_prompt, &l.prompt)?,
    };
    let started = std::time::Instant::now();
    let e = retrieval::embed_set(&mut *l.model, &mut l.emb, &l.tok, &set, &prompts)?;
    let mut s = retrieval::score_set(&set, &e)?;
    s.seconds = started.elapsed().as_secs_f64();
    if let Some(out) = &a.save_embeddings {
        save_set_embeddings(out, &set, &e)?;
    }
    if a.json {
        let mut v = serde_json::to_value(s)?;
        v["skipped_qrels"] = set.skipped.into();
        v["pooling"] = l.model.pooling().name().into();
        println!("{v}");
    } else if a.markdown {
        println!("{}", retrieval::markdown(dir, &s));
    } else {
        println!("{}", retrieval::summary(dir, &s));
        if set.skipped > 0 {
            println!("qrels lines skipped (--skip-invalid): {}", set.skipped);
        }
        println!("pooling {}", l.model.pooling().name());
    }
    Ok(())
}

fn save_set_embeddings(
    out: &Path,
    set: &angle_train::retrieval::BeirSet,
    e: &angle_train::retrieval::SetEmbeddings,
) -> anyhow::Result<()> {
    angle_train::atomic::write_dir_atomic(out, |tmp| {
        for (name, rows, data) in [
            ("queries.npy", set.query_ids.len(), &e.queries),
            ("corpus.npy", set.corpus_ids.len(), &e.corpus),
        ] {
            let path = tmp.join(name);
            let f = std::fs::File::create(&path).map_err(|source| angle_train::TrainError::Io {
                path: path.clone(),
                source,
            })?;
            let mut w = BufWriter::new(f);
            angle_train::npy::write_npy_f32(&mut w, data, rows, e.dim)
                .and_then(|()| w.flush())
                .map_err(|source| angle_train::TrainError::Io { path, source })?;
        }
        let ids = serde_json::json!({"query_ids": set.query_ids, "corpus_ids": set.corpus_ids, "relevant": set.relevant});
        let path = tmp.join("ids.json");
        std::fs::write(&path, ids.to_string()).map_err(|source| angle_train::TrainError::Io { path, source })
    })?;
    Ok(())
}

/// The embedding cache's folder for `angle mine`.
fn default_cache_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => {
                bail!("no HOME or XDG_CACHE_HOME for the embedding cache: give --cache-dir or --no-cache")
            }
        },
    };
    Ok(base.join("angle").join("embeddings"))
}

fn run_mine(a: &MineArgs) -> anyhow::Result<()> {
    use angle_train::mine::{self, MineOptions, MineTable, Sampling};
    use angle_train::retrieval::embed_normalized;
    let options = MineOptions {
        range_min: a.range_min,
        range_max: a.range_max,
        margin: a.margin,
        relative_margin: a.relative_margin,
        max_score: a.max_score,
        num_negatives: a.num_negatives,
        sampling: match a.sampling {
            SamplingArg::Top => Sampling::Top,
            SamplingArg::Random => Sampling::Random,
        },
        seed: a.seed,
    };
    // Everything that can be wrong without the model, before it loads: options, output, prompts, data, corpus.
    options.validate()?;
    if a.output.exists() && !a.overwrite {
        bail!("--output {} exists (--overwrite replaces it)", a.output.display());
    }
    if let Some(dir) = a
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        bail!("--output: the folder {} does not exist", dir.display());
    }
    for (flag, p) in [
        ("--query-prompt", &a.query_prompt),
        ("--doc-prompt", &a.doc_prompt),
    ] {
        if let Some(p) = p {
            angle_data::Prompt::new(p.clone()).with_context(|| flag.to_string())?;
        }
    }
    let mut files = Vec::new();
    for d in &a.data {
        match angle_hub::resolve_dataset(d, &a.split) {
            Some(r) => files.extend(r?.1),
            None => files.extend(angle_data::data_files(d)?),
        }
    }
    let read = angle_data::ReadOptions {
        columns: match &a.columns {
            Some(c) => c.parse().with_context(|| format!("--columns {c:?}"))?,
            None => angle_data::ColumnMap::new(),
        },
        skip_invalid: a.skip_invalid,
        ..Default::default()
    };
    let raw = angle_data::read_files(&files, &read)?;
    let pairs = mine::pairs_of(&raw)?;
    let mut corpus = Vec::new();
    for c in &a.corpus {
        corpus.extend(mine::read_corpus(c)?);
    }
    let table = MineTable::new(&pairs, &corpus);
    let cache = if a.no_cache {
        None
    } else {
        Some(a.cache_dir.clone().map_or_else(default_cache_dir, Ok)?)
    };
    let mut l = load(&a.model, false)?;
    let query_prompt = side_prompt("--query-prompt", &a.query_prompt, &l.prompt)?;
    let doc_prompt = side_prompt("--doc-prompt", &a.doc_prompt, &l.prompt)?;
    let dim = l.emb.out_dim(&*l.model);
    let started = std::time::Instant::now();
    let mut embed_side =
        |rows: Vec<u32>, prompt: Option<angle_data::Prompt>, what: &str| -> anyhow::Result<Vec<f32>> {
            let texts: Vec<String> = rows.iter().map(|&r| table.texts[r as usize].clone()).collect();
            let key = format!(
                "{}|prompt={:?}",
                l.identity,
                prompt.as_ref().map(|p| p.template())
            );
            let mut compute = || -> angle_train::Result<(Vec<f32>, usize)> {
                let e = embed_normalized(&mut *l.model, &mut l.emb, &l.tok, &texts, prompt.as_ref(), what)?;
                Ok((e, dim))
            };
            let Some(dir) = &cache else {
                return Ok(compute()?.0);
            };
            let (e, width, hit) = angle_train::embed_cache::cached(dir, &key, &texts, compute)?;
            if width != dim {
                bail!(
                    "{}: cached embeddings of width {width}, the model gives {dim} (delete the file)",
                    dir.display()
                );
            }
            eprintln!(
                "{} {what}: {}",
                texts.len(),
                if hit {
                    format!("embeddings read from {}", dir.display())
                } else {
                    format!("embedded, cached in {}", dir.display())
                }
            );
            Ok(e)
        };
    let queries = embed_side(table.query_rows(), query_prompt, "queries")?;
    let docs = embed_side(table.candidate_rows(), doc_prompt, "candidates")?;
    let embedded = started.elapsed().as_secs_f64();
    let negatives = mine::mine(&table, &queries, &docs, dim, &options)?;
    let r = mine::write_triples(&a.output, &table, &negatives, options.num_negatives)?;
    println!(
        "{}: {} rows from {} pairs ({} negatives; {} pairs with fewer than {}; {} pairs left out, no candidate \
         passed the range and margins); {} queries against {} candidates; embedding {:.1} s, search {:.1} s",
        a.output.display(),
        r.rows,
        r.pairs,
        r.negatives,
        r.short,
        options.num_negatives,
        r.without_negative,
        table.query_rows().len(),
        table.candidate_rows().len(),
        embedded,
        started.elapsed().as_secs_f64() - embedded
    );
    if !raw.skipped.is_empty() {
        println!("rows of --data skipped (--skip-invalid): {}", raw.skipped.len());
    }
    Ok(())
}
