//! Decoding and preprocessing against Pillow and transformers' PIL image processors.
//!
//! The references come from xtask/parity/make_vlm_pixels.py, written into
//! target/vlm-pixels/ by `cargo xtask parity-fixtures` (run by scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use engine_vlm::image::{
    decode_bytes, load_path, pixel_hash, ImageError, ImageLimits, ImageSource, LoadImage, RgbImage,
};
use engine_vlm::preprocess::{resize, ImageProcessorConfig, PreprocessError, Resample};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vlm-pixels")
}

fn manifest() -> Value {
    let path = fixtures().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run `cargo xtask parity-fixtures` (or scripts/setup.sh) first",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("expected.json is valid JSON")
}

fn entries<'a>(m: &'a Value, key: &str) -> &'a [Value] {
    m[key]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("expected.json has no {key}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn load_fixture_image(name: &str) -> RgbImage {
    let path = fixtures().join("images").join(name);
    load_path(&path, &ImageLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_f32(rel: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// (max, mean) absolute difference.
fn diff<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x).into() - (*y).into()).abs())
        .collect();
    let max = d.iter().copied().fold(0.0, f64::max);
    (max, d.iter().sum::<f64>() / d.len().max(1) as f64)
}

#[test]
fn decoding_matches_pillow() {
    let m = manifest();
    let mut failures = Vec::new();
    for case in entries(&m, "decoded") {
        let name = str_of(case, "image");
        let rgb = load_fixture_image(name);
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        if rgb.dimensions() != (w, h) {
            failures.push(format!(
                "{name}: size {:?}, want {:?} (after EXIF orientation)",
                rgb.dimensions(),
                (w, h)
            ));
            continue;
        }
        let want = std::fs::read(fixtures().join(str_of(case, "rgb"))).unwrap();
        let (max, mean) = diff(rgb.as_raw(), &want);
        if !case["exact"].as_bool().unwrap() {
            eprintln!("{name}: max {max}, mean {mean:.3} (JPEG)");
        }
        // JPEG decoders differ (libjpeg-turbo in Pillow, zune-jpeg here): a loose bound.
        let ok = if case["exact"].as_bool().unwrap() {
            max == 0.0
        } else {
            mean < 1.0 && max <= 16.0
        };
        if !ok {
            failures.push(format!("{name} ({}): max {max}, mean {mean:.3}", str_of(case, "mode")));
        }
    }
    assert!(
        failures.is_empty(),
        "decoded pixels differ from Pillow:\n{}",
        failures.join("\n")
    );
}

#[test]
fn resize_matches_pillow() {
    let m = manifest();
    let mut failures = Vec::new();
    for case in entries(&m, "resized") {
        let src = load_fixture_image(str_of(case, "image"));
        let filter = Resample::from_pil(case["filter"].as_u64().unwrap()).unwrap();
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let got = resize(&src, w, h, filter);
        let want = std::fs::read(fixtures().join(str_of(case, "rgb"))).unwrap();
        let (max, _) = diff(got.as_raw(), &want);
        if max != 0.0 {
            failures.push(format!("{}: max {max}", str_of(case, "case")));
        }
    }
    assert!(
        failures.is_empty(),
        "resized pixels differ from Pillow:\n{}",
        failures.join("\n")
    );
}

#[test]
fn pixel_values_match_transformers() {
    let m = manifest();
    let mut failures = Vec::new();
    let cases = entries(&m, "pixels");
    let mut worst_exact = 0.0f64;
    assert!(
        cases.len() >= 40,
        "expected.json lists only {} processor cases",
        cases.len()
    );
    for case in cases {
        let name = str_of(case, "case");
        let config_json = m["configs"][str_of(case, "config")].to_string();
        let config = ImageProcessorConfig::from_json(&config_json).unwrap();
        let image = load_fixture_image(str_of(case, "image"));
        let got = config.preprocess(&image).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.shape, shape, "{name}: shape");
        let grid = case.get("image_grid_thw").map(|g| {
            let g: Vec<usize> = g
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            [g[0], g[1], g[2]]
        });
        assert_eq!(got.image_grid_thw, grid, "{name}: image_grid_thw");
        let want = read_f32(str_of(case, "values"));
        let (max, mean) = diff(&got.data, &want);
        if case["exact"].as_bool().unwrap() {
            worst_exact = worst_exact.max(max);
        } else {
            eprintln!("{name}: max {max:.5}, mean {mean:.5} (JPEG)");
        }
        let ok = if case["exact"].as_bool().unwrap() {
            max <= 1e-3
        } else {
            mean < 0.02 && max < 0.25
        };
        if !ok {
            failures.push(format!("{name}: max {max:.5}, mean {mean:.5}"));
        }
    }
    eprintln!(
        "{} processor cases; worst max abs diff on lossless images: {worst_exact:e}",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "pixel values differ from transformers:\n{}",
        failures.join("\n")
    );
}

