"""A tiny Qwen2-VL built in code: config, tokenizer trained on the fly, processor, chat template.

The VLM reward models (:mod:`vision_rm.vlm.orm`, :mod:`vision_rm.vlm.prm`) load real
checkpoints through ``from_pretrained``; with no downloads possible, tests and the world's
reasoning task use this builder instead. It returns exactly what a hub checkpoint gives:

- ``Qwen2VLForConditionalGeneration`` with a 2-layer vision tower (patch 4, 2×2 merge) and
  a 2-layer language model (hidden 64, M-RoPE sections sized to the head dimension);
- a byte-level BPE tokenizer (``tokenizers``) wrapped as ``PreTrainedTokenizerFast``, with
  the Qwen2-VL special tokens (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``,
  ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>``, ...) and Qwen2-VL's chat template;
- a ``Qwen2VLProcessor`` (image processor + video processor + tokenizer) that expands
  ``<|image_pad|>`` / ``<|video_pad|>`` to the number of merged patches.

A 32×32 world image becomes 8×8 patches → 16 image tokens; a video of T frames
(32×32) becomes T/2 temporal patches of 16 tokens each.

>>> model, processor = build_tiny_qwen2vl(seed=0)
>>> model.config.text_config.num_hidden_layers, model.config.vision_config.depth
(2, 2)
>>> # save_tiny(model, processor, "tiny_vlm"); Qwen2VLForConditionalGeneration.from_pretrained(...)
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: Qwen2-VL's special tokens, in the official order (ids 0.. in the tiny tokenizer).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2-VL-Instruct's chat template (images and videos as content parts).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: The tiny architecture (override any field through ``build_tiny_qwen2vl(**overrides)``).
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}
TINY_VISION = {
    "depth": 2,
    "embed_dim": 32,
    "num_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 4,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
#: Pixel budget of the tiny processors: a 32×32 image keeps its size (8×8 patches of 4 px).
TINY_MIN_PIXELS = 16 * 16
TINY_MAX_PIXELS = 64 * 64
_VOCAB_SIZE = 640


def default_corpus() -> list[str]:
    """Text the tiny BPE is trained on: chat scaffolding, the world's words, digits, symbols."""
    from mmreward.world.data import BACKGROUNDS, COLOURS, DIGITS, SIZES

    words = [
        "You are a helpful assistant.",
        "system user assistant",
        "What is the sum of the two digits in the image?",
        "Which digit in the image is larger, the left or the right one?",
        "The left digit is",
        "The right digit is",
        "The answer is",
        "left right larger smaller equal sum both digits are the same",
        "Is this step correct? Answer + or -.",
        "a photo of a digit on a background",
        "Describe the video. Rate the answer.",
    ]
    words += [
        f"{d} {c} {b} {s}" for d in DIGITS for c in COLOURS for b in BACKGROUNDS for s in SIZES
    ]
    words += [f"{a} + {b} = {a + b}." for a in range(10) for b in range(10)]
    words += [f"The answer is {n}." for n in range(19)]
    chars = list(string.ascii_letters + string.digits + string.punctuation) + [" ", "\n", "\n\n"]
    return words * 3 + chars


def build_tokenizer(corpus: Sequence[str] | None = None, extra_special_tokens: Sequence[str] = ()):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Qwen2-VL's special tokens and template.

    ``eos`` is ``<|im_end|>`` and ``pad`` is ``<|endoftext|>`` (as in Qwen2-VL-Instruct);
    ``extra_special_tokens`` (e.g. VideoAlign's reward tokens) are appended as specials.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE + len(specials),
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus) if corpus is not None else default_corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
        padding_side="left",
        model_max_length=1024,
    )
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    return tok


