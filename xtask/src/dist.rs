//! `cargo xtask dist`: a relocatable tarball of the `mlxengine` binary under
//! `target/dist/` — `bin/mlxengine`, `lib/mlx/` (libmlx and the wheel's bundled
//! libraries, as the wheel lays them out) and `lib/` (every other shared library
//! the binary loads that a bare system lacks, among them OpenBLAS, which the
//! binary opens at run time (engine-mlx's blas.cc), and its Fortran runtime).
//! Binaries carry `$ORIGIN/../lib` rpaths ahead of the build cache's
//! (engine-mlx's dependent_build.rs), so an unpacked copy runs on a fresh
//! machine of the same OS. The command checks that itself: it unpacks the
//! tarball into a temporary folder, runs `mlxengine doctor --json` there and
//! requires every library the process loaded (`LD_DEBUG=files`, so OpenBLAS's
//! dlopen counts too) to come from inside it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Libraries every glibc system has (and that must come from the system).
const SYSTEM: &[&str] = &[
    "linux-vdso.so",
    "ld-linux-x86-64.so",
    "ld-linux-aarch64.so",
    "libc.so",
    "libm.so",
    "libdl.so",
    "librt.so",
    "libpthread.so",
    "libstdc++.so",
    "libgcc_s.so",
];

fn ldd(file: &Path) -> Result<Vec<(String, Option<PathBuf>)>> {
    let out = Command::new("ldd").arg(file).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let name = l.split_whitespace().next()?.to_string();
            let path = l.split("=> ").nth(1).and_then(|r| r.split(" (").next()).map(str::trim);
            let path = path
                .filter(|p| *p != "not found" && p.starts_with('/'))
                .map(PathBuf::from);
            Some((name, path))
        })
        .collect())
}

fn is_system(name: &str) -> bool {
    SYSTEM.iter().any(|s| name.starts_with(s)) || name.starts_with('/')
}

fn sh(cmd: &mut Command) -> Result<()> {
    if !cmd.status().with_context(|| format!("running {cmd:?}"))?.success() {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let root = crate::root();
    sh(Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "mlxengine-cli", "--bin", "mlxengine"])
        .current_dir(&root))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let exe = target.join("release/mlxengine");
    let name = format!(
        "mlxengine-{}-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    let dist = target.join("dist");
    let stage = dist.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("bin"))?;
    std::fs::create_dir_all(stage.join("lib"))?;
    std::fs::copy(&exe, stage.join("bin/mlxengine"))?;
    // libmlx with the wheel's layout around it: its own rpath finds its
    // bundled BLAS/LAPACK/gfortran as `$ORIGIN/../../<wheel>.libs`.
    let deps = ldd(&exe)?;
    let mlx = deps
        .iter()
        .find_map(|(n, p)| p.as_ref().filter(|_| n.starts_with("libmlx.so")))
        .context("the binary does not load libmlx.so")?;
    let wheel_root = mlx
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("libmlx's folder")?;
    for entry in std::fs::read_dir(wheel_root)? {
        let p = entry?.path();
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file == "mlx" {
            std::fs::create_dir_all(stage.join("lib/mlx/lib"))?;
            std::fs::copy(mlx, stage.join("lib/mlx/lib/libmlx.so"))?;
        } else if file.ends_with(".libs") {
            sh(Command::new("cp").arg("-r").arg(&p).arg(stage.join("lib")))?;
        }
    }
    // Everything else the process loads that is not part of every system.
    for (n, p) in &deps {
        if is_system(n) || n.starts_with("libmlx.so") {
            continue;
        }
        let Some(p) = p else {
            bail!("{n} is not found for {}", exe.display())
        };
        if p.starts_with(wheel_root) {
            continue;
        }
        sh(Command::new("cp").arg("-L").arg(p).arg(stage.join("lib").join(n)))?;
    }
    // OpenBLAS is opened at run time, so ldd does not list it: ask the binary
    // which file serves its BLAS, and ship it with its own dependencies.
    let report = doctor(&exe)?;
    if report.json["blas"] == "openblas" {
        let lib = report.json["blas_library"].as_str().unwrap_or_default();
        if lib.is_empty() {
            bail!("the binary uses OpenBLAS but does not say which file");
        }
        let lib = Path::new(lib);
        sh(Command::new("cp")
            .arg("-L")
            .arg(lib)
            .arg(stage.join("lib/libopenblas.so.0")))?;
        for (n, p) in ldd(lib)? {
            if is_system(&n) {
                continue;
            }
            let Some(p) = p else {
                bail!("{n} is not found for {}", lib.display())
            };
            sh(Command::new("cp").arg("-L").arg(p).arg(stage.join("lib").join(n)))?;
        }
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    sh(Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dist)
        .arg(&name))?;
    check(&tarball, &name)?;
    let size = std::fs::metadata(&tarball)?.len() as f64 / 1e6;
    println!("{} ({size:.0} MB)", tarball.display());
    Ok(())
}

/// What `mlxengine doctor --json` printed, and the files the process loaded
/// (from the dynamic loader's `LD_DEBUG=files` trace).
struct Doctor {
    json: serde_json::Value,
    loaded: Vec<PathBuf>,
}

fn doctor(bin: &Path) -> Result<Doctor> {
    // Neither side may lean on the build machine's BLAS settings.
    let out = Command::new(bin)
        .args(["doctor", "--json"])
        .env("LD_DEBUG", "files")
        .env_remove("MLXENGINE_BLAS")
        .env_remove("OPENBLAS_CORETYPE")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{} failed: {stderr}", bin.display());
    }
    let json = serde_json::from_slice(&out.stdout).context("doctor --json printed no JSON")?;
    let loaded = stderr
        .lines()
        .filter_map(|l| l.split("calling init: ").nth(1))
        .map(|p| PathBuf::from(p.trim()))
        .collect();
    Ok(Doctor { json, loaded })
}

/// Unpacks the tarball elsewhere: every library must resolve inside it, and
/// the binary must run loading only its own libraries.
fn check(tarball: &Path, name: &str) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("mlxengine-dist-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    sh(Command::new("tar").arg("xzf").arg(tarball).arg("-C").arg(&tmp))?;
    let bin = tmp.join(name).join("bin/mlxengine");
    let unpacked = tmp.join(name);
    for (n, p) in ldd(&bin)? {
        if is_system(&n) {
            continue;
        }
        match p {
            Some(p) if p.starts_with(&unpacked) => {}
            other => bail!("the unpacked binary loads {n} from {other:?}, not from the tarball"),
        }
    }
    let report = doctor(&bin)?;
    for p in &report.loaded {
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_system(&file) && !p.starts_with(&unpacked) {
            bail!(
                "the unpacked binary loaded {} at run time, not from the tarball",
                p.display()
            );
        }
    }
    if !report.loaded.iter().any(|p| p.ends_with("lib/libopenblas.so.0")) && report.json["blas"] == "openblas" {
        bail!("the unpacked binary reports OpenBLAS but did not load the tarball's copy");
    }
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}
