//! Recommendations and load-time selection against memory budgets.

use engine_core::ModelType;
use engine_device::{
    estimate_memory, parse_size, ComputePath, DeviceError, DeviceReport, MemoryBudget, Purpose, RankSplit, Registry,
    SplitKind,
};

/// This machine, described as another backend with `gpu_gb` of GPU memory.
fn as_backend(backend: &str, blas: &str, gpu_gb: Option<u64>) -> DeviceReport {
    let mut r = DeviceReport::detect();
    r.backend = backend.into();
    r.blas = blas.into();
    r.gpu_available = backend != "cpu";
    r.unified_memory = backend != "cuda";
    r.gpu_memory_total_bytes = gpu_gb.map(|g| g * 1_000_000_000);
    r.gpu_memory_available_bytes = r.gpu_memory_total_bytes;
    r
}

#[test]
fn a_2gb_budget_only_gets_entries_estimated_within_2gb() {
    let device = DeviceReport::detect();
    let budget = MemoryBudget::parse("2GB").unwrap();
    let rep = Registry::builtin().recommend(&device, ModelType::Llm, &Purpose::default(), &budget);
    assert_eq!(rep.budget_bytes, 2_000_000_000);
    assert!(rep.recommendations.len() >= 5, "{rep:#?}");
    assert!(rep.note.is_none());
    let mut ids = std::collections::HashSet::new();
    for r in &rep.recommendations {
        assert!(r.estimated_memory_bytes <= 2_000_000_000, "{r:?}");
        assert_eq!(r.estimated_memory_bytes, r.estimate.total_bytes);
        assert!(!r.reason.is_empty() && !r.reason.contains('\n'));
        assert!(ids.insert(r.id.clone()), "{} twice", r.id);
        let entry = Registry::builtin().get(&r.id).unwrap();
        assert_eq!(entry.model_type, ModelType::Llm);
    }
    // Best first: the biggest model that fits leads, the 135M one trails.
    let params: Vec<u64> = rep
        .recommendations
        .iter()
        .map(|r| Registry::builtin().get(&r.id).unwrap().params)
        .collect();
    assert!(params[0] > 1_000_000_000, "{params:?}");
    assert_eq!(rep.recommendations.last().unwrap().id, "smollm2-135m-instruct");
    let j = serde_json::to_value(&rep).unwrap();
    for k in ["id", "variant", "estimated_memory_bytes", "reason"] {
        assert!(!j["recommendations"][0][k].is_null(), "{k}");
    }
}