def build_processor(tokenizer, vision: dict[str, Any] | None = None):
    """``Qwen2VLProcessor`` with tiny image and video processors whose patching matches
    the vision config ``vision`` (default :data:`TINY_VISION`: patch 4, merge 2, temporal 2)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    vision = {**TINY_VISION, **(vision or {})}
    patches = {
        "patch_size": vision["patch_size"],
        "merge_size": vision["spatial_merge_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "min_pixels": TINY_MIN_PIXELS,
        "max_pixels": TINY_MAX_PIXELS,
    }
    image_processor = Qwen2VLImageProcessor(**patches)
    video_processor = Qwen2VLVideoProcessor(**patches, min_frames=2, cap_pixels_per_frame=False)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def tiny_config(tokenizer, **overrides: Any):
    """A ``Qwen2VLConfig`` for ``tokenizer``; ``overrides`` go to the text config, or to the
    vision config with a ``vision_`` prefix (e.g. ``vision_depth=1``)."""
    from transformers import Qwen2VLConfig

    text = {**TINY_TEXT}
    vision = {**TINY_VISION}
    for key, value in overrides.items():
        if key.startswith("vision_"):
            vision[key[len("vision_") :]] = value
        else:
            text[key] = value
    vision["hidden_size"] = text["hidden_size"]  # the merger projects into the LM width
    ids = tokenizer.convert_tokens_to_ids
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build_tiny_qwen2vl(
    seed: int = 0,
    corpus: Sequence[str] | None = None,
    extra_special_tokens: Sequence[str] = (),
    **config_overrides: Any,
):
    """``(Qwen2VLForConditionalGeneration, Qwen2VLProcessor)``, randomly initialised from ``seed``.

    Args:
        seed: initialises the weights (the tokenizer is deterministic given the corpus).
        corpus: texts to train the BPE on (default: :func:`default_corpus`).
        extra_special_tokens: more special tokens (e.g. reward-query tokens).
        config_overrides: text-config fields, or vision-config fields prefixed ``vision_``.

    >>> model, processor = build_tiny_qwen2vl()
    >>> processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    True
    """
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer(corpus, extra_special_tokens)
    vision = {
        k[len("vision_") :]: v for k, v in config_overrides.items() if k.startswith("vision_")
    }
    processor = build_processor(tokenizer, vision)
    config = tiny_config(tokenizer, **config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    generation = model.generation_config
    generation.pad_token_id = config.text_config.pad_token_id
    generation.eos_token_id = config.text_config.eos_token_id
    generation.bos_token_id = config.text_config.bos_token_id
    return model.eval(), processor


def save_tiny(model, processor, folder: str | Path) -> Path:
    """Write a Hugging Face model directory (weights, config, processor, tokenizer, template).

    It loads back through the normal path: ``Qwen2VLForConditionalGeneration.from_pretrained``
    / ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``.
    """
    from mmreward.world.clip import quiet_hf

    folder = Path(folder)
    with quiet_hf():
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
    return folder


def load_tiny(folder: str | Path):
    """``(model, processor)`` from a folder written by :func:`save_tiny` (eval mode, fp32)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmreward.world.clip import quiet_hf

    with quiet_hf():
        model = AutoModelForImageTextToText.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True
        )
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    return model.eval(), processor


def write_tiny_checkpoint(
    folder: str | Path, *, value_head: bool = False, seed: int = 0, head_key: str = "v_head.summary"
) -> Path:
    """A tiny Hugging Face VLM directory in the hub layout, optionally with a trl value head.

    ``value_head=True`` adds ``{head_key}.weight`` (1, hidden) and ``.bias`` (1,) in a
    separate ``value_head.safetensors`` next to the backbone weights — the tensors
    ``AutoModelForCausalLMWithValueHead`` checkpoints (e.g. Skywork-VL-Reward) carry.
    """
    from safetensors.torch import save_file

    model, processor = build_tiny_qwen2vl(seed=seed)
    folder = save_tiny(model, processor, folder)
    if value_head:
        g = torch.Generator().manual_seed(seed + 1)
        h = model.config.text_config.hidden_size
        save_file(
            {
                f"{head_key}.weight": torch.randn(1, h, generator=g) / h**0.5,
                f"{head_key}.bias": torch.randn(1, generator=g),
            },
            str(Path(folder) / "value_head.safetensors"),
        )
    return Path(folder)
