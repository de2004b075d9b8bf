"""The world's multimodal reasoning task: read two digits, add or compare them, step by step.

An item is a 32×64 image of two of scikit-learn's handwritten digits side by side (drawn
with the world's renderer, :func:`mmreward.world.data.render`: one ink colour on a dark or
light background) and a question:

- ``sum``: "What is the sum of the two digits in the image?"
- ``compare``: "Which digit in the image is larger, the left or the right one?"

A solution has four steps, e.g.::

    The left digit is 3.  /  The right digit is 5.  /  3 + 5 = 8.  /  The answer is 8.

:class:`DigitPolicy` proposes solutions with realistic step errors: it *reads* each digit
by sampling from a perception model (a logistic regression on the 8×8 scans, sharpened),
so ambiguous scans are misread more often, and it slips in arithmetic / comparison and
when copying the result into the answer. Every step of a solution has a gold label (is
the statement true about the image?), and the policy can continue any prefix, which the
Monte-Carlo labeller (:mod:`vision_rm.vlm.mc_label`) needs.

``python -m vision_rm.vlm.reasoning --out DIR`` runs the whole study on CPU: pre-train the
vision tower of a tiny Qwen2-VL on digits, align its language side to name the digits it
sees (a caption stage, as LLaVA's first stage), warm-start it on correct solutions, train a
VisualPRM on Monte-Carlo step labels and an outcome RM on correct-vs-wrong pairs (both
with the core trainer), then measure on held-out images the accuracy of a single sample,
majority vote, ORM-BoN, PRM-BoN (each aggregator) and reward-weighted voting at
N = 4, 8, 16, the PRM's step F1 on held-out labelled solutions (VisualProcessBench
format), a linear digit probe of the vision tower, how often the language side names the
digits (:func:`reading_accuracy`) and a shuffled-image control (within-question AUC with
every question scored on another question's image). Written: ``DIR/figures.json``,
``DIR/bon_accuracy.png``, ``DIR/pool.jsonl`` (every scored candidate),
``DIR/process_bench_eval/`` and the trained models.

>>> items = make_items(2, split="test", seed=0)
>>> items[0].image.shape
torch.Size([3, 32, 64])
>>> policy = DigitPolicy()
>>> steps = policy.greedy(items[0])
>>> len(steps), is_correct(items[0], steps) in (True, False)
(4, True)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmreward.metrics import roc_auc

QUESTIONS = {
    "sum": "What is the sum of the two digits in the image?",
    "compare": "Which digit in the image is larger, the left or the right one?",
}
KINDS = tuple(QUESTIONS)
SIZE = "large"  # both digits are drawn large (26 px) on their 32×32 half


# ------------------------------------------------------------------------------ items
@dataclass
class ReasoningItem:
    """One question about one image. ``answer`` is the correct final answer (text)."""

    id: str
    kind: str
    image: Tensor  # (3, 32, 64) in [0, 1]
    left: int
    right: int
    scans: tuple[int, int]  # indices of the two sklearn digit scans
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        return QUESTIONS[self.kind]

    @property
    def answer(self) -> str:
        return true_answer(self.kind, self.left, self.right)


def true_answer(kind: str, a: int, b: int) -> str:
    if kind == "sum":
        return str(a + b)
    return "left" if a > b else ("right" if b > a else "equal")


def make_items(n: int, split: str = "train", seed: int = 0) -> list[ReasoningItem]:
    """``n`` items from the digit scans of ``split`` (the world's seeded splits)."""
    from mmreward.world.data import (
        BACKGROUND_JITTER,
        BACKGROUNDS,
        COLOUR_JITTER,
        COLOURS,
        POSITION_JITTER,
        Attributes,
        _digits,
        digit_splits,
        render,
    )

    scans, labels = _digits()
    pool = digit_splits()[split]
    rng = np.random.default_rng(seed)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    items = []
    for i in range(n):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        colour = colours[int(rng.integers(len(colours)))]
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        ink = np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-1, 1, 3) * COLOUR_JITTER, 0, 1)
        grey = float(BACKGROUNDS[background] + rng.uniform(-1, 1) * BACKGROUND_JITTER)
        halves, picks = [], []
        for _ in range(2):
            j = int(rng.choice(pool))
            m = POSITION_JITTER[SIZE]
            offset = (int(rng.integers(-m, m + 1)), int(rng.integers(-m, m + 1)))
            attrs = Attributes(int(labels[j]), colour, background, SIZE)
            halves.append(render(torch.from_numpy(scans[j]), attrs, offset, tuple(ink), grey))
            picks.append(j)
        items.append(
            ReasoningItem(
                id=f"{split}-{seed}-{i}",
                kind=kind,
                image=torch.cat(halves, dim=2),
                left=int(labels[picks[0]]),
                right=int(labels[picks[1]]),
                scans=(picks[0], picks[1]),
                meta={"colour": colour, "background": background},
            )
        )
    return items


# -------------------------------------------------------------------------- solutions
_LEFT = re.compile(r"^The left digit is (\d)\.$")
_RIGHT = re.compile(r"^The right digit is (\d)\.$")
_SUM = re.compile(r"^(\d) \+ (\d) = (-?\d+)\.$")
_REL = re.compile(r"^(\d) (is larger than|is smaller than|equals) (\d)\.$")
_ANSWER = re.compile(r"^The answer is (\S+)\.$")
_REL_ANSWER = {"is larger than": "left", "is smaller than": "right", "equals": "equal"}


def relation(a: int, b: int) -> str:
    return "is larger than" if a > b else ("is smaller than" if a < b else "equals")


