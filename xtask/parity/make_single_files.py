"""Original-layout single-file checkpoints of the committed tiny sd2/ and sdxl/ fixtures,
written as diffusers' own conversion scripts write them, and checked by diffusers reading
them back. Run after make_tiny_diffusion.py by `cargo xtask torch-fixtures`; alone:

    MLXENGINE_DIFFUSERS_SCRIPTS=<diffusers checkout>/scripts \
        <torch venv>/bin/python xtask/parity/make_single_files.py crates/engine-diffusion/tests/fixtures

Needs torch + diffusers 0.42.1 (as make_tiny_diffusion.py) and the `scripts/` folder of a
huggingface/diffusers checkout (they are not in the wheel; default: target/diffusers/scripts):
convert_diffusers_to_original_stable_diffusion.py and convert_diffusers_to_original_sdxl.py
(unchanged since diffusers commit edc154da09).

Writes `<fixture>/single_file.safetensors` (fp16, as `--half`) for sd2 (SD 2.x layout:
`cond_stage_model.model.*`, OpenCLIP with fused in_proj) and sdxl (`conditioner.embedders.0.
transformer.*` CLIP-L + `conditioner.embedders.1.model.*` OpenCLIP with text_projection), and
for sd2 (whose folder is f32) `sd2/single_file_refs.safetensors`: diffusers' images from
`from_single_file` (the folder's configs, offline) for the cases in SINGLE_CASES; sdxl's folder is
fp16 already, so its single file is checked to give the folder's images.

Who writes what: the text encoders and the VAE go through the scripts' functions. Their UNet map
is hard-wired to the full-size level layout (SD: 4 levels x 2 layers; SDXL: 3 x 2), which the tiny
fixtures do not have, so the UNet goes through make_tiny_diffusion.unet_to_ldm, checked here to
give exactly the scripts' output on UNets of the full-size layouts (tiny widths).
"""
import importlib.util
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextModelWithProjection
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_diffusion import GUIDANCE, NEGATIVE, PROMPT, SIZE, STEPS, file_config, unet_to_ldm  # noqa: E402

COMMAND = "cargo xtask torch-fixtures (xtask/parity/make_single_files.py crates/engine-diffusion/tests/fixtures)"
SINGLE_CASES = {"sd2": ["ddim", "euler"], "sdxl": ["euler", "ddim"]}
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


def load_script(scripts, name):
    path = os.path.join(scripts, name + ".py")
    if not os.path.isfile(path):
        sys.exit(f"{path} is missing: set MLXENGINE_DIFFUSERS_SCRIPTS to the scripts/ folder of a diffusers checkout")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_unet_map(sd_conv, xl_conv):
    """unet_to_ldm == the scripts' convert_unet_state_dict on the layouts those are written for."""
    shapes = {
        "sd": (sd_conv, dict(block_out_channels=(8, 8, 8, 8), layers_per_block=2, cross_attention_dim=8,
                             attention_head_dim=2, norm_num_groups=4)),
        "sdxl": (xl_conv, dict(block_out_channels=(8, 8, 8), layers_per_block=2, cross_attention_dim=8,
                               attention_head_dim=2, norm_num_groups=4, transformer_layers_per_block=(1, 1, 2),
                               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                               addition_embed_type="text_time", addition_time_embed_dim=4,
                               projection_class_embeddings_input_dim=4 * 6 + 8, use_linear_projection=True)),
    }
    for what, (conv, kw) in shapes.items():
        unet = UNet2DConditionModel(sample_size=8, **kw)
        sd = unet.state_dict()
        want = {"model.diffusion_model." + k: v for k, v in conv.convert_unet_state_dict(dict(sd)).items()}
        got = unet_to_ldm(sd, unet.config)
        assert set(want) == set(got), (what, sorted(set(want) ^ set(got))[:8])
        assert all(torch.equal(want[k], got[k]) for k in want), what


