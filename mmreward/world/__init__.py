"""The built-in world: a tiny, fully local text-to-image world with a known gold reward.

Submodules (imported on use, so ``import mmreward.world`` stays light):

- :mod:`~mmreward.world.data`: attributes, prompts, seeded splits, image rendering;
- :mod:`~mmreward.world.gold`: the gold reward (``gold.world``);
- :mod:`~mmreward.world.clip`: the tiny CLIP (transformers ``CLIPModel``) and its tokenizer;
- :mod:`~mmreward.world.diffusion`: the tiny VAE + UNet as a diffusers ``StableDiffusionPipeline``;
- :mod:`~mmreward.world.annotators`: simulated annotators (gold → noisy preference JSONL);
- :mod:`~mmreward.world.proxy`: proxy reward models trained on those preferences;
- :mod:`~mmreward.world.build`: ``python -m mmreward.world.build`` regenerates every asset;
- :mod:`~mmreward.world.figures`: the reported figures, as JSON.
"""
