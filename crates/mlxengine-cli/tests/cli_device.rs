//! The real `mlxengine` binary: `doctor`, `recommend` and registry `search`, checked against
//! what the OS reports and against the built-in registry.

use engine_core::ModelType;
use engine_device::{estimate_with, DeviceReport, EstimateOptions, RankSplit, Registry, SplitKind};
use serde_json::Value;
use std::process::{Command, Output};

fn mlxengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        // A tracing filter from the caller's environment must not add lines to stderr.
        .env_remove("MLXENGINE_LOG")
        .output()
        .expect("the mlxengine binary runs")
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout");
    assert_eq!(text.trim_end().lines().count(), 1, "one JSON line expected:\n{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{text}"))
}

/// Asserts a failure with a one-line `error: ...` on stderr naming every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    let err = err.trim_end();
    assert_eq!(err.lines().count(), 1, "one-line error expected:\n{err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

#[cfg(target_os = "linux")]
fn meminfo_bytes(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"));
    kib * 1024
}

/// CPUs this process may run on, as the kernel says (`Cpus_allowed_list` in
/// /proc/self/status, e.g. `0-3,8`), capped by a cgroup CPU quota (v2
/// `cpu.max`, v1 `cpu.cfs_quota_us`) on its cgroup or any parent: what
/// `nproc` counts, without the `OMP_NUM_THREADS` it also honours.
#[cfg(target_os = "linux")]
fn os_cpu_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let allowed: usize = list
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum();
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let mut quota = usize::MAX;
    for line in std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default().lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        let base = std::path::Path::new(if v2 { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/cpu" });
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            let limit = if v2 {
                read(dir.join("cpu.max")).and_then(|t| {
                    let (q, p) = t.trim().split_once(' ')?;
                    Some((q.parse::<u64>().ok()?, p.parse::<u64>().ok()?))
                })
            } else {
                let q = read(dir.join("cpu.cfs_quota_us")).and_then(|t| t.trim().parse::<i64>().ok());
                let p = read(dir.join("cpu.cfs_period_us")).and_then(|t| t.trim().parse::<u64>().ok());
                match (q, p) {
                    (Some(q), Some(p)) if q > 0 => Some((q as u64, p)),
                    _ => None,
                }
            };
            if let Some((q, p)) = limit {
                quota = quota.min(((q / p.max(1)) as usize).max(1));
            }
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    allowed.min(quota)
}

/// The shared libraries mapped into process `pid` (`self` for this one).
#[cfg(target_os = "linux")]
fn mapped_libraries(pid: &str) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .map(str::to_string)
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// What the linked libraries say: the MLX version in the headers next to the
/// mapped `libmlx.so`.
#[cfg(target_os = "linux")]
fn linked_mlx_version(libs: &[String]) -> String {
    let mlx = libs
        .iter()
        .find(|l| l.ends_with("/libmlx.so") || l.contains("/libmlx.so."))
        .unwrap_or_else(|| panic!("libmlx.so is not mapped: {libs:?}"));
    let header = std::path::Path::new(mlx)
        .parent()
        .unwrap()
        .join("../include/mlx/version.h");
    let text = std::fs::read_to_string(&header).unwrap_or_else(|e| panic!("{}: {e}", header.display()));
    let part = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("#define MLX_VERSION_{name} ")))
            .unwrap_or_else(|| panic!("MLX_VERSION_{name} in {}", header.display()))
            .trim()
            .to_string()
    };
    format!("{}.{}.{}", part("MAJOR"), part("MINOR"), part("PATCH"))
}

