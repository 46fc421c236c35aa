//! LoRA and DoRA adapters: mlx-lm's format (`adapter_config.json` + `adapters.safetensors`,
//! `lora_a` (in, r) / `lora_b` (r, out), `lora_parameters.scale`) and PEFT's
//! (`adapter_config.json` + `adapter_model.safetensors`, `lora_A.weight`
//! (r, in) / `lora_B.weight` (out, r), scale `lora_alpha / r`, or
//! `/ √r` with `use_rslora`), read into one form the transformer applies.

use engine_core::{EngineError, Result};
use engine_mlx::quant::{dequantize, quantize, QuantSpec, Quantized};
use engine_mlx::{Array, WeightMap};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One adapted layer: `y = base(x) + scale · (x A) B`.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// Down projection (in, r).
    pub a: Array,
    /// Up projection (r, out).
    pub b: Array,
    /// Scale of the update.
    pub scale: f32,
    /// DoRA's learned magnitude (out,); `None` for plain LoRA.
    pub magnitude: Option<Array>,
}

/// A loaded adapter: its layers keyed by module path
/// (`model.layers.3.self_attn.q_proj`).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The adapted modules.
    pub layers: BTreeMap<String, LoraLayer>,
}

fn bad(dir: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::ModelLoad {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

impl Adapter {
    /// Reads an adapter folder in mlx-lm's or PEFT's format.
    pub fn load(dir: &Path) -> Result<Adapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            bad(
                dir,
                format!("cannot read adapter_config.json ({e}); an adapter folder holds adapter_config.json and adapters.safetensors (mlx-lm) or adapter_model.safetensors (PEFT)"),
            )
        })?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| bad(&cfg_path, format!("adapter_config.json is not valid JSON ({e})")))?;
        let weights_file = |name: &str| -> Result<WeightMap> {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(bad(dir, format!("{name} is missing beside adapter_config.json")));
            }
            WeightMap::load_safetensors(&p).map_err(|e| bad(&p, e.to_string()))
        };
        let mut layers = BTreeMap::new();
        if cfg.get("peft_type").is_some() {
            let kind = cfg["peft_type"].as_str().unwrap_or("");
            if !kind.eq_ignore_ascii_case("lora") {
                return Err(bad(
                    dir,
                    format!("PEFT adapters of type {kind} are not supported; only LoRA"),
                ));
            }
            for key in ["rank_pattern", "alpha_pattern"] {
                if cfg[key].as_object().is_some_and(|m| !m.is_empty()) {
                    return Err(bad(
                        dir,
                        format!("per-module `{key}` in adapter_config.json is not supported yet"),
                    ));
                }
            }
            if cfg["fan_in_fan_out"].as_bool() == Some(true) {
                return Err(bad(
                    dir,
                    "`fan_in_fan_out` adapters (GPT-2 Conv1D layers) are not supported",
                ));
            }
            let r = cfg["r"]
                .as_f64()
                .ok_or_else(|| bad(&cfg_path, "adapter_config.json has no `r`"))?;
            let alpha = cfg["lora_alpha"].as_f64().unwrap_or(r);
            let scale = if cfg["use_rslora"].as_bool() == Some(true) {
                alpha / r.sqrt()
            } else {
                alpha / r
            } as f32;
            let w = weights_file("adapter_model.safetensors")?;
            for name in w.names() {
                let Some(module) = name.strip_suffix(".lora_A.weight") else {
                    continue;
                };
                let b_name = format!("{module}.lora_B.weight");
                let (a, b) = (w.get(name), w.get(&b_name));
                let (a, b) = (
                    a.map_err(|e| bad(dir, e.to_string()))?,
                    b.map_err(|_| bad(dir, format!("`{b_name}` is missing")))?,
                );
                let t = |x: &Array| x.t().map_err(|e| bad(dir, e.to_string()));
                // DoRA's magnitude (PEFT names it with or without `.weight`).
                let magnitude = w
                    .try_get(&format!("{module}.lora_magnitude_vector.weight"))
                    .or_else(|| w.try_get(&format!("{module}.lora_magnitude_vector")))
                    .cloned();
                if cfg["use_dora"].as_bool() == Some(true) && magnitude.is_none() {
                    return Err(bad(
                        dir,
                        format!("a DoRA adapter without `{module}.lora_magnitude_vector`"),
                    ));
                }
                let module = module.strip_prefix("base_model.model.").unwrap_or(module);
                layers.insert(
                    module.to_string(),
                    LoraLayer {
                        a: t(a)?,
                        b: t(b)?,
                        scale,
                        magnitude,
                    },
                );
            }
        } else {
            let kind = cfg["fine_tune_type"].as_str().unwrap_or("lora");
            if kind != "lora" && kind != "dora" {
                return Err(bad(
                    dir,
                    format!("mlx-lm `{kind}` adapters are not supported; only LoRA and DoRA (fine_tune_type \"lora\" or \"dora\")"),
                ));
            }
            let scale = cfg["lora_parameters"]["scale"]
                .as_f64()
                .ok_or_else(|| bad(&cfg_path, "adapter_config.json has no lora_parameters.scale"))?
                as f32;
            let w = weights_file("adapters.safetensors")?;
            for name in w.names() {
                let Some(module) = name.strip_suffix(".lora_a") else {
                    continue;
                };
                let b_name = format!("{module}.lora_b");
                let b = w.get(&b_name).map_err(|_| bad(dir, format!("`{b_name}` is missing")))?;
                let magnitude = w.try_get(&format!("{module}.m")).cloned();
                if kind == "dora" && magnitude.is_none() {
                    return Err(bad(dir, format!("a DoRA adapter without `{module}.m`")));
                }
                layers.insert(
                    module.to_string(),
                    LoraLayer {
                        a: w.get(name).map_err(|e| bad(dir, e.to_string()))?.clone(),
                        b: b.clone(),
                        scale,
                        magnitude,
                    },
                );
            }
        }
        if layers.is_empty() {
            return Err(bad(dir, "the adapter holds no LoRA weights"));
        }
        Ok(Adapter {
            path: dir.to_path_buf(),
            layers,
        })
    }

    /// Folds the adapter into checkpoint-named weights (`{module}.weight`, and
    /// `.scales`/`.biases` when quantized with the setting `spec_of` gives
    /// for the module): `W + scale · (A B)ᵀ`, re-quantized with the layer's
    /// own setting. Shapes are checked as [`crate::Transformer::apply_adapter`] does.
    pub fn fuse_into(&self, w: &mut WeightMap, spec_of: &dyn Fn(&str) -> Option<QuantSpec>) -> Result<()> {
        let be = |e: engine_mlx::Error| EngineError::Backend(e.to_string());
        for (module, l) in &self.layers {
            let name = format!("{module}.weight");
            let Some(weight) = w.try_get(&name).cloned() else {
                return Err(EngineError::InvalidParameter(format!(
                    "{}: the adapter targets `{module}`, which the base model does not have; is it for another base model?",
                    self.path.display()
                )));
            };
            let delta = engine_mlx::nn::lora_delta(&l.a, &l.b, l.scale).map_err(be)?;
            let quantized = match w.try_get(&format!("{module}.scales")) {
                Some(scales) => {
                    let spec = spec_of(module).ok_or_else(|| {
                        EngineError::InvalidParameter(format!(
                            "`{module}` is quantized with settings the config does not give"
                        ))
                    })?;
                    Some(Quantized {
                        weight: weight.clone(),
                        scales: scales.clone(),
                        biases: w.get(&format!("{module}.biases")).map_err(be)?.clone(),
                        spec,
                        int8_kernels: false,
                    })
                }
                None => None,
            };
            let dense = match &quantized {
                Some(q) => dequantize(q).map_err(be)?,
                None => weight,
            };
            if dense.shape() != delta.shape() {
                return Err(EngineError::InvalidParameter(format!(
                    "{}: `{module}` has a weight of shape {:?}, and the adapter's A {:?} and B {:?} make an update of {:?} — it was trained for another base model",
                    self.path.display(),
                    dense.shape(),
                    l.a.shape(),
                    l.b.shape(),
                    delta.shape()
                )));
            }
            let mut fused = dense.add(&delta.astype(dense.dtype()).map_err(be)?).map_err(be)?;
            if let Some(m) = &l.magnitude {
                // DoRA: rows rescaled to the learned magnitude.
                let f = fused.astype(engine_mlx::Dtype::Float32).map_err(be)?;
                let norm = f
                    .square()
                    .and_then(|x| x.sum(&[1], false))
                    .and_then(|x| x.sqrt())
                    .map_err(be)?;
                let gain = m
                    .astype(engine_mlx::Dtype::Float32)
                    .and_then(|m| m.divide(&norm))
                    .map_err(be)?;
                fused = f
                    .multiply(&gain.expand_dims(1).map_err(be)?)
                    .and_then(|x| x.astype(dense.dtype()))
                    .map_err(be)?;
            }
            match quantized {
                Some(q) => {
                    let r = quantize(&fused, q.spec).map_err(be)?;
                    w.insert(name, r.weight);
                    w.insert(
                        format!("{module}.scales"),
                        r.scales.astype(q.scales.dtype()).map_err(be)?,
                    );
                    w.insert(
                        format!("{module}.biases"),
                        r.biases.astype(q.biases.dtype()).map_err(be)?,
                    );
                }
                None => w.insert(name, fused),
            }
        }
        Ok(())
    }
}
