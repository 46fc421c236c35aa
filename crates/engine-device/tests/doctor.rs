//! The device report against what the OS itself says: /proc/meminfo, the
//! CPUs the kernel lets this process use, and the libraries actually mapped
//! into it (never against the values the report is built from).

use engine_device::DeviceReport;

fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
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

/// What the linked libraries say: the BLAS MLX's matmuls land in (OpenBLAS
/// when it is mapped, else the wheel's reference BLAS) and the MLX version in
/// the headers next to the mapped `libmlx.so`.
#[cfg(target_os = "linux")]
fn linked_blas_and_mlx_version(libs: &[String]) -> (&'static str, String) {
    let blas = if libs.iter().any(|l| l.contains("libopenblas")) {
        "openblas"
    } else {
        "bundled-reference"
    };
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
    (blas, format!("{}.{}.{}", part("MAJOR"), part("MINOR"), part("PATCH")))
}

#[test]
#[cfg(target_os = "linux")]
fn report_matches_the_kernels_cpus_and_proc_meminfo() {
    let r = DeviceReport::detect();
    assert_eq!(r.cpu_cores, os_cpu_count());
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
#[cfg(target_os = "linux")]
fn report_names_the_linked_blas_and_mlx() {
    let r = DeviceReport::detect();
    let (blas, mlx_version) = linked_blas_and_mlx_version(&mapped_libraries("self"));
    assert_eq!(r.blas, blas);
    assert_eq!(r.mlx_version, mlx_version);
}

#[test]
fn report_agrees_with_mlx() {
    let r = DeviceReport::detect();
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
    #[cfg(target_os = "linux")]
    assert_eq!(j["cpu_cores"], os_cpu_count());
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
