"""Registry entries of the text reward models (data only: lazy factory strings).

Every entry loads a Hugging Face model directory: ``mmreward.load(name, weights=dir)``, or
the hub repository below through the cache (``~/.cache/mmreward/<name>/``) / a download.
Options in ``kwargs`` are constructor defaults that ``mmreward.load(name, **overrides)``
can change (e.g. ``lora=True``, ``cot_samples=4``, ``max_length=4096``).
"""

from __future__ import annotations

from mmreward.registry import RewardSpec, WeightsSource

_SEQCLS = "mmreward.text.seqcls:build_sequence_classifier"
_GENRM = "mmreward.text.genrm:build_generative_verifier"
_RLPR = "mmreward.text.rlpr:build_probability_reward"
_PRM = "mmreward.text.prm:build_implicit_prm"

_SKYWORK = "Liu et al. 2024, Skywork-Reward: Bag of Tricks for Reward Modeling in LLMs"
_SKYWORK_V2 = (
    "Liu et al. 2025, Skywork-Reward-V2: Scaling Preference Data Curation via Human-AI Synergy"
)
_GENRM_PAPER = "Zhang et al. 2024, Generative Verifiers: Reward Modeling as Next-Token Prediction"
_RLPR_PAPER = "Yu et al. 2025, RLPR: Extrapolating RLVR to General Domains without Verifiers"
_IPRM = (
    "Yuan et al. 2024, Free Process Rewards without Process Labels; "
    "Cui et al. 2025, Process Reinforcement through Implicit Rewards (PRIME)"
)

ENTRIES: list[RewardSpec] = [
    # -- sequence classifiers ----------------------------------------------------------
    RewardSpec(
        "seqcls.skywork-reward-llama-3.1-8b",
        _SEQCLS,
        weights=WeightsSource(hub_id="Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"),
        description="Skywork-Reward v0.2 (Llama-3.1-8B): scalar head at the last token of the chat.",
        paper=_SKYWORK,
        license="Skywork Community License + Llama 3.1 Community License",
        default=True,
    ),
    RewardSpec(
        "seqcls.skywork-reward-gemma-2-27b",
        _SEQCLS,
        weights=WeightsSource(hub_id="Skywork/Skywork-Reward-Gemma-2-27B-v0.2"),
        description="Skywork-Reward v0.2 (Gemma-2-27B): scalar head at the last token of the chat.",
        paper=_SKYWORK,
        license="Skywork Community License + Gemma Terms of Use",
    ),
    RewardSpec(
        "seqcls.skywork-reward-v2-qwen3-0.6b",
        _SEQCLS,
        weights=WeightsSource(hub_id="Skywork/Skywork-Reward-V2-Qwen3-0.6B"),
        description="Skywork-Reward-V2 (Qwen3-0.6B): a small sequence-classifier reward model.",
        paper=_SKYWORK_V2,
        license="see the model card",
    ),
    RewardSpec(
        "seqcls.deberta-v3-large-oasst",
        _SEQCLS,
        weights=WeightsSource(hub_id="OpenAssistant/reward-model-deberta-v3-large-v2"),
        kwargs={"input_format": "pair"},
        description="OpenAssistant DeBERTa-v3-large cross-encoder RM: (question, answer) pair input.",
        paper="Köpf et al. 2023, OpenAssistant Conversations",
        license="MIT",
    ),
    # -- generative verifiers ----------------------------------------------------------
    RewardSpec(
        "genrm.qwen2.5-7b-instruct",
        _GENRM,
        weights=WeightsSource(hub_id="Qwen/Qwen2.5-7B-Instruct"),
        description="GenRM with Qwen2.5-7B-Instruct as a verifier: r = P('Yes'); cot_samples=K for CoT.",
        paper=_GENRM_PAPER,
        license="Apache-2.0",
        default=True,
    ),
    RewardSpec(
        "genrm.qwen2.5-0.5b-instruct",
        _GENRM,
        weights=WeightsSource(hub_id="Qwen/Qwen2.5-0.5B-Instruct"),
        description="GenRM with Qwen2.5-0.5B-Instruct as a verifier (small, CPU-friendly).",
        paper=_GENRM_PAPER,
        license="Apache-2.0",
    ),
    # -- probability rewards -----------------------------------------------------------
    RewardSpec(
        "rlpr.qwen2.5-7b",
        _RLPR,
        weights=WeightsSource(hub_id="Qwen/Qwen2.5-7B"),
        description="RLPR probability reward: mean p(reference answer | reasoning), debiased.",
        paper=_RLPR_PAPER,
        license="Apache-2.0",
        default=True,
    ),
    # -- implicit process reward models ------------------------------------------------
    RewardSpec(
        "implicit-prm.eurusprm-stage2",
        _PRM,
        weights=WeightsSource(hub_id="PRIME-RL/EurusPRM-Stage2"),
        kwargs={"reference": "Qwen/Qwen2.5-Math-7B-Instruct", "beta": 0.001, "aggregate": "sum"},
        description="EurusPRM-Stage2 implicit PRM: β·log π/π_ref per step, accumulated.",
        paper=_IPRM,
        license="Apache-2.0",
        default=True,
    ),
    RewardSpec(
        "implicit-prm.eurusprm-stage1",
        _PRM,
        weights=WeightsSource(hub_id="PRIME-RL/EurusPRM-Stage1"),
        kwargs={"reference": "Qwen/Qwen2.5-Math-7B-Instruct", "beta": 0.001, "aggregate": "min"},
        description="EurusPRM-Stage1 implicit PRM: β·log π/π_ref per step, minimum over steps.",
        paper=_IPRM,
        license="Apache-2.0",
    ),
]