def solution_steps(kind: str, a: int, b: int, result: str, answer: str) -> list[str]:
    """The four steps of a solution that read ``a`` and ``b`` and derive ``result``."""
    third = f"{a} + {b} = {result}." if kind == "sum" else f"{a} {result} {b}."
    return [
        f"The left digit is {a}.",
        f"The right digit is {b}.",
        third,
        f"The answer is {answer}.",
    ]


def final_answer(steps: Sequence[str]) -> str | None:
    """The answer a solution states in its last step (None when it states none)."""
    if not steps:
        return None
    m = _ANSWER.match(steps[-1].strip())
    return m.group(1) if m else None


def is_correct(item: ReasoningItem, steps: Sequence[str]) -> bool:
    """Whether the solution's final answer is the right one."""
    return final_answer(steps) == item.answer


def step_truth(item: ReasoningItem, steps: Sequence[str]) -> list[int]:
    """Gold step labels: 1 when the step's statement is true about the image, else 0."""
    out = []
    for k, step in enumerate(steps):
        s = step.strip()
        if k == 0:
            m = _LEFT.match(s)
            ok = bool(m) and int(m.group(1)) == item.left
        elif k == 1:
            m = _RIGHT.match(s)
            ok = bool(m) and int(m.group(1)) == item.right
        elif k == 2 and item.kind == "sum":
            m = _SUM.match(s)
            ok = bool(m) and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (
                item.left,
                item.right,
                item.left + item.right,
            )
        elif k == 2:
            m = _REL.match(s)
            ok = bool(m) and (int(m.group(1)), m.group(2), int(m.group(3))) == (
                item.left,
                relation(item.left, item.right),
                item.right,
            )
        else:
            ok = final_answer([s]) == item.answer
        out.append(int(ok))
    return out


# ------------------------------------------------------------------------------ policy
@dataclass
class PolicyConfig:
    """Error model of :class:`DigitPolicy` (defaults: about 60% single-sample accuracy)."""

    sharpness: float = 5.0  # perception logits × this; lower misreads more
    perception_c: float = 0.01  # inverse L2 strength of the perception model
    arithmetic_slip: float = 0.12  # P(sum off by ±1 or ±2)
    comparison_slip: float = 0.10  # P(stating a wrong relation)
    copy_slip: float = 0.04  # P(the answer step does not copy the result)


class DigitPolicy:
    """A stochastic solver with realistic, image-dependent step errors.

    Reading a digit samples from ``softmax(sharpness · logits)`` of a logistic regression
    fitted on the training scans, so a clear scan is read right almost always and an
    ambiguous one (a 1 that looks like a 7) often is not; later steps slip with fixed
    rates. Continuing a prefix keeps the values the prefix states (a misread propagates).
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        from sklearn.linear_model import LogisticRegression

        from mmreward.world.data import _digits, digit_splits

        self.config = config or PolicyConfig()
        scans, labels = _digits()
        train = digit_splits()["train"]
        self._scans = scans.reshape(len(scans), -1)
        self._perception = LogisticRegression(C=self.config.perception_c, max_iter=2000).fit(
            self._scans[train], labels[train]
        )
        self._cache: dict[int, np.ndarray] = {}

    def read_probs(self, scan: int) -> np.ndarray:
        """P(read = d) for d = 0..9 of one sklearn scan."""
        if scan not in self._cache:
            z = self._perception.decision_function(self._scans[scan : scan + 1])[0]
            z = self.config.sharpness * (z - z.max())
            p = np.exp(z)
            self._cache[scan] = p / p.sum()
        return self._cache[scan]

    # -- one solution ------------------------------------------------------------------
    def _third(self, kind: str, a: int, b: int, rng: np.random.Generator | None) -> str:
        cfg = self.config
        if kind == "sum":
            s = a + b
            if rng is not None and rng.random() < cfg.arithmetic_slip:
                s = max(0, s + int(rng.choice([-2, -1, 1, 2])))
            return str(s)
        rel = relation(a, b)
        if rng is not None and rng.random() < cfg.comparison_slip:
            others = [r for r in _REL_ANSWER if r != rel]
            rel = others[int(rng.integers(len(others)))]
        return rel

    def _answer(self, kind: str, result: str, rng: np.random.Generator | None) -> str:
        answer = result if kind == "sum" else _REL_ANSWER[result]
        if rng is not None and rng.random() < self.config.copy_slip:
            if kind == "sum":
                answer = str(max(0, int(result) + int(rng.choice([-1, 1]))))
            else:
                others = [v for v in ("left", "right", "equal") if v != answer]
                answer = others[int(rng.integers(len(others)))]
        return answer

    def _solve(
        self, item: ReasoningItem, prefix: Sequence[str], rng: np.random.Generator | None
    ) -> list[str]:
        """Continue ``prefix`` (values it states are kept); ``rng=None`` is greedy."""
        k = len(prefix)
        if k > 4:
            raise ValueError(f"prefix: a solution has 4 steps, got {k}")
        values: list[int] = []
        for i, (scan, pattern) in enumerate(((item.scans[0], _LEFT), (item.scans[1], _RIGHT))):
            if i < k:
                m = pattern.match(prefix[i].strip())
                if not m:
                    raise ValueError(f"prefix: step {i} {prefix[i]!r} is not a digit reading")
                values.append(int(m.group(1)))
            else:
                p = self.read_probs(scan)
                values.append(int(p.argmax()) if rng is None else int(rng.choice(10, p=p)))
        a, b = values
        if k >= 3:
            third = prefix[2].strip()
            m = _SUM.match(third) if item.kind == "sum" else _REL.match(third)
            if not m:
                raise ValueError(f"prefix: step 2 {prefix[2]!r} does not match a {item.kind}")
            result = m.group(3) if item.kind == "sum" else m.group(2)
        else:
            result = self._third(item.kind, a, b, rng)
        steps = solution_steps(item.kind, a, b, result, self._answer(item.kind, result, rng))
        return list(prefix) + steps[k:]

    def greedy(self, item: ReasoningItem) -> list[str]:
        """The most likely reading, no slips."""
        return self._solve(item, [], None)

    def sample(self, item: ReasoningItem, n: int, rng: np.random.Generator) -> list[list[str]]:
        """``n`` independently sampled solutions."""
        return [self._solve(item, [], rng) for _ in range(n)]

    def continue_solution(
        self, item: ReasoningItem, prefix: list[str], n: int, rng: np.random.Generator
    ) -> list[list[str]]:
        """``n`` rollouts from ``prefix`` (the :class:`~vision_rm.vlm.mc_label.StepPolicy` API)."""
        return [self._solve(item, prefix, rng) for _ in range(n)]


# --------------------------------------------------------------------- selection rules
def majority_vote(answers: Sequence[str | None]) -> int:
    """Index of the first candidate whose answer is the most frequent (self-consistency)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0
    best = max(counts.values())
    winners = {a for a, c in counts.items() if c == best}
    return next(i for i, a in enumerate(answers) if a in winners)