#[test]
fn data_and_file_urls_round_trip() {
    let path = fixtures().join("images/rgba-61x47.png");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}: run `cargo xtask parity-fixtures`"));
    let limits = ImageLimits::default();
    let from_path = ImageSource::Path(path.clone()).load(&limits).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    for url in [
        format!("data:image/png;base64,{b64}"),
        format!("DATA:image/png;base64,{}", b64.trim_end_matches('=')),
    ] {
        let from_url = ImageSource::Url(url).load(&limits).unwrap();
        assert_eq!(from_url, from_path);
    }
    let from_bytes = ImageSource::Bytes(bytes).load(&limits).unwrap();
    assert_eq!(pixel_hash(&from_bytes), pixel_hash(&from_path));
    let canonical = path.canonicalize().unwrap();
    let file_url = format!("file://{}", canonical.display().to_string().replace(' ', "%20"));
    assert_eq!(ImageSource::Url(file_url).load(&limits).unwrap(), from_path);
}

#[test]
fn pixel_hash_is_stable_and_content_keyed() {
    let a = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let b = RgbImage::from_raw(1, 2, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let c = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 7]).unwrap();
    assert_eq!(pixel_hash(&a), pixel_hash(&a.clone()));
    assert_ne!(pixel_hash(&a), pixel_hash(&b), "the size is part of the key");
    assert_ne!(pixel_hash(&a), pixel_hash(&c));
    // Pinned: a cache keyed by this value must survive upgrades.
    assert_eq!(
        pixel_hash(&a),
        pixel_hash(&RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap())
    );
}

// ------------------------------------------------------------------ errors

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));

    let start = Instant::now();
    let err = decode_bytes(&png, "bomb.png", &ImageLimits::default()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                max_pixels: 50_000_000,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("100000x100000") && msg.contains("50000000") && msg.contains("max_pixels"),
        "{msg}"
    );

    // A GIF header declaring 65535x65535 too, and a raised limit lets a real image through.
    let mut gif = b"GIF89a\xff\xff\xff\xff\0\0\0".to_vec();
    // One 65535x65535 frame with a 2-colour local palette and a stub of LZW data.
    gif.extend_from_slice(b"\x2c\0\0\0\0\xff\xff\xff\xff\x80\0\0\0\xff\xff\xff\x02\x02\x4c\x01\0\x3b");
    let err = decode_bytes(&gif, "bomb.gif", &ImageLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 65535,
                height: 65535,
                ..
            }
        ),
        "{err}"
    );
    let small = ImageLimits { max_pixels: 100 };
    let err = ImageSource::Path(fixtures().join("images/rgb-61x47.png"))
        .load(&small)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 61,
                height: 47,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_files_give_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ImageLimits::default();

    let missing = dir.path().join("nope.png");
    let err = load_path(&missing, &limits).unwrap_err();
    assert!(
        matches!(err, ImageError::NotFound { .. }) && err.to_string().contains("nope.png"),
        "{err}"
    );

    let empty = write_temp(&dir, "empty.png", b"");
    let err = load_path(&empty, &limits).unwrap_err();
    assert!(
        matches!(err, ImageError::Empty { .. }) && err.to_string().contains("empty.png"),
        "{err}"
    );

    let text = write_temp(&dir, "notes.jpg", b"hello, this is not a picture\n");
    let err = load_path(&text, &limits).unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    assert!(
        err.to_string().contains("notes.jpg") && err.to_string().contains("text"),
        "{err}"
    );

    let bmp = write_temp(&dir, "x.png", b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0");
    let err = load_path(&bmp, &limits).unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedFormat { .. }), "{err}");

    let png = std::fs::read(fixtures().join("images/rgb-400x300.png"))
        .unwrap_or_else(|e| panic!("{e}: run `cargo xtask parity-fixtures`"));
    for cut in [4, 20, 40, png.len() / 2, png.len() - 20] {
        let truncated = write_temp(&dir, "cut.png", &png[..cut]);
        let err = load_path(&truncated, &limits).unwrap_err();
        assert!(
            matches!(err, ImageError::Corrupt { format: "PNG", .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("cut.png"), "{err}");
    }
    let mut flipped = png.clone();
    flipped[png.len() / 2] ^= 0xff;
    assert!(matches!(
        decode_bytes(&flipped, "x", &limits),
        Err(ImageError::Corrupt { .. })
    ));

    // Pillow refuses JPEGs and GIFs cut anywhere before the image ends; so do we.
    // Data appended after a complete image (motion photos) is fine.
    for name in ["plain-64x40.jpg", "gif-trns-61x47.gif", "lossless-61x47.webp"] {
        let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 3] {
            let err = decode_bytes(&bytes[..cut], name, &limits).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt { .. }), "{name} cut at {cut}: {err}");
        }
        let mut padded = bytes.clone();
        padded.extend_from_slice(b"\xff\xd8 trailing bytes");
        assert!(
            decode_bytes(&padded, name, &limits).is_ok(),
            "{name} with trailing data"
        );
    }

    // Garbage after every known signature: errors, never panics.
    for magic in [
        &b"\xff\xd8\xff"[..],
        b"GIF89a",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"\x89PNG\r\n\x1a\n",
    ] {
        for tail in [&b""[..], b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", &[0xff; 64]] {
            let bytes = [magic, tail].concat();
            assert!(
                decode_bytes(&bytes, "junk", &limits).is_err(),
                "{magic:?} + {} bytes",
                tail.len()
            );
        }
    }
}

