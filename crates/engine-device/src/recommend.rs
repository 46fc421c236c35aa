//! Ranking the catalogue for a device, and picking a variant at load time.

use crate::budget::{format_size, MemoryBudget};
use crate::device::DeviceReport;
use crate::error::{DeviceError, NotFit, Result};
use crate::estimate::{estimate_with, EstimateOptions, MemoryEstimate, RankSplit};
use crate::registry::{ModelEntry, Registry, Variant, WeightFormat};
use engine_core::{FeatureFlag, ModelType};
use engine_mlx::Backend;
use serde::{Deserialize, Serialize};

/// What the model is wanted for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purpose {
    /// Context (prompt + answer) to plan the KV cache for; `None` takes [`default_context`].
    pub context_len: Option<u64>,
    /// Capabilities the model must have (e.g. `tool_use`).
    pub required: Vec<FeatureFlag>,
    /// The model will be split across processes (`mlxengine launch`): the budget is one
    /// rank's and each estimate that rank's share.
    #[serde(default)]
    pub split: Option<RankSplit>,
}

/// The context planned for when none is asked for: 4096 tokens for chat models, 512 for
/// encoders, capped by the model's own context.
pub fn default_context(t: ModelType) -> u64 {
    match t {
        ModelType::Llm | ModelType::Vlm => 4096,
        ModelType::Embedding => 512,
        ModelType::Diffusion => 77,
    }
}

/// How the weights are computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputePath {
    /// As stored: 16/32-bit matmuls, or MLX's quantized kernels for quantized weights.
    Native,
    /// Dequantized/upcast to f32 at load so the CPU's matmuls run in OpenBLAS.
    F32,
    /// On the CPU, 4-, 5- and 8-bit weights kept quantized for the engine's int8 CPU
    /// kernels (engine-llm's default there), the rest f32.
    CpuKernels,
}

/// A model variant chosen for this device, with its estimate and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Registry id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Chosen variant.
    pub variant: String,
    /// Hugging Face repository of the variant.
    pub repo: String,
    /// Revision to download.
    pub revision: String,
    /// File within the repo (GGUF), if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Download size in bytes.
    pub download_bytes: u64,
    /// Estimated peak memory in bytes (`estimate.total_bytes`).
    pub estimated_memory_bytes: u64,
    /// The estimate by part.
    pub estimate: MemoryEstimate,
    /// The budget the estimate was checked against.
    pub budget_bytes: u64,
    /// Context the estimate plans for.
    pub context_len: u64,
    /// How the weights will be computed with.
    pub compute: ComputePath,
    /// Why this entry and variant, in one line.
    pub reason: String,
}

/// The model picked at load time (see [`Registry::select_variant`]).
pub type Selection = Recommendation;

/// `mlxengine recommend`'s answer: the ranked list, best first, or why it is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendReport {
    /// Backend the ranking is for.
    pub backend: String,
    /// Model type asked for.
    #[serde(rename = "type")]
    pub model_type: ModelType,
    /// Memory budget in bytes.
    pub budget_bytes: u64,
    /// Context asked for (`None`: each model's default).
    pub context_len: Option<u64>,
    /// Entries that fit, best first.
    pub recommendations: Vec<Recommendation>,
    /// Why the list is empty (or shorter than the catalogue), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

struct Candidate<'a> {
    variant: &'a Variant,
    path: ComputePath,
    estimate: MemoryEstimate,
    why: &'static str,
}

