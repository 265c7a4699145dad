//! ModernBERT: token embeddings + norm (no positions: rotary), pre-norm layers with a fused `Wqkv`,
//! GeGLU, no biases unless asked, global attention every `global_attn_every_n_layers` layers and
//! sliding-window attention (`|i − j| <= local_attention / 2`) between, each kind with its own rope
//! base; the first layer's attention norm is an identity; `final_norm` at the end.

use angle_encoder::Keys;
use serde_json::Value;

use super::gelu;
use crate::error::{Result, cfg_err};
use crate::model::EncoderBlocks;
use crate::nn::{
    Attention, Embeddings, EmbeddingsConfig, Layer, LayerNorm, Linear, LoraSpec, Mlp, ModernBertDropout,
    ModernBertLayer, Rope, VarBuilder, path,
};

/// Whether layer `l` attends globally: `layer_types` (transformers ≥ 5), else every
/// `global_attn_every_n_layers`-th layer from 0.
fn global_layers(k: &Keys<'_>, n: usize) -> Result<Vec<bool>> {
    if let Some(Value::Array(types)) = k.get("layer_types") {
        if types.len() != n {
            return Err(cfg_err(
                k.path,
                "layer_types",
                format!("{} entries for {n} layers", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(true),
                Some("sliding_attention") => Ok(false),
                _ => Err(cfg_err(
                    k.path,
                    "layer_types",
                    format!("`{t}` is not full_attention or sliding_attention"),
                )),
            })
            .collect();
    }
    let every = k.usize_or("global_attn_every_n_layers", 3)?.max(1);
    Ok((0..n).map(|l| l % every == 0).collect())
}

/// The rope base of each attention kind: `rope_parameters.{full,sliding}_attention.rope_theta`, else
/// `global_rope_theta` / `local_rope_theta`.
fn rope_theta(k: &Keys<'_>, global: bool) -> Result<f64> {
    let (kind, flat, default) = if global {
        ("full_attention", "global_rope_theta", 160_000.0)
    } else {
        ("sliding_attention", "local_rope_theta", 10_000.0)
    };
    let Some(params) = k.get("rope_parameters").and_then(|p| p.get(kind)) else {
        return Ok(k.f64_or(flat, default)?);
    };
    let key = format!("rope_parameters.{kind}");
    if let Some(t) = params.get("rope_type").and_then(Value::as_str)
        && t != "default"
    {
        return Err(cfg_err(
            k.path,
            &key,
            format!("rope_type `{t}` is not supported; only default"),
        ));
    }
    params
        .get("rope_theta")
        .and_then(Value::as_f64)
        .ok_or_else(|| cfg_err(k.path, &key, "no rope_theta"))
}

pub(super) fn build(k: &Keys<'_>, vb: &mut VarBuilder, lora: Option<&LoraSpec>) -> Result<EncoderBlocks> {
    let (h, heads) = (k.usize("hidden_size")?, k.usize("num_attention_heads")?);
    if heads == 0 || !h.is_multiple_of(heads) {
        return Err(cfg_err(
            k.path,
            "num_attention_heads",
            format!("{heads} heads do not divide hidden size {h}"),
        ));
    }
    let (inter, n_layers) = (k.usize("intermediate_size")?, k.usize("num_hidden_layers")?);
    let max_len = k.usize_or("max_position_embeddings", 8192)?;
    let eps = k.f64_or("norm_eps", 1e-5)?;
    let norm_bias = k.bool_or("norm_bias", false)?;
    let (attn_bias, mlp_bias) = (k.bool_or("attention_bias", false)?, k.bool_or("mlp_bias", false)?);
    let act = gelu(k, "hidden_activation", "gelu")?;
    let window = k.usize_or("local_attention", 128)? / 2;
    let embeddings = Embeddings::new(
        vb,
        "embeddings",
        &EmbeddingsConfig {
            dim: h,
            vocab: k.usize("vocab_size")?,
            positions: None,
            type_vocab: 0,
            eps,
            norm_bias,
            dropout: k.f64_or("embedding_dropout", 0.0)?,
            names: ["tok_embeddings", "", "", "norm"],
        },
    );
    let mut ropes = [None, None];
    let mut layers = Vec::with_capacity(n_layers);
    for (l, global) in global_layers(k, n_layers)?.into_iter().enumerate() {
        let rope = match &mut ropes[global as usize] {
            Some(r) => Rope::clone(r),
            slot => slot
                .insert(Rope::new(rope_theta(k, global)?, h / heads, max_len))
                .clone(),
        };
        let at = path("layers", l);
        layers.push(Layer::ModernBert(ModernBertLayer {
            attn_norm: (l > 0).then(|| LayerNorm::new(vb, &path(&at, "attn_norm"), h, eps, norm_bias)),
            attention: Attention {
                qkv: Linear::new(vb, lora, &path(&at, "attn.Wqkv"), h, 3 * h, attn_bias),
                out: Linear::new(vb, lora, &path(&at, "attn.Wo"), h, h, attn_bias),
                heads,
                head_dim: h / heads,
                rope: Some(rope),
                window: (!global).then_some(window),
                probs_dropout: 0.0,
            },
            mlp_norm: LayerNorm::new(vb, &path(&at, "mlp_norm"), h, eps, norm_bias),
            mlp: Mlp {
                wi: Linear::new(vb, lora, &path(&at, "mlp.Wi"), h, 2 * inter, mlp_bias),
                wo: Linear::new(vb, lora, &path(&at, "mlp.Wo"), inter, h, mlp_bias),
                act,
                gated: true,
            },
        }));
    }
    Ok(EncoderBlocks {
        model_type: "modernbert".into(),
        embeddings,
        projection: None,
        uses: (0..n_layers).collect(),
        layers,
        final_norm: Some(LayerNorm::new(vb, "final_norm", h, eps, norm_bias)),
        hidden_size: h,
        checkpoint_prefixes: vec!["model.".into()],
        in_layer_dropout: ModernBertDropout {
            attention: k.f64_or("attention_dropout", 0.0)?,
            mlp: k.f64_or("mlp_dropout", 0.0)?,
        },
    })
}
