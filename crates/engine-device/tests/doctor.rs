//! The device report against what the OS itself says.

use engine_device::DeviceReport;
use std::process::Command;

fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
}

#[test]
#[cfg(target_os = "linux")]
fn report_matches_nproc_and_proc_meminfo() {
    let r = DeviceReport::detect();
    let nproc: usize = String::from_utf8(Command::new("nproc").output().expect("nproc").stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(r.cpu_cores, nproc);
    assert_eq!(r.memory_total_bytes, meminfo_kib("MemTotal") * 1024);
    // MemAvailable moves while other processes run: within 5% or 256 MiB.
    let avail = meminfo_kib("MemAvailable") * 1024;
    let diff = r.memory_available_bytes.abs_diff(avail);
    assert!(
        diff <= (avail / 20).max(256 << 20),
        "report {} vs /proc/meminfo {}",
        r.memory_available_bytes,
        avail
    );
    assert!(r.memory_available_bytes <= r.memory_total_bytes);
    assert_eq!(r.os, "linux");
}

#[test]
fn report_agrees_with_mlx() {
    let r = DeviceReport::detect();
    assert_eq!(r.blas, engine_mlx::blas());
    assert_eq!(r.mlx_version, engine_mlx::mlx_version());
    assert_eq!(r.backend, engine_mlx::backend().as_str());
    assert_eq!(r.gpu_available, engine_mlx::gpu_available());
    assert_eq!(r.mlx_version.split('.').count(), 3, "{}", r.mlx_version);
    if !r.gpu_available {
        assert_eq!(r.backend, "cpu");
        assert!(r.unified_memory);
        assert_eq!(
            r.usable_memory_bytes(),
            r.memory_available_bytes.min(r.memory_limit_bytes.unwrap_or(u64::MAX))
        );
    }
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        r.cpu_features.contains(&"avx2".to_string()),
        std::arch::is_x86_feature_detected!("avx2")
    );
}

#[test]
fn doctor_json_has_the_documented_fields() {
    let r = DeviceReport::detect();
    let j = r.doctor_json();
    for k in ["backend", "device_name", "blas", "mlx_version", "os"] {
        assert!(j[k].as_str().is_some_and(|s| !s.is_empty()), "{k}: {}", j[k]);
    }
    for k in [
        "memory_total_bytes",
        "memory_available_bytes",
        "cpu_cores",
        "usable_memory_bytes",
    ] {
        assert!(j[k].as_u64().is_some_and(|n| n > 0), "{k}: {}", j[k]);
    }
    assert_eq!(j["cpu_cores"], r.cpu_cores);
    let problems = j["problems"].as_array().expect("problems array");
    // Every problem names a fix; a machine with OpenBLAS linked reports no BLAS problem.
    for p in problems {
        assert!(p["fix"].as_str().is_some_and(|f| !f.is_empty()), "{p}");
    }
    let blas_problem = problems.iter().any(|p| p["code"] == "no_openblas");
    assert_eq!(blas_problem, r.blas != "openblas" && r.os == "linux");
    // Round-trips.
    let back: DeviceReport = serde_json::from_value(r.to_json()).unwrap();
    assert_eq!(back, r);
}
