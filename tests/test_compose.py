"""Reward composition: values against hand computation, flags, gradients, WARM averaging."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mmreward.analytic import Colorfulness, JpegCompressibility, Sharpness
from mmreward.compose import (
    Clipped,
    Ensemble,
    Normalized,
    PerPromptStatTracker,
    RunningNormalized,
    WeightedSum,
    average_weights,
    group_advantages,
)
from mmreward.convnet import TinyConvReward
from mmreward.interface import RewardInput


def _images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _tiny(seed: int, channels: tuple[int, ...] = (4, 8)) -> TinyConvReward:
    torch.manual_seed(seed)
    return TinyConvReward(resolution=16, channels=channels)


def _pop_std(values: list[float]) -> float:
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


# -- weighted sum --------------------------------------------------------------------------
def test_weighted_sum_equals_hand_combination():
    color, sharp, conv = Colorfulness(), Sharpness(), _tiny(0)
    rm = WeightedSum(
        {"color": color, "sharp": sharp, "conv": conv}, {"color": 0.5, "sharp": -0.01, "conv": 2.0}
    )
    x = _images()
    out = rm(images=x)
    rc, rs, rv = color(images=x).scores, sharp(images=x).scores, conv(images=x).scores
    torch.testing.assert_close(out.scores, 0.5 * rc - 0.01 * rs + 2.0 * rv)
    # sub-scores are the raw (unweighted) member scores
    assert list(out.sub_scores) == ["color", "sharp", "conv"]
    torch.testing.assert_close(out.sub_scores["sharp"], rs)
    torch.testing.assert_close(out.sub_scores["conv"], rv)


def test_weighted_sum_default_weights_are_one_and_members_are_registered():
    conv = _tiny(1)
    rm = WeightedSum({"color": Colorfulness(), "conv": conv})
    x = _images()
    out = rm(images=x)
    torch.testing.assert_close(out.scores, out.sub_scores["color"] + out.sub_scores["conv"])
    assert {n for n, _ in rm.named_parameters()} == {
        f"rewards.conv.{n}" for n, _ in conv.named_parameters()
    }
    rm.to(torch.float64)
    assert conv.head[0].weight.dtype == torch.float64


def test_weighted_sum_weight_keys_must_match():
    with pytest.raises(
        ValueError, match=r"missing weights for \['sharp'\].*without a reward \['typo'\]"
    ):
        WeightedSum({"color": Colorfulness(), "sharp": Sharpness()}, {"color": 1.0, "typo": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum({})


def test_flags_propagate_from_members():
    rm = WeightedSum({"color": Colorfulness(), "conv": _tiny(0)})
    assert rm.differentiable is True and rm.inputs == ("images",)
    assert (
        WeightedSum({"color": Colorfulness(), "jpeg": JpegCompressibility()}).differentiable
        is False
    )
    assert Ensemble([Colorfulness(), JpegCompressibility()]).differentiable is False
    assert Clipped(JpegCompressibility(), high=0.0).differentiable is False
    assert Normalized(Sharpness(), 0.0, 1.0).differentiable is True
    running = RunningNormalized(Colorfulness())
    assert running.inputs == ("images", "prompts") and running.differentiable is True
    # class attributes of the base and the members are untouched
    assert Colorfulness.inputs == ("images",) and JpegCompressibility.differentiable is False


def test_gradient_reaches_pixels_through_nested_composite():
    members = {"color": Colorfulness(), "sharp": Sharpness(), "conv": _tiny(0)}
    rm = Clipped(
        Normalized(WeightedSum(members, {"color": 1.0, "sharp": 0.001, "conv": 1.0}), 1.0, 2.0),
        low=-1e6,
        high=1e6,
    )
    ens = Ensemble([rm, _tiny(1)], mode="mean_minus_std")
    assert ens.differentiable
    x = _images().requires_grad_(True)
    ens(images=x).scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


# -- fixed normalisation and clipping ------------------------------------------------------
def test_normalized_values_by_hand():
    x = _images()
    raw = Colorfulness()(images=x).scores
    out = Normalized(Colorfulness(), mean=30.0, std=4.0)(images=x)
    torch.testing.assert_close(out.scores, (raw - 30.0) / 4.0)
    torch.testing.assert_close(out.sub_scores["raw"], raw)
    assert {"sigma_rgyb", "mu_rgyb"} <= set(out.sub_scores)  # member's sub-scores pass through
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="std: expected a positive number"):
            Normalized(Colorfulness(), mean=0.0, std=bad)


def test_clipped_values_and_gradient_inside_range():
    g = torch.Generator().manual_seed(3)
    vivid = torch.rand(1, 3, 16, 16, generator=g)
    dull = 0.5 + 0.02 * torch.rand(1, 3, 16, 16, generator=g)
    x = torch.cat([vivid, dull])
    raw = Colorfulness()(images=x).scores
    assert raw[0] > raw[1]
    high = float(raw.mean())
    rm = Clipped(Colorfulness(), high=high)
    xg = x.clone().requires_grad_(True)
    out = rm(images=xg)
    torch.testing.assert_close(out.scores, torch.stack([torch.tensor(high), raw[1]]))
    out.scores.sum().backward()
    assert xg.grad[0].abs().sum() == 0  # clipped: no gradient
    assert xg.grad[1].abs().sum() > 0  # inside the range: gradient passes
    both = Clipped(Colorfulness(), low=float(raw[1]) + 1.0, high=high)(images=x).scores
    torch.testing.assert_close(both, torch.tensor([high, float(raw[1]) + 1.0]))
    with pytest.raises(ValueError, match="low <= high"):
        Clipped(Colorfulness(), low=2.0, high=1.0)


# -- ensembles -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mean", "min", "mean_minus_std"])
def test_ensemble_modes_by_hand(mode):
    members = [_tiny(s) for s in range(3)]
    x = _images(n=5)
    cols = [m(images=x).scores.tolist() for m in members]  # (M, B) as lists
    out = Ensemble(members, mode=mode, k=0.5)(images=x)
    expected = []
    for b in range(5):
        vals = [c[b] for c in cols]
        mean, std = sum(vals) / 3, _pop_std(vals)
        expected.append({"mean": mean, "min": min(vals), "mean_minus_std": mean - 0.5 * std}[mode])
        assert out.sub_scores["std"][b].item() == pytest.approx(std, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(out.scores, torch.tensor(expected))
    assert list(out.sub_scores) == ["member_0", "member_1", "member_2", "std"]
    torch.testing.assert_close(out.sub_scores["member_1"], torch.tensor(cols[1]))


def test_ensemble_errors():
    with pytest.raises(ValueError, match=r"\('mean', 'min', 'mean_minus_std'\).*'median'"):
        Ensemble([Colorfulness()], mode="median")
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


# -- per-prompt stat tracking (DDPO) -------------------------------------------------------
def test_stat_tracker_both_regimes_by_hand():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    eps = 1e-6
    # round 1: buffers a=[1,3], b=[5] are below min_count -> whole-batch statistics
    adv = tracker.update(["a", "a", "b"], torch.tensor([1.0, 3.0, 5.0]))
    s = math.sqrt(8 / 3)
    torch.testing.assert_close(adv, torch.tensor([-2 / (s + eps), 0.0, 2 / (s + eps)]))
    # round 2: a=[1,3,5,7] (>= 3, buffer updated before stats) ; b=[5,6] -> batch of [5,7,6]
    adv = tracker.update(["a", "a", "b"], torch.tensor([5.0, 7.0, 6.0]))
    sa = math.sqrt(5.0)
    torch.testing.assert_close(adv, torch.tensor([1 / (sa + eps), 3 / (sa + eps), 0.0]))
    # round 3: the deque drops the oldest value: a=[3,5,7,9], mean 6, std sqrt(5)
    adv = tracker.update(["a"], torch.tensor([9.0]))
    torch.testing.assert_close(adv, torch.tensor([3 / (sa + eps)]))
    stats = tracker.get_stats()
    assert stats["a"] == pytest.approx((6.0, math.sqrt(5.0), 4))
    assert stats["b"] == pytest.approx((5.5, 0.5, 2))
    assert stats["a"].count == 4
    # advantages() reads without updating
    before = tracker.state_dict()
    tracker.advantages(["a", "b"], torch.tensor([0.0, 0.0]))
    assert tracker.state_dict() == before
    tracker.clear()
    assert tracker.get_stats() == {}


def test_stat_tracker_state_dict_round_trip():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        tracker.update(["x", "y", "x", "z"], torch.randn(4, generator=g))
    state = json.loads(json.dumps(tracker.state_dict()))  # JSON-serialisable
    restored = PerPromptStatTracker()
    restored.load_state_dict(state)
    assert restored.buffer_size == 3 and restored.min_count == 2
    assert restored.get_stats() == tracker.get_stats()
    new = torch.randn(4, generator=g)
    prompts = ["x", "y", "z", "w"]
    torch.testing.assert_close(restored.update(prompts, new), tracker.update(prompts, new))
    assert restored.state_dict() == tracker.state_dict()


def test_stat_tracker_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one prompt per reward"):
        PerPromptStatTracker().update(["a"], torch.tensor([1.0, 2.0]))


def test_running_normalized_train_updates_eval_does_not():
    x = _images(n=4)
    prompts = ["p", "p", "q", "q"]
    raw = Colorfulness()(images=x).scores
    rm = RunningNormalized(Colorfulness(), PerPromptStatTracker(buffer_size=8, min_count=2))
    out = rm(images=x, prompts=prompts)
    reference = PerPromptStatTracker(buffer_size=8, min_count=2)
    torch.testing.assert_close(out.scores, reference.update(prompts, raw))
    torch.testing.assert_close(out.sub_scores["raw"], raw)
    assert rm.tracker.get_stats()["p"].count == 2
    rm.eval()
    out = rm(images=x.flip(0), prompts=prompts)
    assert rm.tracker.get_stats()["p"].count == 2  # eval: stored stats, no update
    torch.testing.assert_close(out.scores, reference.advantages(prompts, raw.flip(0)))
    with pytest.raises(ValueError, match="prompts"):
        rm(RewardInput(images=x))


# -- group advantages (GRPO) ---------------------------------------------------------------
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])
    ids = ["u", "u", "u", "v", "v", "w"]
    s = math.sqrt(2 / 3)
    expected = torch.tensor([-1 / (s + 1e-6), 0.0, 1 / (s + 1e-6), 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(r, ids), expected)
    torch.testing.assert_close(group_advantages(r, torch.tensor([7, 7, 7, 2, 2, 5])), expected)
    torch.testing.assert_close(
        group_advantages(r, ids, std=False), torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    )
    torch.testing.assert_close(
        group_advantages(r, ids, eps=1.0), torch.tensor([-1 / (s + 1), 0.0, 1 / (s + 1), 0, 0, 0])
    )
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(r, ids[:-1])


# -- WARM ----------------------------------------------------------------------------------
def test_average_weights_is_hand_mean():
    a, b = _tiny(0), _tiny(1)
    warm = average_weights([a, b])
    assert isinstance(warm, TinyConvReward) and warm is not a
    sa, sb = a.state_dict(), b.state_dict()
    for key, value in warm.state_dict().items():
        torch.testing.assert_close(value, (sa[key] + sb[key]) / 2)
    weighted = average_weights([a, b], weights=[3.0, 1.0])
    for key, value in weighted.state_dict().items():
        torch.testing.assert_close(value, 0.75 * sa[key] + 0.25 * sb[key])
    # the inputs are untouched
    torch.testing.assert_close(a.state_dict(), sa)


def test_average_with_itself_reproduces_scores():
    a = _tiny(2)
    x = _images()
    for copies in (2, 3):
        warm = average_weights([a] * copies)
        assert torch.equal(warm(images=x).scores, a(images=x).scores)


def test_average_weights_integer_buffers_must_match():
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    a.num_batches_tracked += 1
    with pytest.raises(ValueError, match="num_batches_tracked"):
        average_weights([a, b])
    b.num_batches_tracked += 1
    assert average_weights([a, b]).num_batches_tracked.item() == 1


def test_average_weights_mismatches_are_named():
    with pytest.raises(ValueError, match=r"model 0: TinyConvReward, model 1: Colorfulness"):
        average_weights([_tiny(0), Colorfulness()])
    with pytest.raises(ValueError, match=r"model 1: shape mismatches.*features\.2\.weight"):
        average_weights([_tiny(0, channels=(4, 8)), _tiny(1, channels=(4, 16))])
    with pytest.raises(ValueError, match=r"model 2: unexpected keys \['features\.4\.bias'"):
        average_weights([_tiny(0), _tiny(1), _tiny(2, channels=(4, 8, 8))])
    with pytest.raises(ValueError, match=r"model 1: missing keys \['features\.2\.bias'"):
        average_weights([_tiny(0), _tiny(1, channels=(4,))])
    with pytest.raises(ValueError, match="at least two models"):
        average_weights([_tiny(0)])
    with pytest.raises(ValueError, match="2 weights"):
        average_weights([_tiny(0), _tiny(1)], weights=[1.0])
