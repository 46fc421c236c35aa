"""Tiny random Stable Diffusion pipelines in the real diffusers folder layout, with
diffusers' outputs as the oracle. Needs torch + diffusers (0.42.1), so it is run once by
hand and its output committed (CI and the README's set-up never install torch):

    cargo xtask torch-fixtures     # = <torch venv>/bin/python xtask/parity/make_tiny_diffusion.py \
                                   #     crates/engine-diffusion/tests/fixtures

Folders: sd1/ (SD 1.x-shaped: quick_gelu CLIP padded with <|endoftext|>, 1x1-conv projections,
PNDM, fp16 variant, plus single_file.safetensors: the same weights as one original-layout
checkpoint), sd2/ (SD 2.x-shaped: gelu CLIP padded with `!`, linear projections, per-level
heads, v-prediction, DDIM, f32), sdxl/ (two text encoders, the second with projection,
text_time conditioning, transformer_layers_per_block (1, 2), Euler trailing, fp16 variant),
lcm/ (an LCM-distilled UNet with time_cond_proj_dim and LatentConsistencyModelPipeline).
Each holds what `save_pretrained` writes (model_index.json, unet/, vae/, text_encoder/,
[text_encoder_2/], tokenizer/ (vocab.json + merges.txt only, as real SD repos), scheduler/), plus:
  latents.safetensors  `latents` (1, 4, 8, 8): the fixed initial noise fed as `latents=`,
                       `init_image` (64, 64, 3) f32 in [0, 1], `img2img_noise`, and
                       `step_noise` (4, 1, 4, 8, 8): Euler ancestral's / LCM's per-step draws
  refs.safetensors     diffusers' images (`image.<case>`, (64, 64, 3) f32 from
                       output_type="np") and intermediates: text encoder hidden states
                       (and SDXL's pooled output), one UNet forward (`unet.out`), `vae.decoded`
  expected.json        cases (scheduler, config overrides, kwargs, diffusers' timesteps),
                       prompts, token ids, and the command that made it.
Every case: guidance 7.5, 4 steps, the prompt and negative prompt below, 64x64 pixels.

img2img: diffusers samples the VAE posterior with the generator; the engine (like most
MLX ports) takes its mean, so the oracle runs with `retrieve_latents(sample_mode="argmax")`
and the added noise is fixed (`img2img_noise`).
"""
import json
import os
import sys
import types

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import (AutoencoderKL, LatentConsistencyModelPipeline, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, PNDMScheduler,
                       StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as sd_img2img_mod
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_mod
from diffusers.schedulers import scheduling_lcm as lcm_mod
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as xl_img2img_mod
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

COMMAND = "cargo xtask torch-fixtures (xtask/parity/make_tiny_diffusion.py crates/engine-diffusion/tests/fixtures)"
WORDS = ["a", "photo", "of", "an", "astronaut", "riding", "horse", "on", "mars", "blurry", "low", "quality",
         "cat", "dog", "red", "blue", "painting", "the", "moon", "with", "hat"]
PROMPT = "A photo of an astronaut riding a horse on Mars!"
NEGATIVE = "blurry, low quality"
STEPS = 4
GUIDANCE = 7.5
SIZE = 64


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(out, pad_token):
    """A CLIP-style byte-level BPE: 256 byte symbols, the same with `</w>`, merges
    building WORDS left to right, then the two special tokens (as CLIP's vocab)."""
    base = list(bytes_to_unicode().values())
    vocab = {}
    for s in base + [s + "</w>" for s in base]:
        vocab[s] = len(vocab)
    merges = []
    for w in WORDS:
        syms = list(w[:-1]) + [w[-1] + "</w>"] if len(w) > 1 else []
        cur = syms[0] if syms else None
        for s in syms[1:]:
            pair = f"{cur} {s}"
            cur = cur + s
            if pair not in merges:
                merges.append(pair)
                vocab.setdefault(cur, len(vocab))
    for t in ["<|startoftext|>", "<|endoftext|>"]:
        vocab[t] = len(vocab)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=os.path.join(out, "vocab.json"), merges=os.path.join(out, "merges.txt"),
                        pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(out)
    # Real SD repos ship vocab.json + merges.txt only: the engine builds the BPE from them.
    tok = CLIPTokenizer.from_pretrained(out)
    os.remove(os.path.join(out, "tokenizer.json"))
    return tok


def file_config(out):
    """The scheduler config as saved (what the engine reads). An in-memory config would also carry
    `_use_default_values`, which makes `from_config` swap in the target class's defaults."""
    with open(os.path.join(out, "scheduler", "scheduler_config.json")) as f:
        return json.load(f)


def drop_tokenizer_json(out):
    for sub in ["tokenizer", "tokenizer_2"]:
        p = os.path.join(out, sub, "tokenizer.json")
        if os.path.exists(p):
            os.remove(p)


def text_config(tok, act, layers=2):
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=77, hidden_act=act, projection_dim=32,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def tiny_vae():
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE,
                         scaling_factor=0.18215)


SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lcm": (LCMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler,
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
}


def t2np(x):
    return x.detach().float().contiguous()


# Extra cases: (name, scheduler, scheduler-config overrides, pipeline kwargs).
EXTRA = [
    ("ddim_linspace", "ddim", {"timestep_spacing": "linspace"}, {}),
    ("euler_linspace", "euler", {"timestep_spacing": "linspace"}, {}),
    ("dpmpp_2m_linspace", "dpmpp_2m", {"timestep_spacing": "linspace"}, {}),
    ("euler_linear_betas", "euler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {}),
    ("ddim_clip_skip1", "ddim", {}, {"clip_skip": 1}),
]


def patch_img2img(mod, noise):
    """Fixed added noise; the posterior's mean instead of a sample."""
    saved = (mod.randn_tensor, mod.retrieve_latents)
    mod.randn_tensor = lambda *a, **k: noise.clone()
    mod.retrieve_latents = lambda out, generator=None: saved[1](out, generator, sample_mode="argmax")
    return lambda: (setattr(mod, "randn_tensor", saved[0]), setattr(mod, "retrieve_latents", saved[1]))


def run_cases(pipe, img2img, img2img_mod, latents, init_image, noise, step_noise, refs, sched_base, full=True):
    """Every scheduler (+ EXTRA) and img2img with DDIM and Euler; `full=False`: the folder's
    own scheduler, DDIM and Euler, img2img with DDIM (SD 1.x-shaped fixture, kept small)."""
    cases = []
    own = [n for n, (cls, _) in SCHEDULERS.items() if cls.__name__ == pipe.scheduler.__class__.__name__][:1]
    names = list(SCHEDULERS) if full else own + ["ddim", "euler"]
    plan = [(n, n, {}, {}) for n in names] + (EXTRA if full else [])
    for name, sched, over, kwargs in plan:
        cls, extra = SCHEDULERS[sched]
        pipe.scheduler = cls.from_config({**sched_base, **over}, **extra)
        # Euler ancestral and LCM draw noise each step: fixed (`step_noise`), in order.
        draws = iter(step_noise)
        euler_a_mod.randn_tensor = lcm_mod.randn_tensor = lambda *a, **k: next(draws).clone()
        img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                   latents=latents.clone(), output_type="np", height=SIZE, width=SIZE, **kwargs).images[0]
        refs[f"image.{name}"] = torch.from_numpy(np.ascontiguousarray(img)).float()
        cases.append({"name": name, "scheduler": sched, "class": cls.__name__, "scheduler_overrides": over,
                      "kwargs": kwargs, "timesteps": [float(t) for t in pipe.scheduler.timesteps]})
    for name in ["ddim", "euler"] if full else ["ddim"]:
        cls, extra = SCHEDULERS[name]
        img2img.scheduler = cls.from_config(sched_base, **extra)
        restore = patch_img2img(img2img_mod, noise)
        pil = Image.fromarray((init_image.numpy() * 255).round().astype(np.uint8))
        img = img2img(PROMPT, image=pil, strength=0.6, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, output_type="np").images[0]
        restore()
        refs[f"image.img2img_{name}"] = torch.from_numpy(np.ascontiguousarray(img)).float()
        cases.append({"name": f"img2img_{name}", "scheduler": name, "strength": 0.6,
                      "timesteps": [float(t) for t in img2img.scheduler.timesteps]})
    return cases


