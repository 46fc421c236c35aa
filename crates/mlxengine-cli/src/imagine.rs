//! `mlxengine imagine`: text-to-image and img2img with a diffusion pipeline,
//! written as PNG / JPEG / WebP (8-bit, rounded as diffusers' `numpy_to_pil`)
//! or `.npy` (the float32 pixels, for comparisons).
//!
//! Every argument is checked before the model loads, so a typo fails at once;
//! what depends on the model (its size unit, latent channels) is checked by
//! the pipeline and fails before the first step.

use super::{exit_interrupted, progress_reporter, Interrupt};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mlxengine::mlx::{Dtype, WeightMap};
use mlxengine::{DiffusionError, ImageF32, ImageRequest, InferenceEngine, Latents, SchedulerKind};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The CLI's scheduler spellings and engine-diffusion's names for them.
const SCHEDULERS: &[(&str, &str)] = &[
    ("ddim", "ddim"),
    ("euler", "euler"),
    ("euler-a", "euler_a"),
    ("dpm++2m", "dpmpp_2m"),
    ("dpm++2m-karras", "dpmpp_2m_karras"),
    ("lcm", "lcm"),
    ("pndm", "pndm"),
];

#[derive(Args)]
pub(crate) struct ImagineArgs {
    /// Model: a diffusers folder (model_index.json, unet/, vae/, ...), registry id or Hugging Face repo.
    model: String,
    /// What to draw.
    prompt: String,
    /// Output: .png, .jpg, .webp (numbered NAME-1.png, ... with -n > 1) or .npy
    /// (float32 (H, W, 3) in [0, 1]; (N, H, W, 3) with -n > 1).
    #[arg(short, long)]
    output: PathBuf,
    /// What to steer away from.
    #[arg(long)]
    negative: Option<String>,
    /// Denoising steps (img2img runs steps × strength of them).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    guidance: f32,
    /// Image size WxH, multiples of 8 (default 512x512, 1024x1024 for SDXL; fixed by --latents or --init-image).
    #[arg(long)]
    size: Option<String>,
    /// Seed of the initial noise (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Sampler: ddim, euler, euler-a, dpm++2m, dpm++2m-karras, lcm, pndm (default: the model's own).
    #[arg(long)]
    scheduler: Option<String>,
    /// Initial noise: a safetensors file holding a tensor `latents` of shape
    /// (N, 4, H/8, W/8) (diffusers' NCHW layout); it fixes the size and N.
    #[arg(long)]
    latents: Option<PathBuf>,
    /// img2img: the starting image (PNG, JPEG, WebP); its size is the output's.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// img2img: how much of the schedule to run, in (0, 1] (default 0.8).
    #[arg(long, allow_negative_numbers = true)]
    strength: Option<f32>,
    /// Images to make.
    #[arg(short = 'n', long = "num-images")]
    n: Option<usize>,
}

/// What `-o` writes, from its extension.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Png,
    Jpeg,
    Webp,
    Npy,
}

fn output_format(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let format = match ext.as_str() {
        "png" => Format::Png,
        "jpg" | "jpeg" => Format::Jpeg,
        "webp" => Format::Webp,
        "npy" => Format::Npy,
        "" => bail!(
            "-o {}: no file extension; end it in .png, .jpg, .webp or .npy",
            path.display()
        ),
        other => bail!(
            "-o {}: unknown output extension `.{other}`; use .png, .jpg, .webp or .npy",
            path.display()
        ),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("-o {}: the folder {} does not exist", path.display(), dir.display());
        }
    }
    Ok(format)
}

/// `WxH` (or `W×H`), each a multiple of 8.
fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--size {s}: expected WIDTHxHEIGHT, e.g. 512x512");
    let (w, h) = s.split_once(['x', 'X', '×']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 || !w.is_multiple_of(8) || !h.is_multiple_of(8) {
        bail!("--size {w}x{h}: width and height must be positive multiples of 8 (the VAE's factor)");
    }
    Ok((w, h))
}

/// A CLI spelling or one of engine-diffusion's names → engine-diffusion's name.
fn scheduler_name(s: &str) -> Result<String> {
    let lower = s.to_ascii_lowercase();
    let name = SCHEDULERS
        .iter()
        .find(|(cli, _)| *cli == lower)
        .map(|(_, name)| name.to_string())
        .unwrap_or(lower);
    if SchedulerKind::from_name(&name).is_err() {
        let cli: Vec<&str> = SCHEDULERS.iter().map(|(c, _)| *c).collect();
        bail!(
            "unknown --scheduler `{s}`; use {} (or {})",
            cli.join(", "),
            SchedulerKind::NAMES.join(", ")
        );
    }
    Ok(name)
}

