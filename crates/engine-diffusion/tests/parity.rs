//! Parity with diffusers 0.42.1 on tiny random pipelines in the real folder layout.
//! Fixtures: `tests/fixtures/{sd1,sd2,sdxl,lcm}/`, made by `cargo xtask torch-fixtures`
//! (xtask/parity/make_tiny_diffusion.py, then make_single_files.py for the sd2/sdxl single
//! files); each expected.json names its command.

use engine_diffusion::{ImageF32, ImagePipeline, ImageRequest, Latents, SchedulerConfig, SchedulerKind};
use engine_mlx::{Array, WeightMap};
use serde_json::Value;
use std::path::PathBuf;

const TOL: f32 = 2e-3;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Fixture {
    pipe: ImagePipeline,
    expected: Value,
    refs: WeightMap,
    inputs: WeightMap,
}

fn fixture(name: &str) -> Fixture {
    let d = dir(name);
    Fixture {
        pipe: ImagePipeline::load(&d).expect("pipeline loads"),
        expected: serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap(),
        refs: WeightMap::load_safetensors(d.join("refs.safetensors")).unwrap(),
        inputs: WeightMap::load_safetensors(d.join("latents.safetensors")).unwrap(),
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn values(a: &Array) -> Vec<f32> {
    a.to_f32_vec().unwrap()
}

/// NCHW reference → NHWC values.
fn nhwc(a: &Array) -> Vec<f32> {
    values(&a.transpose(&[0, 2, 3, 1]).unwrap())
}

fn latents(f: &Fixture, name: &str) -> Latents {
    let a = f.inputs.get(name).unwrap();
    let s = a.shape();
    Latents {
        shape: [s[0], s[1], s[2], s[3]],
        data: values(a),
    }
}

fn request(f: &Fixture, case: &Value) -> ImageRequest {
    let e = &f.expected;
    let mut r = ImageRequest::new(e["prompt"].as_str().unwrap());
    r.negative_prompt = Some(e["negative_prompt"].as_str().unwrap().to_string());
    if case.get("no_negative").is_some() {
        r.negative_prompt = None;
    }
    r.width = e["width"].as_u64().unwrap() as usize;
    r.height = e["height"].as_u64().unwrap() as usize;
    r.steps = e["steps"].as_u64().unwrap() as usize;
    r.guidance = e["guidance"].as_f64().unwrap() as f32;
    r.scheduler = Some(case["scheduler"].as_str().unwrap().to_string());
    r.latents = Some(latents(f, "latents"));
    if matches!(r.scheduler.as_deref(), Some("euler_a" | "lcm")) {
        let all = values(f.inputs.get("step_noise").unwrap());
        let per = all.len() / r.steps;
        r.step_noise = Some(
            all.chunks(per)
                .map(|c| Latents {
                    shape: [1, 4, 8, 8],
                    data: c.to_vec(),
                })
                .collect(),
        );
    }
    r.clip_skip = case
        .pointer("/kwargs/clip_skip")
        .and_then(Value::as_u64)
        .map(|k| k as usize);
    if let Some(s) = case.get("strength") {
        r.strength = s.as_f64().unwrap() as f32;
        r.latents = Some(latents(f, "img2img_noise"));
        let img = f.inputs.get("init_image").unwrap();
        r.init_image = Some(ImageF32 {
            width: img.dim(1),
            height: img.dim(0),
            data: values(img),
        });
    }
    r
}

/// The folder's scheduler config with a case's overrides (as diffusers' `from_config(cfg, **over)`).
fn scheduler_config(name: &str, case: &Value) -> SchedulerConfig {
    let path = dir(name).join("scheduler/scheduler_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    if let Some(Value::Object(over)) = case.get("scheduler_overrides") {
        for (k, v) in over {
            cfg[k] = v.clone();
        }
    }
    serde_json::from_value(cfg).unwrap()
}

/// diffusers' `set_timesteps` results, recorded per case.
fn check_timesteps(name: &str) {
    let f = fixture(name);
    for case in f.expected["cases"].as_array().unwrap() {
        let Some(want) = case.get("timesteps") else { continue };
        if case.get("strength").is_some() {
            continue; // img2img records the full schedule; it starts part-way.
        }
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let kind = SchedulerKind::from_name(case["scheduler"].as_str().unwrap()).unwrap();
        let got = kind.timesteps(&scheduler_config(name, case), 4).unwrap();
        assert_eq!(got, want, "{name}/{}", case["name"]);
    }
}

#[test]
fn timesteps_match_diffusers() {
    check_timesteps("sd1");
    check_timesteps("sd2");
    check_timesteps("sdxl");
    check_timesteps("lcm");
}

fn check_images(name: &str) {
    check_images_of(name, name, fixture(name), None);
}

/// Every case of the fixture, or the `only` ones, against `f.refs`' `image.<case>`.
fn check_images_of(name: &str, label: &str, mut f: Fixture, only: Option<&[&str]>) {
    let mut failed = vec![];
    for case in f.expected["cases"].clone().as_array().unwrap() {
        let cname = case["name"].as_str().unwrap();
        if only.is_some_and(|o| !o.contains(&cname)) {
            continue;
        }
        f.pipe.set_scheduler_config(scheduler_config(name, case));
        let img = f.pipe.generate(&request(&f, case)).unwrap();
        let want = values(f.refs.get(&format!("image.{cname}")).unwrap());
        let d = max_abs(&img[0].data, &want);
        eprintln!("{label}/{cname}: image max abs diff {d:.2e}");
        if d > TOL {
            failed.push(format!("{cname}: {d}"));
        }
    }
    assert!(failed.is_empty(), "{label}: max abs diff over {TOL}: {failed:?}");
}

#[test]
fn clip_tokenizers_match_transformers() {
    check_tokens("sd1"); // pads with <|endoftext|>
    check_tokens("sd2"); // pads with `!` (OpenCLIP)
}

fn check_tokens(name: &str) {
    let f = fixture(name);
    let (tok, _) = &f.pipe.text_encoders()[0];
    let ids = |k: &str| -> Vec<u32> {
        f.expected[k][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    assert_eq!(
        tok.encode(f.expected["prompt"].as_str().unwrap()).unwrap(),
        ids("input_ids")
    );
    assert_eq!(
        tok.encode(f.expected["negative_prompt"].as_str().unwrap()).unwrap(),
        ids("negative_input_ids")
    );
}

#[test]
fn sd_components_match_diffusers() {
    check_sd_components("sd1");
    check_sd_components("sd2");
}

fn check_sd_components(name: &str) {
    let f = fixture(name);
    let (hidden, pooled) = f.pipe.encode_prompt(f.expected["prompt"].as_str().unwrap()).unwrap();
    assert!(pooled.is_none());
    let d = max_abs(&values(&hidden), &values(f.refs.get("text.0.hidden").unwrap()));
    eprintln!("{name} text encoder: max abs diff {d:.2e}");
    assert!(d <= 1e-4, "text encoder diff {d}");
    let x = f.inputs.get("latents").unwrap().transpose(&[0, 2, 3, 1]).unwrap();
    let out = f.pipe.unet().forward(&x, 500.0, &hidden, None, None).unwrap();
    let d = max_abs(&values(&out), &nhwc(f.refs.get("unet.out").unwrap()));
    eprintln!("{name} unet forward: max abs diff {d:.2e}");
    assert!(d <= 1e-4, "unet diff {d}");
    let dec = f.pipe.vae().decode(&x.mul_scalar(1.0 / 0.18215).unwrap()).unwrap();
    let d = max_abs(&values(&dec), &nhwc(f.refs.get("vae.decoded").unwrap()));
    eprintln!("{name} vae decode: max abs diff {d:.2e}");
    assert!(d <= 1e-3, "vae diff {d}");
}

#[test]
fn sdxl_components_match_diffusers() {
    let f = fixture("sdxl");
    let (hidden, pooled) = f.pipe.encode_prompt(f.expected["prompt"].as_str().unwrap()).unwrap();
    let pooled = pooled.expect("SDXL pools");
    let d = max_abs(&values(&hidden), &values(f.refs.get("text.hidden").unwrap()));
    let dp = max_abs(&values(&pooled), &values(f.refs.get("text.pooled").unwrap()));
    eprintln!("sdxl text encoders: hidden {d:.2e}, pooled {dp:.2e}");
    assert!(d <= 1e-4 && dp <= 1e-4, "text diffs {d} {dp}");
    let x = f.inputs.get("latents").unwrap().transpose(&[0, 2, 3, 1]).unwrap();
    let ids = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0];
    let out = f
        .pipe
        .unet()
        .forward(&x, 500.0, &hidden, Some((&pooled, &ids)), None)
        .unwrap();
    let d = max_abs(&values(&out), &nhwc(f.refs.get("unet.out").unwrap()));
    eprintln!("sdxl unet forward: max abs diff {d:.2e}");
    assert!(d <= 1e-4, "unet diff {d}");
    let dec = f.pipe.vae().decode(&x.mul_scalar(1.0 / 0.18215).unwrap()).unwrap();
    let d = max_abs(&values(&dec), &nhwc(f.refs.get("vae.decoded").unwrap()));
    eprintln!("sdxl vae decode: max abs diff {d:.2e}");
    assert!(d <= 1e-3, "vae diff {d}");
}

/// An LCM-distilled UNet: guidance-scale embedding, no unconditional half, LCMScheduler.
#[test]
fn lcm_images_match_diffusers() {
    check_images("lcm");
}

#[test]
fn sd1_images_match_diffusers() {
    check_images("sd1");
}

/// The sd1 weights as one original-layout checkpoint (made by the fixture script and
/// checked there against diffusers' own single-file converters), with the folder's configs.
#[test]
fn sd1_single_file_matches_diffusers() {
    let mut f = fixture("sd1");
    let ckpt = dir("sd1").join("single_file.safetensors");
    f.pipe = ImagePipeline::load_single_file(&ckpt, dir("sd1"), engine_mlx::Dtype::Float32).unwrap();
    check_images_of("sd1", "sd1 single file", f, None);
}

fn single_file(name: &str) -> ImagePipeline {
    let ckpt = dir(name).join("single_file.safetensors");
    ImagePipeline::load_single_file(&ckpt, dir(name), engine_mlx::Dtype::Float32).unwrap()
}

/// The sd2 weights as an original SD 2.x checkpoint (OpenCLIP text tower with fused
/// in_proj, plus the extra last layer, projection and logit scale real files carry),
/// written by diffusers' conversion script (xtask/parity/make_single_files.py). Stored
/// fp16 while the folder is f32, so the references are diffusers' `from_single_file`
/// images of this file (they differ from the folder's by ~2e-3).
#[test]
fn sd2_single_file_matches_diffusers() {
    let mut f = fixture("sd2");
    f.pipe = single_file("sd2");
    f.refs = WeightMap::load_safetensors(dir("sd2").join("single_file_refs.safetensors")).unwrap();
    check_images_of("sd2", "sd2 single file", f, Some(&["ddim", "euler"]));
}

/// The sdxl weights (stored fp16 in the folder too) as an original SDXL checkpoint:
/// CLIP-L under `conditioner.embedders.0.transformer`, OpenCLIP-bigG with its pooled
/// projection under `conditioner.embedders.1.model`; every case, img2img included,
/// gives the folder's image.
#[test]
fn sdxl_single_file_matches_its_folder() {
    let mut f = fixture("sdxl");
    f.pipe = single_file("sdxl");
    check_images_of("sdxl", "sdxl single file", f, None);
}

#[test]
fn sd2_images_match_diffusers() {
    check_images("sd2");
}

#[test]
fn sdxl_images_match_diffusers() {
    check_images("sdxl");
}

/// float16 compute (what a GPU would use; the VAE stays f32 by `force_upcast`)
/// stays close to diffusers' float32 image.
#[test]
fn sdxl_float16_is_close() {
    let mut f = fixture("sdxl");
    f.pipe = ImagePipeline::load_with_dtype(dir("sdxl"), engine_mlx::Dtype::Float16).unwrap();
    let case = f.expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "euler")
        .unwrap()
        .clone();
    let img = f.pipe.generate(&request(&f, &case)).unwrap();
    let d = max_abs(&img[0].data, &values(f.refs.get("image.euler").unwrap()));
    eprintln!("sdxl/euler in float16: image max abs diff {d:.2e}");
    assert!(d <= 2e-2, "float16 diff {d}");
}
