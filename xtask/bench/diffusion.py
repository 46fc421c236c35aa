"""The diffusers side of `cargo xtask bench diffusion` (run with the torch venv's python).

    diffusion.py make DIR               random SD-1.x-shaped pipeline (reduced widths) in DIR/model,
                                        fixed initial noise in DIR/latents.safetensors
    diffusion.py run DIR STEPS GUIDANCE PROMPT NEGATIVE OURS.safetensors
                                        one warm-up, one timed DDIM run from the same latents, f32 on
                                        the CPU; prints JSON (seconds, max abs diff to OURS' `image`)
"""
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import save_file

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

SIZE = 256


def make(out):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
    from make_tiny_diffusion import write_tokenizer

    torch.manual_seed(0)
    model = os.path.join(out, "model")
    tok = write_tokenizer(os.path.join(model, "tokenizer"), "<|endoftext|>")
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024,
                                      num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
                                      hidden_act="quick_gelu", bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    # SD 1.x's UNet and VAE shapes at reduced widths: 3 levels, 2 layers each, 1x1-conv projections.
    unet = UNet2DConditionModel(sample_size=SIZE // 8, block_out_channels=(128, 256, 256), layers_per_block=2,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=256, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=32, sample_size=SIZE)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(model, safe_serialization=True)
    tj = os.path.join(model, "tokenizer", "tokenizer.json")
    if os.path.exists(tj):
        os.remove(tj)
    g = torch.Generator().manual_seed(1)
    save_file({"latents": torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=g)},
              os.path.join(out, "latents.safetensors"))


def run(out, steps, guidance, prompt, negative, ours):
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(out, "model"), torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.from_numpy(load_np(os.path.join(out, "latents.safetensors"))["latents"])
    kw = dict(negative_prompt=negative, guidance_scale=guidance, output_type="np", height=SIZE, width=SIZE)
    with torch.inference_mode():
        pipe(prompt, num_inference_steps=1, latents=latents.clone(), **kw)
        t = time.perf_counter()
        img = pipe(prompt, num_inference_steps=steps, latents=latents.clone(), **kw).images[0]
        s = time.perf_counter() - t
    diff = float(np.abs(img - load_np(ours)["image"]).max())
    print(json.dumps({"s_per_image": s, "max_abs_diff": diff, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        run(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7])
