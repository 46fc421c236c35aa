//! Timed text-to-image runs for `cargo xtask bench diffusion` (and the GPU bench,
//! `xtask/bench/gpu/run_diffusion.sh`):
//!
//! `bench_image MODEL_DIR LATENTS.safetensors OUT.safetensors STEPS GUIDANCE SCHEDULER PROMPT NEGATIVE [DTYPE [RUNS]]`
//!
//! Loads the diffusers folder in DTYPE (float32 unless given; float16 or bfloat16 on a GPU),
//! warms up with a one-step run, then generates RUNS times (once unless given) from the
//! `latents` tensor (NCHW, which fixes the size) and writes the image as `image` (H, W, 3)
//! f32. Prints one JSON line a run: seconds for the image, and how they split between the
//! denoising loop (text encoders + UNet steps) and the VAE decode.

use engine_diffusion::{ImagePipeline, ImageRequest, Latents};
use engine_mlx::{Array, Dtype, WeightMap};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if !(8..=10).contains(&a.len()) {
        return Err(
            "usage: bench_image MODEL LATENTS OUT STEPS GUIDANCE SCHEDULER PROMPT NEGATIVE [DTYPE [RUNS]]".into(),
        );
    }
    let dtype = match a.get(8) {
        Some(name) => {
            Dtype::from_name(name).ok_or_else(|| format!("unknown dtype {name}: use float32, float16 or bfloat16"))?
        }
        None => Dtype::Float32,
    };
    let pipe = ImagePipeline::load_with_dtype(&a[0], dtype)?;
    let lat = WeightMap::load_safetensors(&a[1])?;
    let lat = lat.get("latents")?;
    let s = lat.shape();
    let mut req = ImageRequest::new(&a[6]);
    req.negative_prompt = Some(a[7].clone());
    req.steps = a[3].parse()?;
    req.guidance = a[4].parse()?;
    req.scheduler = Some(a[5].clone());
    let f = 8; // the VAE's factor for SD-shaped models
    (req.height, req.width) = (s[2] * f, s[3] * f);
    req.latents = Some(Latents {
        shape: [s[0], s[1], s[2], s[3]],
        data: lat.to_f32_vec()?,
    });

    let warm = ImageRequest {
        steps: 1,
        ..req.clone()
    };
    pipe.generate(&warm)?;

    let runs: usize = a.get(9).map_or(Ok(1), |r| r.parse())?;
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut loop_s = 0.0;
        let img = pipe.generate_with(&req, |p| {
            if p.step == p.steps {
                loop_s = t0.elapsed().as_secs_f64();
            }
            true
        })?;
        let total = t0.elapsed().as_secs_f64();
        let img = &img[0];
        let arr = Array::from_slice(&img.data, &[img.height, img.width, 3])?;
        engine_mlx::save_safetensors(&a[2], &[("image", &arr)], &[])?;
        println!(
            "{}",
            serde_json::json!({"s_per_image": total, "loop_s": loop_s, "vae_s": total - loop_s, "dtype": dtype.name()})
        );
    }
    Ok(())
}
