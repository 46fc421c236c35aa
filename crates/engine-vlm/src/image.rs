//! Image sources and decoding: files, bytes and data URLs to 8-bit RGB, the way
//! transformers' processors see an image opened with Pillow.
//!
//! The size declared in an image's header is checked against [`ImageLimits`]
//! before any pixel buffer is allocated (decompression bombs). The format is
//! sniffed from the content, never from the file extension. As with
//! `PIL.ImageOps.exif_transpose`, the EXIF orientation (or XMP `tiff:Orientation`)
//! is applied. Colour conversion follows transformers' `convert_to_rgb`: an image
//! with an alpha band or a transparency chunk is composited onto white with Pillow's
//! integer `alpha_composite`, anything else goes through Pillow's `convert("RGB")`.
//!
//! PNG is decoded here from the raw samples (through the `png` crate) because
//! Pillow's reading of 16-bit and transparent PNGs has quirks a generic decoder
//! smooths over: 16-bit samples keep their high byte (RGB) or clip at 255 (grey,
//! mode `I;16`), and `tRNS` colours are compared after that reduction.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::codecs::{gif::GifDecoder, jpeg::JpegDecoder, webp::WebPDecoder};
use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// An 8-bit RGB image, row-major, 3 bytes per pixel (re-exported from the `image` crate).
pub use ::image::RgbImage;

/// Where an image comes from (engine-core's, so chat messages carry it).
pub use engine_core::ImageSource;

/// Decoding an [`ImageSource`].
pub trait LoadImage {
    /// Reads and decodes the image to upright 8-bit RGB.
    fn load(&self, limits: &ImageLimits) -> Result<RgbImage, ImageError>;
}

impl LoadImage for ImageSource {
    fn load(&self, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
        match self {
            ImageSource::Path(path) => load_path(path, limits),
            ImageSource::Bytes(bytes) => decode_bytes(bytes, "the image bytes", limits),
            ImageSource::Url(url) => load_url(url, limits),
        }
    }
}

/// Resource limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// The most pixels (width × height, as declared in the header) an image may have.
    pub max_pixels: u64,
}

impl ImageLimits {
    /// 50 megapixels: larger than any camera photo a vision model would want, small
    /// enough that decoding cannot exhaust memory (at most ~400 MB for 16-bit RGBA).
    pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

    fn check(&self, origin: &str, width: u32, height: u32) -> Result<(), ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(ImageError::TooManyPixels {
                origin: origin.to_string(),
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        if pixels == 0 {
            return Err(ImageError::Corrupt {
                origin: origin.to_string(),
                format: "image",
                detail: format!("its header declares a {width}x{height} image"),
            });
        }
        Ok(())
    }

    /// Bytes a decoder may allocate: the largest pixel buffer the pixel check admits
    /// (16-bit RGBA) plus slack, so this only stops what that check cannot see
    /// (huge metadata chunks, oversized frames).
    fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(64 << 20)
    }

    fn decoder_limits(&self) -> ::image::Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut limits = ::image::Limits::default();
        limits.max_image_width = Some(side);
        limits.max_image_height = Some(side);
        limits.max_alloc = Some(self.max_alloc());
        limits
    }
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

/// Why an image could not be loaded. Each message names the image and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file does not exist.
    #[error("image file {} does not exist: check the path", path.display())]
    NotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read image file {}: {source}; check that it is a readable file", path.display())]
    Unreadable {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Zero bytes of input.
    #[error("{origin} is empty (0 bytes): pass a PNG, JPEG, WebP or GIF image")]
    Empty {
        /// The image's origin (path, "the image bytes", "the data URL").
        origin: String,
    },
    /// The content is not an image at all.
    #[error("{origin} is not an image ({found}): pass a PNG, JPEG, WebP or GIF image")]
    NotAnImage {
        /// The image's origin.
        origin: String,
        /// What the content looks like instead.
        found: String,
    },
    /// An image format, or a feature of one, this decoder does not support.
    #[error("{origin} is {format}, which is not supported: convert it to PNG or JPEG")]
    UnsupportedFormat {
        /// The image's origin.
        origin: String,
        /// The format or feature.
        format: String,
    },
    /// The data is truncated or corrupt.
    #[error("{origin} is a truncated or corrupt {format} ({detail}): re-export or re-download the image")]
    Corrupt {
        /// The image's origin.
        origin: String,
        /// The format the header announced.
        format: &'static str,
        /// What the decoder found.
        detail: String,
    },
    /// The header declares more pixels than [`ImageLimits::max_pixels`].
    #[error(
        "{origin} declares {width}x{height} = {} pixels, more than the limit of {max_pixels}: \
         downscale the image, or raise ImageLimits::max_pixels if you trust it",
        u64::from(*width) * u64::from(*height)
    )]
    TooManyPixels {
        /// The image's origin.
        origin: String,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },
    /// Decoding needs more memory than the limits allow (huge metadata, many frames).
    #[error(
        "{origin} needs more memory to decode than allowed ({detail}): raise ImageLimits::max_pixels if you trust it"
    )]
    MemoryLimit {
        /// The image's origin.
        origin: String,
        /// What the decoder reported.
        detail: String,
    },
    /// A malformed `data:` URL.
    #[error("bad data URL ({reason}): expected data:image/<type>;base64,<data>")]
    BadDataUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// An `http://` or `https://` URL.
    #[error(
        "remote image URL {url} is not fetched (images are never downloaded here): download the file and pass its path"
    )]
    RemoteUrl {
        /// The URL.
        url: String,
    },
    /// Any other URL.
    #[error(
        "unsupported image URL {url:?} ({reason}): pass a file path, a file:// URL or a data:image/...;base64 URL"
    )]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads and decodes an image file.
