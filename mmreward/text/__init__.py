"""Text reward models behind the one reward interface (import-light: submodules load lazily).

- :mod:`~mmreward.text.seqcls` — sequence-classifier RMs (Skywork-Reward style), LoRA option
- :mod:`~mmreward.text.genrm` — generative verifiers, r = P("Yes") (direct and CoT)
- :mod:`~mmreward.text.rlpr` — RLPR probability rewards and the std filter
- :mod:`~mmreward.text.prm` — implicit PRMs (β·log π/π_ref) and min-form / clip / delta credit
- :mod:`~mmreward.text.warm` — WARM (train M RMs from one init, average the weights)
- :mod:`~mmreward.text.augment` — RRM augmentation of pairwise datasets
- :mod:`~mmreward.text.bon` — text Best-of-N (incl. Soft-BoN, Best-of-Poisson) and hedging curves
- :mod:`~mmreward.text.synthetic` — a text world with a gold reward, tiny tokenizers and LMs
- :mod:`~mmreward.text.experiments` — ``python -m mmreward.text.experiments`` (WARM, hedging)

>>> import mmreward.text as text
>>> text.SequenceClassifierReward.inputs
('prompts', 'responses')
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SequenceClassifierReward": "seqcls",
    "build_sequence_classifier": "seqcls",
    "GenerativeVerifier": "genrm",
    "AmbiguousTokenError": "genrm",
    "build_generative_verifier": "genrm",
    "ProbabilityReward": "rlpr",
    "StdFilter": "rlpr",
    "build_probability_reward": "rlpr",
    "ImplicitPRM": "prm",
    "build_implicit_prm": "prm",
    "min_form_values": "prm",
    "clip_step_rewards": "prm",
    "delta_step_rewards": "prm",
    "step_returns": "prm",
    "train_warm": "warm",
    "average_reward_models": "warm",
    "rrm_augment": "augment",
    "select_response": "bon",
    "hedging_curve": "bon",
    "expected_best_of_n": "bon",
    "TextWorld": "synthetic",
    "train_tokenizer": "synthetic",
    "build_tiny_checkpoint": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
