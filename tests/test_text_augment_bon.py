"""RRM augmentation, text Best-of-N, the exact BoN estimator and the hedging curve."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmreward.data import PreferenceExample, load_examples
from mmreward.interface import RewardInput, RewardModel
from mmreward.text.augment import rrm_augment, write_augmented_jsonl
from mmreward.text.bon import (
    expected_best_of_n,
    hedging_curve,
    monte_carlo_selection,
    select_response,
)
from mmreward.text.synthetic import TextWorld


class CountReward(RewardModel):
    """A text reward with a formula: the number of 'good' words (for selection tests)."""

    inputs = ("prompts", "responses")

    def compute(self, batch: RewardInput) -> torch.Tensor:
        return torch.tensor([float(r.split().count("good")) for r in batch.responses])


def _pairs(n: int) -> list[PreferenceExample]:
    return [
        PreferenceExample(
            f"prompt {i % 4}", "responses", [f"win {i}", f"lose {i}"], label=1 - 2 * (i % 2)
        )
        for i in range(n)
    ]


def test_rrm_augment_builds_contextual_and_neutral_pairs(tmp_path):
    data = _pairs(8)
    out = rrm_augment(data, seed=0)
    assert out[:8] == data and len(out) == 8 * 4
    aug = out[8:]
    contextual = [e for e in aug if e.meta["augment"] == "rrm_contextual"]
    neutral = [e for e in aug if e.meta["augment"] == "rrm_neutral"]
    assert len(contextual) == 16 and len(neutral) == 8
    for e in contextual:
        src, partner = data[e.meta["source"]], data[e.meta["partner"]]
        assert e.prompt == src.prompt != partner.prompt and e.label == 1
        assert e.candidates[0] in src.candidates and e.candidates[1] in partner.candidates
    for e in neutral:
        partner = data[e.meta["partner"]]
        assert e.label == 0 and e.candidates == partner.candidates and e.prompt != partner.prompt
    assert [e.candidates for e in rrm_augment(data, seed=0)] == [e.candidates for e in out]
    assert [e.candidates for e in rrm_augment(data, seed=1)] != [e.candidates for e in out]
    only = rrm_augment(data, neutral=False, include_original=False)
    assert len(only) == 16
    # JSONL round trip through the trainer's loader (ties included)
    path = write_augmented_jsonl(out, tmp_path / "rrm.jsonl")
    loaded = load_examples(path, "pairwise")
    assert [e.label for e in loaded] == [e.label for e in out]
    assert [e.candidates for e in loaded] == [e.candidates for e in out]
    with pytest.raises(ValueError, match="two different prompts"):
        rrm_augment([PreferenceExample("same", "responses", ["a", "b"], label=1)] * 3)


def test_select_response_with_every_rule():
    rm = CountReward()
    cands = ["bad", "good good", "good", "good good good"]
    sel = select_response(rm, "q", cands)
    assert sel.index == 3 and sel.response == cands[3] and sel.scores.tolist() == [0, 2, 1, 3]
    g = torch.Generator().manual_seed(0)
    assert select_response(rm, "q", cands, "soft", lam=math.inf).index == 3
    picks = [select_response(rm, "q", cands, "soft", lam=0.0, generator=g).index for _ in range(60)]
    assert len(set(picks)) == 4  # λ = 0 is uniform
    assert select_response(rm, "q", cands, "poisson", mu=math.inf).index == 3
    assert select_response(rm, "q", cands, "poisson", mu=0.0).index == 0  # n' = 1
    with pytest.raises(ValueError, match="lam"):
        select_response(rm, "q", cands, "soft")


def test_exact_best_of_n_matches_enumeration_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    proxy = torch.randn(3, 7, generator=g, dtype=torch.float64)
    gold = torch.randn(3, 7, generator=g, dtype=torch.float64)
    for n in (1, 2, 4, 7):
        exact = expected_best_of_n(proxy, gold, n)
        subsets = list(itertools.combinations(range(7), n))
        brute = torch.stack(
            [
                torch.stack([gold[p, list(s)][proxy[p, list(s)].argmax()] for s in subsets]).mean()
                for p in range(3)
            ]
        )
        torch.testing.assert_close(exact, brute.double(), rtol=1e-9, atol=1e-9)
        mc = monte_carlo_selection(proxy, gold, n, "best", draws=4000, generator=g)
        torch.testing.assert_close(mc["gold"], exact, rtol=0, atol=0.08)
    with pytest.raises(ValueError, match="n"):
        expected_best_of_n(proxy, gold, 8)


def test_hedging_curve_rises_then_falls_under_a_biased_proxy():
    """Gold vs n with the biased annotator's utility as proxy (no training needed)."""
    import random

    world = TextWorld()
    rng = random.Random(0)
    pool = [[world.response(rng) for _ in range(128)] for _ in range(24)]
    proxy = torch.tensor([[world.biased_utility(r) for r in row] for row in pool])
    gold = torch.tensor([[world.gold(r) for r in row] for row in pool])
    rows = hedging_curve(proxy, gold, ns=(1, 2, 4, 8, 16, 32, 64, 128), lams=(0.5,), draws=64)
    bon = [r["bon_gold"] for r in rows]
    peak = max(range(len(bon)), key=bon.__getitem__)
    assert 0 < peak < len(bon) - 1 and bon[-1] < bon[peak] - 0.3, bon  # rises, then falls
    assert all(
        a["bon_proxy"] <= b["bon_proxy"] + 1e-9 for a, b in zip(rows, rows[1:])
    )  # proxy keeps rising
    assert rows[-1]["soft_gold[0.5]"] > rows[-1]["bon_gold"]  # Soft-BoN hedges
    assert rows[0]["bon_gold"] == pytest.approx(rows[0]["random_gold"])
    assert rows[3]["bop_n_used"] == pytest.approx(8, abs=0.6)


def test_text_world_rewards():
    w = TextWorld()
    assert w.gold("clear kind wrong") == 1.0
    assert w.gold("amazing") == 0.5 and w.gold("amazing wow wow") == 0.5 - 2.0
    assert w.biased_utility("amazing wow wow") == 1.5
    pairs = w.pairs(50, seed=0, temperature=None)
    for e in pairs:
        ga, gb = e.meta["gold"]
        assert e.label == (ga > gb) - (ga < gb)
    assert [e.candidates for e in w.pairs(5, seed=3)] == [e.candidates for e in w.pairs(5, seed=3)]
    long = w.shifted(length=(12, 20))
    assert all(len(long.response(__import__("random").Random(i)).split()) >= 12 for i in range(20))