def with_text_model(sd):
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix; checkpoints (and the
    scripts) use transformers 4's names."""
    return {(k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v
            for k, v in sd.items()}


def component(folder, sub, stem):
    for name in [f"{stem}.safetensors", f"{stem}.fp16.safetensors"]:
        p = os.path.join(folder, sub, name)
        if os.path.exists(p):
            return load_file(p)
    raise FileNotFoundError(os.path.join(folder, sub, stem))


def sd2_checkpoint(folder, sd_conv):
    unet = component(folder, "unet", "diffusion_pytorch_model")
    vae = component(folder, "vae", "diffusion_pytorch_model")
    te = with_text_model(component(folder, "text_encoder", "model"))
    cfg = UNet2DConditionModel.load_config(os.path.join(folder, "unet"))
    # As the script's main does for v2 (its `is_v20_model` test looks for a 23rd layer).
    te = sd_conv.convert_text_enc_state_dict_v20({"transformer." + k: v for k, v in te.items()})
    ckpt = {**unet_to_ldm(unet, cfg),
            **{"first_stage_model." + k: v for k, v in sd_conv.convert_vae_state_dict(vae).items()},
            **{"cond_stage_model.model." + k: v for k, v in te.items()}}
    # Real SD 2.x files also hold OpenCLIP's last layer (diffusers' encoder stops one short),
    # its projection and logit scale: unused by the pipeline, and must be skipped.
    g = torch.Generator().manual_seed(7)
    width = ckpt["cond_stage_model.model.ln_final.weight"].shape[0]
    n = 1 + max(int(k.split(".")[4]) for k in ckpt if ".resblocks." in k)
    for k in [k for k in ckpt if ".resblocks.0." in k]:
        ckpt[k.replace(".resblocks.0.", f".resblocks.{n}.")] = torch.randn(ckpt[k].shape, generator=g)
    ckpt["cond_stage_model.model.text_projection"] = torch.randn((width, width), generator=g)
    ckpt["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    return ckpt


def sdxl_checkpoint(folder, xl_conv):
    unet = component(folder, "unet", "diffusion_pytorch_model")
    vae = component(folder, "vae", "diffusion_pytorch_model")
    te1 = with_text_model(component(folder, "text_encoder", "model"))
    te2 = with_text_model(component(folder, "text_encoder_2", "model"))
    cfg = UNet2DConditionModel.load_config(os.path.join(folder, "unet"))
    te1 = xl_conv.convert_openai_text_enc_state_dict(te1)
    te1["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # a buffer real files carry
    te2 = {"conditioner.embedders.1.model." + k: v for k, v in xl_conv.convert_openclip_text_enc_state_dict(te2).items()}
    # As the script's main: OpenCLIP applies text_projection as `x @ proj`.
    te2["conditioner.embedders.1.model.text_projection"] = te2.pop(
        "conditioner.embedders.1.model.text_projection.weight").T.contiguous()
    te2["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
    return {**unet_to_ldm(unet, cfg),
            **{"first_stage_model." + k: v for k, v in xl_conv.convert_vae_state_dict(vae).items()},
            **{"conditioner.embedders.0.transformer." + k: v for k, v in te1.items()}, **te2}


def images(pipe, folder, cases, latents):
    out = {}
    with torch.no_grad():
        for name in cases:
            pipe.scheduler = SCHEDULERS[name].from_config(file_config(folder))
            img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                       latents=latents.clone(), output_type="np", height=SIZE, width=SIZE).images[0]
            out[f"image.{name}"] = torch.from_numpy(np.ascontiguousarray(img)).float()
    return out


def write(root, name, ckpt, cls, extra):
    folder = os.path.join(root, name)
    path = os.path.join(folder, "single_file.safetensors")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt.items()}
    save_file(half, path, metadata={"command": COMMAND})
    latents = load_file(os.path.join(folder, "latents.safetensors"))["latents"]
    if name == "sdxl":
        # diffusers tells SDXL's two encoders apart by width (768 vs 1280); the tiny ones are both 32
        # wide, so its loader would fill text_encoder_2 with CLIP-L's weights: read it explicitly
        # with diffusers' OpenCLIP converter.
        te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(folder, "text_encoder_2"),
                                                          torch_dtype=torch.float32, variant="fp16")
        sd = {k: v.float() for k, v in load_file(path).items() if k.startswith("conditioner.embedders.1.")}
        missing, unexpected = te2.load_state_dict(
            sfu.convert_open_clip_checkpoint(te2, sd, prefix="conditioner.embedders.1.model."), strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        extra = {**extra, "text_encoder_2": te2}
    single = cls.from_single_file(path, config=folder, local_files_only=True, torch_dtype=torch.float32, **extra)
    # diffusers' reader gives back the folder's weights (rounded to fp16 as stored).
    whole = cls.from_pretrained(folder, torch_dtype=torch.float16, variant=None if name == "sd2" else "fp16",
                                **{k: v for k, v in extra.items() if k != "text_encoder_2"})
    for comp in ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if name == "sdxl" else []):
        want, got = getattr(whole, comp).state_dict(), getattr(single, comp).state_dict()
        for k, v in want.items():
            assert torch.equal(v.float(), got[k]), (name, comp, k)
    refs = images(single, folder, SINGLE_CASES[name], latents)
    folder_refs = load_file(os.path.join(folder, "refs.safetensors"))
    for k, v in refs.items():
        print(f"{name} {k}: from_single_file vs folder image max abs diff {(v - folder_refs[k]).abs().max():.2e}")
    if name == "sd2":
        # The sd2 folder is f32; its fp16 single file moves the image by ~2e-3, so the test needs these.
        save_file(refs, os.path.join(folder, "single_file_refs.safetensors"), metadata={"command": COMMAND})
    else:
        # The sdxl folder is stored fp16 already: the same image as the folder's refs.
        assert all((v - folder_refs[k]).abs().max() < 1e-4 for k, v in refs.items())


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "crates/engine-diffusion/tests/fixtures"
    here = os.path.dirname(os.path.abspath(__file__))
    scripts = os.environ.get("MLXENGINE_DIFFUSERS_SCRIPTS", os.path.join(here, "..", "..", "target/diffusers/scripts"))
    torch.set_num_threads(2)
    sd_conv = load_script(scripts, "convert_diffusers_to_original_stable_diffusion")
    xl_conv = load_script(scripts, "convert_diffusers_to_original_sdxl")
    check_unet_map(sd_conv, xl_conv)
    no_checker = {"safety_checker": None, "requires_safety_checker": False}
    write(root, "sd2", sd2_checkpoint(os.path.join(root, "sd2"), sd_conv), StableDiffusionPipeline, no_checker)
    write(root, "sdxl", sdxl_checkpoint(os.path.join(root, "sdxl"), xl_conv), StableDiffusionXLPipeline,
          {"add_watermarker": False})
    print("wrote single files in", root)