def _weighted_vote(answers: Sequence[str | None], weights: np.ndarray) -> int:
    """Index of the first candidate of the answer with the largest summed weight."""
    totals: dict[str, float] = {}
    for a, w in zip(answers, weights):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + float(w)
    if not totals:
        return 0
    best = max(totals, key=lambda a: totals[a])  # ties → the answer seen first
    return next(i for i, a in enumerate(answers) if a == best)


def selection_accuracy(
    correct: np.ndarray,
    answers: list[list[str | None]],
    scores: dict[str, np.ndarray],
    n: int,
    draws: int = 32,
    seed: int = 0,
    vote_scores: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Accuracy of each selection rule with N = ``n`` candidates from pools ``(Q, P)``.

    Each question's N candidates are random n-subsets of its pool (``draws`` of them, one
    when n equals the pool size), the same subsets for every rule. Rules: ``single``
    (a random candidate: the mean), ``majority`` (self-consistency), ``oracle`` (pass@N)
    and ``<name>`` for each score table (Best-of-N, ties → first). ``vote_scores`` (≥ 0)
    add reward-weighted voting (Math-Shepherd / VisualPRM's weighted self-consistency): the
    answer with the largest summed score wins.
    """
    vote_scores = vote_scores or {}
    q, pool = correct.shape
    if not 1 <= n <= pool:
        raise ValueError(f"n: expected 1 ≤ n ≤ {pool}, got {n}")
    rng = np.random.default_rng(seed)
    draws = 1 if n == pool else draws
    names = ("single", "majority", "oracle", *scores, *vote_scores)
    totals: dict[str, float] = {k: 0.0 for k in names}
    for i in range(q):
        for _ in range(draws):
            sub = np.arange(pool) if n == pool else rng.choice(pool, size=n, replace=False)
            c = correct[i, sub]
            totals["single"] += c.mean()
            totals["oracle"] += c.max()
            totals["majority"] += c[majority_vote([answers[i][j] for j in sub])]
            for name, s in scores.items():
                totals[name] += c[int(np.argmax(s[i, sub]))]
            for name, w in vote_scores.items():
                totals[name] += c[_weighted_vote([answers[i][j] for j in sub], w[i, sub])]
    return {k: v / (q * draws) for k, v in totals.items()}


def within_question_auc(
    correct: np.ndarray, scores: np.ndarray, wrong_mask: np.ndarray | None = None
) -> float:
    """P(a correct candidate outscores a wrong one of the same question), ties count ½.

    Pooled over the (correct, wrong) pairs of every question of ``correct`` / ``scores``
    ``(Q, P)``; questions whose candidates are all right or all wrong have no pair. NaN
    when no question has one. ``wrong_mask`` ``(Q, P)`` keeps only the wrong candidates
    it marks (e.g. those with a misread digit).
    """
    correct = np.asarray(correct, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if correct.shape != scores.shape:
        raise ValueError(f"scores: expected shape {correct.shape}, got {scores.shape}")
    keep = np.ones_like(correct) if wrong_mask is None else np.asarray(wrong_mask, dtype=bool)
    if keep.shape != correct.shape:
        raise ValueError(f"wrong_mask: expected shape {correct.shape}, got {keep.shape}")
    wins = pairs = 0.0
    for c, s, m in zip(correct, scores, keep):
        d = s[c][:, None] - s[~c & m][None, :]
        wins += float((d > 0).sum() + 0.5 * (d == 0).sum())
        pairs += d.size
    return wins / pairs if pairs else float("nan")


# ------------------------------------------------------- vision pre-training (digits)
def _linear_decay(opt: torch.optim.Optimizer, steps: int, decay: bool = True):
    """A scheduler taking the learning rate linearly to 0 over ``steps`` (constant if not
    ``decay``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda k: 1.0 - k / steps) if decay else (lambda k: 1.0)
    )


def _task_attributes() -> list:
    """The world's attribute combinations drawn at the task's digit size."""
    from mmreward.world.data import all_attributes

    return [a for a in all_attributes() if a.size == SIZE]