pub fn load_path(path: &Path, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ImageError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ImageError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    decode_bytes(&bytes, &path.display().to_string(), limits)
}

/// Decodes an image from a `data:` or `file://` URL (see [`ImageSource::Url`]).
pub fn load_url(url: &str, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("data") => decode_bytes(&data_url_bytes(url)?, "the data URL", limits),
        Some("file") => load_path(&file_url_path(url)?, limits),
        Some("http" | "https") => Err(ImageError::RemoteUrl { url: url.to_string() }),
        _ => Err(ImageError::BadUrl {
            url: shorten(url),
            reason: "unknown scheme".into(),
        }),
    }
}

/// Decodes encoded image bytes; `origin` names them in error messages.
pub fn decode_bytes(bytes: &[u8], origin: &str, limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let (rgb, orientation) = match sniff(bytes, origin)? {
        Format::Png => decode_png(bytes, origin, limits)?,
        Format::Jpeg => {
            let complete = jpeg_is_complete(bytes);
            decode_generic(JpegDecoder::new(Cursor::new(bytes)), "JPEG", complete, origin, limits)?
        }
        Format::WebP => decode_generic(WebPDecoder::new(Cursor::new(bytes)), "WebP", true, origin, limits)?,
        Format::Gif => {
            let complete = gif_is_complete(bytes);
            decode_generic(GifDecoder::new(Cursor::new(bytes)), "GIF", complete, origin, limits)?
        }
    };
    if orientation == Orientation::NoTransforms {
        return Ok(rgb);
    }
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// A stable 64-bit hash of an image's size and decoded RGB pixels (the first 8
/// bytes of their SHA-256), to key caches by image content. Equal pixels hash
/// equal across runs, platforms and versions of this crate.
pub fn pixel_hash(image: &RgbImage) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.height().to_le_bytes());
    hasher.update(image.as_raw());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

// ---------------------------------------------------------------- sources

fn data_url_bytes(url: &str) -> Result<Vec<u8>, ImageError> {
    let bad = |reason: &str| ImageError::BadDataUrl {
        reason: reason.to_string(),
    };
    let rest = &url["data:".len()..];
    let (header, payload) = rest.split_once(',').ok_or_else(|| bad("no ',' before the data"))?;
    let mut params = header.split(';').map(str::trim);
    let media_type = params.next().unwrap_or("").to_ascii_lowercase();
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(bad("the data is not marked ;base64"));
    }
    if !(media_type.is_empty() || media_type.starts_with("image/") || media_type == "application/octet-stream") {
        return Err(ImageError::BadDataUrl {
            reason: format!("media type {media_type} is not an image"),
        });
    }
    // URL-encoded and line-wrapped base64 both occur in the wild; neither is ambiguous.
    let payload = percent_decode(payload).map_err(|e| bad(&e))?;
    let cleaned: Vec<u8> = payload.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
    if cleaned.is_empty() {
        return Err(bad("it holds no data"));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(&cleaned).map_err(|e| ImageError::BadDataUrl {
        reason: format!("invalid base64: {e}"),
    })
}

