//! Dequantizers for ggml's block types, bit-exact with gguf-py's numpy
//! reference (`gguf.quants.dequantize`, itself llama.cpp's `dequantize_row_*`).
//!
//! Each block type decodes one block at a time into a fixed-size output
//! slice; the products are done in f32 in the reference's order (no fused
//! multiply-add), which is what makes the results bit-identical. Large
//! tensors are split across threads by whole blocks.

use crate::gguf::GgmlType;
use thiserror::Error;

/// Why a tensor could not be dequantized.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DequantError {
    /// A type this engine has no dequantizer for.
    #[error("tensor `{tensor}` is stored as {ty}, which this engine cannot read yet; supported: {supported}. Convert the model with llama.cpp's `llama-quantize` to one of those (Q4_K_M is the common choice)")]
    Unsupported {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// The supported type names.
        supported: String,
    },
    /// The data does not hold whole blocks for the element count.
    #[error("tensor `{tensor}` ({ty}) has {elements} elements, which do not fill whole {block}-element blocks, or its {bytes} bytes do not match; the file is corrupt")]
    Size {
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Elements wanted.
        elements: usize,
        /// Elements per block.
        block: usize,
        /// Bytes given.
        bytes: usize,
    },
}

/// ggml type ids this module decodes.
pub mod types {
    use crate::gguf::GgmlType;
    /// 32-bit float.
    pub const F32: GgmlType = GgmlType(0);
    /// IEEE half.
    pub const F16: GgmlType = GgmlType(1);
    /// 4-bit, 32 per block, one f16 scale, offset 8.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// 4-bit, 32 per block, f16 scale and minimum.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// 5-bit, 32 per block, one f16 scale, offset 16.
    pub const Q5_0: GgmlType = GgmlType(6);
    /// 5-bit, 32 per block, f16 scale and minimum.
    pub const Q5_1: GgmlType = GgmlType(7);
    /// 8-bit signed, 32 per block, one f16 scale.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// 2-bit K-quant (16 sub-blocks of 16).
    pub const Q2_K: GgmlType = GgmlType(10);
    /// 3-bit K-quant (16 sub-blocks of 16).
    pub const Q3_K: GgmlType = GgmlType(11);
    /// 4-bit K-quant (8 sub-blocks of 32, 6-bit scales and minimums).
    pub const Q4_K: GgmlType = GgmlType(12);
    /// 5-bit K-quant (8 sub-blocks of 32).
    pub const Q5_K: GgmlType = GgmlType(13);
    /// 6-bit K-quant (16 sub-blocks of 16, int8 scales).
    pub const Q6_K: GgmlType = GgmlType(14);
    /// 4-bit non-linear, 32 per block.
    pub const IQ4_NL: GgmlType = GgmlType(20);
    /// 4-bit non-linear, 256 per block with 6-bit sub-block scales.
    pub const IQ4_XS: GgmlType = GgmlType(23);
    /// bfloat16.
    pub const BF16: GgmlType = GgmlType(30);
}

use types::*;

/// Every type [`dequantize_into`] decodes.
pub const SUPPORTED: [GgmlType; 15] = [
    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
];

/// Whether [`dequantize_into`] decodes `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