/// The `latents` tensor of a safetensors file, NCHW.
fn read_latents(path: &Path) -> Result<Latents> {
    let w = WeightMap::load_safetensors(path).with_context(|| format!("--latents {}", path.display()))?;
    let Ok(a) = w.get("latents") else {
        bail!(
            "--latents {}: no tensor named `latents` (it holds {:?}); save the initial noise as `latents`",
            path.display(),
            w.names()
        );
    };
    let s = a.shape();
    if s.len() != 4 || s.contains(&0) {
        bail!(
            "--latents {}: `latents` has shape {s:?}, but (N, 4, H/8, W/8) is needed (diffusers' NCHW layout)",
            path.display()
        );
    }
    let data = a.astype(Dtype::Float32)?.to_f32_vec()?;
    Ok(Latents {
        shape: [s[0], s[1], s[2], s[3]],
        data,
    })
}

fn read_image(path: &Path) -> Result<ImageF32> {
    let img = image::open(path)
        .with_context(|| {
            format!(
                "--init-image {}: cannot read it as an image (PNG, JPEG or WebP)",
                path.display()
            )
        })?
        .to_rgb8();
    Ok(ImageF32 {
        width: img.width() as usize,
        height: img.height() as usize,
        // As diffusers: `np.array(pil).astype(np.float32) / 255.0`.
        data: img.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
    })
}

/// 8-bit RGB as diffusers' `numpy_to_pil`: `(x * 255).round()` (NumPy rounds half to even).
fn to_rgb8(img: &ImageF32) -> Result<image::RgbImage> {
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.to_rgb8())
        .context("the generated image has the wrong number of values")
}

/// A version 1.0 `.npy` file of little-endian float32.
fn write_npy(path: &Path, shape: &[usize], values: impl Iterator<Item = f32>) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// `out.png` for one image; `out-1.png`, `out-2.png`, ... for several.
fn numbered(path: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}-{}.{ext}", i + 1))
}

fn write_images(path: &Path, format: Format, images: &[ImageF32]) -> Result<Vec<PathBuf>> {
    if format == Format::Npy {
        let (h, w) = (images[0].height, images[0].width);
        let shape: Vec<usize> = match images.len() {
            1 => vec![h, w, 3],
            n => vec![n, h, w, 3],
        };
        write_npy(path, &shape, images.iter().flat_map(|i| i.data.iter().copied()))?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut written = vec![];
    for (i, img) in images.iter().enumerate() {
        let p = numbered(path, i, images.len());
        let rgb = to_rgb8(img)?;
        let file = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        let mut file = std::io::BufWriter::new(file);
        match format {
            Format::Jpeg => rgb.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 95)),
            Format::Webp => rgb.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut file)),
            _ => rgb.write_with_encoder(image::codecs::png::PngEncoder::new(&mut file)),
        }
        .with_context(|| format!("encoding {}", p.display()))?;
        file.flush().with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