/// The libraries the `mlxengine` binary maps: it is started waiting on its
/// stdin (`embed` without text), read while it runs, then let go.
#[cfg(target_os = "linux")]
fn cli_libraries() -> Vec<String> {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(["embed", "probe"])
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MLXENGINE_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn mlxengine");
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let libs = loop {
        let libs = mapped_libraries(&pid);
        if libs.iter().any(|l| l.contains("libmlx.so")) || std::time::Instant::now() > deadline {
            break libs;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.flush();
    drop(stdin);
    let _ = child.wait();
    libs
}

#[test]
#[cfg(target_os = "linux")]
fn doctor_json_matches_the_machine() {
    let out = mlxengine(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = stdout_json(&out);
    for k in ["backend", "device_name", "blas", "mlx_version"] {
        assert!(j[k].as_str().is_some_and(|s| !s.is_empty()), "{k}: {}", j[k]);
    }
    assert_eq!(j["cpu_cores"].as_u64(), Some(os_cpu_count() as u64));
    assert_eq!(j["memory_total_bytes"].as_u64(), Some(meminfo_bytes("MemTotal")));
    // MemAvailable moves while other processes run: within 5% or 256 MiB.
    let avail = meminfo_bytes("MemAvailable");
    let reported = j["memory_available_bytes"].as_u64().expect("memory_available_bytes");
    assert!(
        reported.abs_diff(avail) <= (avail / 20).max(256 << 20),
        "doctor {reported} vs /proc/meminfo {avail}"
    );
    // What the binary really links, read from its own memory map.
    let mlx_version = linked_mlx_version(&cli_libraries());
    assert_eq!(j["mlx_version"], mlx_version.as_str());
    // OpenBLAS is opened on first use (engine-mlx's blas.cc): the report names
    // the file that serves MLX's matmuls, which must be what it says.
    let library = j["blas_library"].as_str().unwrap_or_default();
    match j["blas"].as_str() {
        Some("openblas") => assert!(
            library.contains("libopenblas") && std::path::Path::new(library).exists(),
            "{j}"
        ),
        _ => assert!(!library.contains("libopenblas"), "{j}"),
    }
    if j["gpu_available"] == false {
        assert_eq!(j["backend"], "cpu");
    }
    let problems = j["problems"].as_array().expect("problems is an array");
    for p in problems {
        assert!(p["fix"].as_str().is_some_and(|f| !f.is_empty()), "{p}");
    }
}

#[test]
fn doctor_plain_lists_the_facts() {
    let out = mlxengine(&["doctor"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    #[cfg(target_os = "linux")]
    let cores = os_cpu_count().to_string();
    #[cfg(not(target_os = "linux"))]
    let cores = DeviceReport::detect().cpu_cores.to_string();
    for key in ["backend", "device_name", "memory_total_bytes", "blas", "mlx_version"] {
        assert!(text.lines().any(|l| l.starts_with(key)), "{key} missing:\n{text}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu_cores"))
        .expect("cpu_cores line");
    assert_eq!(line.split_whitespace().nth(1), Some(cores.as_str()), "{line}");
}

/// Ranking key of `recommend`: larger models answer better, quantization costs a little.
fn quality(params: u64, bits: u64) -> f64 {
    let penalty = match bits {
        4 => 0.15,
        8 => 0.02,
        _ => 0.0,
    };
    (params as f64).ln() - penalty
}

#[test]
fn recommend_2gb_lists_only_what_fits_best_first() {
    let out = mlxengine(&["recommend", "--type", "llm", "--memory", "2GB", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = stdout_json(&out);
    assert_eq!(j["budget_bytes"], 2_000_000_000u64);
    assert_eq!(j["type"], "llm");
    let recs = j["recommendations"].as_array().expect("recommendations array");
    assert!(!recs.is_empty(), "2 GB fits the small models: {j}");
    let reg = Registry::builtin();
    let openblas_cpu = {
        let d = DeviceReport::detect();
        d.backend == "cpu" && d.blas == "openblas"
    };
    let mut last_quality = f64::INFINITY;
    for r in recs {
        let id = r["id"].as_str().expect("id");
        let variant = r["variant"].as_str().expect("variant");
        let bytes = r["estimated_memory_bytes"].as_u64().expect("estimated_memory_bytes");
        assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        assert!(bytes <= 2_000_000_000, "{id} {variant}: {bytes} over budget");
        let entry = reg.get(id).unwrap_or_else(|| panic!("{id} is not in the registry"));
        assert_eq!(entry.model_type, ModelType::Llm);
        let v = entry.variant(variant).expect("the variant exists");
        // The estimate printed is the library's for that variant and compute path.
        let ctx = r["context_len"].as_u64().expect("context_len");
        let opts = match r["compute"].as_str() {
            Some("f32") => EstimateOptions::f32(ctx),
            Some("cpu_kernels") => EstimateOptions::cpu(ctx),
            _ => EstimateOptions::new(ctx),
        };
        assert_eq!(estimate_with(entry, v, &opts).total_bytes, bytes, "{id} {variant}");
        let q = quality(entry.params, u64::from(v.bits));
        assert!(q <= last_quality + 1e-9, "{id} {variant} ranks above a better entry");
        last_quality = q;
    }
    // Nothing that fits is left out.
    let listed: Vec<&str> = recs.iter().filter_map(|r| r["id"].as_str()).collect();
    for entry in reg.of_type(ModelType::Llm) {
        let ctx = 4096.min(entry.context_length);
        let fits = entry.variants.iter().any(|v| {
            estimate_with(entry, v, &EstimateOptions::new(ctx)).total_bytes <= 2_000_000_000
                || (openblas_cpu && estimate_with(entry, v, &EstimateOptions::f32(ctx)).total_bytes <= 2_000_000_000)
                || (openblas_cpu && estimate_with(entry, v, &EstimateOptions::cpu(ctx)).total_bytes <= 2_000_000_000)
        });
        assert_eq!(listed.contains(&entry.id.as_str()), fits, "{}", entry.id);
    }
}

#[test]
fn recommend_plans_per_rank_for_a_split_model() {
    let reg = Registry::builtin();
    let list = |extra: &[&str]| {
        let mut args = vec!["recommend", "--type", "llm", "--memory", "2GB", "--json"];
        args.extend_from_slice(extra);
        let out = mlxengine(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        stdout_json(&out)["recommendations"]
            .as_array()
            .expect("recommendations")
            .clone()
    };
    let best_params = |recs: &[serde_json::Value]| {
        recs.iter()
            .map(|r| reg.get(r["id"].as_str().unwrap()).unwrap().params)
            .max()
            .unwrap_or(0)
    };
    let alone = list(&[]);
    for split in [SplitKind::Tensor, SplitKind::Pipeline] {
        let name = if split == SplitKind::Tensor {
            "tensor"
        } else {
            "pipeline"
        };
        let recs = list(&["--ranks", "2", "--split", name]);
        // Each rank holds about half of the layers: bigger models fit 2 GB per rank.
        assert!(best_params(&recs) > best_params(&alone), "{name}: {recs:?}");
        for r in &recs {
            let entry = reg.get(r["id"].as_str().unwrap()).unwrap();
            let v = entry.variant(r["variant"].as_str().unwrap()).unwrap();
            let ctx = r["context_len"].as_u64().unwrap();
            let base = match r["compute"].as_str() {
                Some("f32") => EstimateOptions::f32(ctx),
                Some("cpu_kernels") => EstimateOptions::cpu(ctx),
                _ => EstimateOptions::new(ctx),
            };
            let opts = EstimateOptions {
                split: Some(RankSplit { ranks: 2, mode: split }),
                ..base
            };
            let bytes = r["estimated_memory_bytes"].as_u64().unwrap();
            assert_eq!(estimate_with(entry, v, &opts).total_bytes, bytes, "{name}: {r}");
            assert!(bytes <= 2_000_000_000);
        }
    }
    let bad = mlxengine(&["recommend", "--ranks", "0"]);
    assert!(!bad.status.success());
}

#[test]
fn recommend_plain_prints_one_line_per_entry() {
    let json = stdout_json(&mlxengine(&[
        "recommend",
        "--type",
        "embedding",
        "--memory",
        "2GB",
        "--json",
    ]));
    let out = mlxengine(&["recommend", "--type", "embedding", "--memory", "2GB"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let ids: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let want: Vec<&str> = json["recommendations"]
        .as_array()
        .expect("recommendations")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ids, want);
}

#[test]
fn search_qwen_llm_returns_only_matching_llms() {
    let out = mlxengine(&["search", "qwen", "--type", "llm", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hits = stdout_json(&out);
    let hits = hits.as_array().expect("a JSON array");
    assert!(!hits.is_empty(), "the registry has Qwen LLMs");
    let reg = Registry::builtin();
    for h in hits {
        assert_eq!(h["type"], "llm", "{h}");
        let id = h["id"].as_str().expect("id");
        let e = reg.get(id).expect("hit is a registry entry");
        let hay = format!("{} {} {}", e.id, e.name, e.family).to_lowercase();
        assert!(hay.contains("qwen"), "{id} does not match qwen");
        assert!(!h["variants"].as_array().expect("variants").is_empty());
    }
    // Every Qwen LLM of the registry is found.
    let want: Vec<&str> = reg
        .of_type(ModelType::Llm)
        .filter(|e| e.family.to_lowercase().contains("qwen"))
        .map(|e| e.id.as_str())
        .collect();
    let got: Vec<&str> = hits.iter().filter_map(|h| h["id"].as_str()).collect();
    for id in want {
        assert!(got.contains(&id), "{id} missing from {got:?}");
    }
}

#[test]
fn search_without_match_is_an_empty_list() {
    let out = mlxengine(&["search", "no-such-model-zzz", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out), serde_json::json!([]));
    let out = mlxengine(&["search", "no-such-model-zzz"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hub"));
}

#[test]
fn bad_input_is_a_one_line_error() {
    assert_one_line_error(&mlxengine(&["recommend", "--type", "banana"]), &["banana"]);
    assert_one_line_error(&mlxengine(&["recommend", "--type", "banana", "--json"]), &["banana"]);
    assert_one_line_error(&mlxengine(&["search", "qwen", "--type", "banana"]), &["banana"]);
    assert_one_line_error(
        &mlxengine(&["recommend", "--memory", "banana", "--json"]),
        &["`banana`", "e.g. 8GB"],
    );
    assert_one_line_error(&mlxengine(&["search", "--max-size", "lots"]), &["`lots`"]);
}

#[test]
fn a_budget_nothing_fits_fails_with_the_reason() {
    // Plain: a one-line error naming the budget and the smallest model.
    let out = mlxengine(&["recommend", "--type", "llm", "--memory", "1MB"]);
    assert_one_line_error(&out, &["1.0 MB", "smallest", "--memory"]);
    assert!(out.stdout.is_empty());
    // JSON: the report with its empty list and note on stdout, the same error on stderr, and a
    // failing exit status, so scripts need not parse the output to notice.
    let out = mlxengine(&["recommend", "--type", "llm", "--memory", "1MB", "--json"]);
    assert_one_line_error(&out, &["1.0 MB", "smallest"]);
    let j = stdout_json(&out);
    assert_eq!(j["recommendations"], serde_json::json!([]));
    let note = j["note"].as_str().expect("a note says why");
    assert!(note.contains("smallest"), "{note}");
}
