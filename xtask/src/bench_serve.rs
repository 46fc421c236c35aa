//! `cargo xtask bench serve`: continuous batching through the real server.
//! `mlxengine serve --parallel 8` on SmolLM2-135M (the engine's CPU policy:
//! the Q4_1 GGUF dequantized to float32) answers 8 concurrent streamed chat
//! requests of at most 128 greedy tokens; aggregate generated tokens per
//! second over the wall time (first request sent → last stream closed) is
//! compared with mlx-lm's `batch_generate` on the same weights (the GGUF's
//! exact MLX 4-bit export, dequantized to float32), dtype and prompt ids in
//! the same run (`ratio`), and with the same server answering one stream
//! (`speedup_vs_one_stream`). Each side runs twice, alternating; the best
//! run counts.

use crate::bench_llm::json_of;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STREAMS: usize = 8;
const TOKENS: usize = 128;

const PROMPTS: [&str; STREAMS] = [
    "Write a long story about a dragon who learns to bake bread.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Describe, in great detail, a journey across a desert.",
    "Write a long letter from a sailor to his family at home.",
    "Tell a long fairy tale about a clever fox and a proud king.",
    "Explain in detail how a city changes through the four seasons.",
    "Write a long diary entry of a girl who finds a secret garden.",
    "Write a long story about two robots who become friends.",
];

/// The server, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(bin: &std::path::Path, model: &std::path::Path, extra: &[&str]) -> Result<Server> {
        let mut child = Command::new(bin)
            .args(["serve", "--port", "0", "--parallel", &STREAMS.to_string(), "--model"])
            .arg(model)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting mlxengine serve")?;
        let stderr = child.stderr.take().context("server stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                bail!("the server exited before listening");
            };
            let line = line?;
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.trim().parse::<SocketAddr>()?;
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !request(server.addr, "GET", "/health", "")?.starts_with("HTTP/1.1 200") {
            if Instant::now() > deadline {
                bail!("the server never became healthy");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }
}

/// A plain HTTP/1.1 request; returns the whole response.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// One streamed chat completion: (seconds to the first content, completion tokens).
fn stream_chat(addr: SocketAddr, model: &str, prompt: &str) -> Result<(f64, usize)> {
    stream_chat_n(addr, model, prompt, TOKENS)
}

fn stream_chat_n(addr: SocketAddr, model: &str, prompt: &str, max_tokens: usize) -> Result<(f64, usize)> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let (mut buf, mut chunk, mut ttft) = (Vec::new(), [0u8; 4096], None);
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if ttft.is_none() && String::from_utf8_lossy(&buf).contains("\"content\":\"") {
            ttft = Some(start.elapsed().as_secs_f64());
        }
    }
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("chat request failed: {}", text.lines().next().unwrap_or(""));
    }
    let tokens = text
        .rsplit("\"completion_tokens\":")
        .next()
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .context("no usage in the stream")?;
    Ok((ttft.unwrap_or(f64::NAN), tokens))
}

/// `n` concurrent streams: (aggregate tok/s, generated tokens, mean TTFT s).
fn streams(server: &Server, model: &str, n: usize) -> Result<(f64, usize, f64)> {
    let start = Instant::now();
    let handles: Vec<_> = PROMPTS[..n]
        .iter()
        .map(|p| {
            let (addr, model, p) = (server.addr, model.to_string(), p.to_string());
            std::thread::spawn(move || stream_chat(addr, &model, &p))
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??);
    }
    let secs = start.elapsed().as_secs_f64();
    let generated: usize = results.iter().map(|r| r.1).sum();
    let ttft = results.iter().map(|r| r.0).sum::<f64>() / n as f64;
    Ok((generated as f64 / secs, generated, ttft))
}

/// Builds the release binary; returns its path.
fn build_binary(root: &std::path::Path) -> Result<std::path::PathBuf> {
    let ok = Command::new("cargo")
        .args(["build", "--release", "-q", "-p", "mlxengine-cli"])
        .current_dir(root)
        .status()?
        .success();
    if !ok {
        bail!("building the mlxengine binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/mlxengine"))
}

/// The id the server lists first.
fn served_id(server: &Server) -> Result<String> {
    let listing = request(server.addr, "GET", "/v1/models", "")?;
    let json = listing.split("\r\n\r\n").nth(1).context("no /v1/models body")?;
    Ok(serde_json::from_str::<Value>(json)?["data"][0]["id"]
        .as_str()
        .context("no served model")?
        .to_string())
}

/// Resident memory of a process, in bytes (Linux).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?;
    kb.parse::<u64>().ok().map(|k| k * 1024)
}