def pretrain_vision(
    model,
    processor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    n_images: int = 20000,
    decay: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Pre-train the vision tower as a digit classifier on the world's single-digit renders.

    The stand-in for the pretrained vision encoder every real VLM starts from: a linear
    head on the mean of the merged vision tokens, cross-entropy over the 10 digits, on
    ``n_images`` renders of the training-split scans at the task's digit size (the head is
    discarded); AdamW with a linear decay to 0 when ``decay``. Returns the losses.
    """
    from tqdm.auto import tqdm

    from mmreward.world.data import sample_world

    visual = model.model.visual
    data = sample_world(n_images, digits="train", prompts=_task_attributes(), seed=seed)
    labels = torch.tensor([a.digit for a in data.attributes])
    width = model.config.text_config.hidden_size
    head = torch.nn.Linear(width, 10)
    params = [*visual.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = _linear_decay(opt, steps, decay)
    g = torch.Generator().manual_seed(seed)
    visual.train()
    history = []
    for _ in tqdm(range(steps), desc="vision pre-training", disable=not progress):
        idx = torch.randint(n_images, (batch_size,), generator=g)
        enc = processor.image_processor(
            images=list(data.images[idx]), return_tensors="pt", do_rescale=False
        )
        merged = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        feats = merged.view(batch_size, -1, merged.shape[-1]).mean(1)
        loss = torch.nn.functional.cross_entropy(head(feats), labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        history.append(loss.item())
    visual.eval()
    return history


@torch.no_grad()
def _vision_features(model, processor, images: Tensor, batch_size: int = 256) -> Tensor:
    """Mean of the merged vision tokens per image ``(N, H)`` (the pre-training features)."""
    visual = model.model.visual
    was_training = visual.training
    visual.eval()
    feats = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        enc = processor.image_processor(images=list(chunk), return_tensors="pt", do_rescale=False)
        merged = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        feats.append(merged.view(len(chunk), -1, merged.shape[-1]).mean(1))
    visual.train(was_training)
    return torch.cat(feats)


def vision_probe(model, processor, n_train: int = 2000, n_test: int = 1000, seed: int = 0) -> float:
    """Digit accuracy of a linear probe on the frozen vision tower (held-out scans).

    A logistic regression on the mean merged vision token of single-digit renders (at the
    task's size) of the training-split scans, scored on renders of the test-split scans:
    how well the tower the reward models look through tells the digits apart.
    """
    from sklearn.linear_model import LogisticRegression

    from mmreward.world.data import sample_world

    train = sample_world(n_train, digits="train", prompts=_task_attributes(), seed=seed + 101)
    test = sample_world(n_test, digits="test", prompts=_task_attributes(), seed=seed + 102)
    x_tr = _vision_features(model, processor, train.images).float().numpy()
    x_te = _vision_features(model, processor, test.images).float().numpy()
    y_tr = np.array([a.digit for a in train.attributes])
    y_te = np.array([a.digit for a in test.attributes])
    clf = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean())


# ------------------------------------------------------------------ warm start (SFT)
def _assistant_start(input_ids: Tensor, header: list[int]) -> Tensor:
    """Per row, the index just after the last assistant header (where the answer starts)."""
    h = torch.tensor(header, device=input_ids.device)
    hits = (input_ids.unfold(1, len(header), 1) == h).all(-1)  # (B, T-k+1)
    pos = torch.arange(hits.shape[1], device=input_ids.device)
    last = torch.where(hits, pos, torch.full_like(pos, -1)).amax(dim=1)
    if bool((last < 0).any()):
        raise ValueError("conversation: no assistant header found")
    return last + len(header)


def gold_solution(item: ReasoningItem) -> list[str]:
    """The correct four-step solution of ``item`` (what SFT teaches)."""
    result = str(item.left + item.right) if item.kind == "sum" else relation(item.left, item.right)
    return solution_steps(item.kind, item.left, item.right, result, item.answer)


#: The alignment stage's instruction (image → the two digit readings).
READ_PROMPT = "Read the two digits in the image."


def sft_warm_start(
    model,
    processor,
    items: Sequence[ReasoningItem],
    solutions: Sequence[Sequence[str]],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    prompt: str | None = None,
    decay: bool = False,
    desc: str = "warm start (SFT)",
) -> list[float]:
    """Teach the tiny VLM to answer: LM loss on the answer tokens of correct solutions.

    The stand-in for the pretrained instruction-tuned VLM a real PRM starts from: AdamW on
    the parameters that require grad, linear decay to 0 when ``decay``; ``prompt``
    replaces every item's question (the alignment stage's instruction). Returns the loss
    per step.
    """
    from tqdm.auto import tqdm

    from vision_rm.vlm.backbone import assistant_header_ids, encode_chats, user_content

    if len(solutions) != len(items):
        raise ValueError(f"solutions: expected {len(items)} (one per item), got {len(solutions)}")
    header = assistant_header_ids(processor)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = _linear_decay(opt, steps, decay)
    model.train()
    history = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        idx = torch.randint(len(items), (batch_size,), generator=g).tolist()
        convs = [
            [
                {"role": "user", "content": user_content(prompt or items[i].question, image=True)},
                {"role": "assistant", "content": "\n\n".join(solutions[i])},
            ]
            for i in idx
        ]
        images = torch.stack([items[i].image for i in idx])
        enc = encode_chats(processor, convs, images, padding_side="right")
        labels = enc["input_ids"].clone()
        start = _assistant_start(enc["input_ids"], header)
        positions = torch.arange(labels.shape[1])
        labels[(positions[None] < start[:, None]) | (enc["attention_mask"] == 0)] = -100
        loss = model(**enc, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        history.append(loss.item())
    model.eval()
    return history


def align_reading(
    model,
    processor,
    items: Sequence[ReasoningItem],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Alignment stage (as LLaVA's first stage): image → caption naming the two digits.

    The vision tower's blocks stay frozen; the merger (Qwen2-VL's projector) and the
    language model learn to name what the tower sees: LM loss on "The left digit is a." /
    "The right digit is b." after :data:`READ_PROMPT`, on renders of training-split scans
    (the digits of the renders, no step labels). Linear decay of the learning rate.
    Returns the loss per step.
    """
    visual = model.model.visual
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(True)
    visual.requires_grad_(False)
    visual.merger.requires_grad_(True)
    try:
        captions = [gold_solution(it)[:2] for it in items]
        return sft_warm_start(
            model, processor, items, captions, steps=steps, batch_size=batch_size, lr=lr,
            seed=seed, progress=progress, prompt=READ_PROMPT, decay=True, desc="alignment",
        )  # fmt: skip
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])