def fixed_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=g)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=g)
    step_noise = torch.randn((STEPS, 1, 4, SIZE // 8, SIZE // 8), generator=g)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1)
    init = torch.from_numpy((np.round(img * 255) / 255).astype(np.float32))
    return latents, noise, step_noise, init


def sd(root, name, seed):
    """SD 2.x-shaped (`sd2`: OpenCLIP-style gelu encoder padded with `!`, linear projections,
    per-level heads, v-prediction, DDIM) or SD 1.x-shaped (`sd1`: quick_gelu encoder padded
    with <|endoftext|>, 1x1-conv projections, one head count, epsilon, PNDM; fp16 variant)."""
    out = os.path.join(root, name)
    torch.manual_seed(seed)
    v2 = name == "sd2"
    tok = write_tokenizer(os.path.join(out, "tokenizer"), "!" if v2 else "<|endoftext|>")
    te = CLIPTextModel(text_config(tok, "gelu" if v2 else "quick_gelu")).eval()
    unet = UNet2DConditionModel(sample_size=SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4) if v2 else 2, use_linear_projection=v2,
                                norm_num_groups=8).eval()
    vae = tiny_vae().eval()
    if v2:
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                              timestep_spacing="leading")
    else:
        sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    variant = None if v2 else "fp16"
    (pipe if v2 else pipe.to(torch.float16)).save_pretrained(out, safe_serialization=True, variant=variant)
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False,
                                                   variant=variant, torch_dtype=torch.float32)
    drop_tokenizer_json(out)
    # diffusers 0.42.1's clip_skip path reads `text_encoder.text_model.final_layer_norm`, which
    # transformers 5 flattened into `text_encoder.final_layer_norm`.
    if not hasattr(pipe.text_encoder, "text_model"):
        object.__setattr__(pipe.text_encoder, "text_model",
                           types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm))
    latents, noise, step_noise, init = fixed_inputs(seed + 1)
    refs = {}
    with torch.no_grad():
        ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        neg_ids = pipe.tokenizer(NEGATIVE, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids)[0]
        refs["text.0.hidden"] = t2np(hidden[0])
        t = torch.tensor(500.0)
        refs["unet.out"] = t2np(pipe.unet(latents, t, encoder_hidden_states=hidden).sample)
        refs["vae.decoded"] = t2np(pipe.vae.decode(latents / 0.18215).sample)
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        cases = run_cases(pipe, img2img, sd_img2img_mod, latents, init, noise, step_noise, refs, file_config(out),
                          full=v2)
    save_file({"latents": latents.contiguous(), "init_image": init.contiguous(), "img2img_noise": noise.contiguous(),
               "step_noise": step_noise.contiguous()},
              os.path.join(out, "latents.safetensors"), metadata={"command": COMMAND})
    save_file(refs, os.path.join(out, "refs.safetensors"), metadata={"command": COMMAND})
    expected = {"command": COMMAND, "diffusers": diffusers.__version__, "prompt": PROMPT, "negative_prompt": NEGATIVE,
                "steps": STEPS, "guidance": GUIDANCE, "width": SIZE, "height": SIZE, "unet_timestep": 500.0,
                "input_ids": [ids[0].tolist()], "negative_input_ids": [neg_ids[0].tolist()], "cases": cases}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def sdxl(root):
    out = os.path.join(root, "sdxl")
    torch.manual_seed(1)
    tok1 = write_tokenizer(os.path.join(out, "tokenizer"), "<|endoftext|>")
    tok2 = write_tokenizer(os.path.join(out, "tokenizer_2"), "!")
    te1 = CLIPTextModel(text_config(tok1, "quick_gelu")).eval()
    te2 = CLIPTextModelWithProjection(text_config(tok2, "gelu", layers=3)).eval()
    unet = UNet2DConditionModel(sample_size=SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
                                transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32).eval()
    vae = tiny_vae().eval()
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, prediction_type="epsilon", timestep_spacing="trailing")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)
    # Stored as the `fp16` variant (what SDXL repos ship, half the size); the oracle runs in f32.
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True, variant="fp16")
    pipe = StableDiffusionXLPipeline.from_pretrained(out, variant="fp16", torch_dtype=torch.float32,
                                                     add_watermarker=False)
    drop_tokenizer_json(out)
    latents, noise, step_noise, init = fixed_inputs(2)
    refs = {}
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(PROMPT, negative_prompt=NEGATIVE, device="cpu",
                                                      do_classifier_free_guidance=True)
        refs["text.hidden"] = t2np(pe[0])
        refs["text.pooled"] = t2np(pooled[0])
        refs["text.neg_hidden"] = t2np(npe[0])
        t = torch.tensor(500.0)
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
        refs["unet.out"] = t2np(pipe.unet(latents, t, encoder_hidden_states=pe,
                                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample)
        refs["vae.decoded"] = t2np(pipe.vae.decode(latents / 0.18215).sample)
        img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components, requires_aesthetics_score=False,
                                                   add_watermarker=False)
        cases = run_cases(pipe, img2img, xl_img2img_mod, latents, init, noise, step_noise, refs, file_config(out))
        # No negative prompt: force_zeros_for_empty_prompt makes the unconditional embeddings zeros.
        pipe.scheduler = EulerDiscreteScheduler.from_config(file_config(out))
        img = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
                   output_type="np", height=SIZE, width=SIZE).images[0]
        refs["image.euler_no_negative"] = torch.from_numpy(np.ascontiguousarray(img)).float()
        cases.append({"name": "euler_no_negative", "scheduler": "euler", "no_negative": True})
    save_file({"latents": latents.contiguous(), "init_image": init.contiguous(), "img2img_noise": noise.contiguous(),
               "step_noise": step_noise.contiguous()},
              os.path.join(out, "latents.safetensors"), metadata={"command": COMMAND})
    save_file(refs, os.path.join(out, "refs.safetensors"), metadata={"command": COMMAND})
    expected = {"command": COMMAND, "diffusers": diffusers.__version__, "prompt": PROMPT, "negative_prompt": NEGATIVE,
                "steps": STEPS, "guidance": GUIDANCE, "width": SIZE, "height": SIZE, "unet_timestep": 500.0,
                "cases": cases}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL
VAE_ATTN_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_ldm(sd, cfg):
    """diffusers UNet names -> original (ldm) `model.diffusion_model.*` names."""
    L = cfg["layers_per_block"]
    attn_up = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        name = next((l + k[len(d):] for d, l in UNET_LDM.items() if k.startswith(d + ".")), None)
        if name is None and p[0] in ("down_blocks", "up_blocks"):
            b, kind = int(p[1]), p[2]
            first = 1 + b * (L + 1) if p[0] == "down_blocks" else b * (L + 1)
            blocks = "input_blocks" if p[0] == "down_blocks" else "output_blocks"
            if kind == "resnets":
                name = f"{blocks}.{first + int(p[3])}.0.{RESNET_LDM[p[4]]}.{p[5]}"
            elif kind == "attentions":
                name = f"{blocks}.{first + int(p[3])}.1." + ".".join(p[4:])
            elif kind == "downsamplers":
                name = f"input_blocks.{(b + 1) * (L + 1)}.0.op.{p[-1]}"
            elif kind == "upsamplers":
                name = f"output_blocks.{b * (L + 1) + L}.{2 if attn_up[b] else 1}.conv.{p[-1]}"
        elif name is None and p[0] == "mid_block":
            j = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(p[1:3])]
            rest = f"{RESNET_LDM[p[3]]}.{p[4]}" if p[1] == "resnets" else ".".join(p[3:])
            name = f"middle_block.{j}.{rest}"
        out["model.diffusion_model." + name] = v
    return out


def vae_to_ldm(sd, cfg):
    """diffusers VAE names -> original `first_stage_model.*` names (attention as 1x1 convs)."""
    n = len(cfg["block_out_channels"])
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        name = k.replace("conv_norm_out", "norm_out")
        if p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2]) if p[1] == "down_blocks" else n - 1 - int(p[2])
            side = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                name = f"{p[0]}.{side}.{i}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            else:
                name = f"{p[0]}.{side}.{i}.{'downsample' if side == 'down' else 'upsample'}.conv.{p[-1]}"
        elif p[1] == "mid_block" and p[2] == "resnets":
            name = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
        elif p[1] == "mid_block":
            rest = ".".join(p[4:-1])
            name = f"{p[0]}.mid.attn_1.{VAE_ATTN_LDM[rest]}.{p[-1]}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + name] = v
    return out