fn file_url_path(url: &str) -> Result<PathBuf, ImageError> {
    let bad = |reason: &str| ImageError::BadUrl {
        url: shorten(url),
        reason: reason.to_string(),
    };
    let rest = url["file:".len()..]
        .strip_prefix("//")
        .ok_or_else(|| bad("expected file:///absolute/path"))?;
    // file:///p and file://localhost/p name the local /p; another host is a network share.
    let path = match rest.find('/') {
        Some(0) => rest,
        Some(i) if rest[..i].eq_ignore_ascii_case("localhost") => &rest[i..],
        _ => return Err(bad("only local files (file:///path) are read")),
    };
    let decoded = percent_decode(path).map_err(|e| bad(&e))?;
    let path = String::from_utf8(decoded).map_err(|_| bad("the path is not UTF-8"))?;
    // file:///C:/x is C:/x on Windows.
    #[cfg(windows)]
    let path = match path.as_bytes() {
        [b'/', d, b':', ..] if d.is_ascii_alphabetic() => path[1..].to_string(),
        _ => path,
    };
    Ok(PathBuf::from(path))
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex_digit = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
            match (hex_digit(bytes.get(i + 1)), hex_digit(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(format!("bad percent escape at byte {i}")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A URL short enough for an error message (data URLs can be megabytes).
fn shorten(url: &str) -> String {
    match url.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &url[..i]),
        None => url.to_string(),
    }
}

// ---------------------------------------------------------------- formats

enum Format {
    Png,
    Jpeg,
    WebP,
    Gif,
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn sniff(bytes: &[u8], origin: &str) -> Result<Format, ImageError> {
    let corrupt = |format, detail: &str| ImageError::Corrupt {
        origin: origin.to_string(),
        format,
        detail: detail.to_string(),
    };
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            origin: origin.to_string(),
        });
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        return Ok(Format::Png);
    }
    if PNG_SIGNATURE.starts_with(bytes) {
        return Err(corrupt("PNG", "it ends inside the signature"));
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok(Format::WebP);
    }
    let unsupported = |format: &str| ImageError::UnsupportedFormat {
        origin: origin.to_string(),
        format: format.into(),
    };
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Err(match &bytes[8..12] {
            b"avif" | b"avis" => unsupported("an AVIF image"),
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => unsupported("a HEIC/HEIF image"),
            _ => unsupported("an ISO media (MP4/MOV-style) file"),
        });
    }
    if let Ok(format) = ::image::guess_format(bytes) {
        return Err(unsupported(&format!("a {format:?} image")));
    }
    if bytes.starts_with(b"%PDF") {
        return Err(unsupported("a PDF document"));
    }
    let head = &bytes[..bytes.len().min(64)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => Some(text.to_string()),
        // A multi-byte character may be cut at the end of the window.
        Err(e) if e.valid_up_to() + 4 > head.len() => Some(String::from_utf8_lossy(&head[..e.valid_up_to()]).into()),
        Err(_) => None,
    };
    let found = match text.filter(|t| !t.chars().any(|c| c.is_control() && !c.is_whitespace())) {
        Some(text) => text_found(&text),
        None => format!("unknown binary data starting {:02x?}", &head[..head.len().min(8)]),
    };
    Err(ImageError::NotAnImage {
        origin: origin.to_string(),
        found,
    })
}

fn text_found(text: &str) -> String {
    let snippet: String = text
        .chars()
        .take(24)
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    format!("it holds text: {:?}", snippet.trim())
}

// ---------------------------------------------------------------- PNG

fn decode_png(bytes: &[u8], origin: &str, limits: &ImageLimits) -> Result<(RgbImage, Orientation), ImageError> {
    let png_err = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => ImageError::MemoryLimit {
            origin: origin.into(),
            detail: e.to_string(),
        },
        png::DecodingError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Corrupt {
            origin: origin.into(),
            format: "PNG",
            detail: "the data ends early".into(),
        },
        e => ImageError::Corrupt {
            origin: origin.into(),
            format: "PNG",
            detail: e.to_string(),
        },
    };
    let max_alloc = usize::try_from(limits.max_alloc()).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: max_alloc });
    let header = decoder.read_header_info().map_err(png_err)?;
    limits.check(origin, header.width, header.height)?;
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(png_err)?;
    let size = reader
        .output_buffer_size()
        .ok_or(png::DecodingError::LimitsExceeded)
        .map_err(png_err)?;
    let mut raw = vec![0u8; size];
    let frame = reader.next_frame(&mut raw).map_err(png_err)?;
    // Chunks after the image data (eXIf, XMP) count too, as in Pillow's `load_end`;
    // like Pillow, a damaged tail after complete pixel data is not an error.
    let _ = reader.finish();
    let info = reader.info();
    let rgb = png_to_rgb(&raw, frame.line_size, info).ok_or_else(|| ImageError::Corrupt {
        origin: origin.into(),
        format: "PNG",
        detail: "bad sample layout".into(),
    })?;
    let orientation = info
        .exif_metadata
        .as_deref()
        .and_then(exif_orientation)
        .or_else(|| png_xmp(info).and_then(|xmp| xmp_orientation(xmp.as_bytes())))
        .unwrap_or(Orientation::NoTransforms);
    Ok((rgb, orientation))
}

