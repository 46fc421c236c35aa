//! `mlxengine convert SRC OUT`: a model folder, GGUF file or repo id written
//! as an MLX folder that mlx-lm loads (config.json with its `quantization`
//! block, sharded safetensors, tokenizer and template files), optionally cast
//! (`--dtype`), quantized (`--quantize`, as `mlx_lm.convert -q`) or with LoRA
//! adapters fused in (`--adapter`, as `mlx_lm.fuse`).

use super::{parse_quantize, progress_reporter, Interrupt};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressStyle;
use mlxengine::export::{convert as write_mlx, ConvertOptions};
use mlxengine::{InferenceEngine, ModelType};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ConvertArgs {
    /// Source: a model folder, a .gguf file, a registry id or a Hugging Face repo.
    src: String,
    /// Output folder (must not exist, or be empty).
    out: PathBuf,
    /// Dense weights as f32, bf16 or f16 (default: as stored).
    #[arg(long)]
    dtype: Option<String>,
    /// Quantize the linear layers and embeddings to this many bits (4 or 8).
    #[arg(long, short = 'q', value_name = "BITS")]
    quantize: Option<i32>,
    /// Elements per quantization group with --quantize (32, 64 or 128).
    #[arg(long, default_value_t = 64, requires = "quantize")]
    group_size: i32,
    /// A LoRA adapter folder (mlx-lm or PEFT format) to fuse into the weights; repeatable.
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
}

pub(crate) fn convert(args: ConvertArgs) -> Result<()> {
    let dtype = match args.dtype.as_deref() {
        None => None,
        Some(s) => match mlxengine::mlx::Dtype::from_name(s) {
            Some(d) if d.is_float() => Some(d),
            _ => bail!("unknown --dtype `{s}`; use f32, bf16 or f16"),
        },
    };
    let opts = ConvertOptions {
        dtype,
        quantize: parse_quantize(args.quantize, args.group_size)?,
        adapters: args.adapter.clone(),
    };
    if args.out.exists() && std::fs::read_dir(&args.out).map_or(true, |mut d| d.next().is_some()) {
        bail!(
            "{} already exists; pick a new output folder or remove it first",
            args.out.display()
        );
    }
    let engine = InferenceEngine::new()?;
    let interrupt = Interrupt::install(engine.cancel_flag())?;
    let (bar, report) = progress_reporter();
    let mut report = interrupt.track(report);
    let src = engine.resolve(&args.src, ModelType::Llm, &mut report)?;
    bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
    write_mlx(&src, &args.out, &opts, &mut |stage, f| {
        bar.set_message(format!("converting: {stage} ({:.0}%)", f * 100.0))
    })?;
    bar.finish_and_clear();
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