/// `cargo xtask load-test [SECONDS] [CLIENTS]`: CLIENTS (64) concurrent
/// streaming clients, each asking again as soon as its answer ends, against
/// `mlxengine serve --parallel 8` on SmolLM2 for SECONDS (60); prints one
/// JSON line with errors, requests, p50/p99 TTFT, aggregate tok/s and the
/// server's resident memory after warm-up and at the end. Fails on any error.
pub fn load_test(args: &[String]) -> Result<()> {
    let secs: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let clients: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let root = crate::root();
    let gguf = crate::fetch_models()?.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let bin = build_binary(&root)?;
    let queue = (clients * 2).to_string();
    let server = Server::start(&bin, &gguf, &["--max-queue", &queue])?;
    let id = served_id(&server)?;
    streams(&server, &id, 2)?; // warm-up
    let pid = server.child.id();
    let rss_start = rss_bytes(pid);
    let until = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, id) = (server.addr, id.clone());
            std::thread::spawn(move || {
                let mut out = (Vec::new(), 0usize, Vec::new());
                let mut i = c;
                while Instant::now() < until {
                    match stream_chat_n(addr, &id, PROMPTS[i % PROMPTS.len()], 32) {
                        Ok((ttft, n)) => {
                            out.0.push(ttft);
                            out.1 += n;
                        }
                        Err(e) => out.2.push(e.to_string()),
                    }
                    i += 1;
                }
                out
            })
        })
        .collect();
    let (mut ttfts, mut tokens, mut errors) = (Vec::new(), 0, Vec::new());
    for h in handles {
        let (t, n, e) = h.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        ttfts.extend(t);
        tokens += n;
        errors.extend(e);
    }
    let wall = start.elapsed().as_secs_f64();
    // Let the server finish its last steps before reading its memory.
    std::thread::sleep(Duration::from_secs(2));
    let rss_end = rss_bytes(pid);
    ttfts.sort_by(f64::total_cmp);
    let pct = |p: f64| ttfts.get(((ttfts.len() as f64 - 1.0) * p).round() as usize).copied();
    println!(
        "{}",
        serde_json::json!({
            "test": "load",
            "clients": clients,
            "seconds": wall,
            "requests": ttfts.len(),
            "errors": errors.len(),
            "first_error": errors.first(),
            "ttft_p50_s": pct(0.5),
            "ttft_p99_s": pct(0.99),
            "tok_s": tokens as f64 / wall,
            "rss_after_warmup_mib": rss_start.map(|b| b / (1 << 20)),
            "rss_end_mib": rss_end.map(|b| b / (1 << 20)),
        })
    );
    if !errors.is_empty() {
        bail!("{} requests failed, the first: {}", errors.len(), errors[0]);
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let root = crate::root();
    let models = crate::fetch_models()?;
    let gguf = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let exe = crate::build_example("engine-llm", "bench_decode")?;
    let bin = build_binary(&root)?;
    let target = exe.ancestors().nth(3).context("target folder")?.to_path_buf();
    let work = target.join("bench-serve");
    std::fs::create_dir_all(&work)?;
    let mlx_dir = target.join("bench-llm/smollm2-mlx");
    crate::bench_llm::export_mlx(&exe, &gguf, &mlx_dir)?;
    let mut all_ids = Vec::new();
    for p in PROMPTS {
        let f = work.join("ids.json");
        if !Command::new(&exe)
            .arg(&gguf)
            .arg("--write-prompt-ids")
            .arg(&f)
            .arg(p)
            .status()?
            .success()
        {
            bail!("tokenizing a prompt failed");
        }
        all_ids.push(serde_json::from_str::<Value>(&std::fs::read_to_string(&f)?)?);
    }
    let prompts = work.join("prompts.json");
    std::fs::write(&prompts, serde_json::to_string(&all_ids)?)?;
    let eos = work.join("eos.json");
    if !Command::new(&exe)
        .arg(&gguf)
        .arg("--write-eos-ids")
        .arg(&eos)
        .status()?
        .success()
    {
        bail!("reading the stop ids failed");
    }
    let server = Server::start(&bin, &gguf, &[])?;
    let id = served_id(&server)?;
    streams(&server, &id, 2)?; // warm-up
                               // MLX Python's float32 CPU matmuls use the BLAS that is loaded: give it
                               // the OpenBLAS the engine uses (its wheel's reference BLAS is ~30× slower).
    let blas = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libopenblas.so.0");
    let baseline = || -> Result<Value> {
        let mut cmd = Command::new(crate::oracle_python()?);
        cmd.arg(root.join("xtask/bench/mlx_lm_batch.py"))
            .arg(&mlx_dir)
            .arg(&prompts)
            .arg(TOKENS.to_string())
            .arg(&eos);
        if blas.exists() {
            cmd.env("LD_PRELOAD", blas);
        }
        json_of(&mut cmd)
    };
    let (mut ours, mut one, mut theirs) = ((0.0, 0, 0.0), (0.0, 0, 0.0), Value::Null);
    for _ in 0..2 {
        let o = streams(&server, &id, STREAMS)?;
        if o.0 > ours.0 {
            ours = o;
        }
        let s = streams(&server, &id, 1)?;
        if s.0 > one.0 {
            one = s;
        }
        let t = baseline()?;
        if t["tok_s"].as_f64() > theirs["tok_s"].as_f64() {
            theirs = t;
        }
    }
    let base = theirs["tok_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "bench": "serve",
            "streams": STREAMS,
            "engine_tok_s": ours.0,
            "engine_generated": ours.1,
            "engine_mean_ttft_s": ours.2,
            "mlx_lm_batch_tok_s": base,
            "mlx_lm_generated": theirs["generated"],
            "one_stream_tok_s": one.0,
            "speedup_vs_one_stream": ours.0 / one.0,
            "ratio": ours.0 / base,
        })
    );
    Ok(())
}
