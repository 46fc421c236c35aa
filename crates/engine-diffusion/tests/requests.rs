//! Request validation, cancellation, batching and seeding, and load errors,
//! on the tiny SD 2.x-shaped fixture (see tests/parity.rs for where it comes from).

use engine_diffusion::{DiffusionError, ImageF32, ImagePipeline, ImageRequest, Latents};
use engine_mlx::WeightMap;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd2")
}

fn pipe() -> ImagePipeline {
    ImagePipeline::load(dir()).unwrap()
}

fn small(prompt: &str) -> ImageRequest {
    let mut r = ImageRequest::new(prompt);
    r.width = 64;
    r.height = 64;
    r.steps = 4;
    r
}

fn fixed_latents(n: usize) -> Latents {
    let w = WeightMap::load_safetensors(dir().join("latents.safetensors")).unwrap();
    let one = w.get("latents").unwrap().to_f32_vec().unwrap();
    Latents {
        shape: [n, 4, 8, 8],
        data: one.iter().cycle().take(n * one.len()).copied().collect(),
    }
}

fn invalid(p: &ImagePipeline, r: &ImageRequest, needle: &str) {
    match p.generate(r) {
        Err(DiffusionError::InvalidRequest(m)) => assert!(m.contains(needle), "message `{m}` lacks `{needle}`"),
        Err(e) => panic!("expected InvalidRequest containing `{needle}`, got {e}"),
        Ok(_) => panic!("expected an error containing `{needle}`"),
    }
}

#[test]
fn bad_requests_are_clear_errors() {
    let p = pipe();
    let ok = small("a cat");
    invalid(
        &p,
        &ImageRequest {
            width: 60,
            ..ok.clone()
        },
        "multiple of 16",
    );
    invalid(
        &p,
        &ImageRequest {
            height: 0,
            ..ok.clone()
        },
        "multiple of",
    );
    invalid(&p, &ImageRequest { steps: 0, ..ok.clone() }, "steps = 0");
    invalid(
        &p,
        &ImageRequest {
            guidance: f32::NAN,
            ..ok.clone()
        },
        "guidance",
    );
    invalid(
        &p,
        &ImageRequest {
            guidance: -1.0,
            ..ok.clone()
        },
        "guidance",
    );
    invalid(&p, &ImageRequest { n: 0, ..ok.clone() }, "n = 0");
    invalid(
        &p,
        &ImageRequest {
            scheduler: Some("lms".into()),
            ..ok.clone()
        },
        "unknown scheduler `lms`; use one of ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm",
    );
    let mut wrong = fixed_latents(1);
    wrong.shape = [1, 4, 16, 4];
    invalid(
        &p,
        &ImageRequest {
            latents: Some(wrong),
            ..ok.clone()
        },
        "[1, 4, 8, 8]",
    );
    invalid(
        &p,
        &ImageRequest {
            latents: Some(fixed_latents(2)),
            ..ok.clone()
        },
        "latents have shape",
    );
    let img = ImageF32 {
        width: 64,
        height: 64,
        data: vec![0.5; 64 * 64 * 3],
    };
    let i2i = ImageRequest {
        init_image: Some(img.clone()),
        ..ok.clone()
    };
    for s in [0.0, -0.5, 1.5, f32::NAN] {
        invalid(
            &p,
            &ImageRequest {
                strength: s,
                ..i2i.clone()
            },
            "strength",
        );
    }
    invalid(
        &p,
        &ImageRequest {
            strength: 0.1,
            ..i2i.clone()
        },
        "runs no step",
    );
    let short = ImageF32 {
        data: vec![0.5; 10],
        ..img
    };
    invalid(
        &p,
        &ImageRequest {
            init_image: Some(short),
            ..ok
        },
        "init_image has 10 values",
    );
}

#[test]
fn progress_reports_each_step_and_cancels() {
    let p = pipe();
    let mut seen = vec![];
    let r = p.generate_with(&small("a cat"), |pr| {
        seen.push((pr.step, pr.steps));
        pr.step < 2
    });
    assert!(
        matches!(r, Err(DiffusionError::Cancelled { step: 2, steps: 4 })),
        "{r:?}"
    );
    assert_eq!(seen, vec![(1, 4), (2, 4)]);
}

