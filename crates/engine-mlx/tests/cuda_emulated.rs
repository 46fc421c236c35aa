//! The CUDA kernels' device code (`src/shim/cuda_kernels.cc`) run on the CPU
//! under a small SIMT emulation (`tests/cuda_emu/emu.h`: a block's threads
//! as OS threads, barriers for `__syncthreads` and shuffles), against a
//! float64 reference. It checks the kernels' logic — indexing, tiling,
//! splits, epilogues — on machines without a GPU (CI), not their speed or
//! their half-precision conversions (inline PTX; float32 data only): the GPU
//! examples `qmv_check` and `attn_check` cover those on the device.

use std::path::Path;
use std::process::Command;

/// The device sources: the raw strings `kSource` and `kAttnSource` of cuda_kernels.cc.
fn device_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/shim/cuda_kernels.cc");
    let text = std::fs::read_to_string(&path).expect("read cuda_kernels.cc");
    let raw = |name: &str| {
        let open = format!("{name} = R\"(");
        let start = text.find(&open).unwrap_or_else(|| panic!("{name} in cuda_kernels.cc")) + open.len();
        let end = start + text[start..].find(")\";").expect("end of a raw string");
        text[start..end].to_string()
    };
    format!("#include \"emu.h\"\n{}\n{}", raw("kSource"), raw("kAttnSource"))
}

/// Builds `tests/cuda_emu/{program}.cc` with the kernels' source and runs it;
/// it prints each case's error and exits non-zero when one is off.
fn run_emulated(program: &str) {
    let dir = tempfile::tempdir().unwrap();
    let emu = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu");
    std::fs::write(dir.path().join("src.cc"), device_source()).unwrap();
    for f in ["emu.h".to_string(), format!("{program}.cc")] {
        std::fs::copy(emu.join(&f), dir.path().join(&f)).unwrap();
    }
    let exe = dir.path().join(program);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-w", "-pthread", "-o"])
        .arg(&exe)
        .arg(dir.path().join(format!("{program}.cc")))
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        out.status.success(),
        "compiling the emulated kernels ({program}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "emulated kernels disagree with float64:\n{stdout}"
    );
}

#[test]
fn fused_matvec_kernel_matches_f64_under_emulation() {
    run_emulated("qmv");
}

#[test]
fn decode_attention_kernels_match_f64_under_emulation() {
    run_emulated("attn");
}
