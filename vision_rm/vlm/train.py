"""Training VLM reward models with the core trainer, images included.

The core :class:`mmreward.train.RewardModelTrainer` already feeds step data with images
(``{"prompt", "image", "steps", "labels"}`` rows) to a PRM. For pairs and lists its
collator carries the candidates and the prompt only; a VLM outcome RM also needs the
question's image. :class:`ImagePreferenceCollator` adds it (one image per example, shared
by both answers of a pair), and :class:`VLMRewardTrainer` is the core trainer with that
collator for training and evaluation: the same loop, losses, checkpoints and resume.

Pair rows: ``{"prompt": str, "image": path, "responses": [a, b], "choice": 0 | 1}`` (the
core pairwise format plus ``image``), or :class:`~mmreward.data.PreferenceExample` objects
with ``image`` set to a path or a ``(3,H,W)`` tensor.

>>> # trainer = VLMRewardTrainer(orm, TrainConfig(output_dir="runs/orm"), train_examples=pairs)
>>> # trainer.train()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmreward.data import CollatedBatch, Collator, PreferenceExample, read_jsonl, stack_images
from mmreward.interface import RewardModel
from mmreward.train import RewardModelTrainer, TrainConfig, pairwise_report


class ImagePreferenceCollator(Collator):
    """The core collator plus each example's ``image`` (repeated for every candidate)."""

    def __call__(self, examples: list[PreferenceExample]) -> CollatedBatch:
        batch = super().__call__(examples)
        if self.objective == "steps" or examples[0].image is None:
            return batch
        if any(e.image is None for e in examples):
            raise ValueError("image: every example of a batch needs one (or none of them)")
        images = stack_images([e.image for e in examples], self.image_size)
        if self.objective == "pairwise":
            batch.inputs.images = torch.cat([images, images])  # rows: a's then b's
        else:
            k = len(examples[0].candidates)
            batch.inputs.images = images.repeat_interleave(k, dim=0)
        return batch


def load_image_pairs(path: str | Path) -> list[PreferenceExample]:
    """Pairwise JSONL with an ``image`` per row (see the module docstring)."""
    from mmreward.data import parse_pair

    path = Path(path)
    out = []
    for n, row in read_jsonl(path):
        ex = parse_pair(row, path.parent, f"{path}:{n}")
        if "image" in row:
            img = Path(row["image"])
            ex.image = img if img.is_absolute() else path.parent / img
        out.append(ex)
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


@torch.no_grad()
def evaluate_pairs(
    model: RewardModel, examples: list[PreferenceExample], batch_size: int = 32
) -> dict[str, float]:
    """Held-out preference accuracy of ``model`` on image pairs."""
    collate = ImagePreferenceCollator("pairwise")
    forward = type(model).forward.__get__(model)
    was_training = model.training
    model.eval()
    try:
        return pairwise_report(forward, collate, examples, batch_size)
    finally:
        model.train(was_training)


class VLMRewardTrainer(RewardModelTrainer):
    """:class:`~mmreward.train.RewardModelTrainer` whose batches carry the question images."""

    def __init__(
        self,
        model: RewardModel,
        config: TrainConfig,
        train_examples: list[PreferenceExample] | None = None,
        eval_examples: list[PreferenceExample] | None = None,
    ) -> None:
        if train_examples is None and config.train_file and config.objective == "pairwise":
            train_examples = load_image_pairs(config.train_file)
        if eval_examples is None and config.eval_file and config.objective == "pairwise":
            eval_examples = load_image_pairs(config.eval_file)
        super().__init__(model, config, train_examples, eval_examples)
        loader = DataLoader(
            self.train_examples,
            batch_size=config.batch_size,
            sampler=self.sampler,
            collate_fn=ImagePreferenceCollator(config.objective, self.image_size),
            drop_last=len(self.train_examples) >= config.batch_size,
        )
        self.loader = self.accelerator.prepare(loader)

    def evaluate(self) -> dict[str, Any]:
        if not self.eval_examples or self.cfg.objective != "pairwise":
            return super().evaluate()
        model = self.accelerator.unwrap_model(self.model)
        return evaluate_pairs(model, self.eval_examples, self.cfg.batch_size * 2)
