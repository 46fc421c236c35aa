//! The real `mlxengine imagine` on the committed tiny SD 2.x-shaped pipeline
//! (crates/engine-diffusion/tests/fixtures/sd2, made by `cargo xtask torch-fixtures`
//! with diffusers 0.42.1; its refs.safetensors holds diffusers' images).

use mlxengine::mlx::{save_safetensors, Array, WeightMap};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOL: f32 = 2e-3;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine-diffusion/tests/fixtures/sd2")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap()).unwrap()
}

fn reference(name: &str) -> Vec<f32> {
    let refs = WeightMap::load_safetensors(fixture().join("refs.safetensors")).unwrap();
    refs.get(name).unwrap().to_f32_vec().unwrap()
}

fn input(name: &str) -> Array {
    WeightMap::load_safetensors(fixture().join("latents.safetensors"))
        .unwrap()
        .get(name)
        .unwrap()
        .clone()
}

/// Runs `mlxengine imagine args...` offline, with an empty HF cache.
fn imagine(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .arg("imagine")
        .args(args)
        .env_remove("MLXENGINE_LOG")
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the mlxengine binary runs")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The fixture's prompt, negative prompt, steps and guidance, plus `extra`.
fn fixture_args(extra: &[&str]) -> Vec<String> {
    let e = expected();
    let mut a: Vec<String> = vec![
        fixture().to_string_lossy().into(),
        e["prompt"].as_str().unwrap().into(),
        "--negative".into(),
        e["negative_prompt"].as_str().unwrap().into(),
        "--steps".into(),
        e["steps"].to_string(),
        "--guidance".into(),
        e["guidance"].to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_fixture(extra: &[&str]) -> Output {
    let a = fixture_args(extra);
    imagine(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A `.npy` of little-endian float32: (shape, values).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "npy v1.0 magic");
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let values: Vec<f32> = b[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn latents_file(dir: &Path, name: &str, a: &Array) -> PathBuf {
    let p = dir.join(name);
    save_safetensors(&p, &[("latents", a)], &[]).unwrap();
    p
}

/// `--latents` + `.npy` reproduces diffusers' image (DDIM and DPM++ 2M Karras, by the
/// CLI's spellings), and `.png` holds the same image rounded as `numpy_to_pil`.
#[test]
fn latents_give_diffusers_images_as_npy_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let latents = fixture().join("latents.safetensors"); // holds `latents` (and the other inputs)
    let latents = latents.to_str().unwrap();
    for (cli, case) in [("ddim", "ddim"), ("dpm++2m-karras", "dpmpp_2m_karras")] {
        let npy = dir.path().join(format!("{case}.npy"));
        let out = run_fixture(&["--scheduler", cli, "--latents", latents, "-o", npy.to_str().unwrap()]);
        ok(&out);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), npy.to_str().unwrap());
        let (shape, got) = read_npy(&npy);
        assert_eq!(shape, [64, 64, 3]);
        let d = max_abs(&got, &reference(&format!("image.{case}")));
        eprintln!("imagine --scheduler {cli}: max abs diff to diffusers {d:.2e}");
        assert!(d <= TOL, "{cli}: {d}");

        if case == "ddim" {
            let png = dir.path().join("ddim.png");
            ok(&run_fixture(&[
                "--scheduler",
                cli,
                "--latents",
                latents,
                "-o",
                png.to_str().unwrap(),
            ]));
            let img = image::open(&png).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (64, 64));
            let worst = img
                .as_raw()
                .iter()
                .zip(&got)
                .map(|(&p, &v)| (p as i32 - (v * 255.0).round() as i32).abs())
                .max()
                .unwrap();
            assert!(worst <= 1, "png differs from the npy ×255 by {worst}");
        }
    }
}

/// img2img: the fixture's init image (stored at k/255, so a PNG holds it exactly)
/// with its added noise as `--latents` reproduces diffusers' img2img at strength 0.6.
#[test]
fn init_image_and_strength_give_diffusers_img2img() {
    let dir = tempfile::tempdir().unwrap();
    let init = input("init_image");
    let pixels: Vec<u8> = init
        .to_f32_vec()
        .unwrap()
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let png = dir.path().join("init.png");
    image::RgbImage::from_raw(init.dim(1) as u32, init.dim(0) as u32, pixels)
        .unwrap()
        .save(&png)
        .unwrap();
    let noise = latents_file(dir.path(), "noise.safetensors", &input("img2img_noise"));
    let npy = dir.path().join("img2img.npy");
    ok(&run_fixture(&[
        "--scheduler",
        "ddim",
        "--init-image",
        png.to_str().unwrap(),
        "--strength",
        "0.6",
        "--latents",
        noise.to_str().unwrap(),
        "-o",
        npy.to_str().unwrap(),
    ]));
    let d = max_abs(&read_npy(&npy).1, &reference("image.img2img_ddim"));
    eprintln!("imagine --init-image --strength 0.6: max abs diff to diffusers {d:.2e}");
    assert!(d <= TOL, "{d}");
}

/// `-n 2` numbers image files and stacks `.npy`; a seed reproduces, another differs.
#[test]
fn batches_are_numbered_and_seeds_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let base = ["--size", "64x64", "--steps", "2"];
    let run = |extra: &[&str]| {
        let mut a = vec![fixture().to_string_lossy().into_owned(), "a cat".into()];
        a.extend(base.iter().chain(extra).map(|s| s.to_string()));
        let out = imagine(&a.iter().map(String::as_str).collect::<Vec<_>>());
        ok(&out);
        out
    };
    let out = run(&["-n", "2", "--seed", "3", "-o", &p("cat.png")]);
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(listed, [p("cat-1.png"), p("cat-2.png")]);
    assert!(!Path::new(&p("cat.png")).exists());
    for f in &listed {
        assert_eq!(image::open(f).unwrap().to_rgb8().dimensions(), (64, 64));
    }

    run(&["-n", "2", "--seed", "3", "-o", &p("both.npy")]);
    let (shape, both) = read_npy(Path::new(&p("both.npy")));
    assert_eq!(shape, [2, 64, 64, 3]);

    run(&["--seed", "3", "-o", &p("a.npy")]);
    run(&["--seed", "3", "-o", &p("b.npy")]);
    run(&["--seed", "4", "-o", &p("c.npy")]);
    let read = |n: &str| std::fs::read(p(n)).unwrap();
    assert_eq!(read("a.npy"), read("b.npy"), "the same seed must give the same image");
    assert_ne!(read("a.npy"), read("c.npy"), "another seed must give another image");
    // A batch draws different noise for each image.
    let half = both.len() / 2;
    assert!(both[..half] != both[half..], "the two images of a batch must differ");

    for (ext, magic) in [("jpg", &b"\xff\xd8"[..]), ("webp", &b"RIFF"[..])] {
        let f = p(&format!("cat.{ext}"));
        run(&["--seed", "3", "-o", &f]);
        assert!(std::fs::read(&f).unwrap().starts_with(magic), "{ext}");
        assert_eq!(image::open(&f).unwrap().to_rgb8().dimensions(), (64, 64));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Each bad input exits 1 with a message that names it, never a panic.
#[test]
fn bad_inputs_exit_1_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let model = fixture().to_string_lossy().into_owned();
    let fails = |model: &str, extra: &[&str], needle: &str| {
        let out_file = p("out.png");
        let mut a = vec![model, "a cat"];
        a.extend(extra);
        if !extra.contains(&"-o") {
            a.extend(["-o", &out_file]);
        }
        let out = imagine(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: `{err}` lacks `{needle}`");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
    };
    fails(&model, &["--size", "60x64"], "multiples of 8");
    fails(&model, &["--size", "64"], "WIDTHxHEIGHT");
    fails(&model, &["--size", "72x72"], "multiple of 16"); // the tiny UNet's unit, from the pipeline
    fails(&model, &["--steps", "0"], "--steps 0");
    fails(&model, &["--steps", "1000"], "use fewer steps"); // past the schedule's end: an error, not a panic
    fails(&model, &["--guidance", "NaN"], "--guidance NaN");
    fails(&model, &["--guidance", "-1"], "--guidance -1");
    fails(&model, &["-n", "0"], "-n 0");
    fails(&model, &["--scheduler", "heun"], "unknown --scheduler `heun`");
    fails(&model, &["-o", &p("out.bmp")], "unknown output extension `.bmp`");
    fails(&model, &["-o", &p("no/such/dir/out.png")], "does not exist");

    let three_d = Array::from_slice(&[0.0f32; 4 * 8 * 8], &[4, 8, 8]).unwrap();
    let l3 = latents_file(dir.path(), "l3.safetensors", &three_d);
    fails(&model, &["--latents", l3.to_str().unwrap()], "(N, 4, H/8, W/8)");
    let channels = Array::from_slice(&[0.0f32; 3 * 8 * 8], &[1, 3, 8, 8]).unwrap();
    let lc = latents_file(dir.path(), "lc.safetensors", &channels);
    fails(
        &model,
        &["--latents", lc.to_str().unwrap()],
        "latents have shape [1, 3, 8, 8]",
    );
    let good = fixture().join("latents.safetensors");
    let good = good.to_str().unwrap();
    fails(
        &model,
        &["--latents", good, "--size", "128x128"],
        "does not match --latents",
    );
    fails(&model, &["--latents", good, "-n", "2"], "-n 2 but --latents holds 1");
    let unnamed = dir.path().join("unnamed.safetensors");
    save_safetensors(&unnamed, &[("noise", &channels)], &[]).unwrap();
    fails(
        &model,
        &["--latents", unnamed.to_str().unwrap()],
        "no tensor named `latents`",
    );

    let init = dir.path().join("init.png");
    image::RgbImage::new(64, 64).save(&init).unwrap();
    let init = init.to_str().unwrap();
    fails(&model, &["--init-image", init, "--strength", "0"], "--strength 0");
    fails(&model, &["--init-image", init, "--strength", "1.5"], "--strength 1.5");
    fails(&model, &["--strength", "0.5"], "--init-image");
    fails(&model, &["--init-image", &p("nope.png")], "--init-image");

    let no_vae = dir.path().join("no_vae");
    copy_dir(&fixture(), &no_vae);
    std::fs::remove_dir_all(no_vae.join("vae")).unwrap();
    fails(no_vae.to_str().unwrap(), &[], "the `vae` component folder");
    let no_weights = dir.path().join("no_weights");
    copy_dir(&fixture(), &no_weights);
    std::fs::remove_file(no_weights.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    fails(no_weights.to_str().unwrap(), &[], "diffusion_pytorch_model.safetensors");
    fails(&p("missing_model"), &[], "no such file or folder");
}

/// Ctrl-C during denoising stops at the end of the step being computed: exit 130,
/// a message naming the step, and no file written.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_at_the_next_step_with_130() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.npy");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args([
            "imagine",
            fixture().to_str().unwrap(),
            "a cat",
            "--size",
            "64x64",
            "--steps",
            "200",
        ])
        .args(["-o", out.to_str().unwrap()])
        .env_remove("MLXENGINE_LOG")
        .env("HF_HOME", dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    // Without --seed the chosen seed is printed once the model is loaded, just before step 1.
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("seed "), "{line}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signals the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.contains("interrupted at step") && rest.contains("of 200"),
        "{rest}"
    );
    assert!(!out.exists());
}
