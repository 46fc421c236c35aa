//! Pillow's resampling, bit for bit: [`resize`] reimplements `ImagingResample`
//! (two separable passes, 22-bit fixed-point coefficients, an 8-bit
//! intermediate) and its nearest-neighbour scaling, as Pillow 12.1 does (13.0
//! resamples mixed up/down sizes differently). transformers' PIL image
//! processors resize with it, so our pixel values equal theirs.

use crate::image::RgbImage;

/// A Pillow resampling filter; `resample` in a config holds Pillow's code for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resample {
    /// `PIL.Image.NEAREST` (0).
    Nearest,
    /// `PIL.Image.LANCZOS` (1): windowed sinc, 3 lobes.
    Lanczos,
    /// `PIL.Image.BILINEAR` (2): triangle filter.
    Bilinear,
    /// `PIL.Image.BICUBIC` (3): cubic convolution with a = -0.5.
    Bicubic,
    /// `PIL.Image.BOX` (4).
    Box,
    /// `PIL.Image.HAMMING` (5).
    Hamming,
}

impl Resample {
    /// The filter for a Pillow code (`PIL.Image.Resampling` value), if it is one.
    pub fn from_pil(code: u64) -> Option<Self> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }

    /// Pillow's code for this filter.
    pub fn pil_code(self) -> u8 {
        match self {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        }
    }

    fn support(self) -> f64 {
        match self {
            Resample::Nearest | Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// The filter kernels of Resample.c, operation for operation (the float rounding
    /// of each step decides which way a fixed-point coefficient rounds).
    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                return 1.0;
            }
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
        match self {
            Resample::Nearest | Resample::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes these constants as C floats.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Resizes an 8-bit RGB image to `width` × `height` exactly as Pillow's
/// `Image.resize((width, height), filter)` does (without `reducing_gap`).
/// A zero target or source size gives a black image of the target size.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    if (width, height) == (in_w, in_h) {
        return image.clone();
    }
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let raw = match filter {
        Resample::Nearest => resize_nearest(image, width, height),
        _ => resample(image, width, height, filter),
    };
    RgbImage::from_raw(width, height, raw).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Fixed-point bits of a coefficient: 8 bits of pixel and 2 of overshoot fit in an i32.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One axis of a separable resample: for each output index, the first input
/// index and the fixed-point weights of the inputs it reads.
struct Kernel {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Kernel {
    /// `precompute_coeffs` + `normalize_coeffs_8bpc`: the support widens with the
    /// downscale factor (antialiasing); weights are normalised in f64, then rounded
    /// half away from zero to 22-bit fixed point.
    fn new(in_size: u32, out_size: u32, filter: Resample) -> Kernel {
        // Pillow's box coordinates are C floats.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let out = out_size as usize;
        let mut bounds = Vec::with_capacity(out);
        let mut weights = vec![0i32; out * ksize];
        let mut k = vec![0f64; ksize];
        let ss = 1.0 / filterscale;
        for xx in 0..out {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = ((xmax - xmin).max(0) as usize).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = filter.weight(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[xx * ksize..xx * ksize + n];
            for (fixed, &kx) in row.iter_mut().zip(&k) {
                let kx = if ww != 0.0 { kx / ww } else { kx };
                let scaled = kx * f64::from(1u32 << PRECISION_BITS);
                *fixed = if kx < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, n));
        }
        Kernel { ksize, bounds, weights }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// `ImagingResampleInner` for RGB: a horizontal pass over only the rows the
/// vertical pass reads, clipped to 8 bits, then a vertical pass; a pass whose
/// size does not change is skipped.
fn resample(image: &RgbImage, width: u32, height: u32, filter: Resample) -> Vec<u8> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let src = image.as_raw().as_slice();
    let horizontal = Kernel::new(in_w as u32, width, filter);
    let mut vertical = Kernel::new(in_h as u32, height, filter);
    let need_h = width as usize != in_w;
    let need_v = height as usize != in_h;

    let temp;
    let (rows, row_w) = if need_h {
        let first = vertical.bounds[0].0;
        let (last_start, last_n) = vertical.bounds[vertical.bounds.len() - 1];
        let last = last_start + last_n;
        for b in &mut vertical.bounds {
            b.0 -= first;
        }
        temp = resample_rows(src, in_w, first..last, &horizontal, width as usize);
        (temp.as_slice(), width as usize)
    } else {
        (src, in_w)
    };
    if !need_v {
        return rows.to_vec();
    }
    resample_columns(rows, row_w, &vertical, height as usize)
}

fn resample_rows(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, k: &Kernel, out_w: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (dst, y) in out.chunks_exact_mut(out_w * 3).zip(rows) {
        let src_row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
            let (start, weights) = k.taps(xx);
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (p, &w) in src_row[start * 3..].chunks_exact(3).zip(weights) {
                r += i32::from(p[0]) * w;
                g += i32::from(p[1]) * w;
                b += i32::from(p[2]) * w;
            }
            px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
        }
    }
    out
}

fn resample_columns(src: &[u8], w: usize, k: &Kernel, out_h: usize) -> Vec<u8> {
    let row_len = w * 3;
    let mut out = vec![0u8; out_h * row_len];
    // Row-at-a-time accumulation keeps the inner loop contiguous (and vectorisable);
    // integer sums are exact, so the order matches Pillow's per-pixel loop.
    let mut acc = vec![0i32; row_len];
    for (yy, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, weights) = k.taps(yy);
        acc.fill(HALF);
        for (j, &wt) in weights.iter().enumerate() {
            let row = &src[(start + j) * row_len..(start + j + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * wt;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// `ImagingScaleAffine`: sample positions accumulate in f64 from half a step in,
/// truncated to a pixel index; positions off the image stay black.
fn resize_nearest(image: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let src = image.as_raw();
    let positions = |in_size: usize, out_size: u32| {
        let step = f64::from(in_size as f32) / f64::from(out_size);
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let i = if pos < 0.0 {
                    None
                } else {
                    Some(pos as usize).filter(|&i| i < in_size)
                };
                pos += step;
                i
            })
            .collect::<Vec<_>>()
    };
    let xs = positions(in_w, width);
    let ys = positions(in_h, height);
    let row_len = width as usize * 3;
    let mut out = vec![0u8; height as usize * row_len];
    for (dst, y) in out.chunks_exact_mut(row_len).zip(&ys) {
        let Some(y) = *y else { continue };
        let src_row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (px, x) in dst.chunks_exact_mut(3).zip(&xs) {
            if let Some(x) = *x {
                px.copy_from_slice(&src_row[x * 3..x * 3 + 3]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_sum_to_one_in_fixed_point() {
        for filter in [
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
        ] {
            for (i, o) in [(61, 24), (13, 336), (400, 7), (5, 6)] {
                let k = Kernel::new(i, o, filter);
                for x in 0..o as usize {
                    // Each tap rounds by at most half a unit.
                    let taps = k.taps(x).1;
                    let sum: i32 = taps.iter().sum();
                    let slack = taps.len() as i32 / 2 + 1;
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= slack,
                        "{filter:?} {i}->{o} at {x}: {sum}"
                    );
                }
            }
        }
    }
}