fn png_xmp(info: &png::Info) -> Option<String> {
    const KEY: &str = "XML:com.adobe.xmp";
    if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == KEY) {
        let mut chunk = chunk.clone();
        chunk.decompress_text_with_limit(1 << 20).ok()?;
        return chunk.get_text().ok();
    }
    info.uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == KEY)
        .map(|c| c.text.clone())
}

/// Pillow's view of the raw PNG samples, then `convert_to_rgb`. `None` if the
/// buffer is shorter than the header promises (the decoder guarantees it is not).
fn png_to_rgb(raw: &[u8], line: usize, info: &png::Info) -> Option<RgbImage> {
    use png::{BitDepth, ColorType};
    let (w, h) = (info.width as usize, info.height as usize);
    let depth = info.bit_depth as u8;
    let trns = info.trns.as_deref();
    let be16 = |s: &[u8], i: usize| u16::from_be_bytes([s[2 * i], s[2 * i + 1]]);
    // The low byte of a tRNS colour key's sample `c` (the png crate already keeps only
    // the low bytes below 16 bits): Pillow masks the key to 8 bits before comparing.
    let key_sample = |c: usize| {
        let t = trns?;
        if depth == 16 { t.get(2 * c + 1) } else { t.get(c) }.copied()
    };
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = raw.get(y * line..(y + 1) * line)?;
        match info.color_type {
            ColorType::Grayscale => {
                // Pillow scales 1/2/4-bit grey up to 8 bits and clips 16-bit grey (I;16)
                // at 255; the tRNS grey value is compared, masked to 8 bits, after that.
                let key = key_sample(0).map(|v| if depth == 1 && v != 0 { 255 } else { v });
                for x in 0..w {
                    let v = match info.bit_depth {
                        BitDepth::Sixteen => be16(row, x).min(255) as u8,
                        BitDepth::Eight => row[x],
                        _ => unpack_bits(row, x, depth) * (255 / ((1u8 << depth) - 1)),
                    };
                    push_keyed(&mut out, [v, v, v], key.map(|k| [k, k, k]));
                }
            }
            ColorType::Rgb => {
                let key = match (key_sample(0), key_sample(1), key_sample(2)) {
                    (Some(r), Some(g), Some(b)) => Some([r, g, b]),
                    _ => None,
                };
                for x in 0..w {
                    let px = match info.bit_depth {
                        BitDepth::Sixteen => [0, 1, 2].map(|c| row[6 * x + 2 * c]),
                        _ => [row[3 * x], row[3 * x + 1], row[3 * x + 2]],
                    };
                    push_keyed(&mut out, px, key);
                }
            }
            ColorType::Indexed => {
                let palette = info.palette.as_deref().unwrap_or(&[]);
                for x in 0..w {
                    let i = if depth == 8 { row[x] } else { unpack_bits(row, x, depth) } as usize;
                    // Entries past the PLTE chunk are opaque black in Pillow's palette.
                    let rgb = palette.get(3 * i..3 * i + 3).map_or([0, 0, 0], |p| [p[0], p[1], p[2]]);
                    match trns {
                        Some(alphas) => push_composite(&mut out, rgb, alphas.get(i).copied().unwrap_or(255)),
                        None => out.extend_from_slice(&rgb),
                    }
                }
            }
            ColorType::GrayscaleAlpha => {
                let step = if info.bit_depth == BitDepth::Sixteen { 4 } else { 2 };
                for x in 0..w {
                    let (l, a) = (row[step * x], row[step * x + step / 2]);
                    push_composite(&mut out, [l, l, l], a);
                }
            }
            ColorType::Rgba => {
                let step = if info.bit_depth == BitDepth::Sixteen { 8 } else { 4 };
                let hi = step / 4;
                for x in 0..w {
                    let p = &row[step * x..step * (x + 1)];
                    push_composite(&mut out, [p[0], p[hi], p[2 * hi]], p[3 * hi]);
                }
            }
        }
    }
    RgbImage::from_raw(info.width, info.height, out)
}

