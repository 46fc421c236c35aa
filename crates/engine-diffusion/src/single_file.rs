//! Original (CompVis / Stability / A1111) single-file checkpoints: one safetensors
//! holding `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE) and the
//! text encoders, renamed to diffusers' names. The text encoders tell the kind:
//! SD 1.x `cond_stage_model.transformer.*` (CLIP-L, already transformers' names),
//! SD 2.x `cond_stage_model.model.*` (OpenCLIP-H), SDXL
//! `conditioner.embedders.0.transformer.*` (CLIP-L) + `conditioner.embedders.1.model.*`
//! (OpenCLIP-bigG with its pooled projection). The configs come from a diffusers folder.

use crate::error::{DiffusionError, Result};
use crate::weights::prepare;
use engine_mlx::{Array, Dtype, WeightMap};
use std::collections::HashMap;
use std::path::Path;

const RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
];
const UNET_TOP: [(&str, &str); 7] = [
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
];
const VAE_ATTN: [(&str, &str); 5] = [
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
];

fn resnet(rest: &str) -> Option<String> {
    RESNET
        .iter()
        .find_map(|(l, d)| rest.strip_prefix(l).map(|tail| format!("{d}{tail}")))
}

/// An ldm UNet name (without `model.diffusion_model.`) as diffusers names it.
fn unet_name(k: &str, layers_per_block: usize, up_has_attn: &[bool]) -> Option<String> {
    if let Some(n) = UNET_TOP.iter().find_map(|(l, d)| {
        k.strip_prefix(l)
            .filter(|t| t.starts_with('.'))
            .map(|t| format!("{d}{t}"))
    }) {
        return Some(n);
    }
    let per = layers_per_block + 1;
    let p: Vec<&str> = k.splitn(4, '.').collect();
    let (blocks, i, sub, rest) = (p[0], p.get(1)?.parse::<usize>().ok()?, *p.get(2)?, *p.get(3)?);
    match blocks {
        "input_blocks" if i > 0 => {
            let (b, j) = ((i - 1) / per, (i - 1) % per);
            match (sub, rest.strip_prefix("op.")) {
                ("0", Some(w)) => Some(format!("down_blocks.{b}.downsamplers.0.conv.{w}")),
                ("0", None) => Some(format!("down_blocks.{b}.resnets.{j}.{}", resnet(rest)?)),
                ("1", None) => Some(format!("down_blocks.{b}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        "middle_block" => match i {
            0 | 2 => Some(format!(
                "mid_block.resnets.{}.{}",
                i / 2,
                resnet(&format!("{sub}.{rest}"))?
            )),
            1 => Some(format!("mid_block.attentions.0.{sub}.{rest}")),
            _ => None,
        },
        "output_blocks" => {
            let (b, j) = (i / per, i % per);
            let up = if *up_has_attn.get(b)? { "2" } else { "1" };
            match (sub, rest.strip_prefix("conv.")) {
                ("0", _) => Some(format!("up_blocks.{b}.resnets.{j}.{}", resnet(rest)?)),
                (s, Some(w)) if s == up => Some(format!("up_blocks.{b}.upsamplers.0.conv.{w}")),
                ("1", _) => Some(format!("up_blocks.{b}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An ldm VAE name (without `first_stage_model.`) as diffusers names it.
fn vae_name(k: &str, levels: usize) -> Option<String> {
    if k.starts_with("quant_conv.") || k.starts_with("post_quant_conv.") {
        return Some(k.to_string());
    }
    let (side, rest) = k.split_once('.')?;
    let rest = rest.replace("nin_shortcut", "conv_shortcut");
    let p: Vec<&str> = rest.splitn(4, '.').collect();
    let tail = |from: usize| p[from..].join(".");
    Some(match p[0] {
        "norm_out" => format!("{side}.conv_norm_out.{}", tail(1)),
        "conv_in" | "conv_out" => format!("{side}.{rest}"),
        "down" | "up" => {
            let i: usize = p.get(1)?.parse().ok()?;
            let (blocks, idx) = if p[0] == "down" {
                ("down_blocks", i)
            } else {
                ("up_blocks", levels - 1 - i)
            };
            match *p.get(2)? {
                "block" => format!("{side}.{blocks}.{idx}.resnets.{}", tail(3)),
                "downsample" | "upsample" => {
                    let s = if p[0] == "down" { "downsamplers" } else { "upsamplers" };
                    format!("{side}.{blocks}.{idx}.{s}.0.{}", tail(3))
                }
                _ => return None,
            }
        }
        "mid" => match *p.get(1)? {
            "block_1" => format!("{side}.mid_block.resnets.0.{}", tail(2)),
            "block_2" => format!("{side}.mid_block.resnets.1.{}", tail(2)),
            "attn_1" => {
                let (layer, param) = (*p.get(2)?, *p.get(3)?);
                let d = VAE_ATTN.iter().find(|(l, _)| *l == layer)?.1;
                format!("{side}.mid_block.attentions.0.{d}.{param}")
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// OpenCLIP text-tower names (`transformer.resblocks.N.*`, `ln_final`, ...) as
/// transformers' `CLIPTextModel` names them, without the `text_model.` prefix.
/// The fused `attn.in_proj_*` (q, k, v stacked on axis 0) is split in three and
/// `text_projection` (D, P), applied as `x @ proj`, becomes a (P, D) linear weight.
/// Names with no counterpart (`logit_scale`, `attn_mask`) give nothing.
fn open_clip(k: &str, a: &Array) -> Result<Vec<(String, Array)>> {
    let one = |n: String, a: Array| Ok(vec![(n, a)]);
    match k {
        "token_embedding.weight" => return one("embeddings.token_embedding.weight".into(), a.clone()),
        "positional_embedding" => return one("embeddings.position_embedding.weight".into(), a.clone()),
        "text_projection" => return one("text_projection.weight".into(), a.transpose(&[1, 0])?),
        _ => {}
    }
    if let Some(t) = k.strip_prefix("ln_final.") {
        return one(format!("final_layer_norm.{t}"), a.clone());
    }
    let Some((i, rest)) = k.strip_prefix("transformer.resblocks.").and_then(|r| r.split_once('.')) else {
        return Ok(vec![]);
    };
    let l = format!("encoder.layers.{i}");
    if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
        let qkv = a.split(3, 0)?;
        return Ok(["q_proj", "k_proj", "v_proj"]
            .iter()
            .zip(qkv)
            .map(|(p, t)| (format!("{l}.self_attn.{p}.{kind}"), t))
            .collect());
    }
    const LAYER: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    Ok(LAYER
        .iter()
        .find_map(|(o, d)| rest.strip_prefix(o).map(|t| vec![(format!("{l}.{d}{t}"), a.clone())]))
        .unwrap_or_default())
}

/// Which original layout a checkpoint is in, told by its text-encoder prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `cond_stage_model.transformer.*`.
    Sd1,
    /// `cond_stage_model.model.*`.
    Sd2,
    /// `conditioner.embedders.{0,1}.*`.
    Sdxl,
}

impl Kind {
    /// For messages.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Sd1 => "SD 1.x",
            Kind::Sd2 => "SD 2.x",
            Kind::Sdxl => "SDXL",
        }
    }
}

fn kind_of(raw: &WeightMap, path: &Path) -> Result<Kind> {
    let names = raw.names();
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    let bad = |reason: String| DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason,
    };
    if !has("model.diffusion_model.") {
        return Err(bad(format!(
            "no UNet tensors (model.diffusion_model.*) among its {} tensors, so this is not an original SD 1.x/2.x/SDXL \
             checkpoint (a LoRA, a VAE or a UNet alone?); pass a full checkpoint or a diffusers folder",
            names.len()
        )));
    }
    let (xl_clip, xl_big) = (
        has("conditioner.embedders.0.transformer."),
        has("conditioner.embedders.1.model."),
    );
    Ok(
        match (
            has("cond_stage_model.transformer."),
            has("cond_stage_model.model."),
            xl_clip,
            xl_big,
        ) {
            (true, false, false, false) => Kind::Sd1,
            (false, true, false, false) => Kind::Sd2,
            (false, false, true, true) => Kind::Sdxl,
            (false, false, false, _) if has("conditioner.embedders.0.model.") => return Err(bad(
                "an SDXL refiner checkpoint (one OpenCLIP-bigG text encoder) is not supported; use an SDXL base model"
                    .into(),
            )),
            _ => return Err(bad(
                "cannot tell the model kind from its text encoder tensors: expected cond_stage_model.transformer.* \
                 (SD 1.x), cond_stage_model.model.* (SD 2.x) or conditioner.embedders.0.transformer.* + \
                 conditioner.embedders.1.model.* (SDXL); pass the model's diffusers folder instead"
                    .into(),
            )),
        },
    )
}

/// The components of a single-file checkpoint, in diffusers' names.
pub(crate) struct SingleFile {
    pub unet: WeightMap,
    pub vae: WeightMap,
    /// One map per text encoder, in diffusers' order.
    pub text: Vec<WeightMap>,
}

/// Splits and renames `path`'s tensors for the UNet and VAE of `shape` (the UNet's
/// `layers_per_block`, which up levels have attention, the VAE's levels); `folder` is
/// the config folder and whether it is SDXL's, which the checkpoint's kind must match.
pub(crate) fn load(
    path: &Path,
    folder: (&Path, bool),
    shape: (usize, &[bool], usize),
    dtypes: (Dtype, Dtype),
) -> Result<SingleFile> {
    let (layers_per_block, up_has_attn, vae_levels) = shape;
    let raw = WeightMap::load_safetensors(path)?;
    let kind = kind_of(&raw, path)?;
    if (kind == Kind::Sdxl) != folder.1 {
        return Err(DiffusionError::BadConfig {
            path: path.to_path_buf(),
            reason: format!(
                "this is an {} checkpoint but {} is {} folder; pass the configs of the checkpoint's base model",
                kind.label(),
                folder.0.display(),
                if folder.1 { "an SDXL" } else { "an SD 1.x/2.x" }
            ),
        });
    }
    let (mut unet, mut vae) = (HashMap::new(), HashMap::new());
    let mut text = [HashMap::new(), HashMap::new()];
    for (name, a) in raw.iter() {
        if let Some(k) = name.strip_prefix("model.diffusion_model.") {
            if let Some(d) = unet_name(k, layers_per_block, up_has_attn) {
                unet.insert(d, a.clone());
            }
        } else if let Some(k) = name.strip_prefix("first_stage_model.") {
            if let Some(d) = vae_name(k, vae_levels) {
                // The mid-block attention is stored as 1×1 convs; diffusers' are linear.
                let a = if d.contains("mid_block.attentions") && a.ndim() == 4 {
                    a.squeeze(-1)?.squeeze(-1)?
                } else {
                    a.clone()
                };
                vae.insert(d, a);
            }
        } else if let Some(k) = name
            .strip_prefix("cond_stage_model.transformer.")
            .or_else(|| name.strip_prefix("conditioner.embedders.0.transformer."))
        {
            text[0].insert(k.to_string(), a.clone());
        } else if let Some(k) = name.strip_prefix("cond_stage_model.model.") {
            text[0].extend(open_clip(k, a)?);
        } else if let Some(k) = name.strip_prefix("conditioner.embedders.1.model.") {
            text[1].extend(open_clip(k, a)?);
        }
    }
    let origin = path.display().to_string();
    let build = |m: HashMap<String, Array>, what: &str, dtype: Dtype| -> Result<WeightMap> {
        if m.is_empty() {
            return Err(DiffusionError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("no {what} tensors found; the {} checkpoint is incomplete", kind.label()),
            });
        }
        prepare(m.into_iter(), dtype, &origin)
    };
    let [t0, t1] = text;
    let mut encoders = vec![build(t0, "first text encoder", dtypes.0)?];
    if kind == Kind::Sdxl {
        encoders.push(build(
            t1,
            "second text encoder (conditioner.embedders.1.model.*)",
            dtypes.0,
        )?);
    }
    Ok(SingleFile {
        unet: build(unet, "UNet (model.diffusion_model.*)", dtypes.0)?,
        vae: build(vae, "VAE (first_stage_model.*)", dtypes.1)?,
        text: encoders,
    })
}
