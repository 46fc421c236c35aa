"""Tiny random vision-language checkpoints in the real Hugging Face layout, with
transformers' outputs as the oracle (its PIL image processors, with Pillow 12.1.1 —
the resampling engine-vlm reimplements; Pillow 13 resamples mixed up/down sizes
differently). Needs torch, so it is run once by hand and
its output committed (CI and the README's set-up never install torch):

    cargo xtask torch-fixtures          # = <torch venv>/bin/python xtask/parity/make_tiny_vlms.py \
                                        #     crates/engine-vlm/tests/fixtures

Each folder (llava/, ...) holds what `save_pretrained` writes for the model and its
processor (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
chat_template, preprocessor_config.json), the test images (PNG), and expected.json:
for each case, the chat messages, the rendered prompt, the processor's input_ids,
the pixel values' shape and a checksum, the logits of the last positions (f32) and
transformers' greedy tokens.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

WORDS = ["USER", "ASSISTANT", ":", "What", "is", "in", "the", "image", "?", "Describe", "this", "picture", "and",
         "a", "cat", "dog", "red", "blue", "Compare", "two", "images", "."]
BASE_WORDS = list(WORDS)
VOCAB = 256
SPECIAL = ["<unk>", "<s>", "</s>", "<image>"]
LAST = 8  # positions whose logits are recorded
GREEDY = 12

# The chat template llava-hf ships for llava-1.5 (its `{% generation %}` marks
# assistant text for training masks; templates must render with it).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tokenizer(out, special=SPECIAL, bos=True, newlines=False, words=None, **kw):
    vocab = {t: i for i, t in enumerate(special)}
    # Newlines as added (non-special) tokens: the Whitespace pre-tokenizer would drop them.
    plain_added = ["\n\n", "\n"] if newlines else []
    for t in plain_added:
        vocab[t] = len(vocab)
    for w in words or WORDS:
        vocab[w] = len(vocab)
    while len(vocab) < VOCAB:
        vocab[f"t{len(vocab)}"] = len(vocab)
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(special)]
        + [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": False} for t in plain_added],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
        # Like Llama's tokenizer: BOS before every encoded text.
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                   {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}} if bos else None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    path = os.path.join(out, "tokenizer.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    Tokenizer.from_file(path)  # fails loudly if the definition is wrong
    if not bos:
        return PreTrainedTokenizerFast(tokenizer_file=path, unk_token="<unk>", **kw)
    return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens={"image_token": "<image>"})


def test_images(out, seed, sizes):
    rng = np.random.default_rng(seed)
    names = []
    for i, (w, h) in enumerate(sizes):
        # Smooth gradients plus noise: resampling differences would show.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
        img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        name = f"image{i}.png"
        Image.fromarray(img).save(os.path.join(out, name))
        names.append(name)
    return names


def widen(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.2)


def run_case(model, processor, messages, images, bos_in_template=False):
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    pil = [Image.open(p) for p in images]
    # A template that writes the BOS itself is tokenized without another, as
    # apply_chat_template(tokenize=True) does.
    extra = {"add_special_tokens": False} if bos_in_template else {}
    inputs = processor(images=pil or None, text=prompt, return_tensors="pt", **extra)
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
        gen = model.generate(**inputs, max_new_tokens=GREEDY, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=GREEDY)
    ids = inputs["input_ids"][0].tolist()
    case = {
        "messages": messages, "prompt": prompt, "input_ids": ids,
        "logits_last": logits[-LAST:].tolist(), "greedy": gen[0, len(ids):].tolist(),
    }
    if "pixel_values" in inputs:
        pv = inputs["pixel_values"].float()
        case["pixel_shape"] = list(pv.shape)
        case["pixel_sum"] = float(pv.double().sum())
        case["pixel_abs_sum"] = float(pv.double().abs().sum())
    return case


def msg(text, n_images):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def check_pillow():
    import PIL
    if PIL.__version__ != "12.1.1":
        sys.exit(f"Pillow {PIL.__version__}: install pillow==12.1.1 (the resampling the references must use)")


def llava(root):
    out = os.path.join(root, "llava")
    os.makedirs(out, exist_ok=True)
    tok = tokenizer(out)
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32, hidden_act="quick_gelu")
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                      image_seq_length=16)
    model = LlavaForConditionalGeneration(cfg).eval()
    widen(model, 1)
    improc = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                resample=3, do_center_crop=True, do_normalize=True, do_convert_rgb=True)
    processor = LlavaProcessor(image_processor=improc, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    images = test_images(out, 7, [(80, 64), (50, 70)])
    paths = [os.path.join(out, n) for n in images]
    cases = {
        "one_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[:1]),
        "other_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[1:2]),
        "two_images": run_case(model, processor, [msg("Compare two images .", 2)], paths),
        "text_only": run_case(model, processor, [msg("Describe a cat .", 0)], []),
    }
    cases["one_image"]["images"] = images[:1]
    cases["other_image"]["images"] = images[1:2]
    cases["two_images"]["images"] = images
    cases["text_only"]["images"] = []
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"made_by": "cargo xtask torch-fixtures (xtask/parity/make_tiny_vlms.py), transformers "
                   + __import__("transformers").__version__ + ", torch " + torch.__version__,
                   "image_token_id": image_token, "cases": cases}, f)
    print("wrote", out)


def llava_next(root):
    """LLaVA-NeXT: anyres tiling (best pinpoint, aspect-kept resize, zero padding, tiles plus a squashed
    base image), unpadding of the tile features and image_newline after each row."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    out = os.path.join(root, "llava-next")
    os.makedirs(out, exist_ok=True)
    tok = tokenizer(out)
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32, hidden_act="quick_gelu")
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=1024, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    pinpoints = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                          vision_feature_layer=-2, vision_feature_select_strategy="default",
                          projector_hidden_act="gelu", image_grid_pinpoints=pinpoints, image_seq_length=16)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    widen(model, 5)
    improc = LlavaNextImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                        image_grid_pinpoints=pinpoints, resample=3, do_center_crop=True,
                                        do_normalize=True, do_convert_rgb=True, do_pad=True)
    processor = LlavaNextProcessor(image_processor=improc, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_TEMPLATE)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    # Wide, tall and near-square sizes pick different pinpoints; 150x40 needs padding above and below.
    images = test_images(out, 17, [(80, 64), (50, 70), (150, 40)])
    paths = [os.path.join(out, n) for n in images]
    cases = {
        "one_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[:1]),
        "other_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[1:2]),
        "two_images": run_case(model, processor, [msg("Compare two images .", 2)], paths[1:3]),
        "text_only": run_case(model, processor, [msg("Describe a cat .", 0)], []),
    }
    cases["one_image"]["images"] = images[:1]
    cases["other_image"]["images"] = images[1:2]
    cases["two_images"]["images"] = images[1:3]
    cases["text_only"]["images"] = []
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"made_by": "cargo xtask torch-fixtures (xtask/parity/make_tiny_vlms.py), transformers "
                   + __import__("transformers").__version__ + ", torch " + torch.__version__,
                   "image_token_id": image_token, "cases": cases}, f)
    print("wrote", out)


