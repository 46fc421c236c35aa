//! `cargo xtask bench mlx`: f32 1024² matmul through engine-mlx with OpenBLAS
//! linked versus the wheel's bundled reference BLAS, in the same run.
//!
//! The same example binary runs twice; the baseline run preloads the wheel's
//! own `libblas`, which then wins symbol resolution over OpenBLAS.

use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn run() -> Result<()> {
    let exe = crate::build_example("engine-mlx", "matmul_gflops")?;
    let measure = |preload: Option<&str>| -> Result<(f64, String)> {
        let mut cmd = Command::new(&exe);
        if let Some(p) = preload {
            cmd.env("LD_PRELOAD", p);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("matmul example failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        let v: serde_json::Value = serde_json::from_str(text.trim())?;
        Ok((
            v["gflops"].as_f64().context("no gflops")?,
            v["blas"].as_str().unwrap_or("").to_string(),
        ))
    };
    let (ours, blas) = measure(None)?;
    if blas != "openblas" {
        bail!("engine-mlx was built without OpenBLAS; install libopenblas0-pthread (Debian/Ubuntu) and rebuild");
    }
    let libdir = std::path::PathBuf::from(
        String::from_utf8(Command::new(&exe).arg("--libdir").output()?.stdout)?
            .trim()
            .to_string(),
    );
    let libs = libdir.join("../../").canonicalize()?;
    let bundled = std::fs::read_dir(&libs)?
        .filter_map(|e| e.ok())
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().filter_map(|f| f.ok()))
        .map(|f| f.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libblas"))
        })
        .context("the MLX wheel's bundled libblas was not found next to libmlx")?;
    let (base, _) = measure(Some(bundled.to_str().context("path")?))?;
    println!(
        "{}",
        serde_json::json!({"bench": "mlx", "openblas_gflops": ours, "bundled_gflops": base, "ratio": ours / base})
    );
    Ok(())
}
