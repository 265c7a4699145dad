//! The family registry: the one place that matches on `model_type`. A family is a short file that
//! reads its config keys and names its modules; the blocks do the rest.

mod albert;
mod bert;
mod electra;
mod modernbert;

use std::path::Path;

use angle_encoder::Keys;
use angle_tensor::cpu::GeluKind;

use crate::error::{ModelError, Result, read_json};
use crate::model::EncoderBlocks;
use crate::nn::{
    Attention, BertLayer, Embeddings, EmbeddingsConfig, LayerNorm, Linear, LoraSpec, Mlp, VarBuilder, path,
};

/// The `model_type`s we build.
pub const SUPPORTED: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "albert",
    "modernbert",
];

/// Builds the blocks of the model whose `config.json` is `config`, registering every weight in `vb`.
pub fn build(config: &Path, vb: &mut VarBuilder, lora: Option<&LoraSpec>) -> Result<EncoderBlocks> {
    let v = read_json(config)?;
    let map = v
        .as_object()
        .ok_or_else(|| crate::error::cfg_err(config, "<root>", "expected a JSON object"))?;
    let keys = Keys { map, path: config };
    let model_type = keys.string_or("model_type", "bert")?;
    let blocks = match model_type.as_str() {
        "bert" | "roberta" | "xlm-roberta" | "camembert" => bert::build(&v, config, vb, lora)?,
        "electra" => electra::build(&keys, vb, lora)?,
        "albert" => albert::build(&keys, vb, lora)?,
        "modernbert" => modernbert::build(&keys, vb, lora)?,
        other => {
            return Err(ModelError::UnknownFamily {
                path: config.to_path_buf(),
                found: other.to_string(),
                supported: SUPPORTED.join(", "),
            });
        }
    };
    if let Some(spec) = lora {
        // every target names some linear module (peft refuses a target that matches nothing)
        let modules: Vec<&String> = linears(&blocks).flat_map(|l| &l.modules).collect();
        for t in spec.targets.iter().filter(|t| t.as_str() != "all-linear") {
            let one = LoraSpec {
                targets: vec![t.clone()],
                ..spec.clone()
            };
            if !modules.iter().any(|m| one.targets_module(m)) {
                return Err(ModelError::Lora(format!(
                    "target module `{t}` matches no linear module of this {model_type} model (e.g. {}), or all-linear",
                    modules
                        .iter()
                        .take(6)
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    Ok(blocks)
}

/// Every linear block of the model, in module order.
pub fn linears(b: &EncoderBlocks) -> impl Iterator<Item = &Linear> {
    let layer_linears = b.layers.iter().flat_map(|l| {
        let (a, m) = match l {
            crate::nn::Layer::Bert(x) => (&x.attention, &x.mlp),
            crate::nn::Layer::ModernBert(x) => (&x.attention, &x.mlp),
        };
        [&a.qkv, &a.out, &m.wi, &m.wo]
    });
    b.projection.iter().chain(layer_linears)
}

/// `hidden_act` / `hidden_activation` as a GELU kind; anything else is refused by key.
fn gelu(keys: &Keys<'_>, key: &str, default: &str) -> Result<GeluKind> {
    match keys.string_or(key, default)?.as_str() {
        "gelu" => Ok(GeluKind::Erf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(GeluKind::Tanh),
        other => Err(crate::error::cfg_err(
            keys.path,
            key,
            format!("`{other}` is not supported; supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast"),
        )),
    }
}

/// BERT-shaped embeddings (word, absolute position from 0, token type, LayerNorm) of width `embedding_size`
/// (ELECTRA and ALBERT factorize them below the hidden size).
fn factorized_embeddings(
    k: &Keys<'_>,
    vb: &mut VarBuilder,
    dim: usize,
    eps: f64,
    dropout: f64,
) -> Result<Embeddings> {
    Ok(Embeddings::new(
        vb,
        "embeddings",
        &EmbeddingsConfig {
            dim,
            vocab: k.usize("vocab_size")?,
            positions: Some((k.usize_or("max_position_embeddings", 512)?, 0)),
            type_vocab: k.usize_or("type_vocab_size", 2)?,
            eps,
            norm_bias: true,
            dropout,
            names: [
                "word_embeddings",
                "position_embeddings",
                "token_type_embeddings",
                "LayerNorm",
            ],
        },
    ))
}

/// Module names of a post-norm (BERT-shaped) layer, relative to the layer's path.
struct BertNames {
    qkv: [&'static str; 3],
    attn_out: &'static str,
    attn_norm: &'static str,
    ffn_in: &'static str,
    ffn_out: &'static str,
    out_norm: &'static str,
}

const BERT_NAMES: BertNames = BertNames {
    qkv: [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ],
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    out_norm: "output.LayerNorm",
};

/// Sizes and constants of a post-norm layer.
struct BertDims {
    hidden: usize,
    heads: usize,
    inter: usize,
    eps: f64,
    act: GeluKind,
    hidden_dropout: f64,
    probs_dropout: f64,
}

fn bert_layer(
    vb: &mut VarBuilder,
    lora: Option<&LoraSpec>,
    at: &str,
    n: &BertNames,
    d: &BertDims,
) -> Result<BertLayer> {
    let h = d.hidden;
    if d.heads == 0 || !h.is_multiple_of(d.heads) {
        return Err(ModelError::State(format!(
            "{} heads do not divide hidden size {h}",
            d.heads
        )));
    }
    let qkv_names: Vec<String> = n.qkv.iter().map(|m| path(at, m)).collect();
    Ok(BertLayer {
        attention: Attention {
            qkv: Linear::fused(vb, lora, &qkv_names, h, h, true),
            out: Linear::new(vb, lora, &path(at, n.attn_out), h, h, true),
            heads: d.heads,
            head_dim: h / d.heads,
            rope: None,
            window: None,
            probs_dropout: d.probs_dropout,
        },
        attn_norm: LayerNorm::new(vb, &path(at, n.attn_norm), h, d.eps, true),
        mlp: Mlp {
            wi: Linear::new(vb, lora, &path(at, n.ffn_in), h, d.inter, true),
            wo: Linear::new(vb, lora, &path(at, n.ffn_out), d.inter, h, true),
            act: d.act,
            gated: false,
        },
        out_norm: LayerNorm::new(vb, &path(at, n.out_norm), h, d.eps, true),
        hidden_dropout: d.hidden_dropout,
    })
}
