#!/usr/bin/env python3
"""Zeroes the device code of a CUDA shared library for every GPU architecture but the kept ones.

usage: prune_fatbin.py SRC DST [SM ...]   (default SM: 90, the H100 and H200)

The MLX CUDA wheel's libmlx.so carries its kernels for sm_75 ... sm_121 in `.nv_fatbin`, 67 of its
146 MB and already compressed, so the library compresses only to ~71 MB: more than a device call
carries beside the rest. The CUDA runtime picks one image per module by the entry headers (kind,
architecture) and reads only that one's bytes, so the others' payloads are zeroed in place, headers,
sizes and offsets untouched: the file keeps its layout and compresses to ~16 MB (xz). The result runs
only on the kept architectures (SASS runs on its own major version; PTX entries are zeroed too unless
their architecture is kept).
"""
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50


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
            if arch in keep:
                kept += payload
            else:
                data[start:start + payload] = bytes(payload)
                zeroed += payload
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
    print(f"kept {kept / 1e6:.1f} MB of device code for sm {sorted(keep)}, zeroed {zeroed / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
