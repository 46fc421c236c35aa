"""Test images and transformers' preprocessed pixel values, the oracle for
engine-vlm's image decoding and preprocessing.

Run by `cargo xtask parity-fixtures` (output: target/vlm-pixels/):
    target/oracle/bin/python xtask/parity/make_vlm_pixels.py target/vlm-pixels
Needs numpy, Pillow and transformers' PIL ("slow") image processors; no torch.

Writes images/ (PNG in every colour type and bit depth, interlaced, with tRNS
and eXIf; GIF; lossless WebP; a JPEG with an EXIF orientation), then:
- decoded/<image>.u8: what transformers feeds the processor (Pillow's decode,
  `ImageOps.exif_transpose`, `convert_to_rgb`), H x W x 3 bytes;
- resized/<case>.u8: Pillow's `Image.resize` of one RGB image with each filter;
- pixels/<case>.f32: the processor's pixel values, little-endian f32;
- expected.json: the manifest (configs, shapes, tolerances) the Rust test reads.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image, ImageOps

import transformers
from transformers.image_transforms import convert_to_rgb
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RESCALE = 0.00392156862745098

# preprocessor_config.json contents, as checkpoints write them.
CONFIGS = {
    "clip24": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 24},
               "crop_size": {"height": 24, "width": 24}, "resample": 3, "do_center_crop": True,
               "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
               "rescale_factor": RESCALE, "image_mean": CLIP_MEAN, "image_std": CLIP_STD},
    # llava-hf/llava-1.5-7b-hf's preprocessor_config.json.
    "clip336": {"crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True,
                "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
                "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "processor_class": "LlavaProcessor",
                "resample": 3, "rescale_factor": RESCALE, "size": {"shortest_edge": 336}},
    # Crop larger than the resized image on one side (zero padding), odd sizes; legacy int sizes.
    "clip-pad": {"image_processor_type": "CLIPImageProcessor", "size": 24, "crop_size": [31, 33], "resample": 3},
    "clip-hw-lanczos": {"image_processor_type": "CLIPImageProcessor", "size": {"height": 20, "width": 28},
                        "crop_size": {"height": 16, "width": 16}, "resample": 1},
    "clip-nearest": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 24},
                     "crop_size": {"height": 24, "width": 24}, "resample": 0},
    "clip-short-long": {"image_processor_type": "CLIPImageProcessor",
                        "size": {"shortest_edge": 24, "longest_edge": 30}, "do_center_crop": False, "resample": 2},
    "siglip32": {"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32},
                 "resample": 2, "do_normalize": True, "do_rescale": True, "do_resize": True,
                 "rescale_factor": RESCALE, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "gemma3-32": {"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 32, "width": 32},
                  "resample": 2, "do_pan_and_scan": None, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "rescale_factor": RESCALE},
    # Anyres: the pinpoint chosen by aspect, aspect-kept resize, zero padding, 48-px tiles + a squashed base.
    "llavanext": {"image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 48},
                  "crop_size": {"height": 48, "width": 48}, "resample": 3, "do_center_crop": True, "do_pad": True,
                  "image_grid_pinpoints": [[48, 96], [96, 48], [96, 96], [144, 48], [48, 144]],
                  "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "rescale_factor": RESCALE},
    # Longest edge to 112 (Lanczos), sides up to multiples of 48, 48-px tiles + a global frame.
    "idefics3": {"image_processor_type": "Idefics3ImageProcessor", "size": {"longest_edge": 112},
                 "max_image_size": {"longest_edge": 48}, "do_image_splitting": True, "resample": 1,
                 "rescale_factor": RESCALE},
    "idefics3-nosplit": {"image_processor_type": "Idefics3ImageProcessor", "size": {"longest_edge": 112},
                         "max_image_size": {"longest_edge": 48}, "do_image_splitting": False, "resample": 1},
    "qwen2vl": {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16,
                "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD, "resample": 3, "do_rescale": True, "rescale_factor": RESCALE},
}
PROCESSORS = {"CLIPImageProcessor": CLIPImageProcessorPil, "SiglipImageProcessor": SiglipImageProcessorPil,
              "Gemma3ImageProcessor": Gemma3ImageProcessorPil, "Qwen2VLImageProcessor": Qwen2VLImageProcessorPil,
              "LlavaNextImageProcessor": LlavaNextImageProcessorPil,
              "Idefics3ImageProcessor": Idefics3ImageProcessorPil}

RNG = np.random.default_rng(61)


def photo(h, w):
    """Smooth gradients plus noise: resampling filters see edges and texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    g = 255 * x / max(w - 1, 1)
    b = 255 * ((x + y) % 17) / 16.0
    img = np.stack([r, g, b], -1) + RNG.normal(0, 25, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- a tiny PNG writer: every colour type and bit depth, tRNS, eXIf, Adam7 ---
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pack_rows(samples, depth):
    """samples: (h, w, c) ints -> filter-0 scanlines."""
    out = bytearray()
    for row in samples:
        flat = row.reshape(-1)
        out.append(0)
        if depth == 16:
            out += flat.astype(">u2").tobytes()
        elif depth == 8:
            out += flat.astype(np.uint8).tobytes()
        else:
            per = 8 // depth
            padded = np.concatenate([flat, np.zeros((-len(flat)) % per, flat.dtype)]).reshape(-1, per)
            shifts = np.arange(per - 1, -1, -1) * depth
            out += (padded.astype(np.uint16) << shifts).sum(1).astype(np.uint8).tobytes()
    return bytes(out)


def write_png(path, samples, depth, color_type, palette=None, trns=None, exif=None, interlace=False):
    if samples.ndim == 2:
        samples = samples[:, :, None]
    h, w = samples.shape[:2]
    if interlace:
        raw = b"".join(pack_rows(samples[y0::dy, x0::dx], depth) for x0, y0, dx, dy in ADAM7
                       if samples[y0::dy, x0::dx].size)
    else:
        raw = pack_rows(samples, depth)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if palette is not None:
        data += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        data += chunk(b"tRNS", trns)
    if exif is not None:
        data += chunk(b"eXIf", exif)
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def make_images(d):
    """Returns {name: file name}."""
    os.makedirs(d, exist_ok=True)
    files = {}

    def save_pil(name, im, **kw):
        im.save(os.path.join(d, name), **kw)
        files[name] = name

    def save_png(name, *args, **kw):
        write_png(os.path.join(d, name), *args, **kw)
        files[name] = name

    rgb = photo(47, 61)
    save_pil("rgb-61x47.png", Image.fromarray(rgb))
    save_pil("rgb-400x300.png", Image.fromarray(photo(300, 400)))
    save_pil("tiny-13x9.png", Image.fromarray(photo(9, 13)))
    save_pil("wide-30x20.png", Image.fromarray(photo(20, 30)))
    save_pil("tall-9x40.png", Image.fromarray(photo(40, 9)))

    alpha = np.tile(np.linspace(0, 255, 61).round().astype(np.uint8), (47, 1))
    alpha[::5, ::3] = 0
    alpha[1::7] = 255
    save_pil("rgba-61x47.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    gray = rgb[:, :, 0]
    save_pil("l-61x47.png", Image.fromarray(gray, "L"))
    save_pil("la-61x47.png", Image.fromarray(np.dstack([gray, alpha]), "LA"))

    # Palette images: a 40-colour palette, with an unused tail.
    palette = RNG.integers(0, 256, (40, 3), dtype=np.uint8)
    index = (RNG.integers(0, 40, (47, 61))).astype(np.uint8)
    p = Image.fromarray(index, "P")
    p.putpalette(palette.reshape(-1).tolist())
    save_pil("p-61x47.png", p)
    save_pil("p-trns-61x47.png", p, transparency=7)  # one fully transparent index
    palpha = bytes(RNG.integers(0, 256, 40, dtype=np.uint8))  # per-index alpha, incl. partial
    save_png("p-alpha-61x47.png", index, 8, 3, palette=palette, trns=palpha)
    save_png("p4-interlaced-23x17.png", (index[:17, :23] % 16), 4, 3, palette=palette[:16], interlace=True)

    # Grey and 16-bit variants, written by hand so every PNG colour type and bit depth is covered.
    g16 = (RNG.integers(0, 65536, (17, 23))).astype(np.uint16)
    g16[:, :8] = RNG.integers(0, 256, (17, 8))  # values < 256 survive Pillow's I;16 -> RGB clip
    save_png("gray16-23x17.png", g16, 16, 0)
    save_png("gray16-trns-23x17.png", g16, 16, 0, trns=struct.pack(">H", int(g16[3, 3])))
    save_png("gray1-23x17.png", RNG.integers(0, 2, (17, 23)), 1, 0)
    save_png("gray2-23x17.png", RNG.integers(0, 4, (17, 23)), 2, 0)
    save_png("gray4-trns-23x17.png", RNG.integers(0, 16, (17, 23)), 4, 0, trns=struct.pack(">H", 0))
    g8 = rgb[:17, :23, 1]
    save_png("gray8-trns-interlaced-23x17.png", g8, 8, 0, trns=struct.pack(">H", int(g8[2, 2])), interlace=True)
    rgb8 = rgb[:17, :23]
    save_png("rgb8-trns-23x17.png", rgb8, 8, 2, trns=struct.pack(">HHH", *map(int, rgb8[4, 4])))
    rgb16 = RNG.integers(0, 65536, (17, 23, 3)).astype(np.uint16)
    save_png("rgb16-interlaced-23x17.png", rgb16, 16, 2, interlace=True)
    save_png("rgba16-23x17.png", RNG.integers(0, 65536, (17, 23, 4)).astype(np.uint16), 16, 6)
    save_png("la16-23x17.png", RNG.integers(0, 65536, (17, 23, 2)).astype(np.uint16), 16, 4)

    # EXIF orientation: PNG eXIf (exact) and JPEG (decoders differ: loose tolerance).
    save_png("exif5-31x19.png", photo(19, 31), 8, 2, exif=exif_orientation(5))
    save_pil("exif6-64x40.jpg", Image.fromarray(photo(40, 64)), quality=95, exif=exif_orientation(6))
    save_pil("plain-64x40.jpg", Image.fromarray(photo(40, 64)), quality=90)

    # GIF (palette, one transparent index) and lossless WebP with alpha.
    save_pil("gif-trns-61x47.gif", p, transparency=7)
    save_pil("lossless-61x47.webp", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), lossless=True)
    return files


def load(path):
    """What transformers' processors see for an opened file: Pillow's decode, upright."""
    return ImageOps.exif_transpose(Image.open(path))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/vlm-pixels"
    for sub in ("decoded", "resized", "pixels"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    files = make_images(os.path.join(out, "images"))
    manifest = {"pillow": PIL.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
                "configs": CONFIGS, "decoded": [], "resized": [], "pixels": []}

    for name in files:
        im = load(os.path.join(out, "images", name))
        rgb = convert_to_rgb(im, return_numpy=True)
        rgb.tofile(os.path.join(out, "decoded", name + ".u8"))
        manifest["decoded"].append({"image": name, "mode": im.mode, "width": rgb.shape[1], "height": rgb.shape[0],
                                    "rgb": f"decoded/{name}.u8", "exact": not name.endswith(".jpg")})

    # Pillow's resize alone, every filter, down and up, one axis only too.
    src = Image.open(os.path.join(out, "images", "rgb-61x47.png"))
    filters = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
    for fname, code in filters.items():
        for w, h in [(24, 18), (100, 77), (61, 20), (13, 47), (7, 5)]:
            case = f"{fname}-{w}x{h}"
            np.array(src.resize((w, h), resample=code, reducing_gap=None)).tofile(
                os.path.join(out, "resized", case + ".u8"))
            manifest["resized"].append({"case": case, "image": "rgb-61x47.png", "filter": code, "width": w,
                                        "height": h, "rgb": f"resized/{case}.u8"})

    runs = [("clip24", n) for n in files] + [
        ("clip336", "rgb-400x300.png"), ("clip336", "tiny-13x9.png"),
        ("clip-pad", "wide-30x20.png"), ("clip-pad", "tiny-13x9.png"), ("clip-pad", "tall-9x40.png"),
        ("clip-hw-lanczos", "rgb-61x47.png"), ("clip-hw-lanczos", "rgba-61x47.png"),
        ("clip-nearest", "rgb-61x47.png"), ("clip-short-long", "rgb-61x47.png"),
        ("clip-short-long", "tall-9x40.png"),
        ("siglip32", "rgb-61x47.png"), ("siglip32", "rgb-400x300.png"), ("siglip32", "p-trns-61x47.png"),
        ("gemma3-32", "rgb-61x47.png"), ("gemma3-32", "tiny-13x9.png"),
        ("qwen2vl", "rgb-61x47.png"), ("qwen2vl", "rgb-400x300.png"), ("qwen2vl", "tall-9x40.png"),
        ("qwen2vl", "exif6-64x40.jpg"),
        ("llavanext", "rgb-61x47.png"), ("llavanext", "rgba-61x47.png"), ("llavanext", "p-trns-61x47.png"),
        ("llavanext", "tall-9x40.png"), ("llavanext", "wide-30x20.png"), ("llavanext", "rgb-400x300.png"),
        ("llavanext", "l-61x47.png"), ("llavanext", "la-61x47.png"),
        ("idefics3", "rgb-61x47.png"), ("idefics3", "rgba-61x47.png"), ("idefics3", "p-trns-61x47.png"),
        ("idefics3", "tall-9x40.png"), ("idefics3", "wide-30x20.png"), ("idefics3", "rgb-400x300.png"),
        ("idefics3", "tiny-13x9.png"), ("idefics3-nosplit", "rgb-61x47.png"), ("idefics3-nosplit", "tall-9x40.png"),
    ]
    for config_name, name in runs:
        cfg = CONFIGS[config_name]
        proc = PROCESSORS[cfg["image_processor_type"]].from_dict(cfg)
        feats = proc(images=load(os.path.join(out, "images", name)), return_tensors="np")
        values = np.ascontiguousarray(feats["pixel_values"][0] if "image_grid_thw" not in feats
                                      else feats["pixel_values"], dtype="<f4")
        case = f"{config_name}--{name}"
        values.tofile(os.path.join(out, "pixels", case + ".f32"))
        entry = {"case": case, "config": config_name, "image": name, "shape": list(values.shape),
                 "values": f"pixels/{case}.f32", "exact": not name.endswith(".jpg")}
        if "image_grid_thw" in feats:
            entry["image_grid_thw"] = [int(v) for v in feats["image_grid_thw"][0]]
        manifest["pixels"].append(entry)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(files)} images, {len(manifest['resized'])} resizes, {len(runs)} processor cases to {out}")


if __name__ == "__main__":
    main()
