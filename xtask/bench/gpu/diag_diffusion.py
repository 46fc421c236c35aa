"""Where the engine's GPU image time goes (run by run_diffusion.sh after the bench): MLX's CUDA
conv2d at the SD VAE and UNet shapes (3x3, padding 1, NHWC) in float32 / float16 / bfloat16,
group norm as engine-mlx composes it, and attention, each against torch (cuDNN; TF32 allowed for
float32 convs, its default) on the same GPU. A 3x3 conv is also timed as im2col (nine shifted
slices of the padded input concatenated on channels) and one matmul (cuBLASLt), `mlx_im2col_ms`,
a candidate where cuDNN's heuristic pick is slow. One JSON line per op: milliseconds per call, each
side's best of 3 after a warm-up, a timing over 10 calls in a row (the host's cost per call hidden).
"""
import json
import time

import mlx.core as mx
import torch
import torch.nn.functional as F

MX = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def best_ms(run, sync, reps=10):
    run()
    sync()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            run()
        sync()
        best = min(best, (time.perf_counter() - t) * 1e3 / reps)
    return best


def mx_sync():
    mx.synchronize()


def report(op, shape, dtype, m, t, **more):
    print(json.dumps({"op": op, "shape": shape, "dtype": dtype, "mlx_ms": m, "torch_ms": t, "ratio": m / t, **more}),
                     flush=True)


def conv(n, h, w, cin, cout, dtype):
    x = mx.random.normal((n, h, w, cin)).astype(MX[dtype])
    k = (mx.random.normal((cout, 3, 3, cin)) * 0.02).astype(MX[dtype])
    mx.eval(x, k)
    m = best_ms(lambda: mx.eval(mx.conv2d(x, k, padding=1)), mx_sync)
    kmat = mx.contiguous(k.reshape(cout, 9 * cin).T)  # (dy, dx, c) rows, as the slices below stack them
    mx.eval(kmat)

    def im2col():
        xp = mx.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = mx.concatenate([xp[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)
        return (cols.reshape(-1, 9 * cin) @ kmat).reshape(n, h, w, cout)

    err = mx.abs(im2col().astype(mx.float32) - mx.conv2d(x, k, padding=1).astype(mx.float32)).max().item()
    mi = best_ms(lambda: mx.eval(im2col()), mx_sync)
    xt = torch.randn(n, cin, h, w, device="cuda", dtype=TH[dtype])
    kt = torch.randn(cout, cin, 3, 3, device="cuda", dtype=TH[dtype]) * 0.02
    t = best_ms(lambda: F.conv2d(xt, kt, padding=1), torch.cuda.synchronize)
    xl, kl = xt.to(memory_format=torch.channels_last), kt.to(memory_format=torch.channels_last)
    tl = best_ms(lambda: F.conv2d(xl, kl, padding=1), torch.cuda.synchronize)
    report("conv3x3", [n, h, w, cin, cout], dtype, m, t, mlx_im2col_ms=mi, im2col_max_err=err, torch_nhwc_ms=tl)


def group_norm(n, h, w, c, dtype, groups=32):
    x = mx.random.normal((n, h, w, c)).astype(MX[dtype])
    g, b = mx.ones((c,), dtype=MX[dtype]), mx.zeros((c,), dtype=MX[dtype])
    mx.eval(x, g, b)

    def ours():
        gr = x.reshape(n, -1, groups, c // groups)
        mean = gr.mean(axis=(1, 3), keepdims=True)
        var = gr.var(axis=(1, 3), keepdims=True)
        y = ((gr - mean) * mx.rsqrt(var + 1e-6)).reshape(x.shape) * g + b
        mx.eval(y)

    m = best_ms(ours, mx_sync)
    xt = torch.randn(n, c, h, w, device="cuda", dtype=TH[dtype])
    t = best_ms(lambda: F.group_norm(xt, groups, eps=1e-6), torch.cuda.synchronize)
    report("group_norm", [n, h, w, c], dtype, m, t)


def attention(b, heads, length, d, dtype):
    q = mx.random.normal((b, heads, length, d)).astype(MX[dtype])
    mx.eval(q)
    m = best_ms(lambda: mx.eval(mx.fast.scaled_dot_product_attention(q, q, q, scale=d ** -0.5)), mx_sync)
    qt = torch.randn(b, heads, length, d, device="cuda", dtype=TH[dtype])
    t = best_ms(lambda: F.scaled_dot_product_attention(qt, qt, qt), torch.cuda.synchronize)
    report("sdpa", [b, heads, length, d], dtype, m, t)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    for dtype in ["float32", "float16", "bfloat16"]:
        # VAE decoder levels at 512x512 (64x64 latents), then the SD-2.1 UNet's (CFG batch 2).
        for shape in [(1, 512, 512, 128, 128), (1, 256, 256, 256, 256), (1, 128, 128, 512, 512), (1, 64, 64, 512, 512),
                      (2, 64, 64, 320, 320), (2, 32, 32, 640, 640), (2, 16, 16, 1280, 1280)]:
            conv(*shape, dtype)
        group_norm(1, 512, 512, 128, dtype)
        group_norm(2, 64, 64, 320, dtype)
    for dtype in ["float16", "bfloat16"]:
        attention(2, 5, 4096, 64, dtype)
        attention(1, 1, 4096, 512, dtype)