@torch.no_grad()
def reading_accuracy(
    model, processor, items: Sequence[ReasoningItem], batch_size: int = 64, shuffle: bool = False
) -> dict[str, float]:
    """How often the VLM names each digit right, teacher-forced on the gold solution.

    At the position that predicts the digit of "The left digit is _" (and of the right
    one) the argmax over the ten digit tokens is compared with the image's digit;
    ``shuffle`` shows every question the next question's image (the prior-only control).
    """
    from vision_rm.vlm.backbone import assistant_header_ids, encode_chats, user_content

    tokenizer = getattr(processor, "tokenizer", processor)
    digit_ids = []
    for d in range(10):
        ids = tokenizer.encode(f" {d}", add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"processor: the digit ' {d}' is not one token ({ids})")
        digit_ids.append(ids[0])
    digit_lookup = {t: d for d, t in enumerate(digit_ids)}
    header = assistant_header_ids(processor)
    was_training = model.training
    model.eval()
    hits: list[list[bool]] = [[], []]
    n = len(items)
    for s in range(0, n, batch_size):
        chunk = list(range(s, min(n, s + batch_size)))
        images = torch.stack([items[(i + 1) % n if shuffle else i].image for i in chunk])
        convs = [
            [
                {"role": "user", "content": user_content(items[i].question, image=True)},
                {"role": "assistant", "content": "\n\n".join(gold_solution(items[i]))},
            ]
            for i in chunk
        ]
        enc = encode_chats(processor, convs, images, padding_side="right")
        logits = model(**enc, use_cache=False).logits[..., digit_ids]  # (B, T, 10)
        start = _assistant_start(enc["input_ids"], header)
        for r, i in enumerate(chunk):
            row = enc["input_ids"][r].tolist()
            pos = [t for t in range(int(start[r]), len(row)) if row[t] in digit_lookup][:2]
            for side, t in enumerate(pos):
                truth = (items[i].left, items[i].right)[side]
                hits[side].append(int(logits[r, t - 1].argmax()) == truth)
    model.train(was_training)
    left, right = float(np.mean(hits[0])), float(np.mean(hits[1]))
    return {"left": left, "right": right, "both_mean": (left + right) / 2}


# ------------------------------------------------------------------------- the study
#: The study's tiny Qwen2-VL: 8-px patches (a 32×32 digit is 16 patches → 4 tokens), a
#: 64-wide vision tower; 2 vision and 2 language layers as in :mod:`vision_rm.vlm.tiny`.
STUDY_ARCH = {"vision_patch_size": 8, "vision_embed_dim": 64, "vision_num_heads": 4}


@dataclass
class StudyConfig:
    """Sizes of the reasoning study (defaults: ≈ 20 minutes on one CPU thread)."""

    train_items: int = 12000  # questions for SFT; their sampled solutions train the RMs
    samples_per_item: int = 2  # sampled solutions per training question
    mc_rollouts: int = 16  # Monte-Carlo continuations per prefix (VisualPRM: 16)
    hard_labels: bool = True  # train on MC > 0 (hard, Math-Shepherd) or the success rate
    vision_steps: int = 1000  # digit-classification pre-training of the vision tower
    align_steps: int = 1200  # alignment: merger + LM name the digits (0: no alignment)
    align_items: int = 12000  # renders of training-split scans for the alignment stage
    freeze_vision: bool = True  # keep the pre-trained tower fixed in SFT, PRM and ORM
    lm_layers: int = 2  # language-model layers of the study's tiny Qwen2-VL
    sft_steps: int = 1200
    prm_steps: int = 8000  # 5.3 passes over the 24,000 labelled solutions (3600 loses at N=16)
    orm_steps: int = 800
    batch_size: int = 16
    lr: float = 1e-3  # vision pre-training and SFT
    rm_lr: float = 3e-4  # PRM and ORM fine-tuning (1e-3 fits the MC labels worse)
    eval_items: int = 200  # held-out questions (test-split scans)
    pool: int = 16  # candidates sampled per held-out question
    ns: tuple[int, ...] = (4, 8, 16)
    draws: int = 32  # random N-subsets of the pool per question (N < pool)
    seed: int = 0


