"""diffusion_align: fine-tune diffusion models against rewards and preferences.

Modules (imported on use; ``import diffusion_align`` imports nothing heavy):

- :mod:`~diffusion_align.policy` — :class:`DiffusionPolicy` over diffusers components
  (SD 1.x/2.x, SDXL, SD3-style flow), LoRA or full fine-tune, the reference model;
- :mod:`~diffusion_align.sampling` — the one rollout: DDIM with η and the flow SDE, fp32
  per-step log-probs, classifier-free guidance, gradient through chosen steps;
- :mod:`~diffusion_align.losses` — ReFL, DRaFT/AlignProp, Diffusion-DPO, D3PO losses;
- :mod:`~diffusion_align.algorithms` — each algorithm as a small object: batch → loss(es);
- :mod:`~diffusion_align.trainer` — :class:`AlignTrainer` (accelerate, exact resume);
- :mod:`~diffusion_align.data`, :mod:`~diffusion_align.config`, :mod:`~diffusion_align.cli`
  (``mmreward align``), :mod:`~diffusion_align.evaluate`, :mod:`~diffusion_align.efficacy`,
  :mod:`~diffusion_align.tiny` (tiny pipelines for tests and smoke runs).

See the README section "Diffusion alignment (diffusion_align)".
"""
