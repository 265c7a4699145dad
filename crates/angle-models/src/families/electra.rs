//! ELECTRA: BERT's layers under factorized embeddings (`embedding_size`, then `embeddings_project`
//! to the hidden size when the two differ).

use super::{BERT_NAMES, BertDims, bert_layer, factorized_embeddings, gelu};
use angle_encoder::Keys;

use crate::error::Result;
use crate::model::EncoderBlocks;
use crate::nn::{Layer, Linear, LoraSpec, ModernBertDropout, VarBuilder, path};

pub(super) fn build(k: &Keys<'_>, vb: &mut VarBuilder, lora: Option<&LoraSpec>) -> Result<EncoderBlocks> {
    let h = k.usize("hidden_size")?;
    let e = k.usize_or("embedding_size", h)?;
    let eps = k.f64_or("layer_norm_eps", 1e-12)?;
    let hidden_dropout = k.f64_or("hidden_dropout_prob", 0.1)?;
    let embeddings = factorized_embeddings(k, vb, e, eps, hidden_dropout)?;
    let projection = (e != h).then(|| Linear::new(vb, lora, "embeddings_project", e, h, true));
    let dims = BertDims {
        hidden: h,
        heads: k.usize("num_attention_heads")?,
        inter: k.usize("intermediate_size")?,
        eps,
        act: gelu(k, "hidden_act", "gelu")?,
        hidden_dropout,
        probs_dropout: k.f64_or("attention_probs_dropout_prob", 0.1)?,
    };
    let layers = (0..k.usize("num_hidden_layers")?)
        .map(|l| bert_layer(vb, lora, &path("encoder.layer", l), &BERT_NAMES, &dims).map(Layer::Bert))
        .collect::<Result<Vec<_>>>()?;
    Ok(EncoderBlocks {
        model_type: "electra".into(),
        embeddings,
        projection,
        uses: (0..layers.len()).collect(),
        layers,
        final_norm: None,
        hidden_size: h,
        checkpoint_prefixes: vec!["electra.".into()],
        in_layer_dropout: ModernBertDropout::default(),
    })
}
