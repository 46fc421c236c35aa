//! Every ggml block type decoded bit-for-bit as gguf-py's numpy reference does,
//! on random blocks (odd block counts) made by xtask/parity/make_gguf_quants.py
//! into target/gguf-quants (`cargo xtask parity-fixtures`).

use engine_core::gguf::GgmlType;
use engine_core::gguf_quant::{dequantize, SUPPORTED};
use std::path::PathBuf;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/gguf-quants");
    assert!(
        d.join("expected.json").is_file(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        d.display()
    );
    d
}

#[test]
fn every_type_matches_gguf_py_bit_for_bit() {
    let d = dir();
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap();
    assert_eq!(expected.len(), SUPPORTED.len(), "one fixture per supported type");
    for ty in SUPPORTED {
        let name = ty.name().unwrap();
        let elements = expected[name].as_u64().unwrap() as usize;
        let blocks = std::fs::read(d.join(format!("{name}.blocks"))).unwrap();
        let want: Vec<u32> = std::fs::read(d.join(format!("{name}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got = dequantize(name, ty, &blocks, elements).unwrap();
        let mismatches = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != **w).count();
        assert_eq!(
            mismatches, 0,
            "{name}: {mismatches} of {elements} values differ from gguf-py"
        );
    }
}

/// The threaded path (large tensors) gives what block-by-block decoding gives.
#[test]
fn threaded_decode_equals_block_by_block() {
    let d = dir();
    for (name, ty, block, bytes) in [("Q4_K", GgmlType(12), 256, 144), ("Q5_0", GgmlType(6), 32, 22)] {
        let seed = std::fs::read(d.join(format!("{name}.blocks"))).unwrap();
        let n_blocks = (1 << 19) / block + 3;
        let data: Vec<u8> = (0..n_blocks)
            .flat_map(|i| seed[(i % 3) * bytes..(i % 3 + 1) * bytes].to_vec())
            .collect();
        let all = dequantize(name, ty, &data, n_blocks * block).unwrap();
        for i in [0, 1, n_blocks / 2, n_blocks - 1] {
            let one = dequantize(name, ty, &data[i * bytes..(i + 1) * bytes], block).unwrap();
            assert_eq!(&all[i * block..(i + 1) * block], &one[..], "{name} block {i}");
        }
    }
}