# Qwen2-VL's own template (as Qwen/Qwen2-VL-2B-Instruct ships it).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content"
    " or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video'"
    " or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]


def qwen2_vl(root, v25=False):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
                              Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    global WORDS
    if "system" not in WORDS:
        WORDS = WORDS + ["system", "user", "assistant", "You", "are", "helpful", "assistant."]
    out = os.path.join(root, "qwen2.5-vl" if v25 else "qwen2-vl")
    os.makedirs(out, exist_ok=True)
    tok = tokenizer(out, QWEN_SPECIAL, bos=False, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                    extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    if v25:
        # Windows of 2x2 merged tokens (56 px), full attention in blocks 1 and 3.
        vision = dict(depth=4, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, hidden_act="silu", window_size=56,
                      fullatt_block_indexes=[1, 3])
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
    config_cls, model_cls, proc_cls = ((Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
                                       if v25 else (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor))
    cfg = config_cls(
        vision_config=vision,
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], tie_word_embeddings=False),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = model_cls(cfg).eval()
    widen(model, 3 if v25 else 2)
    with torch.no_grad():
        # A random head often says <|im_end|> first; make it rarer so answers have length.
        model.lm_head.weight[ids["<|im_end|>"]] *= 0.1
    improc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                      temporal_patch_size=2)
    vidproc = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)
    processor = proc_cls(image_processor=improc, tokenizer=tok, video_processor=vidproc,
                                 chat_template=QWEN2_VL_TEMPLATE)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    images = test_images(out, 11, [(80, 64), (50, 70), (130, 90)] if not v25 else [(80, 64), (50, 70), (170, 120)])
    paths = [os.path.join(out, n) for n in images]
    cases = {
        "one_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[:1]),
        "other_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[1:2]),
        "two_images": run_case(model, processor, [msg("Compare two images .", 2)], paths[1:3]),
        "text_only": run_case(model, processor, [msg("Describe a cat .", 0)], []),
    }
    cases["one_image"]["images"] = images[:1]
    cases["other_image"]["images"] = images[1:2]
    cases["two_images"]["images"] = images[1:3]
    cases["text_only"]["images"] = []
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"made_by": "cargo xtask torch-fixtures (xtask/parity/make_tiny_vlms.py), transformers "
                   + __import__("transformers").__version__ + ", torch " + torch.__version__,
                   "image_token_id": ids["<|image_pad|>"], "eos_token_id": ids["<|im_end|>"], "cases": cases}, f)
    print("wrote", out)


# Gemma 3's chat template, as google/gemma-3-4b-it ships it (system text folded
# into the first user turn; images as <start_of_image>).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
GEMMA3_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]