def single_file(root):
    """The sd1 fixture as one original-layout checkpoint (`sd1/single_file.safetensors`,
    fp16). Checked here: diffusers' own single-file converters map it back to exactly
    the folder's weights."""
    from diffusers.loaders import single_file_utils as sfu
    out = os.path.join(root, "sd1")
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False,
                                                   variant="fp16", torch_dtype=torch.float16)
    unet, vae = pipe.unet.state_dict(), pipe.vae.state_dict()
    te = {("text_model." + k if not k.startswith("text_model.") else k): v
          for k, v in pipe.text_encoder.state_dict().items()}
    ckpt = {**unet_to_ldm(unet, pipe.unet.config), **vae_to_ldm(vae, pipe.vae.config),
            **{"cond_stage_model.transformer." + k: v for k, v in te.items()}}
    back_unet = sfu.convert_ldm_unet_checkpoint(ckpt, dict(pipe.unet.config))
    back_vae = sfu.convert_ldm_vae_checkpoint(ckpt, dict(pipe.vae.config))
    back_te = sfu.convert_ldm_clip_checkpoint(ckpt)
    for want, got, what in [(unet, back_unet, "unet"), (vae, back_vae, "vae"), (te, back_te, "text encoder")]:
        assert set(want) == set(got), (what, sorted(set(want) ^ set(got))[:8])
        for k in want:
            assert torch.equal(want[k], got[k].reshape(want[k].shape)), (what, k)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, os.path.join(out, "single_file.safetensors"),
              metadata={"command": COMMAND})


def lcm(root):
    """An LCM-distilled SD 1.x-shaped UNet (`time_cond_proj_dim`: the guidance scale is embedded,
    no unconditional half) with LatentConsistencyModelPipeline and its LCMScheduler; fp16 variant."""
    out = os.path.join(root, "lcm")
    torch.manual_seed(5)
    tok = write_tokenizer(os.path.join(out, "tokenizer"), "<|endoftext|>")
    te = CLIPTextModel(text_config(tok, "quick_gelu")).eval()
    unet = UNet2DConditionModel(sample_size=SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=8, time_cond_proj_dim=16).eval()
    sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=True,
                         steps_offset=1, prediction_type="epsilon", original_inference_steps=50, timestep_scaling=10.0)
    pipe = LatentConsistencyModelPipeline(vae=tiny_vae().eval(), text_encoder=te, tokenizer=tok, unet=unet,
                                          scheduler=sched, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True, variant="fp16")
    pipe = LatentConsistencyModelPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False,
                                                          variant="fp16", torch_dtype=torch.float32)
    drop_tokenizer_json(out)
    latents, noise, step_noise, init = fixed_inputs(6)
    refs = {}
    with torch.no_grad():
        draws = iter(step_noise)
        lcm_mod.randn_tensor = lambda *a, **k: next(draws).clone()
        img = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=latents.clone(),
                   output_type="np", height=SIZE, width=SIZE).images[0]
        refs["image.lcm"] = torch.from_numpy(np.ascontiguousarray(img)).float()
        cases = [{"name": "lcm", "scheduler": "lcm", "class": "LCMScheduler",
                  "timesteps": [float(t) for t in pipe.scheduler.timesteps]}]
    save_file({"latents": latents.contiguous(), "init_image": init.contiguous(), "img2img_noise": noise.contiguous(),
               "step_noise": step_noise.contiguous()},
              os.path.join(out, "latents.safetensors"), metadata={"command": COMMAND})
    save_file(refs, os.path.join(out, "refs.safetensors"), metadata={"command": COMMAND})
    expected = {"command": COMMAND, "diffusers": diffusers.__version__, "prompt": PROMPT, "negative_prompt": NEGATIVE,
                "steps": STEPS, "guidance": GUIDANCE, "width": SIZE, "height": SIZE, "cases": cases}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "crates/engine-diffusion/tests/fixtures"
    torch.set_num_threads(2)
    sd(root, "sd2", 0)
    sd(root, "sd1", 3)
    single_file(root)
    sdxl(root)
    lcm(root)
    print("wrote", root)
