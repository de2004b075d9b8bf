"""Alignment algorithms: each a small object that turns a batch into loss(es).

=============  ====================================================  ==============
name           what                                                  data
=============  ====================================================  ==============
``refl``       ReFL: one grad step at a random late step → x̂0 → r     prompts
``draft``      DRaFT-K: backprop through the last K sampling steps   prompts
``alignprop``  AlignProp: truncation point drawn per trajectory      prompts
``dpo``        Diffusion-DPO on (prompt, winner, loser) images       preferences
``d3po``       D3PO: paired trajectories, clipped per-step ratios    prompts / pairs
``raft``       RAFT: best-of-K per prompt (or top α), fine-tune      prompts
``ddpo``       DDPO: PPO over the denoising MDP, per-prompt stats    prompts
``grpo``       GRPO (Flow-GRPO/DanceGRPO): group-relative PPO, KL    prompts
=============  ====================================================  ==============

The last three make several optimizer updates per iteration (sample → score → update
on the samples); they are listed in :data:`RL_ALGORITHMS`, the others in
:data:`ALGORITHMS`, and :func:`get_algorithm` finds either.

>>> sorted(ALGORITHMS), sorted(RL_ALGORITHMS)
(['alignprop', 'd3po', 'dpo', 'draft', 'refl'], ['ddpo', 'grpo', 'raft'])
"""

from __future__ import annotations

from typing import Any

#: name → "module:class" (imported on use, so this package stays import-light)
ALGORITHMS = {
    "refl": "diffusion_align.algorithms.refl:ReFL",
    "draft": "diffusion_align.algorithms.draft:DRaFT",
    "alignprop": "diffusion_align.algorithms.draft:AlignProp",
    "dpo": "diffusion_align.algorithms.dpo:DiffusionDPO",
    "d3po": "diffusion_align.algorithms.d3po:D3PO",
}
#: sample-then-update algorithms (several optimizer updates per trainer step)
RL_ALGORITHMS = {
    "raft": "diffusion_align.algorithms.raft:RAFT",
    "ddpo": "diffusion_align.algorithms.ddpo:DDPO",
    "grpo": "diffusion_align.algorithms.grpo:GRPO",
}


def get_algorithm(name: str) -> Any:
    """The algorithm class registered as ``name``."""
    import importlib

    known = {**ALGORITHMS, **RL_ALGORITHMS}
    if name not in known:
        raise ValueError(f"algorithm.name: expected one of {sorted(known)}, got {name!r}")
    module, cls = known[name].split(":")
    return getattr(importlib.import_module(module), cls)
