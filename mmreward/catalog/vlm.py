"""Registry entries of the vision-language reward models (data only: lazy factory strings).

Every entry loads a Hugging Face image-text-to-text model directory:
``mmreward.load(name, weights=dir)``, or the hub repository below through the cache
(``~/.cache/mmreward/<name>/``) / a download. The ``.local`` tags have no public weights:
they load a directory you trained (e.g. the world's reasoning PRM) or a saved mmreward
directory. Options in ``kwargs`` are constructor defaults that ``mmreward.load(name,
**overrides)`` can change (``aggregate="min"``, ``lora=True``, ``plus_token=...``).

OpenGVLab's VisualPRM-8B is not listed: it is an InternVL model whose code and image
preprocessing live in its repository (``AutoModel`` + custom tiling, no transformers
processor), so the generic ``AutoModelForImageTextToText`` + ``AutoProcessor`` path cannot
load it. Any VLM with a transformers processor, fine-tuned to answer '+'/'-' per step,
loads as ``visualprm.local``.
"""

from __future__ import annotations

from mmreward.registry import RewardSpec, WeightsSource

_ORM = "vision_rm.vlm.orm:build_vlm_orm"
_PRM = "vision_rm.vlm.prm:build_visualprm"

_SKYWORK_VL = (
    "Wang et al. 2025, Skywork-VL Reward: An Effective Reward Model for Multimodal "
    "Understanding and Reasoning"
)
_VISUALPRM = (
    "Wang et al. 2025, VisualPRM: An Effective Process Reward Model for Multimodal Reasoning"
)

ENTRIES: list[RewardSpec] = [
    # -- outcome reward models (value head at the last token) --------------------------
    RewardSpec(
        "vlm-orm.local",
        _ORM,
        description="A VLM (any image-text-to-text checkpoint) + scalar head at the last token; "
        "a local directory (weights=...) or a saved mmreward directory.",
        paper=_SKYWORK_VL,
        default=True,
    ),
    RewardSpec(
        "vlm-orm.skywork-vl-reward-7b",
        _ORM,
        weights=WeightsSource(hub_id="Skywork/Skywork-VL-Reward-7B"),
        kwargs={"head_key": "v_head.summary", "require_head": True},
        description="Skywork-VL-Reward-7B: Qwen2.5-VL-7B-Instruct + trl value head "
        "(v_head.summary), read at the last token.",
        paper=_SKYWORK_VL,
        license="MIT",
    ),
    # -- process reward models ('+'/'-' per step, one forward) -------------------------
    RewardSpec(
        "visualprm.local",
        _PRM,
        kwargs={"aggregate": "mean"},
        description="VisualPRM-style step scorer on a local VLM directory: P('+') per step in "
        "one forward, mean over steps.",
        paper=_VISUALPRM,
        default=True,
    ),
]