/// Sample `x` of a row packed at 1, 2 or 4 bits per sample, most significant first.
fn unpack_bits(row: &[u8], x: usize, depth: u8) -> u8 {
    let per_byte = 8 / depth as usize;
    let shift = 8 - depth as usize * (x % per_byte + 1);
    (row[x / per_byte] >> shift) & ((1u8 << depth) - 1)
}

/// A pixel of an image with a tRNS colour key: matching pixels become transparent,
/// which composited onto white is white.
fn push_keyed(out: &mut Vec<u8>, px: [u8; 3], key: Option<[u8; 3]>) {
    match key {
        Some(k) if k == px => out.extend_from_slice(&[255, 255, 255]),
        _ => out.extend_from_slice(&px),
    }
}

/// Pillow's `alpha_composite(white, (r, g, b, a))` in its integer arithmetic
/// (src/libImaging/AlphaComposite.c, 7 extra bits of precision), then dropping alpha.
fn push_composite(out: &mut Vec<u8>, rgb: [u8; 3], alpha: u8) {
    if alpha == 0 {
        out.extend_from_slice(&[255, 255, 255]);
        return;
    }
    const PRECISION_BITS: u32 = 7;
    let a = u32::from(alpha);
    let blend = 255 * (255 - a); // destination alpha is 255
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let shift_div_255 = |v: u32| ((v >> 8) + v) >> 8;
    for c in rgb {
        let tmp = u32::from(c) * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
        out.push((shift_div_255(tmp) >> PRECISION_BITS) as u8);
    }
}

// ---------------------------------------------------------------- JPEG, WebP, GIF

fn decode_generic<D: ImageDecoder>(
    decoder: ::image::ImageResult<D>,
    format: &'static str,
    complete: bool,
    origin: &str,
    limits: &ImageLimits,
) -> Result<(RgbImage, Orientation), ImageError> {
    let err = |e: ::image::ImageError| image_err(e, format, origin);
    let mut decoder = decoder.map_err(err)?;
    let (width, height) = decoder.dimensions();
    limits.check(origin, width, height)?;
    if !complete {
        let detail = "the data ends before the image does".into();
        return Err(ImageError::Corrupt {
            origin: origin.into(),
            format,
            detail,
        });
    }
    decoder.set_limits(limits.decoder_limits()).map_err(err)?;
    // Metadata problems never fail a decode: Pillow ignores what it cannot parse too.
    let orientation = match decoder
        .exif_metadata()
        .ok()
        .flatten()
        .and_then(|e| exif_orientation(&e))
    {
        Some(o) => o,
        None => decoder
            .xmp_metadata()
            .ok()
            .flatten()
            .and_then(|xmp| xmp_orientation(&xmp))
            .unwrap_or(Orientation::NoTransforms),
    };
    let image = DynamicImage::from_decoder(decoder).map_err(err)?;
    Ok((dynamic_to_rgb(image), orientation))
}

/// `convert_to_rgb` for what the JPEG, WebP and GIF decoders return (8-bit L, LA,
/// RGB or RGBA; GIF frames come as RGBA with transparent pixels at alpha 0).
fn dynamic_to_rgb(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let composite = |pixels: &mut dyn Iterator<Item = ([u8; 3], u8)>| {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        pixels.for_each(|(rgb, a)| push_composite(&mut out, rgb, a));
        RgbImage::from_raw(w, h, out).unwrap_or_default()
    };
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => composite(&mut rgba.pixels().map(|p| ([p[0], p[1], p[2]], p[3]))),
        DynamicImage::ImageLumaA8(la) => composite(&mut la.pixels().map(|p| ([p[0]; 3], p[1]))),
        other => other.into_rgb8(),
    }
}

/// The orientation tag of a raw EXIF (TIFF) block. Pillow strips any number of
/// leading `Exif\0\0` markers, and writes one into PNG eXIf chunks itself.
fn exif_orientation(mut exif: &[u8]) -> Option<Orientation> {
    while let Some(rest) = exif.strip_prefix(b"Exif\0\0") {
        exif = rest;
    }
    Orientation::from_exif_chunk(exif)
}

