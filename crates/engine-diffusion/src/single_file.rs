//! Original (CompVis / A1111) single-file SD 1.x checkpoints: one safetensors
//! holding `model.diffusion_model.*`, `first_stage_model.*` and
//! `cond_stage_model.transformer.*`, renamed to diffusers' names as diffusers'
//! `convert_ldm_*_checkpoint` do. The configs come from a diffusers folder.

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

/// The components of a single-file checkpoint, in diffusers' names.
pub(crate) struct SingleFile {
    pub unet: WeightMap,
    pub vae: WeightMap,
    pub text: WeightMap,
}

/// Splits and renames `path`'s tensors for the UNet (`layers_per_block`, which up
/// levels have attention) and a VAE of `vae_levels` levels.
pub(crate) fn load(
    path: &Path,
    layers_per_block: usize,
    up_has_attn: &[bool],
    vae_levels: usize,
    dtypes: (Dtype, Dtype),
) -> Result<SingleFile> {
    let raw = WeightMap::load_safetensors(path)?;
    let unsupported = |what: &str| DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: format!(
            "{what} single-file checkpoints are not supported yet (SD 1.x ones are); use the model's diffusers folder"
        ),
    };
    if raw.names().iter().any(|n| n.starts_with("cond_stage_model.model.")) {
        return Err(unsupported("SD 2.x (OpenCLIP text encoder)"));
    }
    if raw.names().iter().any(|n| n.starts_with("conditioner.")) {
        return Err(unsupported("SDXL"));
    }
    let (mut unet, mut vae, mut text) = (HashMap::new(), HashMap::new(), HashMap::new());
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
        } else if let Some(k) = name.strip_prefix("cond_stage_model.transformer.") {
            text.insert(k.to_string(), a.clone());
        }
    }
    let origin = path.display().to_string();
    let build = |m: HashMap<String, Array>, what: &str, dtype: Dtype| -> Result<WeightMap> {
        if m.is_empty() {
            return Err(DiffusionError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("no {what} tensors found; this is not an SD 1.x checkpoint"),
            });
        }
        prepare(m.into_iter(), dtype, &origin)
    };
    Ok(SingleFile {
        unet: build(unet, "UNet (model.diffusion_model.*)", dtypes.0)?,
        vae: build(vae, "VAE (first_stage_model.*)", dtypes.1)?,
        text: build(text, "text encoder (cond_stage_model.transformer.*)", dtypes.0)?,
    })
}