#[test]
fn the_variant_follows_the_backend() {
    let reg = Registry::builtin();
    let purpose = Purpose::default();
    // CUDA with room: bf16 of an 8B model.
    let cuda = as_backend("cuda", "openblas", Some(80));
    let s = reg
        .select_variant("qwen3-8b", None, &cuda, &MemoryBudget::default(), &Purpose::default())
        .unwrap();
    assert_eq!(s.variant, "bf16");
    assert!(s.reason.contains("CUDA"), "{}", s.reason);
    // CUDA with 10 GB: bf16 (16 GB) does not fit, 8-bit does.
    let s = reg
        .select_variant(
            "qwen3-8b",
            None,
            &cuda,
            &MemoryBudget::parse("10GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap();
    assert_eq!(s.variant, "8bit");
    assert!(s.reason.contains("bf16 would need"), "{}", s.reason);
    // An 8 GB Mac: 4-bit.
    let mac = as_backend("metal", "bundled-reference", None);
    let s = reg
        .select_variant(
            "llama-3.1-8b-instruct",
            None,
            &mac,
            &MemoryBudget::parse("6GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap();
    assert_eq!(s.variant, "4bit");
    // CPU with OpenBLAS and room: f32 from bf16; with little room, as stored.
    let cpu = as_backend("cpu", "openblas", None);
    let s = reg
        .select_variant(
            "qwen2.5-0.5b-instruct",
            None,
            &cpu,
            &MemoryBudget::parse("8GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap();
    assert_eq!((s.variant.as_str(), s.compute), ("bf16", ComputePath::F32));
    assert!(s.estimate.weights_bytes >= 4 * 494_000_000);
    let s = reg
        .select_variant(
            "qwen2.5-0.5b-instruct",
            None,
            &cpu,
            &MemoryBudget::parse("1GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap();
    assert_eq!((s.variant.as_str(), s.compute), ("8bit", ComputePath::Native));
    // A quantized variant with room: the int8 CPU kernels (the CPU default).
    let s = reg
        .select_variant(
            "qwen2.5-0.5b-instruct",
            Some("8bit"),
            &cpu,
            &MemoryBudget::parse("8GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap();
    assert_eq!((s.variant.as_str(), s.compute), ("8bit", ComputePath::CpuKernels));
    // CPU without OpenBLAS: 4-bit.
    let slow = as_backend("cpu", "bundled-reference", None);
    let r = reg.recommend(&slow, ModelType::Llm, &purpose, &MemoryBudget::parse("64GB").unwrap());
    assert!(r.recommendations.iter().all(|r| r.variant.contains('4')), "{r:#?}");
}

#[test]
fn a_split_model_is_planned_per_rank() {
    let reg = Registry::builtin();
    let cuda = as_backend("cuda", "openblas", Some(80));
    let budget = MemoryBudget::parse("12GB").unwrap();
    // Qwen3-8B in bf16 (16 GB) does not fit 12 GB in one process: 8-bit does.
    let whole = reg
        .select_variant("qwen3-8b", None, &cuda, &budget, &Purpose::default())
        .unwrap();
    assert_eq!(whole.variant, "8bit");
    // Split in two, each rank holds half of every layer (or half of the layers) plus the
    // embeddings and LM head: bf16 fits each rank's 12 GB.
    for mode in [SplitKind::Tensor, SplitKind::Pipeline] {
        let purpose = Purpose {
            split: Some(RankSplit { ranks: 2, mode }),
            ..Purpose::default()
        };
        let s = reg.select_variant("qwen3-8b", None, &cuda, &budget, &purpose).unwrap();
        assert_eq!(s.variant, "bf16", "{mode:?}: {}", s.reason);
        let one = reg
            .select_variant(
                "qwen3-8b",
                Some("bf16"),
                &cuda,
                &MemoryBudget::parse("1TB").unwrap(),
                &Purpose::default(),
            )
            .unwrap();
        let share = s.estimate.weights_bytes as f64 / one.estimate.weights_bytes as f64;
        assert!((0.55..0.6).contains(&share), "{mode:?}: {share}");
        assert!(s.estimate.kv_cache_bytes * 2 == one.estimate.kv_cache_bytes, "{mode:?}");
        let r = reg.recommend(&cuda, ModelType::Llm, &purpose, &budget);
        assert!(
            r.recommendations
                .iter()
                .any(|r| r.id == "qwen3-8b" && r.variant == "bf16"),
            "{mode:?}"
        );
    }
}

#[test]
fn too_big_fails_before_download_with_estimate_and_budget() {
    let reg = Registry::builtin();
    let cpu = as_backend("cpu", "openblas", None);
    let e = reg
        .select_variant(
            "qwen3-8b",
            None,
            &cpu,
            &MemoryBudget::parse("2GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap_err();
    assert!(matches!(e, DeviceError::DoesNotFit { .. }));
    let msg = e.to_string();
    assert!(msg.contains("2.00 GB") && msg.contains("needs about"), "{msg}");
    assert!(msg.contains("4bit") && msg.contains("weights"), "{msg}");

    let e = reg
        .select_variant(
            "qwen3-8b",
            Some("bf16"),
            &cpu,
            &MemoryBudget::parse("8GB").unwrap(),
            &Purpose::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("`--variant 4bit` fits"), "{e}");
    assert!(matches!(
        reg.select_variant(
            "qwen3-8b",
            Some("3bit"),
            &cpu,
            &MemoryBudget::default(),
            &Purpose::default()
        ),
        Err(DeviceError::UnknownVariant { .. })
    ));
    assert!(matches!(
        reg.select_variant("gpt-5", None, &cpu, &MemoryBudget::default(), &Purpose::default()),
        Err(DeviceError::UnknownModel { .. })
    ));
}

#[test]
fn a_budget_nothing_fits_gives_an_empty_list_and_the_reason() {
    let device = DeviceReport::detect();
    for t in ModelType::ALL {
        let r = Registry::builtin().recommend(&device, t, &Purpose::default(), &MemoryBudget::parse("10MB").unwrap());
        assert!(r.recommendations.is_empty());
        let note = r.note.expect("a reason");
        assert!(
            note.contains("nothing of type") && note.contains("smallest is"),
            "{note}"
        );
    }
    // A context longer than every model's.
    let r = Registry::builtin().recommend(
        &device,
        ModelType::Llm,
        &Purpose {
            context_len: Some(10_000_000),
            ..Purpose::default()
        },
        &MemoryBudget::parse("1TB").unwrap(),
    );
    assert!(r.recommendations.is_empty());
    assert!(r.note.unwrap().contains("shorter context"));
}

#[test]
fn estimates_grow_with_bits_and_context() {
    let reg = Registry::builtin();
    let m = reg.get("llama-3.1-8b-instruct").unwrap();
    let e = |v: &str, ctx| estimate_memory(m, m.variant(v).unwrap(), ctx);
    assert!(e("4bit", 4096).total_bytes < e("8bit", 4096).total_bytes);
    assert!(e("8bit", 4096).total_bytes < e("bf16", 4096).total_bytes);
    // 8B in bf16: ~16 GB of weights plus 128 KiB of KV per token.
    assert_eq!(e("bf16", 8192).kv_cache_bytes, 8192 * 131_072);
    let total = e("bf16", 8192).total_bytes as f64;
    assert!((17.0e9..18.5e9).contains(&total), "{total}");
    assert!(e("bf16", 32768).kv_cache_bytes == 4 * e("bf16", 8192).kv_cache_bytes);
    // Context beyond the model's is capped to it.
    let g = reg.get("gemma-2-2b-it").unwrap();
    let v = g.variant("bf16").unwrap();
    assert_eq!(estimate_memory(g, v, 8192), estimate_memory(g, v, 100_000));
    // Every variant of every entry gets a positive estimate of at least its weights.
    for m in &reg.models {
        for v in &m.variants {
            let e = estimate_memory(m, v, 2048);
            assert!(e.total_bytes > v.file_size_bytes, "{} {}", m.id, v.name);
            let run = e.weights_bytes + e.kv_cache_bytes + e.activations_bytes;
            assert_eq!(e.total_bytes, run.max(e.load_bytes));
        }
    }
}

#[test]
fn bad_sizes_are_one_line_errors() {
    let e = parse_size("banana").unwrap_err().to_string();
    assert!(e.contains("`banana`") && !e.contains('\n'), "{e}");
    assert!(MemoryBudget::parse("-3GB").is_err());
}