def gemma3(root):
    """Gemma 3: SigLIP tower, 2x2 average pooling + RMSNorm projector, a Gemma 3 decoder with a sliding
    layer (window 8, so it bites inside the prompt) and a global one; attention is bidirectional over
    each image's tokens."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    # Its own word list, so the vocabulary does not depend on which fixtures ran before.
    words = BASE_WORDS + ["user", "model", "You", "are", "helpful", "Be", "brief"]
    out = os.path.join(root, "gemma3")
    os.makedirs(out, exist_ok=True)
    # Newlines are added (non-special) tokens, so the processor's "\n\n" around each image shows in the ids.
    tok = tokenizer(out, GEMMA3_SPECIAL, bos=False, newlines=True, words=words, bos_token="<bos>", eos_token="<eos>",
                    pad_token="<pad>",
                    extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                          "image_token": "<image_soft_token>"})
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA3_SPECIAL}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                  patch_size=14, vision_use_head=False)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, max_position_embeddings=512,
                query_pre_attn_scalar=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=4,
                       boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                       image_token_index=ids["<image_soft_token>"])
    model = Gemma3ForConditionalGeneration(cfg).eval()
    widen(model, 4)
    with torch.no_grad():
        # Louder image features, so a different image changes the greedy answer.
        model.model.multi_modal_projector.mm_input_projection_weight *= 4
    improc = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=improc, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=4)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    images = test_images(out, 13, [(80, 64), (50, 70)])
    paths = [os.path.join(out, n) for n in images]
    system = {"role": "system", "content": [{"type": "text", "text": "You are helpful . Be brief ."}]}
    cases = {
        "one_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[:1], bos_in_template=True),
        "other_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[1:2],
                                bos_in_template=True),
        "two_images": run_case(model, processor, [system, msg("Compare two images .", 2)], paths,
                               bos_in_template=True),
        "text_only": run_case(model, processor, [msg("Describe a cat .", 0)], [], bos_in_template=True),
    }
    cases["one_image"]["images"] = images[:1]
    cases["other_image"]["images"] = images[1:2]
    cases["two_images"]["images"] = images
    cases["text_only"]["images"] = []
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"made_by": "cargo xtask torch-fixtures (xtask/parity/make_tiny_vlms.py), transformers "
                   + __import__("transformers").__version__ + ", torch " + torch.__version__,
                   "image_token_id": ids["<image_soft_token>"], "eos_token_id": ids["<end_of_turn>"],
                   "cases": cases}, f)
    print("wrote", out)


# SmolVLM-Instruct's chat template (Idefics3 layout).
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_SPECIAL = (["<unk>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                     "<image>", "<global-img>"]
                    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])


def idefics3(root):
    """Idefics3 / SmolVLM: a SigLIP tower over 56-px frames (image split into tiles after a longest-edge
    resize, plus a global frame), pixel-shuffle (scale 2) connector, a Llama decoder; the processor writes
    <fake_token_around_image><row_r_col_c> + image tokens per tile and a <global-img> frame."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    out = os.path.join(root, "idefics3")
    os.makedirs(out, exist_ok=True)
    words = BASE_WORDS + ["User", "Assistant"]
    tok = tokenizer(out, IDEFICS3_SPECIAL, bos=False, newlines=True, words=words, bos_token="<|im_start|>",
                    eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
                    extra_special_tokens={"image_token": "<image>"})
    ids = {t: tok.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIAL}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                  patch_size=14)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=1024, rms_norm_eps=1e-5,
                bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    cfg = Idefics3Config(vision_config=vision, text_config=text, scale_factor=2, image_token_id=ids["<image>"],
                         tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    widen(model, 6)
    improc = Idefics3ImageProcessorPil(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                       do_image_splitting=True, resample=1)
    processor = Idefics3Processor(image_processor=improc, tokenizer=tok, image_seq_len=4,
                                  chat_template=IDEFICS3_TEMPLATE)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    # 80x64 splits 2x2, 150x40 1x2 (tiles and a global frame each); 30x20 stays one frame.
    images = test_images(out, 19, [(80, 64), (150, 40), (30, 20)])
    paths = [os.path.join(out, n) for n in images]
    cases = {
        "one_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[:1]),
        "other_image": run_case(model, processor, [msg("What is in the image ?", 1)], paths[1:2]),
        "two_images": run_case(model, processor, [msg("Compare two images .", 2)], paths[1:3]),
        "text_only": run_case(model, processor, [msg("Describe a cat .", 0)], []),
    }
    cases["one_image"]["images"] = images[:1]
    cases["other_image"]["images"] = images[1:2]
    cases["two_images"]["images"] = images[1:3]
    cases["text_only"]["images"] = []
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"made_by": "cargo xtask torch-fixtures (xtask/parity/make_tiny_vlms.py), transformers "
                   + __import__("transformers").__version__ + ", torch " + torch.__version__,
                   "image_token_id": ids["<image>"], "eos_token_id": ids["<end_of_utterance>"],
                   "cases": cases}, f)
    print("wrote", out)


if __name__ == "__main__":
    root = sys.argv[1]
    torch.set_default_dtype(torch.float32)
    check_pillow()
    which = sys.argv[2:] or ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "gemma3", "idefics3"]
    if "llava" in which:
        llava(root)
    if "llava-next" in which:
        llava_next(root)
    if "qwen2-vl" in which:
        qwen2_vl(root)
    if "qwen2.5-vl" in which:
        qwen2_vl(root, v25=True)
    if "gemma3" in which:
        gemma3(root)
    if "idefics3" in which:
        idefics3(root)
