//! `cargo xtask bench mlx`: f32 1024² matmul through engine-mlx with the BLAS
//! the engine picks (OpenBLAS, its kernel chosen for this CPU) versus the
//! wheel's bundled reference BLAS, in the same run.
//!
//! The same example binary runs twice; the baseline run sets
//! `MLXENGINE_BLAS=bundled`, which makes engine-mlx's forwarding symbols
//! resolve to the wheel's own BLAS instead of loading OpenBLAS.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::process::Command;

pub fn run() -> Result<()> {
    let exe = crate::build_example("engine-mlx", "matmul_gflops")?;
    let measure = |bundled: bool| -> Result<Value> {
        let mut cmd = Command::new(&exe);
        cmd.env_remove("OPENBLAS_CORETYPE");
        if bundled {
            cmd.env("MLXENGINE_BLAS", "bundled");
        } else {
            cmd.env_remove("MLXENGINE_BLAS");
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("matmul example failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_str(String::from_utf8(out.stdout)?.trim())?)
    };
    let ours = measure(false)?;
    if ours["blas"] != "openblas" {
        bail!("engine-mlx found no OpenBLAS; install libopenblas0-pthread (Debian/Ubuntu)");
    }
    let base = measure(true)?;
    let gflops = |v: &Value| v["gflops"].as_f64().context("no gflops");
    let (o, b) = (gflops(&ours)?, gflops(&base)?);
    println!(
        "{}",
        serde_json::json!({
            "bench": "mlx",
            "openblas_gflops": o,
            "openblas_core": ours["core"],
            "bundled_gflops": b,
            "ratio": o / b,
        })
    );
    Ok(())
}
