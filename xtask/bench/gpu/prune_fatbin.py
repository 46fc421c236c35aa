#!/usr/bin/env python3
"""Zeroes the device code of a CUDA shared library for every GPU architecture but the kept ones.

usage: prune_fatbin.py SRC DST [SM ...]   (default SM: 90, the H100 and H200)

The MLX CUDA wheel's libmlx.so carries its kernels for sm_75 ... sm_121 in `.nv_fatbin`, 67 of its
146 MB and already compressed, so the library compresses only to ~71 MB: more than a device call
carries beside the rest. The CUDA runtime picks one image per module by the entry headers (kind,
architecture); the others' payloads are replaced in place, headers, sizes and offsets untouched, so the
file keeps its layout and compresses to ~16 MB (xz). A compressed payload (a zstd frame) becomes the frame
of an empty module for the same architecture (NVRTC, an empty kernel: a valid cubin, or PTX), then a
skippable frame of zeros up to its recorded compressed size, and the header's decompressed size is set to
the new module's: any reader that decompresses and parses every entry (cuobjdump does) still can. An
uncompressed payload is zeroed. The result
runs only on the kept architectures (SASS runs on its own major version; PTX entries go too unless their
architecture is kept).
"""
import ctypes
import functools
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import sass_count  # noqa: E402  (NVRTC from NVIDIA's PyPI wheels, kept in target/sass-tools)

FATBIN_MAGIC = 0xBA55ED50
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MAGIC = 0x184D2A50


@functools.lru_cache(maxsize=None)
def empty_module(kind, arch):
    """An empty module for `arch` as NVRTC makes it: a cubin (kind 2; the arch-specific `a` variant from
    sm_90 on, as the wheel's) or PTX text (kind 1), compressed as a zstd frame with its size recorded."""
    nvrtc = ctypes.CDLL(sass_count.tools()[0])
    prog = ctypes.c_void_p()
    code = b'extern "C" __global__ void empty() {}\n'
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), code, b"empty.cu", 0, None, None) == 0
    target = f"sm_{arch}{'a' if arch >= 90 else ''}" if kind == 2 else f"compute_{arch}"
    opt = f"--gpu-architecture={target}".encode()
    if nvrtc.nvrtcCompileProgram(prog, 1, (ctypes.c_char_p * 1)(opt)) != 0:
        sys.exit(f"NVRTC cannot build for {target}")
    n = ctypes.c_size_t()
    get_size, get = (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if kind == 2 else \
        (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX)
    get_size(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    get(prog, buf)
    module = buf.raw
    frame = subprocess.run(["zstd", "-q", "-19", "--no-check", f"--stream-size={len(module)}", "-c"],
                           input=module, stdout=subprocess.PIPE, check=True).stdout
    return frame, len(module)


def blank(data, q, start, payload):
    """Replaces one entry's payload in place (same length, nothing of the original); False where it is kept."""
    entry = data[q:start]
    kind, = struct.unpack_from("<H", entry, 0)
    arch, = struct.unpack_from("<I", entry, 28)
    if data[start:start + 4] != ZSTD_MAGIC or len(entry) < 64:
        data[start:start + payload] = bytes(payload)
        return True
    # The entry header records the compressed size at byte 16 and the decompressed one at byte 56.
    compressed, = struct.unpack_from("<I", entry, 16)
    frame, size = empty_module(kind, arch)
    room = compressed - len(frame) - 8
    if room < 0:
        return False  # smaller than an empty module: kept as it is
    skip = struct.pack("<II", SKIPPABLE_MAGIC, room) + bytes(room)
    data[start:start + payload] = frame + skip + bytes(payload - compressed)
    struct.pack_into("<Q", data, q + 56, size)
    return True


def fatbin_section(data):
    """(offset, size) of the ELF64 section `.nv_fatbin`."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        sys.exit("not an ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = sections[shstrndx][4]
    for name, _type, _flags, _addr, off, size in sections:
        end = data.index(b"\0", strtab_off + name)
        if data[strtab_off + name:end] == b".nv_fatbin":
            return off, size
    sys.exit("no .nv_fatbin section: not a CUDA library")


def prune(data, keep):
    off, size = fatbin_section(data)
    kept = zeroed = 0
    p, end = off, off + size
    while p < end:
        magic, _ver, header, body = struct.unpack_from("<IHHQ", data, p)
        if magic != FATBIN_MAGIC:  # padding between the containers (8-byte aligned)
            p += 8
            continue
        q, stop = p + header, p + header + body
        while q < stop:
            _kind, _flags, entry_header, payload = struct.unpack_from("<HHIQ", data, q)
            arch, = struct.unpack_from("<I", data, q + 28)
            start = q + entry_header
            if arch not in keep and blank(data, q, start, payload):
                zeroed += payload
            else:
                kept += payload
            q = start + payload
        p = stop
    if kept == 0:
        sys.exit(f"no device code for sm {sorted(keep)} in this library: nothing would run")
    return kept, zeroed


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    keep = {int(s) for s in sys.argv[3:]} or {90}
    data = bytearray(open(sys.argv[1], "rb").read())
    kept, zeroed = prune(data, keep)
    open(sys.argv[2], "wb").write(data)
    print(f"kept {kept / 1e6:.1f} MB of device code for sm {sorted(keep)}, blanked {zeroed / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
