//! BERT-style encoders: BERT, MiniLM, BGE, E5 (`model_type: "bert"`) and the
//! RoBERTa family (RoBERTa, XLM-RoBERTa: multilingual-e5, bge-m3), post-norm
//! transformer layers with absolute position embeddings. RoBERTa differs only
//! in where positions start: after its padding id.

use std::path::Path;

use engine_mlx::fast;
use engine_mlx::nn::{Embedding, LayerNorm, Linear};
use engine_mlx::{concatenate, Array, Dtype, WeightMap};
use serde::Deserialize;

use crate::error::{EmbedError, Result};
use crate::model::{check_heads, Activation};

/// The fields of a BERT `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the position-embedding table: the longest input in tokens.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Feed-forward activation (`gelu`, `gelu_new`, `relu`, ...).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Only `absolute` is supported.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    /// Padding id; RoBERTa-family positions start right after it.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_pos_type() -> String {
    "absolute".into()
}

struct Layer {
    /// Query, key and value fused into one (3H, H) projection: one matmul instead of three.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct Bert {
    cfg: BertConfig,
    act: Activation,
    words: Embedding,
    /// Position embeddings with token type 0 already added (single-segment inputs).
    positions: Array,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// Row of the position table for a sequence's first token: 0 for BERT,
    /// `pad_token_id + 1` for RoBERTa.
    position_offset: usize,
}

impl Bert {
    /// Loads the weights, accepting both bare (`embeddings.…`) and
    /// task-model (`bert.…` / `roberta.…`) names. `roberta` selects
    /// RoBERTa's positions, which start after the padding id.
    pub fn load(cfg: BertConfig, w: &WeightMap, config_path: &Path, roberta: bool) -> Result<Bert> {
        if cfg.position_embedding_type != "absolute" {
            return Err(EmbedError::UnsupportedPipeline {
                path: config_path.to_path_buf(),
                what: format!("position_embedding_type `{}`", cfg.position_embedding_type),
            });
        }
        check_heads(cfg.hidden_size, cfg.num_attention_heads, config_path)?;
        let act = Activation::parse(&cfg.hidden_act, config_path)?;
        let p = ["bert.", "roberta."]
            .into_iter()
            .find(|p| w.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .unwrap_or("");
        let position_offset = if roberta { cfg.pad_token_id.unwrap_or(1) + 1 } else { 0 };
        if position_offset >= cfg.max_position_embeddings {
            return Err(EmbedError::BadConfig {
                path: config_path.to_path_buf(),
                reason: format!(
                    "positions start at {position_offset}, past max_position_embeddings {}",
                    cfg.max_position_embeddings
                ),
            });
        }
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps as f32;
        let words = Embedding::load(w, &format!("{p}embeddings.word_embeddings"), cfg.vocab_size, h)?
            .dequantized(Dtype::Float32)?;
        let pos = w
            .get_shaped(
                &format!("{p}embeddings.position_embeddings.weight"),
                &[cfg.max_position_embeddings, h],
            )?
            .astype(Dtype::Float32)?;
        let tt = w
            .get_shaped(
                &format!("{p}embeddings.token_type_embeddings.weight"),
                &[cfg.type_vocab_size, h],
            )?
            .astype(Dtype::Float32)?;
        let positions = pos.add(&tt.slice_axis(0, 0, 1)?)?;
        let emb_norm = LayerNorm::load(w, &format!("{p}embeddings.LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{p}encoder.layer.{i}");
            let lin = |name: &str, i_f: usize, o_f: usize| -> Result<Linear> {
                Ok(Linear::load(w, &format!("{l}.{name}"), i_f, o_f, true)?.dequantized(Dtype::Float32)?)
            };
            let (q, k, v) = (
                lin("attention.self.query", h, h)?,
                lin("attention.self.key", h, h)?,
                lin("attention.self.value", h, h)?,
            );
            layers.push(Layer {
                qkv: fuse(&[q, k, v])?,
                attn_out: lin("attention.output.dense", h, h)?,
                attn_norm: LayerNorm::load(w, &format!("{l}.attention.output.LayerNorm"), h, eps)?,
                up: lin("intermediate.dense", h, cfg.intermediate_size)?,
                down: lin("output.dense", cfg.intermediate_size, h)?,
                out_norm: LayerNorm::load(w, &format!("{l}.output.LayerNorm"), h, eps)?,
            });
        }
        let model = Bert {
            cfg,
            act,
            words,
            positions,
            emb_norm,
            layers,
            position_offset,
        };
        // Materialise the fused/cast weights now, not on the first request.
        engine_mlx::eval(model.arrays())?;
        Ok(model)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = self.words.arrays();
        v.push(&self.positions);
        v.extend(self.emb_norm.arrays());
        for l in &self.layers {
            for lin in [&l.qkv, &l.attn_out, &l.up, &l.down] {
                v.extend(lin.arrays());
            }
            v.extend(l.attn_norm.arrays());
            v.extend(l.out_norm.arrays());
        }
        v
    }

    /// Width of the output vectors.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The longest input the position table allows.
    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings - self.position_offset
    }

    /// BERT or RoBERTa.
    pub fn architecture(&self) -> crate::Architecture {
        if self.position_offset > 0 {
            crate::Architecture::Roberta
        } else {
            crate::Architecture::Bert
        }
    }

    /// Hidden states (T, H) of sequences of `lengths` tokens packed end to
    /// end in `ids` (T = Σ lengths): no padding anywhere, so the matmuls do
    /// no work on pad tokens and attention stays within each sequence.
    pub fn forward_packed(&self, ids: &[i32], lengths: &[usize]) -> Result<Array> {
        let t = ids.len();
        let h = self.cfg.hidden_size as i32;
        let nh = self.cfg.num_attention_heads as i32;
        let scale = 1.0 / ((h / nh) as f32).sqrt();
        let first = self.position_offset as i32;
        let positions: Vec<i32> = lengths.iter().flat_map(|&n| first..first + n as i32).collect();
        let lens: Vec<i32> = lengths.iter().map(|&n| n as i32).collect();
        let words = self.words.forward(&Array::from_slice(ids, &[t])?)?;
        let pos = self.positions.take(&Array::from_slice(&positions, &[t])?, 0)?;
        let mut x = self.emb_norm.forward_residual(&words, &pos)?;
        for layer in &self.layers {
            let attn = fast::packed_attention(&layer.qkv.forward(&x)?, &lens, nh, scale)?;
            let x1 = layer.attn_norm.forward_residual(&layer.attn_out.forward(&attn)?, &x)?;
            let ff = layer.down.forward(&self.act.apply(&layer.up.forward(&x1)?)?)?;
            x = layer.out_norm.forward_residual(&ff, &x1)?;
        }
        Ok(x)
    }
}

/// Stacks projections of the same input into one along the output axis (as dense f32).
pub(crate) fn fuse(parts: &[Linear]) -> Result<Linear> {
    let mut ws = Vec::new();
    let mut bs = Vec::new();
    for p in parts {
        let Linear::Dense { weight, bias } = p.dequantized(Dtype::Float32)? else {
            return Err(engine_mlx::Error::Invalid("dequantized() returned a quantized layer".into()).into());
        };
        ws.push(weight);
        bs.extend(bias);
    }
    let bias = if bs.len() == parts.len() {
        Some(concatenate(&bs.iter().collect::<Vec<_>>(), 0)?)
    } else {
        None
    };
    Ok(Linear::Dense {
        weight: concatenate(&ws.iter().collect::<Vec<_>>(), 0)?,
        bias,
    })
}