#[test]
fn a_batch_equals_single_images_and_seeds_reproduce() {
    let p = pipe();
    let one = p
        .generate(&ImageRequest {
            latents: Some(fixed_latents(1)),
            ..small("a red cat")
        })
        .unwrap();
    let two = p
        .generate(&ImageRequest {
            latents: Some(fixed_latents(2)),
            n: 2,
            ..small("a red cat")
        })
        .unwrap();
    assert_eq!(two.len(), 2);
    for img in &two {
        let d = img
            .data
            .iter()
            .zip(&one[0].data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-4, "batched image differs by {d}");
    }
    let a = p
        .generate(&ImageRequest {
            seed: 7,
            ..small("a dog")
        })
        .unwrap();
    let b = p
        .generate(&ImageRequest {
            seed: 7,
            ..small("a dog")
        })
        .unwrap();
    let c = p
        .generate(&ImageRequest {
            seed: 8,
            ..small("a dog")
        })
        .unwrap();
    assert_eq!(a, b, "the same seed gives the same image");
    assert_ne!(a, c, "another seed gives another image");
    assert!(a[0].data.iter().all(|v| (0.0..=1.0).contains(v)));
    let ea = |seed| ImageRequest {
        seed,
        scheduler: Some("euler_a".into()),
        ..small("a dog")
    };
    let (x, y, z) = (
        p.generate(&ea(3)).unwrap(),
        p.generate(&ea(3)).unwrap(),
        p.generate(&ea(4)).unwrap(),
    );
    assert_eq!(x, y, "Euler ancestral's step noise comes from the seed");
    assert_ne!(x, z);
    // Guidance ≤ 1 runs without the unconditional half.
    let g1 = p
        .generate(&ImageRequest {
            guidance: 1.0,
            ..small("a dog")
        })
        .unwrap();
    assert_eq!(g1[0].data.len(), 64 * 64 * 3);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn load_err(path: &Path) -> String {
    match ImagePipeline::load(path) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

#[test]
fn load_errors_name_the_missing_piece() {
    let tmp = tempfile::tempdir().unwrap();
    let m = load_err(tmp.path());
    assert!(m.contains("model_index.json"), "{m}");

    let d = tmp.path().join("sd2");
    copy_dir(&dir(), &d);
    std::fs::remove_dir_all(d.join("vae")).unwrap();
    let m = load_err(&d);
    assert!(m.contains("`vae` component folder"), "{m}");

    copy_dir(&dir().join("vae"), &d.join("vae"));
    std::fs::remove_file(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let m = load_err(&d);
    assert!(
        m.contains("diffusion_pytorch_model.safetensors") && m.contains("fp16"),
        "{m}"
    );

    std::fs::write(d.join("unet/diffusion_pytorch_model.safetensors"), b"\x10\x00\x00\x00").unwrap();
    let m = load_err(&d);
    assert!(m.contains("not valid safetensors"), "{m}");

    std::fs::copy(
        dir().join("unet/diffusion_pytorch_model.safetensors"),
        d.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(d.join("tokenizer/merges.txt")).unwrap();
    let m = load_err(&d);
    assert!(m.contains("merges.txt"), "{m}");
}

#[test]
fn single_file_errors_name_the_format() {
    let tmp = tempfile::tempdir().unwrap();
    let one = engine_mlx::Array::zeros(&[2, 2], engine_mlx::Dtype::Float32).unwrap();
    let write = |name: &str, tensors: &[&str]| {
        let p = tmp.path().join(name);
        let t: Vec<(&str, &engine_mlx::Array)> = tensors.iter().map(|n| (*n, &one)).collect();
        engine_mlx::save_safetensors(&p, &t, &[]).unwrap();
        p
    };
    let err = |p: &Path| match ImagePipeline::load_single_file(p, dir(), engine_mlx::Dtype::Float32) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} loaded", p.display()),
    };
    let unet = "model.diffusion_model.out.2.bias";
    let m = err(&write("other.safetensors", &["foo.weight"]));
    assert!(m.contains("no UNet tensors (model.diffusion_model.*)"), "{m}");
    let m = err(&write(
        "text_only.safetensors",
        &["cond_stage_model.model.positional_embedding"],
    ));
    assert!(m.contains("no UNet tensors"), "{m}");
    // A UNet with no text encoder, or with both SD 1.x's and SDXL's: the kind cannot be told.
    let m = err(&write("unet_only.safetensors", &[unet]));
    assert!(m.contains("cannot tell the model kind"), "{m}");
    let mixed = [
        "cond_stage_model.transformer.x",
        "conditioner.embedders.0.transformer.x",
    ];
    let m = err(&write("mixed.safetensors", &[unet, mixed[0], mixed[1]]));
    assert!(m.contains("cannot tell the model kind"), "{m}");
    let m = err(&write(
        "refiner.safetensors",
        &[unet, "conditioner.embedders.0.model.ln_final.weight"],
    ));
    assert!(m.contains("refiner"), "{m}");
    // An SDXL checkpoint with an SD 1.x folder's configs.
    let xl = [
        "conditioner.embedders.0.transformer.x",
        "conditioner.embedders.1.model.x",
    ];
    let m = err(&write("sdxl.safetensors", &[unet, xl[0], xl[1]]));
    assert!(
        m.contains("this is an SDXL checkpoint but") && m.contains("SD 1.x/2.x folder"),
        "{m}"
    );
    let m = err(&tmp.path().join("missing.safetensors"));
    assert!(m.contains("no such file"), "{m}");
}
