#!/usr/bin/env python3
"""Static look at the CUDA kernels without a GPU: compiles instances of the fused matvec in
crates/engine-mlx/src/shim/cuda_kernels.cc with NVRTC for sm_90 on this (CPU) machine and prints,
per instance, ptxas's registers/spills and the instruction count of its hottest loop in SASS
(cuobjdump), with the commonest opcodes. NVRTC and cuobjdump come from NVIDIA's PyPI wheels
(~60 MB, kept in target/sass-tools). A proxy for the per-weight cost, not a timing: the GPU
examples (qmv_check --bandwidth) measure. Usage: python3 xtask/bench/gpu/sass_count.py [FILE] [INSTANCE...]
with INSTANCE like "qmv<2, 4, 64, 1, 4, 0, 1>" (KIND 0/1/2 = f32/f16/bf16, BITS, GROUP, MT, ROWS,
MODE 0 split / 1 SwiGLU, NORM 0 none / 1 in the loop / 2 a pass first), or like "attend<2, 128, 4>"
(the decode attention: KIND, head size, query heads a KV head), "add_rms<2>" (residual add + RMS norm) or
"fdmv<2, 1, 2, 4, 1, 1>" (the fused dense matvec: KIND, MT, rows a warp, chunks in flight, MODE, NORM)."""
import collections, ctypes, glob, os, re, subprocess, sys, zipfile

TOOLS = os.path.join(os.path.dirname(__file__), "../../../target/sass-tools")
DEFAULT = ["qmv<2, 4, 64, 1, 4, 0, 1>", "qmv<2, 4, 64, 1, 4, 1, 1>", "qmv<2, 4, 64, 4, 4, 0, 2>",
           "qmv<2, 8, 64, 1, 4, 0, 1>", "qmv<0, 4, 64, 1, 4, 0, 0>"]


def tools():
    libs = glob.glob(f"{TOOLS}/**/libnvrtc.so.*[0-9]", recursive=True)
    objdump = glob.glob(f"{TOOLS}/**/bin/cuobjdump", recursive=True)
    if not glob.glob(f"{TOOLS}/**/bin/nvdisasm", recursive=True):
        objdump = []
    if libs and objdump:
        return libs[0], objdump[0]
    os.makedirs(TOOLS, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux_2_12_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--python-version", "3.12", "-d", TOOLS,
                    "nvidia-cuda-nvrtc>=13,<14", "nvidia-cuda-cuobjdump>=13,<14",
                    "nvidia-cuda-nvdisasm>=13,<14"], check=True)
    for w in glob.glob(f"{TOOLS}/*.whl"):
        zipfile.ZipFile(w).extractall(TOOLS)
    for f in glob.glob(f"{TOOLS}/**/bin/*", recursive=True):
        os.chmod(f, 0o755)
    return tools()


def main():
    src_file = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith(("qmv", "attend", "add_rms", "fdmv")) else \
        os.path.join(os.path.dirname(__file__), "../../../crates/engine-mlx/src/shim/cuda_kernels.cc")
    instances = [a for a in sys.argv[1:] if a.startswith(("qmv", "attend", "add_rms", "fdmv"))] or DEFAULT
    text = open(src_file).read()

    def raw(name):
        start = text.index(name + ' = R"(') + len(name + ' = R"(')
        return text[start:text.index(')";', start)]
    device = raw("kSource")
    libpath, objdump = tools()
    nvrtc = ctypes.CDLL(libpath)
    for inst in instances:
        if inst.startswith("add_rms"):
            code = device + raw("kAttnSource") + 'extern "C" __global__ void __launch_bounds__(1024) k(const void* a, ' \
                'const void* b, const void* w, void* h, void* y, int K, float eps) { mlxe::' + inst + "(a, b, w, h, y, K, eps); }\n"
        else:
            params = "AttnParams" if inst.startswith("attend") else "Params"
            src = device if inst.startswith("qmv") else device + raw("kAttnSource")
            code = src + 'extern "C" __global__ void __launch_bounds__(256) k(const mlxe::' + params + ' p) { mlxe::' + inst + "(p); }\n"
        prog = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"k.cu", 0, None, None) == 0
        opts = [b"--gpu-architecture=sm_90", b"--std=c++17", b"--ptxas-options=-v"]
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        n = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            print(f"{inst}: NVRTC failed\n{log.value.decode()}")
            continue
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        cubin = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        path = f"{TOOLS}/k.cubin"
        open(path, "wb").write(cubin.raw)
        sass = subprocess.run([objdump, "-sass", path], capture_output=True, text=True, check=True).stdout
        ins = []
        for line in sass.splitlines():
            m = re.match(r"\s+/\*([0-9a-f]{4})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?);", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(3).split(".")[0], m.group(4)))
        loop = []
        for addr, op, arg in ins:  # the largest body between a backward branch and its target
            t = re.search(r"0x([0-9a-f]+)", arg) if op == "BRA" else None
            if t and int(t.group(1), 16) < addr:
                body = [o for (b, o, _) in ins if int(t.group(1), 16) <= b <= addr]
                loop = max(loop, body, key=len)
        usage = " ".join(re.findall(r"Used \d+ registers|\d+ bytes spill stores", log.value.decode()))
        ops = " ".join(f"{k}:{v}" for k, v in collections.Counter(loop).most_common(8))
        print(f"{inst:34s} {usage}; {len(ins)} instructions, hottest loop {len(loop)}: {ops}")


if __name__ == "__main__":
    main()
