//! `cargo xtask bench hub`: pulls a 512 MiB file from a local test hub with
//! the engine (`hub-pull`: resumable download, sha256 verification, atomic
//! rename into a fresh Hugging Face cache) and with `curl -o`, in the same
//! run, and prints one JSON line:
//! `{"bench":"hub","engine_mib_s":…,"curl_mib_s":…,"ratio":…}`.
//!
//! Each tool runs several alternating rounds and its best round counts, so
//! noise from other processes on the machine weighs on both alike.
//! Only `anyhow` and `std` are used.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const SIZE: u64 = 512 << 20;
const ROUNDS: usize = 5;
const REPO: &str = "bench/hub512";
const FILE: &str = "model.safetensors";

/// Kills the hub process when the bench ends, however it ends.
struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the scratch folder when the bench ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the bench and prints its JSON line.
pub fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "engine-hub",
            "--features",
            "test-hub",
            "--bin",
            "test-hub",
            "--bin",
            "hub-pull",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of engine-hub's test-hub and hub-pull failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = |name: &str| {
        target
            .join("release")
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    };
    let (hub_bin, pull_bin) = (bin("test-hub"), bin("hub-pull"));
    for b in [&hub_bin, &pull_bin] {
        if !b.is_file() {
            bail!(
                "{} was not built; is CARGO_TARGET_DIR set differently for cargo?",
                b.display()
            );
        }
    }
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .context("curl is needed for the comparison; install it (apt-get install curl)")?;

    let scratch = Scratch(std::env::temp_dir().join(format!("mlxengine-bench-hub-{}", std::process::id())));
    let repo_dir = scratch.0.join("hub").join(REPO);
    std::fs::create_dir_all(&repo_dir)?;
    write_random_file(&repo_dir.join(FILE), SIZE)?;

    let mut child = Command::new(&hub_bin)
        .arg(scratch.0.join("hub"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", hub_bin.display()))?;
    let stdout = child.stdout.take().context("no stdout from test-hub")?;
    let hub = Hub(child);
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url)?;
    let url = url.trim().to_string();
    if !url.starts_with("http://") {
        bail!("test-hub did not print its URL (got {url:?})");
    }
    let file_url = format!("{url}/{REPO}/resolve/main/{FILE}");
    // Warm-up: the hub hashes the file once for its listing; both tools then
    // read the source from the page cache.
    curl(&format!("{url}/api/models/{REPO}"), Path::new("/dev/null"))?;

    let cache = scratch.0.join("cache");
    let curl_out = scratch.0.join("curl.out");
    let (mut best_engine, mut best_curl) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        let _ = std::fs::remove_dir_all(&cache);
        let t = Instant::now();
        let out = Command::new(&pull_bin)
            .args(["--quiet", REPO])
            .env("HF_ENDPOINT", &url)
            .env("HF_HUB_CACHE", &cache)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN")
            .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
            .output()
            .context("running hub-pull")?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("hub-pull failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let snapshot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let got = std::fs::metadata(snapshot.join(FILE))?.len();
        if got != SIZE {
            bail!("hub-pull produced {got} bytes, expected {SIZE}");
        }
        best_engine = best_engine.max(mib_s(secs));

        let _ = std::fs::remove_file(&curl_out);
        let t = Instant::now();
        curl(&file_url, &curl_out)?;
        let secs = t.elapsed().as_secs_f64();
        let got = std::fs::metadata(&curl_out)?.len();
        if got != SIZE {
            bail!("curl produced {got} bytes, expected {SIZE}");
        }
        best_curl = best_curl.max(mib_s(secs));
    }
    drop(hub);
    let ratio = best_engine / best_curl;
    println!(
        "{{\"bench\":\"hub\",\"engine_mib_s\":{:.1},\"curl_mib_s\":{:.1},\"ratio\":{:.3}}}",
        best_engine, best_curl, ratio
    );
    if ratio < 0.8 {
        eprintln!("bench hub: ratio {ratio:.3} is below the 0.8 target");
    }
    Ok(())
}

fn mib_s(secs: f64) -> f64 {
    SIZE as f64 / (1024.0 * 1024.0) / secs.max(1e-9)
}

fn curl(url: &str, out: &Path) -> Result<()> {
    let status = Command::new("curl")
        .args(["-sSfL", "-o"])
        .arg(out)
        .arg(url)
        .status()
        .context("running curl")?;
    if !status.success() {
        bail!("curl {url} failed ({status})");
    }
    Ok(())
}

/// Incompressible pseudo-random content (xorshift64*), written in 8 MiB blocks.
fn write_random_file(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}
