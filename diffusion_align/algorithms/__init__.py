"""Alignment algorithms: each a small object that turns a batch into loss(es).

=============  ====================================================  ==============
name           what                                                  data
=============  ====================================================  ==============
``refl``       ReFL: one grad step at a random late step → x̂0 → r     prompts
``draft``      DRaFT-K: backprop through the last K sampling steps   prompts
``alignprop``  AlignProp: truncation point drawn per trajectory      prompts
``dpo``        Diffusion-DPO on (prompt, winner, loser) images       preferences
``d3po``       D3PO: paired trajectories, clipped per-step ratios    prompts / pairs
=============  ====================================================  ==============

>>> sorted(ALGORITHMS)
['alignprop', 'd3po', 'dpo', 'draft', 'refl']
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


def get_algorithm(name: str) -> Any:
    """The algorithm class registered as ``name``."""
    import importlib

    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name: expected one of {sorted(ALGORITHMS)}, got {name!r}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
