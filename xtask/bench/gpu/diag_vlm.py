"""Pins where mlx-vlm's Qwen2.5-VL dies on MLX's CUDA backend (run by xtask/bench/gpu/run_vlm.sh).
Each case runs in its own `python3 -X faulthandler` child, so a SIGFPE (return code -8) ends only
that case and the faulthandler prints its Python stack; one JSON line per case on stdout.
Usage: python diag_vlm.py MODEL_DIR          (all cases)
       python diag_vlm.py MODEL_DIR CASE ... (one case, in this process)
Cases:
  windows        the vision tower's cu_window_seqlens for the bench image's grid (1, 32, 32), as
                 mlx-vlm computes them, and how many zero-length windows survive its dedupe loop
  sdpa-bf16-64   mx.fast.scaled_dot_product_attention, q/k/v (1, 16, L, 80): one real window
  sdpa-bf16-0    ... L = 0 (an empty window), bf16 (the cuDNN path)
  sdpa-f32-0     ... L = 0, float32 (not cuDNN: MLX's own kernels)
  sdpa-bf16-0-nocudnn  ... L = 0, bf16, MLX_CUDA_USE_CUDNN_SDPA=0
  sdpa-bf16-0-cpu      ... L = 0, bf16, on the CPU stream
  vision         mlx-vlm's Qwen2.5-VL vision tower alone (config from MODEL_DIR, random weights,
                 bf16) on the bench grid; every SDPA evaluated and its shape printed before it runs
  vision-dedupe  the same with the windows deduplicated (mlx_vlm_generate.py --dedupe-windows)
"""
import json
import os
import subprocess
import sys
import time

CASES = {
    "windows": {},
    "sdpa-bf16-64": {},
    "sdpa-bf16-0": {},
    "sdpa-f32-0": {},
    "sdpa-bf16-0-nocudnn": {"MLX_CUDA_USE_CUDNN_SDPA": "0"},
    "sdpa-bf16-0-cpu": {},
    "vision": {},
    "vision-dedupe": {},
}
GRID = [[1, 32, 32]]  # a 448x448 image: 32x32 patches of 14, 256 merged tokens


def vision_config(model_dir):
    from mlx_vlm.models.qwen2_5_vl.config import VisionConfig

    return VisionConfig.from_dict(json.load(open(os.path.join(model_dir, "config.json")))["vision_config"])


def run_case(model_dir, case):
    import mlx.core as mx

    if case == "windows":
        from mlx_vlm.models.qwen2_5_vl.vision import VisionModel

        vm = VisionModel(vision_config(model_dir))
        _, cu = vm.get_window_index(mx.array(GRID))
        # mlx-vlm's own "first occurrence" loop: mx.array scalars hash by identity, so it keeps all
        seen, idx = set(), []
        for i, x in enumerate(cu):
            if x not in seen:
                seen.add(x)
                idx.append(i)
        kept = cu[mx.array(idx, dtype=mx.int32)].tolist()
        lens = [b - a for a, b in zip(kept, kept[1:])]
        return {"cu_window_seqlens": cu.tolist(), "after_dedupe_loop": len(kept),
                "zero_length_windows": lens.count(0), "window_lengths": sorted(set(lens))}
    if case.startswith("sdpa"):
        _, dt, L = case.split("-")[:3]
        dtype = {"bf16": mx.bfloat16, "f32": mx.float32}[dt]
        stream = mx.cpu if case.endswith("-cpu") else mx.gpu
        q = mx.random.normal((1, 16, int(L), 80)).astype(dtype)
        print("sdpa", q.shape, q.dtype, stream, flush=True, file=sys.stderr)
        o = mx.fast.scaled_dot_product_attention(q, q, q, scale=80 ** -0.5, mask=None, stream=stream)
        mx.eval(o)
        return {"out_shape": o.shape}
    if case.startswith("vision"):
        from mlx.utils import tree_map
        from mlx_vlm.models.qwen2_5_vl import vision

        if case == "vision-dedupe":
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from mlx_vlm_generate import dedupe_windows

            dedupe_windows()
        sdpa = mx.fast.scaled_dot_product_attention
        shapes = []

        def traced(q, k, v, **kw):
            print("vision sdpa", q.shape, q.dtype, flush=True, file=sys.stderr)
            o = sdpa(q, k, v, **kw)
            mx.eval(o)
            shapes.append(q.shape[2])
            return o

        vision.mx.fast.scaled_dot_product_attention = traced
        vm = vision.VisionModel(vision_config(model_dir))
        vm.update(tree_map(lambda a: a.astype(mx.bfloat16), vm.parameters()))
        n = GRID[0][1] * GRID[0][2]
        px = mx.random.normal((n, 3 * 2 * 14 * 14)).astype(mx.bfloat16)
        t = time.perf_counter()
        out = vm(px, mx.array(GRID))
        mx.eval(out)
        return {"out_shape": out.shape, "sdpa_calls": len(shapes), "zero_length_calls": shapes.count(0),
                "s": round(time.perf_counter() - t, 3)}
    raise SystemExit(f"unknown case {case}")


def main():
    model_dir, cases = sys.argv[1], sys.argv[2:]
    if cases:
        for case in cases:
            print(json.dumps({"case": case, "ok": True, **run_case(model_dir, case)}), flush=True)
        return
    for case, env in CASES.items():
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-X", "faulthandler", os.path.abspath(__file__), model_dir, case],
                               env={**os.environ, **env}, capture_output=True, text=True, timeout=100)
        except subprocess.TimeoutExpired as e:
            p = subprocess.CompletedProcess(e.cmd, "timeout", e.stdout or "", e.stderr or "")
            p.stdout = p.stdout.decode() if isinstance(p.stdout, bytes) else p.stdout
            p.stderr = p.stderr.decode() if isinstance(p.stderr, bytes) else p.stderr
        line = next((l for l in p.stdout.splitlines() if l.startswith("{")), None)
        rec = json.loads(line) if line else {"case": case, "ok": False}
        rec.update(rc=p.returncode, signal="SIGFPE" if p.returncode == -8 else None, env=env,
                   wall_s=round(time.perf_counter() - t, 2))
        if p.returncode != 0:
            # the faulthandler's list of extension modules would push its stack out of the tail
            err = "\n".join(l for l in p.stderr.splitlines() if not l.startswith("Extension modules"))
            rec["stderr_tail"] = err[-1500:]
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