fn supported_names() -> String {
    SUPPORTED.iter().filter_map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

/// The non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
const KVALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

#[inline]
fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Decodes one block into its elements.
type BlockFn = fn(&[u8], &mut [f32]);

/// Decodes the elements of `data` (stored as `ty`) into `out`, which must
/// hold exactly the tensor's element count. `tensor` names it in errors.
pub fn dequantize_into(tensor: &str, ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let (block, bytes, decode): (usize, usize, BlockFn) = match ty {
        F32 => (1, 4, |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F16 => (1, 2, |b, o| o[0] = f16(b, 0)),
        BF16 => (1, 2, |b, o| {
            o[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        Q4_0 => (32, 18, q4_0),
        Q4_1 => (32, 20, q4_1),
        Q5_0 => (32, 22, q5_0),
        Q5_1 => (32, 24, q5_1),
        Q8_0 => (32, 34, q8_0),
        Q2_K => (256, 84, q2_k),
        Q3_K => (256, 110, q3_k),
        Q4_K => (256, 144, q4_k),
        Q5_K => (256, 176, q5_k),
        Q6_K => (256, 210, q6_k),
        IQ4_NL => (32, 18, iq4_nl),
        IQ4_XS => (256, 136, iq4_xs),
        _ => {
            return Err(DequantError::Unsupported {
                tensor: tensor.into(),
                ty,
                supported: supported_names(),
            })
        }
    };
    let n_blocks = out.len() / block;
    if !out.len().is_multiple_of(block) || data.len() != n_blocks * bytes {
        return Err(DequantError::Size {
            tensor: tensor.into(),
            ty,
            elements: out.len(),
            block,
            bytes: data.len(),
        });
    }
    let run = |data: &[u8], out: &mut [f32]| {
        for (b, o) in data.chunks_exact(bytes).zip(out.chunks_exact_mut(block)) {
            decode(b, o);
        }
    };
    // Threads pay off only past a few hundred thousand elements.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || out.len() < 1 << 18 {
        run(data, out);
        return Ok(());
    }
    let per = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (d, o) in data.chunks(per * bytes).zip(out.chunks_mut(per * block)) {
            s.spawn(move || run(d, o));
        }
    });
    Ok(())
}

/// [`dequantize_into`] into a new vector of `elements` values.
pub fn dequantize(tensor: &str, ty: GgmlType, data: &[u8], elements: usize) -> Result<Vec<f32>, DequantError> {
    let mut out = vec![0.0f32; elements];
    dequantize_into(tensor, ty, data, &mut out)?;
    Ok(out)
}

/// The low or high nibbles of 16 bytes give elements 0..16 and 16..32.
#[inline]
fn nibble(qs: &[u8], i: usize) -> u8 {
    (qs[i % 16] >> (4 * (i / 16))) & 0x0F
}

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    for (i, o) in o.iter_mut().enumerate() {
        *o = d * (nibble(&b[2..], i) as i8 - 8) as f32;
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    for (i, o) in o.iter_mut().enumerate() {
        *o = d * nibble(&b[4..], i) as f32 + m;
    }
}

/// A 5-bit value: the nibble plus bit `i` of the little-endian `qh` word.
#[inline]
fn five(qh: u32, qs: &[u8], i: usize) -> u8 {
    nibble(qs, i) | ((((qh >> i) & 1) as u8) << 4)
}

fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (i, o) in o.iter_mut().enumerate() {
        *o = d * (five(qh, &b[6..], i) as i8 - 16) as f32;
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (i, o) in o.iter_mut().enumerate() {
        *o = d * five(qh, &b[8..], i) as f32 + m;
    }
}

fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16(b, 80), f16(b, 82));
    for (e, o) in o.iter_mut().enumerate() {
        let sc = scales[e / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let (half, within) = (e / 128, e % 128);
        let q = (qs[half * 32 + within % 32] >> (2 * (within / 32))) & 3;
        *o = dl * q as f32 - ml;
    }
}

fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16(b, 108);
    let mut dl = [0.0f32; 16];
    for (i, dl) in dl.iter_mut().enumerate() {
        let low = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *dl = d * ((low | (high << 4)) as i8 - 32) as f32;
    }
    for (e, o) in o.iter_mut().enumerate() {
        let (half, within) = (e / 128, e % 128);
        let low = (qs[half * 32 + within % 32] >> (2 * (within / 32))) & 3;
        // The high bit set means no offset; clear means -4.
        let high = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
        *o = dl[e / 16] * (low as i8 - (high << 2) as i8) as f32;
    }
}

/// The eight 6-bit scales and minimums of a Q4_K / Q5_K block.
pub fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Element `e` of a K-quant's 4-bit part: 32-byte chunks hold 64 elements,
/// low nibbles first.
#[inline]
pub fn nibble_k(qs: &[u8], e: usize) -> u8 {
    (qs[(e / 64) * 32 + e % 32] >> (4 * ((e % 64) / 32))) & 0x0F
}

fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16(b, 0), f16(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..8 {
        let dj = d * sc[j] as f32;
        let mj = dmin * mn[j] as f32;
        for (l, o) in o[j * 32..(j + 1) * 32].iter_mut().enumerate() {
            *o = dj * nibble_k(qs, j * 32 + l) as f32 - mj;
        }
    }
}

fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16(b, 0), f16(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for j in 0..8 {
        let dj = d * sc[j] as f32;
        let mj = dmin * mn[j] as f32;
        for (l, o) in o[j * 32..(j + 1) * 32].iter_mut().enumerate() {
            let e = j * 32 + l;
            let q = nibble_k(qs, e) | (((qh[l] >> j) & 1) << 4);
            *o = dj * q as f32 - mj;
        }
    }
}

fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16(b, 208);
    for (e, o) in o.iter_mut().enumerate() {
        let (half, within) = (e / 128, e % 128);
        let low = (ql[half * 64 + within % 64] >> (4 * (within / 64))) & 0x0F;
        let high = (qh[half * 32 + within % 32] >> (2 * (within / 32))) & 0x03;
        let dl = d * scales[e / 16] as i8 as f32;
        *o = dl * ((low | (high << 4)) as i8 - 32) as f32;
    }
}

fn iq4_nl(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    for (i, o) in o.iter_mut().enumerate() {
        *o = d * KVALUES[nibble(&b[2..], i) as usize] as f32;
    }
}

fn iq4_xs(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for j in 0..8 {
        let low = (scales_l[j / 2] >> (4 * (j % 2))) & 0x0F;
        let high = ((scales_h >> (2 * j)) & 3) as u8;
        let dl = d * ((low | (high << 4)) as i8 - 32) as f32;
        for (l, o) in o[j * 32..(j + 1) * 32].iter_mut().enumerate() {
            *o = dl * KVALUES[nibble(&qs[j * 16..], l) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_decodes_one_block() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2] = 4;
        b[3] = (-6i8) as u8;
        let out = dequantize("t", Q8_0, &b, 32).unwrap();
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn unknown_type_names_tensor_and_type() {
        let e = dequantize("blk.0.attn_q.weight", GgmlType(16), &[0; 66], 256).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("blk.0.attn_q.weight") && msg.contains("IQ2_XXS") && msg.contains("Q6_K"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_size_is_an_error() {
        assert!(matches!(
            dequantize("t", Q4_K, &[0; 143], 256),
            Err(DequantError::Size { .. })
        ));
        assert!(matches!(
            dequantize("t", Q4_0, &[0; 18], 31),
            Err(DequantError::Size { .. })
        ));
    }
}
