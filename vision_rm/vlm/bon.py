"""Best-of-N for vision-language models: generate N answers, score them, keep the best.

For each item (an image and a question) the policy VLM proposes N candidates — one
greedy answer and N−1 sampled ones (temperature, top-p) — a reward model scores them,
and :func:`mmreward.selection.best_of_n` picks one:

- an outcome RM (:class:`~vision_rm.vlm.orm.VLMOutcomeReward`) scores whole responses;
- a process RM (:class:`~vision_rm.vlm.prm.VisualPRM`) scores each step (responses split
  on blank lines, as VisualPRM does) and the step scores are aggregated
  (:func:`mmreward.selection.aggregate_steps`: ``mean``, ``min``, ``last``, ...).

The output JSONL has one row per item with every candidate, its score (and step scores),
and the selected index. Rerunning resumes: items already in the file are skipped. An item
that fails (unreadable image, generation error) is written as ``{"id", "error"}`` and the
run goes on; ``--retry-errors`` redoes those.

Input JSONL rows: ``{"id": str, "question" | "prompt": str, "image": path}`` (image
optional; relative paths resolve against the JSONL's folder).

>>> # gen = VLMGenerator.from_pretrained("/models/Qwen2-VL-2B-Instruct")
>>> # rm = mmreward.load("visualprm.local", weights="/models/prm")
>>> # run_best_of_n(read_bon_items("items.jsonl"), gen, rm, n=8, out_path="bon.jsonl")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from mmreward.data import read_jsonl
from mmreward.interface import RewardModel
from mmreward.selection import STEP_AGGREGATORS, aggregate_steps, best_of_n
from vision_rm.vlm.prm import split_steps


@dataclass
class BoNItem:
    """One question: ``image`` is a path, a ``(3,H,W)`` tensor in [0,1], or None."""

    id: str
    question: str
    image: Any = None


class CandidateGenerator(Protocol):
    """Anything that proposes ``n`` answers to a question about an image."""

    def generate(self, question: str, image: Tensor | None, n: int, seed: int) -> list[str]:
        """``n`` answers; by convention the first is the greedy one."""
        ...


# -------------------------------------------------------------------------- generation
class VLMGenerator:
    """Candidates from a transformers VLM: one greedy answer + N−1 samples.

    Args:
        model, processor: an image-text-to-text model and its processor.
        temperature, top_p: sampling settings of the N−1 sampled answers.
        max_new_tokens: answer length limit.
        system_prompt: an optional system turn.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(
                f"temperature: expected > 0 for the sampled answers, got {temperature}"
            )
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {top_p}")
        self.model, self.processor = model.eval(), processor
        self.temperature, self.top_p = temperature, top_p
        self.max_new_tokens, self.system_prompt = max_new_tokens, system_prompt

    @classmethod
    def from_pretrained(
        cls, path: str | Path, trust_remote_code: bool = False, device: str | None = None, **kw
    ) -> VLMGenerator:
        """Load a Hugging Face VLM directory (fp32, remote code only when allowed)."""
        from vision_rm.vlm.backbone import load_vlm

        model, processor = load_vlm(path, trust_remote_code=trust_remote_code, field="policy")
        if device is not None:
            model.to(device)
        return cls(model, processor, **kw)

    def _inputs(self, question: str, image: Tensor | None) -> dict[str, Tensor]:
        from vision_rm.vlm.backbone import encode_chats, user_content

        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": user_content(question, image is not None)})
        images = None if image is None else image.unsqueeze(0)
        device = next(self.model.parameters()).device
        return encode_chats(
            self.processor, [messages], images, add_generation_prompt=True, device=device
        )

    @torch.no_grad()
    def generate(self, question: str, image: Tensor | None, n: int, seed: int = 0) -> list[str]:
        """``n`` answers: index 0 greedy, the rest sampled (seeded by ``seed``)."""
        if n < 1:
            raise ValueError(f"n: expected ≥ 1 candidates, got {n}")
        enc = self._inputs(question, image)
        prompt_len = enc["input_ids"].shape[1]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        common = {"max_new_tokens": self.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        outs = [self.model.generate(**enc, do_sample=False, **common)[:, prompt_len:]]
        if n > 1:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                sampled = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    top_k=0,
                    num_return_sequences=n - 1,
                    **common,
                )
            outs.append(sampled[:, prompt_len:])
        texts = []
        for o in outs:
            texts += tokenizer.batch_decode(o, skip_special_tokens=True)
        return [t.strip() for t in texts]


