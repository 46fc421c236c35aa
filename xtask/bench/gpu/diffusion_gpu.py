"""The diffusers side of the GPU image bench (xtask/bench/gpu/run_diffusion.sh), at real shapes
with random weights (the GPU machine has torch but no internet):

    diffusion_gpu.py make DIR {sd21|sdxl-turbo}   DIR/model: the diffusers folder (float16 safetensors),
                                                  DIR/latents.safetensors: fixed initial noise (1, 4, 64, 64)
    diffusion_gpu.py run DIR {sd21|sdxl-turbo} RUNS [OURS.safetensors]
                                                  diffusers float16 on the GPU: one warm-up, RUNS timed
                                                  512x512 runs from the same latents; one JSON line each
                                                  (with the loop alone, timed again with output_type="latent",
                                                  and the max abs difference to OURS' `image`)

sd21: SD-2.1-shaped (OpenCLIP-H-shaped text encoder, UNet 320/640/1280/1280 with linear projections
and per-level heads, v-prediction), DDIM, 50 steps, guidance 7.5 (classifier-free, batched halves).
sdxl-turbo: SDXL-shaped (CLIP-L + OpenCLIP-bigG-shaped encoders, UNet 320/640/1280 with 1/2/10
transformer layers, text_time conditioning), Euler trailing, 1 step, guidance 0 (no unconditional half).
Tokenizers are the small byte-level BPE of the parity fixtures (xtask/parity/make_tiny_diffusion.py);
text encoders keep CLIP's 49408-token embedding.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import save_file

from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "parity"))
from make_tiny_diffusion import write_tokenizer  # noqa: E402

SIZE = 512
PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"
RUNS = {"sd21": dict(steps=50, guidance=7.5), "sdxl-turbo": dict(steps=1, guidance=0.0)}


def clip(tok, hidden, layers, heads, act, projection=None):
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         hidden_act=act, projection_dim=projection or hidden, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def vae(scaling):
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=SIZE,
                         scaling_factor=scaling)


def rescale_(module):
    """Random init at these widths overflows float16 within a few blocks; small weights keep the
    activations in range (the timing does not depend on the values)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.mul_(0.5)


def make(out, kind):
    torch.manual_seed(0)
    model = os.path.join(out, "model")
    with torch.device("cuda"):
        if kind == "sd21":
            tok = write_tokenizer(os.path.join(model, "tokenizer"), "!")
            te = clip(tok, 1024, 23, 16, "gelu")
            unet = UNet2DConditionModel(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                                        block_out_channels=(320, 640, 1280, 1280),
                                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                        use_linear_projection=True)
            sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type="v_prediction")
            pipe = StableDiffusionPipeline(vae=vae(0.18215), text_encoder=te, tokenizer=tok, unet=unet,
                                           scheduler=sched, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        else:
            tok1 = write_tokenizer(os.path.join(model, "tokenizer"), "<|endoftext|>")
            tok2 = write_tokenizer(os.path.join(model, "tokenizer_2"), "!")
            te1 = clip(tok1, 768, 12, 12, "quick_gelu")
            te2 = clip(tok2, 1280, 32, 20, "gelu", projection=1280)
            unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                        block_out_channels=(320, 640, 1280),
                                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                          "CrossAttnDownBlock2D"),
                                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                        cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                                        use_linear_projection=True, transformer_layers_per_block=(1, 2, 10),
                                        addition_embed_type="text_time", addition_time_embed_dim=256,
                                        projection_class_embeddings_input_dim=2816)
            sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, prediction_type="epsilon", timestep_spacing="trailing")
            pipe = StableDiffusionXLPipeline(vae=vae(0.13025), text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                             tokenizer_2=tok2, unet=unet, scheduler=sched,
                                             force_zeros_for_empty_prompt=True, add_watermarker=False)
    rescale_(pipe.unet)
    rescale_(pipe.vae)
    pipe.to(torch.float16).save_pretrained(model, safe_serialization=True)
    for sub in ["tokenizer", "tokenizer_2"]:
        p = os.path.join(model, sub, "tokenizer.json")
        if os.path.exists(p):
            os.remove(p)
    g = torch.Generator().manual_seed(1)
    save_file({"latents": torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=g)},
              os.path.join(out, "latents.safetensors"))


def run(out, kind, runs, ours):
    cls = StableDiffusionPipeline if kind == "sd21" else StableDiffusionXLPipeline
    extra = dict(safety_checker=None, requires_safety_checker=False) if kind == "sd21" else dict(add_watermarker=False)
    pipe = cls.from_pretrained(os.path.join(out, "model"), torch_dtype=torch.float16, **extra).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    latents = torch.from_numpy(load_np(os.path.join(out, "latents.safetensors"))["latents"]).to("cuda", torch.float16)
    cfg = RUNS[kind]
    kw = dict(guidance_scale=cfg["guidance"], output_type="np", height=SIZE, width=SIZE)
    if cfg["guidance"] > 1:
        kw["negative_prompt"] = NEGATIVE
    with torch.inference_mode():
        pipe(PROMPT, num_inference_steps=cfg["steps"], latents=latents.clone(), **kw)
        for _ in range(runs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            img = pipe(PROMPT, num_inference_steps=cfg["steps"], latents=latents.clone(), **kw).images[0]
            torch.cuda.synchronize()
            s = time.perf_counter() - t
            # The same without the VAE decode: the text encoders + UNet loop alone.
            t = time.perf_counter()
            pipe(PROMPT, num_inference_steps=cfg["steps"], latents=latents.clone(), **{**kw, "output_type": "latent"})
            torch.cuda.synchronize()
            loop = time.perf_counter() - t
            line = {"kind": kind, "side": "diffusers", "dtype": "float16", "s_per_image": s, "loop_s": loop,
                    "vae_s": s - loop,
                    "steps": cfg["steps"], "guidance": cfg["guidance"], "torch": torch.__version__,
                    "nan": bool(np.isnan(img).any())}
            if ours and os.path.exists(ours):
                line["max_abs_diff"] = float(np.abs(img - load_np(ours)["image"]).max())
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