def _orm_pairs(items, solutions, correct) -> list:
    """(correct, wrong) answer pairs of one question, for Bradley-Terry training."""
    from mmreward.data import PreferenceExample

    by_item: dict[int, tuple[list[int], list[int]]] = {}
    for j, (i, ok) in enumerate(correct):
        by_item.setdefault(i, ([], []))[0 if ok else 1].append(j)
    pairs = []
    for i, (good, bad) in by_item.items():
        for g, b in zip(good, bad):
            pairs.append(
                PreferenceExample(
                    prompt=items[i].question,
                    kind="responses",
                    candidates=["\n\n".join(solutions[g]), "\n\n".join(solutions[b])],
                    label=1,
                    image=items[i].image,
                )
            )
    return pairs


def write_process_bench(
    path: str | Path,
    items: Sequence[ReasoningItem],
    solutions: Sequence[Sequence[str]],
    owner: Sequence[int],
) -> Path:
    """Held-out labelled solutions in VisualProcessBench's layout (images as PNG files)."""
    from PIL import Image

    path = Path(path)
    img_dir = path.parent / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    written: set[int] = set()
    with path.open("w", encoding="utf-8") as f:
        for j, (i, steps) in enumerate(zip(owner, solutions)):
            item = items[i]
            name = f"images/{item.id}.png"
            if i not in written:
                arr = (item.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(arr).save(path.parent / name)
                written.add(i)
            truth = step_truth(item, steps)
            row = {
                "id": f"{item.id}-{j}",
                "image": [name],
                "question": item.question,
                "answer": item.answer,
                "response": {
                    "steps": list(steps),
                    "process_correctness": [1 if t else -1 for t in truth],
                },
                "data_source": item.kind,
            }
            f.write(json.dumps(row) + "\n")
    return path


def _score_pool(
    rm, items, pools, field_name: str, batch_size: int, progress: bool = True
) -> tuple[np.ndarray, list]:
    """Scores ``(Q, P)`` (and step scores for a PRM) of every candidate of every question."""
    q, p = len(pools), len(pools[0])
    images = torch.stack([items[i].image for i in range(q) for _ in range(p)])
    prompts = [items[i].question for i in range(q) for _ in range(p)]
    flat = [c for pool in pools for c in pool]
    if field_name == "steps":
        out = rm.score(images, prompts, steps=flat, batch_size=batch_size, progress=progress)
    else:
        out = rm.score(
            images, prompts, responses=["\n\n".join(c) for c in flat], batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    steps = out.step_scores if out.step_scores is not None else []
    return out.scores.float().numpy().reshape(q, p), steps


def run_study(out: str | Path, cfg: StudyConfig | None = None, progress: bool = True) -> dict:
    """Train the PRM and the ORM on the world's reasoning task and measure Best-of-N."""
    from mmreward.data import PreferenceExample
    from mmreward.selection import STEP_AGGREGATORS, aggregate_steps
    from mmreward.train import RewardModelTrainer, TrainConfig
    from vision_rm.vlm.evaluate import evaluate_process_bench
    from vision_rm.vlm.mc_label import label_solutions
    from vision_rm.vlm.orm import new_orm
    from vision_rm.vlm.prm import new_prm
    from vision_rm.vlm.tiny import build_tiny_qwen2vl, save_tiny
    from vision_rm.vlm.train import VLMRewardTrainer

    cfg = cfg or StudyConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()
    policy = DigitPolicy()
    rng = np.random.default_rng(cfg.seed)

    # -- data: sampled solutions with Monte-Carlo step labels ----------------------------
    train_items = make_items(cfg.train_items, "train", seed=cfg.seed)
    sols, owner = [], []
    for i, item in enumerate(train_items):
        for s in policy.sample(item, cfg.samples_per_item, rng):
            sols.append(s)
            owner.append(i)
    labelled = label_solutions(
        policy,
        [train_items[i] for i in owner],
        sols,
        cfg.mc_rollouts,
        is_correct,
        hard=cfg.hard_labels,
        seed=cfg.seed,
        progress=progress,
    )
    step_examples = [
        PreferenceExample(
            prompt=train_items[i].question,
            kind="steps",
            candidates=["\n\n".join(row["steps"])],
            steps=row["steps"],
            step_labels=row["labels"],
            image=train_items[i].image,
        )
        for i, row in zip(owner, labelled)
    ]
    correct_train = [(i, is_correct(train_items[i], s)) for i, s in zip(owner, sols)]
    pairs = _orm_pairs(train_items, sols, correct_train)
    timings["data_s"] = time.time() - t0

    # -- warm start: a tiny Qwen2-VL taught to answer on correct solutions --------------
    t1 = time.time()
    backbone, processor = build_tiny_qwen2vl(
        seed=cfg.seed, num_hidden_layers=cfg.lm_layers, **STUDY_ARCH
    )
    vision_loss = pretrain_vision(
        backbone, processor, steps=cfg.vision_steps, seed=cfg.seed, progress=progress
    )
    probe = {"vision_pretrained": vision_probe(backbone, processor, seed=cfg.seed)}
    if cfg.freeze_vision:  # SFT, PRM and ORM train the language side only
        backbone.model.visual.requires_grad_(False)
    timings["vision_s"] = time.time() - t1
    reading_items = make_items(300, "test", seed=cfg.seed + 2)
    reading: dict[str, Any] = {}
    align_loss: list[float] = []
    if cfg.align_steps:  # image → "The left digit is a. / The right digit is b."
        t1 = time.time()
        align_items = make_items(cfg.align_items, "train", seed=cfg.seed + 7)
        align_loss = align_reading(
            backbone, processor, align_items, steps=cfg.align_steps,
            batch_size=2 * cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=progress,
        )  # fmt: skip
        del align_items
        reading["aligned"] = reading_accuracy(backbone, processor, reading_items)
        probe["aligned"] = vision_probe(backbone, processor, seed=cfg.seed)  # merger trained
        timings["align_s"] = time.time() - t1
    t1 = time.time()
    gold = [gold_solution(it) for it in train_items]
    sft_loss = sft_warm_start(
        backbone, processor, train_items, gold, steps=cfg.sft_steps,
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=progress,
    )  # fmt: skip
    save_tiny(backbone, processor, out / "policy_vlm")
    reading["policy_vlm"] = reading_accuracy(backbone, processor, reading_items)
    reading["policy_vlm_shuffled"] = reading_accuracy(
        backbone, processor, reading_items, shuffle=True
    )
    timings["sft_s"] = time.time() - t1

    def probe_tower(model) -> float:  # a frozen tower reads as it did after alignment
        if cfg.freeze_vision:
            return probe.get("aligned", probe["vision_pretrained"])
        return vision_probe(model, processor, seed=cfg.seed)

    probe["policy_vlm"] = probe_tower(backbone)

    # -- PRM: step-level BCE on MC labels (core trainer, "steps" objective) -------------
    t1 = time.time()
    prm = new_prm(copy.deepcopy(backbone), processor, aggregate="mean")
    prm_cfg = TrainConfig(
        output_dir=str(out / "prm"), objective="steps", max_steps=cfg.prm_steps,
        batch_size=cfg.batch_size, lr=cfg.rm_lr, log_every=25, seed=cfg.seed, cpu=True,
        progress=progress,
    )  # fmt: skip
    prm_result = RewardModelTrainer(prm, prm_cfg, step_examples, None).train(resume=False)
    prm.eval()
    timings["prm_train_s"] = time.time() - t1
    probe["prm"] = probe_tower(prm.backbone)
    # fit check: step AUC against the gold labels on training solutions (and their MC labels)
    fit = list(range(0, len(sols), max(1, len(sols) // 800)))[:800]
    fit_out = prm.score(
        torch.stack([train_items[owner[j]].image for j in fit]),
        [train_items[owner[j]].question for j in fit],
        steps=[sols[j] for j in fit], batch_size=2 * cfg.batch_size, progress=False,
    )  # fmt: skip
    fit_scores = torch.stack(fit_out.step_scores).numpy()
    fit_gold = np.array([step_truth(train_items[owner[j]], sols[j]) for j in fit])
    fit_mc = np.array([labelled[j]["labels"] for j in fit]) > 0.5

    # -- ORM: Bradley-Terry on (correct, wrong) answers of one question -----------------
    t1 = time.time()
    orm = new_orm(copy.deepcopy(backbone), processor)
    orm_cfg = TrainConfig(
        output_dir=str(out / "orm"), objective="pairwise", max_steps=cfg.orm_steps,
        batch_size=max(1, cfg.batch_size // 2), lr=cfg.rm_lr, log_every=25, seed=cfg.seed,
        cpu=True, progress=progress,
    )  # fmt: skip
    orm_result = VLMRewardTrainer(orm, orm_cfg, pairs, None).train(resume=False)
    orm.eval()
    timings["orm_train_s"] = time.time() - t1

    # -- held-out Best-of-N ----------------------------------------------------------------
    t1 = time.time()
    eval_items = make_items(cfg.eval_items, "test", seed=cfg.seed + 1)
    pools = [policy.sample(it, cfg.pool, rng) for it in eval_items]
    correct = np.array([[is_correct(it, s) for s in pool] for it, pool in zip(eval_items, pools)])
    answers = [[final_answer(s) for s in pool] for pool in pools]
    greedy_acc = float(np.mean([is_correct(it, policy.greedy(it)) for it in eval_items]))
    prm_scores, prm_steps = _score_pool(
        prm, eval_items, pools, "steps", 2 * cfg.batch_size, progress
    )
    orm_scores, _ = _score_pool(orm, eval_items, pools, "responses", 2 * cfg.batch_size, progress)
    tables = {"orm": orm_scores}
    for agg in STEP_AGGREGATORS:
        tables[f"prm_{agg}"] = aggregate_steps(prm_steps, agg).numpy().reshape(correct.shape)
    votes = {
        "orm_vote": 1.0 / (1.0 + np.exp(-orm_scores)),  # σ(r) ≥ 0 as the vote weight
        "prm_vote_min": tables["prm_min"],
        "prm_vote_mean": tables["prm_mean"],
    }
    results = {
        str(n): selection_accuracy(correct, answers, tables, n, cfg.draws, cfg.seed, votes)
        for n in cfg.ns
    }
    # control: every question scored with the next question's image
    shuffled = [
        dataclasses.replace(it, image=eval_items[(i + 1) % len(eval_items)].image)
        for i, it in enumerate(eval_items)
    ]
    _, shuffled_steps = _score_pool(prm, shuffled, pools, "steps", 2 * cfg.batch_size, progress)
    controls: dict[str, Any] = {"within_question_auc": {}, "within_question_auc_shuffled": {}}
    for agg in ("min", "mean"):
        real = tables[f"prm_{agg}"]
        fake = aggregate_steps(shuffled_steps, agg).numpy().reshape(correct.shape)
        controls["within_question_auc"][f"prm_{agg}"] = within_question_auc(correct, real)
        controls["within_question_auc_shuffled"][f"prm_{agg}"] = within_question_auc(correct, fake)
        controls[f"mean_abs_change_prm_{agg}"] = float(np.abs(real - fake).mean())
        controls[f"bon_{cfg.pool}_shuffled_prm_{agg}"] = float(
            np.mean(correct[np.arange(len(pools)), fake.argmax(1)])
        )
    controls["within_question_auc"]["orm"] = within_question_auc(correct, orm_scores)
    test_gold = np.array([step_truth(it, s) for it, pool in zip(eval_items, pools) for s in pool])
    test_scores = torch.stack(prm_steps).numpy()
    controls["step_auc"] = {  # per step; train ≈ held-out: the PRM does not overfit
        "train_gold": [roc_auc(fit_gold[:, k], fit_scores[:, k]) for k in range(4)],
        "train_mc_labels": [roc_auc(fit_mc[:, k], fit_scores[:, k]) for k in range(4)],
        "heldout_gold": [roc_auc(test_gold[:, k], test_scores[:, k]) for k in range(4)],
    }
    misread = (test_gold[:, :2].min(1) == 0).reshape(correct.shape)  # a digit read wrong
    controls["within_question_auc_by_error"] = {  # wrong candidates: misread vs slip only
        f"prm_{agg}": {
            "misread": within_question_auc(correct, tables[f"prm_{agg}"], misread),
            "slip": within_question_auc(correct, tables[f"prm_{agg}"], ~misread),
        }
        for agg in ("min", "mean")
    }
    with (out / "pool.jsonl").open("w", encoding="utf-8") as f:  # every scored candidate
        for i, (it, pool) in enumerate(zip(eval_items, pools)):
            row = {"id": it.id, "answer": it.answer, "candidates": [
                {"steps": s, "correct": bool(correct[i, j]), "orm": float(orm_scores[i, j]),
                 "prm_steps": prm_steps[i * len(pool) + j].tolist()}
                for j, s in enumerate(pool)]}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    timings["bon_eval_s"] = time.time() - t1

    # -- step F1 on held-out labelled solutions (VisualProcessBench format) -------------
    t1 = time.time()
    flat_sols = [s for pool in pools for s in pool[:4]]
    flat_owner = [i for i, _ in enumerate(pools) for _ in range(4)]
    bench = write_process_bench(out / "process_bench" / "test.jsonl", eval_items, flat_sols,
                                flat_owner)  # fmt: skip
    step_eval = evaluate_process_bench(prm, bench, out_dir=out / "process_bench_eval",
                                       batch_size=2 * cfg.batch_size, progress=progress)  # fmt: skip
    timings["step_eval_s"] = time.time() - t1
    timings["total_s"] = time.time() - t0

    figures = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "policy": vars(policy.config),
        "greedy_accuracy": greedy_acc,
        "bon_accuracy": results,
        "controls": controls,
        "vision_probe_accuracy": probe,
        "reading_accuracy": reading,
        "step_eval": {k: v for k, v in step_eval.items() if k != "by_source"},
        "step_eval_by_source": step_eval.get("by_source", {}),
        "training": {
            "vision_loss_last": float(np.mean(vision_loss[-20:])) if vision_loss else None,
            "align_loss_last": float(np.mean(align_loss[-20:])) if align_loss else None,
            "sft_loss_first": sft_loss[0] if sft_loss else None,
            "sft_loss_last": float(np.mean(sft_loss[-20:])) if sft_loss else None,
            "prm": prm_result,
            "orm": orm_result,
            "n_step_examples": len(step_examples),
            "n_pairs": len(pairs),
            "train_solution_accuracy": float(np.mean([c for _, c in correct_train])),
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    plot_bon(figures, out / "bon_accuracy.png")
    prm.save_pretrained(out / "prm_model")
    orm.save_pretrained(out / "orm_model")
    return figures


def plot_bon(figures: dict, path: str | Path) -> Path:
    """Accuracy vs N for every selection rule (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = figures["bon_accuracy"]
    ns = sorted(int(n) for n in results)
    rules = list(results[str(ns[0])])
    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    colours = colormaps["tab20"].colors
    for k, rule in enumerate(rules):
        style = "--" if rule in ("single", "oracle") else ("-." if "vote" in rule else "-")
        ys = [100 * results[str(n)][rule] for n in ns]
        ax.plot(ns, ys, style, marker="o", color=colours[k % len(colours)], label=rule)
    ax.axhline(100 * figures["greedy_accuracy"], color="grey", lw=0.8, ls=":", label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (candidates)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("World reasoning task: Best-of-N selection")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    return Path(path)


def format_table(figures: dict) -> str:
    """The Best-of-N accuracies as a markdown table (rules × N)."""
    results = figures["bon_accuracy"]
    ns = sorted(results, key=int)
    rules = list(results[ns[0]])
    lines = ["| rule | " + " | ".join(f"N={n}" for n in ns) + " |"]
    lines.append("|---|" + "---|" * len(ns))
    for r in rules:
        lines.append(f"| {r} | " + " | ".join(f"{100 * results[n][r]:.1f}" for n in ns) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, StudyConfig]:
    """The command line: one flag per :class:`StudyConfig` field, plus ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m vision_rm.vlm.reasoning", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="output folder (figures, models)")
    defaults = StudyConfig()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(value))
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = StudyConfig(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
           if k in vars(defaults)}
    )  # fmt: skip
    return args, cfg


def main(argv: Sequence[str] | None = None) -> dict:
    args, cfg = parse_args(argv)
    torch.set_num_threads(args.threads)
    figures = run_study(args.out, cfg, progress=not args.no_progress)
    print(format_table(figures))
    print(json.dumps({k: figures[k] for k in ("greedy_accuracy", "step_eval", "controls",
                                             "vision_probe_accuracy", "reading_accuracy",
                                             "timings_s")}))  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