# ------------------------------------------------------------------------------ scoring
def score_candidates(
    reward: RewardModel,
    question: str,
    image: Tensor | None,
    candidates: Sequence[str],
    aggregate: str | None = None,
    separator: str = "\n\n",
    batch_size: int = 16,
) -> tuple[Tensor, list[list[float]] | None]:
    """Scores ``(N,)`` of ``candidates`` (and step scores when ``reward`` is a PRM).

    A reward that takes ``steps`` gets each candidate split on ``separator``; its step
    scores are aggregated with ``aggregate`` (default: the model's own score).
    """
    n = len(candidates)
    images = None if image is None else image.unsqueeze(0).expand(n, -1, -1, -1)
    if "steps" in reward.inputs:
        steps = [split_steps(c, separator) or [c.strip() or "(empty)"] for c in candidates]
        out = reward.score(images, question, steps=steps, batch_size=batch_size)
        step_scores = [s.float().cpu() for s in out.step_scores or []]
        if aggregate is not None:
            if aggregate not in STEP_AGGREGATORS:
                raise ValueError(
                    f"aggregate: expected one of {STEP_AGGREGATORS}, got {aggregate!r}"
                )
            return aggregate_steps(step_scores, aggregate), [s.tolist() for s in step_scores]
        return out.scores.float().cpu(), [s.tolist() for s in step_scores]
    responses = [c if c.strip() else "(empty)" for c in candidates]
    out = reward.score(images, question, responses=responses, batch_size=batch_size)
    return out.scores.float().cpu(), None


def select_best(
    reward: RewardModel,
    item: BoNItem,
    candidates: Sequence[str],
    aggregate: str | None = None,
    separator: str = "\n\n",
) -> dict[str, Any]:
    """Score ``candidates`` for one item and pick the best; the output row (no ``id``)."""
    image = _load(item.image)
    scores, steps = score_candidates(reward, item.question, image, candidates, aggregate, separator)
    best = int(best_of_n(scores))
    rows = []
    for j, (text, s) in enumerate(zip(candidates, scores.tolist())):
        row: dict[str, Any] = {"text": text, "score": s, "greedy": j == 0}
        if steps is not None:
            row["step_scores"] = steps[j]
        rows.append(row)
    return {"candidates": rows, "selected": best, "selected_text": candidates[best]}


def _load(image: Any) -> Tensor | None:
    if image is None or isinstance(image, Tensor):
        return image
    from mmreward.io import load_image

    return load_image(image)


# ----------------------------------------------------------------------------- the run
def read_bon_items(path: str | Path) -> list[BoNItem]:
    """Items from JSONL: ``{"id", "question" | "prompt", "image"}`` (ids default to line numbers)."""
    path = Path(path)
    items, seen = [], set()
    for n, row in read_jsonl(path):
        question = row.get("question", row.get("prompt"))
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}:{n}: 'question' must be a non-empty string")
        item_id = str(row.get("id", n))
        if item_id in seen:
            raise ValueError(f"{path}:{n}: duplicate id {item_id!r}")
        seen.add(item_id)
        image = row.get("image")
        if isinstance(image, list):
            image = image[0] if image else None
        if image is not None:
            image = Path(image) if Path(image).is_absolute() else path.parent / image
        items.append(BoNItem(item_id, question, image))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def _done_ids(out_path: Path, retry_errors: bool) -> set[str]:
    if not out_path.is_file():
        return set()
    done = set()
    with out_path.open("r", encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted write: redo that item
            if "error" in row and retry_errors:
                continue
            done.add(str(row.get("id")))
    return done


def _compact(out_path: Path, keep_errors: bool) -> None:
    """Drop partial lines (and stale error rows when retrying) before appending."""
    if not out_path.is_file():
        return
    rows = []
    for line in out_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "error" in row and not keep_errors:
            continue
        rows.append(line)
    out_path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def run_best_of_n(
    items: Sequence[BoNItem],
    generator: CandidateGenerator,
    reward: RewardModel,
    *,
    n: int,
    out_path: str | Path,
    aggregate: str | None = None,
    separator: str = "\n\n",
    seed: int = 0,
    retry_errors: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, score and select for every item; append rows to ``out_path`` (resumable).

    Returns a summary: items done now, skipped (already in the file), failed.
    """
    from tqdm.auto import tqdm

    from mmreward.text.hf import stable_seed

    if n < 1:
        raise ValueError(f"n: expected ≥ 1 candidates, got {n}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _compact(out_path, keep_errors=not retry_errors)
    done = _done_ids(out_path, retry_errors)
    todo = [it for it in items if it.id not in done]
    summary = {"done": 0, "skipped": len(items) - len(todo), "failed": 0, "out": str(out_path)}
    with out_path.open("a", encoding="utf-8") as f:
        for item in tqdm(todo, desc=f"best-of-{n}", disable=not progress):
            try:
                image = _load(item.image)
                candidates = generator.generate(
                    item.question, image, n, seed=stable_seed(item.id, base=seed)
                )
                row = {"id": item.id, "question": item.question, "n": n}
                if item.image is not None and not isinstance(item.image, Tensor):
                    row["image"] = str(item.image)
                row.update(select_best(reward, BoNItem(item.id, item.question, image),
                                       candidates, aggregate, separator))  # fmt: skip
                summary["done"] += 1
            except Exception as e:  # one bad item must not stop a long run
                row = {"id": item.id, "error": f"{type(e).__name__}: {e}"}
                summary["failed"] += 1
            f.write(json.dumps(row) + "\n")
            f.flush()
    return summary