/// Pillow's XMP fallback for the orientation: `tiff:Orientation="N"` or `>N<`.
fn xmp_orientation(xmp: &[u8]) -> Option<Orientation> {
    const TAG: &[u8] = b"tiff:Orientation";
    let at = xmp.windows(TAG.len()).position(|w| w == TAG)?;
    match xmp.get(at + TAG.len()..at + TAG.len() + 3)? {
        [b'=', b'"', d] | [b'>', d, _] if d.is_ascii_digit() => Orientation::from_exif(d - b'0'),
        _ => None,
    }
}

/// Whether a JPEG reaches its end-of-image marker after the first scan begins.
/// Pillow (libjpeg) refuses a file cut anywhere before it; zune-jpeg would fill the
/// rest with grey. Entropy-coded data cannot hold `FF D9`, so the first one after
/// the scan header ends the image; data appended after it (motion photos) is fine.
/// Anything unexpected in the marker walk is left to the decoder.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let (Some(&0xFF), Some(&marker)) = (b.get(i), b.get(i + 1)) else {
            return i + 1 < b.len(); // out of data: truncated; else not a marker: decoder's call
        };
        if marker == 0xDA {
            return b[i + 2..].windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        i += 2;
        if !matches!(marker, 0x01 | 0xD0..=0xD9) {
            let Some(len) = b.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
                return false;
            };
            i += len;
        }
    }
}

/// Whether a GIF holds its first image's data up to the terminating empty sub-block
/// (Pillow refuses a file cut before it; the gif crate decodes what is there).
fn gif_is_complete(b: &[u8]) -> bool {
    fn skip_sub_blocks(b: &[u8], mut i: usize) -> Option<usize> {
        loop {
            let n = usize::from(*b.get(i)?);
            i += 1 + n;
            if n == 0 {
                return Some(i);
            }
        }
    }
    let table = |flags: u8| if flags & 0x80 != 0 { 3 << ((flags & 7) + 1) } else { 0 };
    let Some(&flags) = b.get(10) else { return false };
    let mut i = 13 + table(flags);
    loop {
        match b.get(i) {
            None => return false,
            Some(0x21) => match skip_sub_blocks(b, i + 2) {
                Some(next) => i = next,
                None => return false,
            },
            Some(0x2C) => {
                let Some(&flags) = b.get(i + 9) else { return false };
                return skip_sub_blocks(b, i + 10 + table(flags) + 1).is_some_and(|end| end <= b.len());
            }
            Some(_) => return true,
        }
    }
}

fn image_err(e: ::image::ImageError, format: &'static str, origin: &str) -> ImageError {
    use ::image::ImageError as E;
    let origin = origin.to_string();
    match e {
        E::Limits(l) => ImageError::MemoryLimit {
            origin,
            detail: l.to_string(),
        },
        E::Unsupported(u) => ImageError::UnsupportedFormat {
            origin,
            format: format!("a {format} using {u}"),
        },
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Corrupt {
            origin,
            format,
            detail: "the data ends early".into(),
        },
        other => ImageError::Corrupt {
            origin,
            format,
            detail: other.to_string().trim().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_is_identity_when_opaque_and_white_when_clear() {
        for c in 0..=255u8 {
            let mut out = Vec::new();
            push_composite(&mut out, [c, 0, 255], 255);
            assert_eq!(out, [c, 0, 255]);
            out.clear();
            push_composite(&mut out, [c, c, c], 0);
            assert_eq!(out, [255; 3]);
        }
    }

    #[test]
    fn xmp_orientation_forms() {
        assert_eq!(
            xmp_orientation(b"<x tiff:Orientation=\"6\"/>"),
            Some(Orientation::Rotate90)
        );
        assert_eq!(
            xmp_orientation(b"<tiff:Orientation>3</tiff:Orientation>"),
            Some(Orientation::Rotate180)
        );
        assert_eq!(xmp_orientation(b"tiff:Orientation"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            file_url_path("file:///tmp/a%20b.png").unwrap(),
            PathBuf::from("/tmp/a b.png")
        );
        assert_eq!(
            file_url_path("file://localhost/x.png").unwrap(),
            PathBuf::from("/x.png")
        );
        assert!(file_url_path("file://server/x.png").is_err());
        assert_eq!(data_url_bytes("data:image/png;base64,aGk=").unwrap(), b"hi");
        assert_eq!(data_url_bytes("data:image/png;base64,aG\nk").unwrap(), b"hi");
        assert!(data_url_bytes("data:text/plain;base64,aGk=").is_err());
        assert!(data_url_bytes("data:image/png,hi").is_err());
    }
}