/// Variants of `entry` in this device's order of preference, each with its estimate.
fn ranked_variants<'a>(
    device: &DeviceReport,
    entry: &'a ModelEntry,
    ctx: u64,
    split: Option<RankSplit>,
) -> Vec<Candidate<'a>> {
    let openblas = device.blas == "openblas";
    let gpu_opts = EstimateOptions {
        split,
        ..EstimateOptions::new(ctx)
    };
    let f32_opts = EstimateOptions {
        split,
        ..EstimateOptions::f32(ctx)
    };
    let cpu_opts = EstimateOptions {
        split,
        ..EstimateOptions::cpu(ctx)
    };
    let mut out: Vec<(u32, Candidate<'a>)> = Vec::new();
    for v in &entry.variants {
        // GGUF files load into the same MLX kernels as MLX's own quantization; prefer the
        // MLX layout at equal bits (no conversion at load).
        let gguf = u32::from(v.format == WeightFormat::Gguf);
        let native = |why| Candidate {
            variant: v,
            path: ComputePath::Native,
            estimate: estimate_with(entry, v, &gpu_opts),
            why,
        };
        match device.backend_kind() {
            Backend::Cuda => {
                let rank = match v.bits {
                    16 => 0,
                    32 => 1,
                    8 => 2,
                    _ => 3,
                };
                out.push((rank * 2 + gguf, native(
                    "on CUDA, MLX's bf16 matmuls decode faster than its quantized kernels (8B on H100: 153 vs 124 tok/s)",
                )));
            }
            Backend::Metal => {
                let rank = match v.bits {
                    4 => 0,
                    8 => 1,
                    16 => 2,
                    _ => 3,
                };
                out.push((rank * 2 + gguf, native(
                    "on Apple unified memory decoding is bandwidth-bound, so the fewest bits per weight run fastest",
                )));
            }
            Backend::Cpu if openblas => {
                if v.bits == 32 {
                    out.push((
                        2,
                        native("f32 weights run through OpenBLAS, the fastest measured CPU path"),
                    ));
                } else {
                    let rank = match v.bits {
                        16 => 0,
                        8 => 4,
                        _ => 6,
                    };
                    if matches!(v.bits, 4 | 5 | 8) || (v.format == WeightFormat::Gguf && v.bits < 16) {
                        // What engine-llm's CPU default does with them (GGUF's other
                        // quantized types load as 8-bit): the int8 kernels read the packed
                        // weights, the embedding table becomes f32.
                        out.push((rank + gguf, Candidate {
                            variant: v,
                            path: ComputePath::CpuKernels,
                            estimate: estimate_with(entry, v, &cpu_opts),
                            why: "kept quantized for the engine's int8 CPU kernels (SmolLM2 Q4_1 decodes ~2x faster than as f32 through OpenBLAS)",
                        }));
                    } else {
                        out.push((rank + gguf, Candidate {
                            variant: v,
                            path: ComputePath::F32,
                            estimate: estimate_with(entry, v, &f32_opts),
                            why: "upcast to f32 at load, its matmuls run through OpenBLAS, the fastest measured CPU path (20-30x the reference BLAS)",
                        }));
                    }
                    let rank = match v.bits {
                        8 => 8,
                        4 => 10,
                        _ => 12,
                    };
                    out.push((
                        rank + gguf,
                        native("as stored (`--dtype native`): the CPU default's f32 copies do not fit the budget"),
                    ));
                }
            }
            Backend::Cpu => {
                let rank = match v.bits {
                    4 => 0,
                    8 => 1,
                    16 => 2,
                    _ => 3,
                };
                out.push((
                    rank * 2 + gguf,
                    native("without OpenBLAS, quantized kernels avoid the slow reference BLAS"),
                ));
            }
        }
    }
    out.sort_by_key(|(rank, c)| (*rank, c.estimate.total_bytes));
    out.into_iter().map(|(_, c)| c).collect()
}

fn recommendation(entry: &ModelEntry, c: &Candidate<'_>, budget: u64, ctx: u64, mut reason: String) -> Recommendation {
    if entry.gated {
        reason.push_str("; gated: accept its license on Hugging Face and set HF_TOKEN");
    }
    Recommendation {
        id: entry.id.clone(),
        name: entry.name.clone(),
        variant: c.variant.name.clone(),
        repo: c.variant.repo.clone(),
        revision: c.variant.revision.clone(),
        file: c.variant.file.clone(),
        download_bytes: c.variant.file_size_bytes,
        estimated_memory_bytes: c.estimate.total_bytes,
        estimate: c.estimate,
        budget_bytes: budget,
        context_len: ctx,
        compute: c.path,
        reason,
    }
}

fn fit_reason(c: &Candidate<'_>, first_choice: Option<&Candidate<'_>>, budget: u64) -> String {
    let mut s = format!(
        "{}: {} of {} budget; {}",
        c.variant.name,
        format_size(c.estimate.total_bytes),
        format_size(budget),
        c.why
    );
    if let Some(f) = first_choice {
        s.push_str(&format!(
            " ({}{} would need {})",
            f.variant.name,
            if f.path == ComputePath::F32 { " as f32" } else { "" },
            format_size(f.estimate.total_bytes)
        ));
    }
    s
}

/// How good an entry is expected to be, for ranking: bigger models answer better; quantization
/// costs a little.
fn quality(entry: &ModelEntry, v: &Variant) -> f64 {
    let penalty = match v.bits {
        4 => 0.15,
        8 => 0.02,
        _ => 0.0,
    };
    (entry.params as f64).ln() - penalty
}