pub(crate) fn imagine(args: ImagineArgs) -> Result<()> {
    // Everything checkable without the model fails here, before any load.
    let format = output_format(&args.output)?;
    let size = args.size.as_deref().map(parse_size).transpose()?;
    if args.steps == 0 {
        bail!("--steps 0: at least one denoising step is needed (20-50 is usual, 4 for LCM)");
    }
    if !args.guidance.is_finite() || args.guidance < 0.0 {
        bail!(
            "--guidance {}: must be a finite number ≥ 0 (7.5 is usual)",
            args.guidance
        );
    }
    if args.n == Some(0) {
        bail!("-n 0: ask for at least one image");
    }
    let scheduler = args.scheduler.as_deref().map(scheduler_name).transpose()?;
    let init_image = args.init_image.as_deref().map(read_image).transpose()?;
    let strength = match (args.strength, &init_image) {
        (Some(_), None) => bail!("--strength applies to img2img only; give --init-image FILE too"),
        (Some(s), Some(_)) if !(s > 0.0 && s <= 1.0) => {
            bail!("--strength {s}: must be in (0, 1] (1 redraws everything, 0.6 keeps much of the image)")
        }
        (s, _) => s.unwrap_or(0.8),
    };
    let latents = args.latents.as_deref().map(read_latents).transpose()?;
    let n = match (&latents, args.n) {
        (Some(l), Some(n)) if l.shape[0] != n => bail!(
            "-n {n} but --latents holds {} image(s) (shape {:?}); drop -n or give matching latents",
            l.shape[0],
            l.shape
        ),
        (Some(l), _) => l.shape[0],
        (None, n) => n.unwrap_or(1),
    };

    let engine = InferenceEngine::new()?;
    let interrupt = Interrupt::install(engine.cancel_flag())?;
    let (bar, report) = progress_reporter();
    let mut report = interrupt.track(report);
    let pipe = match engine.load_image_generator(&args.model, &mut report) {
        Err(mlxengine::Error::Hub(engine_hub::HubError::Cancelled { partial })) => {
            bar.finish_and_clear();
            exit_interrupted(partial.as_deref(), "the same command again")
        }
        other => {
            bar.finish_and_clear();
            other.with_context(|| format!("cannot load `{}` as an image-generation pipeline", args.model))?
        }
    };

    let f = pipe.vae().scale_factor();
    let default = if pipe.is_sdxl() { 1024 } else { 512 };
    let fixed = match (&latents, &init_image) {
        (Some(l), _) => Some(("--latents", l.shape[3] * f, l.shape[2] * f)),
        (None, Some(img)) => Some(("--init-image", img.width, img.height)),
        (None, None) => None,
    };
    let (width, height) = match (fixed, size) {
        (Some((what, w, h)), Some((sw, sh))) if (w, h) != (sw, sh) => {
            bail!("--size {sw}x{sh} does not match {what}, which is {w}x{h}; drop --size or make them agree")
        }
        (Some((_, w, h)), _) => (w, h),
        (None, Some(s)) => s,
        (None, None) => (default, default),
    };
    let seed = args.seed.unwrap_or_else(|| {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        if latents.is_none() {
            eprintln!("seed {s} (pass --seed {s} to repeat this image)");
        }
        s
    });
    let mut req = ImageRequest::new(args.prompt);
    req.negative_prompt = args.negative;
    req.width = width;
    req.height = height;
    req.steps = args.steps;
    req.guidance = args.guidance;
    req.seed = seed;
    req.latents = latents;
    req.init_image = init_image;
    req.strength = strength;
    req.n = n;
    req.scheduler = scheduler;

    let steps = ProgressBar::new(args.steps as u64);
    steps.set_style(
        ProgressStyle::with_template("{msg:10} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    steps.set_message("denoising");
    // Ctrl-C now stops at the end of the step being computed (a second one exits at once).
    let stop = interrupt.answering();
    let result = pipe.generate_with(&req, |p| {
        steps.set_length(p.steps as u64);
        steps.set_position(p.step as u64);
        !stop.load(std::sync::atomic::Ordering::SeqCst)
    });
    steps.finish_and_clear();
    let images = match result {
        Err(DiffusionError::Cancelled { step, steps }) => {
            eprintln!("error: interrupted at step {step} of {steps}; no image was written");
            std::process::exit(130);
        }
        other => other?,
    };
    interrupt.idle();
    for p in write_images(&args.output, format, &images)? {
        println!("{}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_npy(&p, &[2, 3], [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].into_iter()).unwrap();
        let b = std::fs::read(&p).unwrap();
        let len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'), "{header}");
        assert_eq!(b.len(), 10 + len + 6 * 4);
    }

    #[test]
    fn sizes_and_schedulers_parse() {
        assert_eq!(parse_size("512x768").unwrap(), (512, 768));
        assert!(parse_size("60x64").is_err() && parse_size("64").is_err() && parse_size("0x8").is_err());
        assert_eq!(scheduler_name("dpm++2m-karras").unwrap(), "dpmpp_2m_karras");
        assert_eq!(scheduler_name("euler_a").unwrap(), "euler_a");
        assert!(scheduler_name("heun").is_err());
        let img = ImageF32 {
            width: 1,
            height: 1,
            data: vec![0.0, 0.5, 1.0],
        };
        assert_eq!(to_rgb8(&img).unwrap().as_raw(), &[0, 128, 255]);
    }
}
