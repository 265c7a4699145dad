//! ALBERT: factorized embeddings (`embedding_size`) mapped to the hidden size by
//! `encoder.embedding_hidden_mapping_in`, then `num_hidden_layers` layers that share the weights of
//! `num_hidden_groups` groups: layer `l` runs group `l / (layers / groups)`, and a shared weight
//! accumulates the gradient of every layer that runs it.

use super::{BertDims, BertNames, bert_layer, factorized_embeddings, gelu};
use angle_encoder::Keys;

use crate::error::{Result, cfg_err};
use crate::model::EncoderBlocks;
use crate::nn::{Layer, Linear, LoraSpec, ModernBertDropout, VarBuilder};

const ALBERT_NAMES: BertNames = BertNames {
    qkv: ["attention.query", "attention.key", "attention.value"],
    attn_out: "attention.dense",
    attn_norm: "attention.LayerNorm",
    ffn_in: "ffn",
    ffn_out: "ffn_output",
    out_norm: "full_layer_layer_norm",
};

pub(super) fn build(k: &Keys<'_>, vb: &mut VarBuilder, lora: Option<&LoraSpec>) -> Result<EncoderBlocks> {
    let h = k.usize("hidden_size")?;
    let e = k.usize_or("embedding_size", 128)?;
    let eps = k.f64_or("layer_norm_eps", 1e-12)?;
    let hidden_dropout = k.f64_or("hidden_dropout_prob", 0.0)?;
    let (layers_n, groups) = (k.usize("num_hidden_layers")?, k.usize_or("num_hidden_groups", 1)?);
    if groups == 0 || !layers_n.is_multiple_of(groups) {
        return Err(cfg_err(
            k.path,
            "num_hidden_groups",
            format!("{groups} groups do not divide {layers_n} layers"),
        ));
    }
    let inner = k.usize_or("inner_group_num", 1)?;
    if inner != 1 {
        return Err(cfg_err(
            k.path,
            "inner_group_num",
            format!("{inner} is not supported; only 1"),
        ));
    }
    let embeddings = factorized_embeddings(k, vb, e, eps, hidden_dropout)?;
    let projection = Some(Linear::new(
        vb,
        lora,
        "encoder.embedding_hidden_mapping_in",
        e,
        h,
        true,
    ));
    let dims = BertDims {
        hidden: h,
        heads: k.usize("num_attention_heads")?,
        inter: k.usize("intermediate_size")?,
        eps,
        act: gelu(k, "hidden_act", "gelu_new")?,
        hidden_dropout,
        probs_dropout: k.f64_or("attention_probs_dropout_prob", 0.0)?,
    };
    let layers = (0..groups)
        .map(|g| {
            let at = format!("encoder.albert_layer_groups.{g}.albert_layers.0");
            bert_layer(vb, lora, &at, &ALBERT_NAMES, &dims).map(Layer::Bert)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EncoderBlocks {
        model_type: "albert".into(),
        embeddings,
        projection,
        layers,
        uses: (0..layers_n).map(|l| l / (layers_n / groups)).collect(),
        final_norm: None,
        hidden_size: h,
        checkpoint_prefixes: vec!["albert.".into()],
        in_layer_dropout: ModernBertDropout::default(),
    })
}