impl Registry {
    /// Entries of `model_type` that fit `budget` on `device`, best first, each in its best
    /// variant for this backend, with a one-line reason.
    pub fn recommend(
        &self,
        device: &DeviceReport,
        model_type: ModelType,
        purpose: &Purpose,
        budget: &MemoryBudget,
    ) -> RecommendReport {
        let budget_bytes = budget.bytes(device);
        let mut picks: Vec<(f64, Recommendation)> = Vec::new();
        let (mut total, mut too_short, mut lacking) = (0, 0, 0);
        let mut smallest: Option<(u64, String)> = None;
        for entry in self.of_type(model_type) {
            total += 1;
            if !purpose.required.iter().all(|c| entry.capabilities.contains(c)) {
                lacking += 1;
                continue;
            }
            let ctx = match purpose.context_len {
                Some(c) if c > entry.context_length => {
                    too_short += 1;
                    continue;
                }
                Some(c) => c,
                None => default_context(model_type).min(entry.context_length),
            };
            let ranked = ranked_variants(device, entry, ctx, purpose.split);
            for c in &ranked {
                if smallest.as_ref().is_none_or(|(b, _)| c.estimate.total_bytes < *b) {
                    smallest = Some((c.estimate.total_bytes, format!("{} {}", entry.id, c.variant.name)));
                }
            }
            if let Some(i) = ranked.iter().position(|c| c.estimate.total_bytes <= budget_bytes) {
                let c = &ranked[i];
                let reason = fit_reason(c, (i > 0).then(|| &ranked[0]), budget_bytes);
                picks.push((
                    quality(entry, c.variant),
                    recommendation(entry, c, budget_bytes, ctx, reason),
                ));
            }
        }
        picks.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.estimated_memory_bytes.cmp(&b.1.estimated_memory_bytes))
        });
        let note = if total == 0 {
            Some(DeviceError::EmptyType(model_type).to_string())
        } else if picks.is_empty() {
            let mut n = format!(
                "nothing of type {model_type} fits the memory budget of {}",
                format_size(budget_bytes)
            );
            if let Some((b, what)) = &smallest {
                n.push_str(&format!("; the smallest is {what} at {}", format_size(*b)));
            }
            if too_short > 0 {
                n.push_str(&format!("; {too_short} models have a shorter context than asked"));
            }
            if lacking > 0 {
                n.push_str(&format!("; {lacking} models lack the required capabilities"));
            }
            n.push_str("; raise --memory, shorten --context or drop capability filters");
            Some(n)
        } else {
            None
        };
        RecommendReport {
            backend: device.backend.clone(),
            model_type,
            budget_bytes,
            context_len: purpose.context_len,
            recommendations: picks.into_iter().map(|(_, r)| r).collect(),
            note,
        }
    }

    /// The variant of `id` to load on `device`: `variant` when given, else the best that fits
    /// the context and split of `purpose` (its required capabilities are not checked here).
    ///
    /// Fails before any download when nothing fits, with the estimate and the budget.
    pub fn select_variant(
        &self,
        id: &str,
        variant: Option<&str>,
        device: &DeviceReport,
        budget: &MemoryBudget,
        purpose: &Purpose,
    ) -> Result<Selection> {
        let entry = self.lookup(id)?;
        let budget_bytes = budget.bytes(device);
        let ctx = purpose
            .context_len
            .unwrap_or_else(|| default_context(entry.model_type))
            .min(entry.context_length);
        let ranked = ranked_variants(device, entry, ctx, purpose.split);
        let candidates: Vec<&Candidate<'_>> = match variant {
            Some(name) => {
                let v = entry.variant(name)?;
                ranked.iter().filter(|c| c.variant.name == v.name).collect()
            }
            None => ranked.iter().collect(),
        };
        if let Some(c) = candidates.iter().find(|c| c.estimate.total_bytes <= budget_bytes) {
            let reason = match variant {
                Some(_) => format!(
                    "{} as asked: {} of {} budget",
                    c.variant.name,
                    format_size(c.estimate.total_bytes),
                    format_size(budget_bytes)
                ),
                None => {
                    let first = ranked.first().filter(|f| !std::ptr::eq(*f, *c));
                    fit_reason(c, first, budget_bytes)
                }
            };
            return Ok(recommendation(entry, c, budget_bytes, ctx, reason));
        }
        // Report the smallest way to run what was asked for, and a variant that would fit.
        let tightest = candidates
            .iter()
            .min_by_key(|c| c.estimate.total_bytes)
            .ok_or_else(|| DeviceError::InvalidRegistry(format!("`{}` has no variants", entry.id)))?;
        let fits_instead = ranked
            .iter()
            .find(|c| c.estimate.total_bytes <= budget_bytes)
            .map(|c| (c.variant.name.clone(), c.estimate.total_bytes));
        Err(DeviceError::DoesNotFit(Box::new(NotFit {
            id: entry.id.clone(),
            variant: tightest.variant.name.clone(),
            estimate: tightest.estimate,
            budget_bytes,
            context_len: ctx,
            fits_instead,
        })))
    }
}

/// [`Registry::recommend`] over the built-in catalogue.
pub fn recommend(
    device: &DeviceReport,
    model_type: ModelType,
    purpose: &Purpose,
    budget: &MemoryBudget,
) -> RecommendReport {
    Registry::builtin().recommend(device, model_type, purpose, budget)
}

/// [`Registry::select_variant`] over the built-in catalogue.
pub fn select_variant(
    id: &str,
    variant: Option<&str>,
    device: &DeviceReport,
    budget: &MemoryBudget,
    purpose: &Purpose,
) -> Result<Selection> {
    Registry::builtin().select_variant(id, variant, device, budget, purpose)
}