#[test]
fn bad_urls_are_refused_with_the_fix() {
    let limits = ImageLimits::default();
    let load = |url: &str| ImageSource::Url(url.to_string()).load(&limits).unwrap_err();

    for url in ["http://example.com/cat.png", "HTTPS://example.com/cat.png"] {
        let err = load(url);
        assert!(matches!(err, ImageError::RemoteUrl { .. }), "{err}");
        assert!(err.to_string().contains("download"), "{err}");
    }
    for url in [
        "data:image/png;base64",
        "data:image/png;base64,@@@@",
        "data:image/png,iVBORw0K",
        "data:text/plain;base64,aGk=",
        "data:image/png;base64,",
    ] {
        let err = load(url);
        assert!(matches!(err, ImageError::BadDataUrl { .. }), "{url}: {err}");
    }
    // Valid base64 of something that is not an image.
    assert!(matches!(
        load("data:image/png;base64,aGVsbG8gd29ybGQ="),
        ImageError::NotAnImage { .. }
    ));
    assert!(matches!(load("ftp://host/x.png"), ImageError::BadUrl { .. }));
    assert!(matches!(load("file://server/share/x.png"), ImageError::BadUrl { .. }));
    assert!(matches!(
        load("file:///definitely/not/here.png"),
        ImageError::NotFound { .. }
    ));
}

#[test]
fn bad_processor_configs_are_refused() {
    let config = |json: &str| ImageProcessorConfig::from_json(json).and_then(|c| c.processor());
    let clip = |extra: &str| config(&format!(r#"{{"image_processor_type": "CLIPImageProcessor", {extra}}}"#));

    assert!(matches!(config("{}"), Err(PreprocessError::MissingProcessorType)));
    assert!(matches!(
        config(r#"{"image_processor_type": "PixtralImageProcessor"}"#),
        Err(PreprocessError::UnsupportedProcessor { .. })
    ));
    assert!(matches!(config("{not json"), Err(PreprocessError::ParseConfig { .. })));
    for extra in [
        r#""size": {}"#,
        r#""size": {"shortest_edge": 0}"#,
        r#""size": {"height": 24}"#,
        r#""size": {"longest_edge": 24}"#,
        r#""size": {"shortest_edge": 24, "fancy": 1}"#,
        r#""size": "big""#,
        r#""size": [1, 2, 3]"#,
        r#""crop_size": {"shortest_edge": 24}"#,
        r#""crop_size": {"height": 0, "width": 24}"#,
        r#""image_mean": [0.5, 0.5]"#,
        r#""image_std": [0.5, 0.0, 0.5]"#,
        r#""image_std": "wide""#,
        r#""resample": 9"#,
    ] {
        let err = clip(extra).unwrap_err();
        assert!(matches!(err, PreprocessError::BadConfig { .. }), "{extra}: {err}");
    }
    let siglip = r#"{"image_processor_type": "SiglipImageProcessor", "do_center_crop": true}"#;
    assert!(matches!(
        config(siglip),
        Err(PreprocessError::BadConfig { field: "crop_size", .. })
    ));
    let gemma = r#"{"image_processor_type": "Gemma3ImageProcessor", "do_pan_and_scan": true}"#;
    assert!(matches!(config(gemma), Err(PreprocessError::Unsupported { .. })));
    let qwen = r#"{"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 0}"#;
    assert!(matches!(
        config(qwen),
        Err(PreprocessError::BadConfig {
            field: "patch_size",
            ..
        })
    ));

    // Legacy spellings still load: int sizes, Fast/Pil class names, the old feature extractor key.
    let legacy = r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224}"#;
    assert!(config(legacy).is_ok());
    assert!(config(r#"{"image_processor_type": "CLIPImageProcessorFast"}"#).is_ok());

    // Images the processor cannot take.
    let qwen = config(r#"{"image_processor_type": "Qwen2VLImageProcessor"}"#).unwrap();
    let sliver = RgbImage::new(1, 300);
    assert!(matches!(
        qwen.preprocess(&sliver),
        Err(PreprocessError::BadImageSize { .. })
    ));
    let clip = config(r#"{"image_processor_type": "CLIPImageProcessor"}"#).unwrap();
    assert!(matches!(
        clip.preprocess(&RgbImage::new(0, 0)),
        Err(PreprocessError::EmptyImage)
    ));

    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        ImageProcessorConfig::from_dir(dir.path()),
        Err(PreprocessError::MissingConfig { .. })
    ));
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 0}}"#,
    )
    .unwrap();
    assert!(matches!(
        ImageProcessorConfig::from_dir(dir.path()),
        Err(PreprocessError::BadConfig { .. })
    ));
}
