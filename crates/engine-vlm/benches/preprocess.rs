//! Image preprocessing (the CPU part of a vision prompt's time to first
//! token) with each family's processor — the committed fixtures' configs
//! with the real checkpoints' sizes (LLaVA 1.5/NeXT's 336² CLIP, Qwen2.5-VL's
//! pixel bounds, Gemma 3's 896², SmolVLM's 384² frames) — on a 448² image
//! and a 1024×768 photo-sized one: `cargo bench -p engine-vlm --bench preprocess`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engine_vlm::preprocess::ImageProcessorConfig;
use image::RgbImage;
use std::path::PathBuf;

/// A deterministic noisy image (no flat areas a resampler could skip).
fn image(w: u32, h: u32) -> RgbImage {
    let mut s = 0x9e37_79b9u32;
    RgbImage::from_fn(w, h, |_, _| {
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 24) as u8
        };
        image::Rgb([next(), next(), next()])
    })
}

fn preprocess(c: &mut Criterion) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let images = [("448x448", image(448, 448)), ("1024x768", image(1024, 768))];
    let mut g = c.benchmark_group("preprocess");
    g.sample_size(20);
    let real: [(&str, serde_json::Value); 5] = [
        (
            "llava",
            serde_json::json!({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}),
        ),
        (
            "llava-next",
            serde_json::json!({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
                "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]}),
        ),
        (
            "qwen2.5-vl",
            serde_json::json!({"size": {"shortest_edge": 3136, "longest_edge": 12845056}}),
        ),
        ("gemma3", serde_json::json!({"size": {"height": 896, "width": 896}})),
        (
            "idefics3",
            serde_json::json!({"size": {"longest_edge": 1536}, "max_image_size": {"longest_edge": 384}}),
        ),
    ];
    for (family, sizes) in real {
        let text = std::fs::read_to_string(fixtures.join(family).join("processor_config.json")).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
        let inner = &mut config["image_processor"];
        for (k, v) in sizes.as_object().unwrap() {
            inner[k] = v.clone();
        }
        let processor = ImageProcessorConfig::from_json(&inner.to_string())
            .unwrap()
            .processor()
            .unwrap();
        for (size, img) in &images {
            g.bench_with_input(BenchmarkId::new(family, size), img, |b, img| {
                b.iter(|| processor.preprocess(img).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
