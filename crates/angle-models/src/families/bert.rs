//! BERT, RoBERTa, XLM-R, CamemBERT: `BertEmbeddings`, then `BertLayer`s.

use std::path::Path;

use angle_encoder::{Activation, BertConfig};
use angle_tensor::cpu::GeluKind;
use serde_json::Value;

use super::{BERT_NAMES, BertDims, bert_layer};
use crate::error::Result;
use crate::model::EncoderBlocks;
use crate::nn::{Embeddings, EmbeddingsConfig, Layer, LoraSpec, ModernBertDropout, VarBuilder, path};

pub(super) fn build(
    v: &Value,
    config: &Path,
    vb: &mut VarBuilder,
    lora: Option<&LoraSpec>,
) -> Result<EncoderBlocks> {
    let c = BertConfig::from_json_str(&v.to_string(), config)?;
    let h = c.hidden_size;
    let embeddings = Embeddings::new(
        vb,
        "embeddings",
        &EmbeddingsConfig {
            dim: h,
            vocab: c.vocab_size,
            positions: Some((c.max_position_embeddings, c.position_offset)),
            type_vocab: c.type_vocab_size,
            eps: c.layer_norm_eps as f64,
            norm_bias: true,
            dropout: c.hidden_dropout_prob as f64,
            names: [
                "word_embeddings",
                "position_embeddings",
                "token_type_embeddings",
                "LayerNorm",
            ],
        },
    );
    let dims = BertDims {
        hidden: h,
        heads: c.num_attention_heads,
        inter: c.intermediate_size,
        eps: c.layer_norm_eps as f64,
        act: match c.hidden_act {
            Activation::GeluErf => GeluKind::Erf,
            Activation::GeluTanh => GeluKind::Tanh,
        },
        hidden_dropout: c.hidden_dropout_prob as f64,
        probs_dropout: c.attention_probs_dropout_prob as f64,
    };
    let layers = (0..c.num_hidden_layers)
        .map(|l| bert_layer(vb, lora, &path("encoder.layer", l), &BERT_NAMES, &dims).map(Layer::Bert))
        .collect::<Result<Vec<_>>>()?;
    let prefix = match c.model_type.as_str() {
        "bert" => "bert.",
        "xlm-roberta" | "roberta" => "roberta.",
        _ => "roberta.",
    };
    Ok(EncoderBlocks {
        model_type: c.model_type.clone(),
        embeddings,
        projection: None,
        uses: (0..layers.len()).collect(),
        layers,
        final_norm: None,
        hidden_size: h,
        checkpoint_prefixes: vec![prefix.into(), format!("{}.", c.model_type)],
        in_layer_dropout: ModernBertDropout::default(),
    })
}
