"""The reward interface: input validation, output plumbing and the convenience methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor

from mmreward import InputError, RewardInput, RewardModel, RewardOutput
from mmreward.analytic import Colorfulness
from mmreward.convnet import TinyConvReward


class PromptedToy(RewardModel):
    """Needs prompts and images: mean pixel + 0.01·len(prompt), so prompts must follow items."""

    inputs = ("prompts", "images")
    differentiable = True

    def compute(self, batch: RewardInput) -> Tensor:
        lengths = torch.tensor([len(p) for p in batch.prompts], dtype=batch.images.dtype)
        return batch.images.mean(dim=(1, 2, 3)) + 0.01 * lengths.to(batch.images.device)


class WrongShape(RewardModel):
    """Returns (B, 1) instead of (B,)."""

    def compute(self, batch: RewardInput) -> Tensor:
        return batch.images.mean(dim=(2, 3))[:, :1]


class WrongShapeOutput(RewardModel):
    """Returns a RewardOutput whose scores have one item too many."""

    def compute(self, batch: RewardInput) -> RewardOutput:
        n = batch.images.shape[0]
        return RewardOutput(scores=torch.zeros(n + 1))


def _error(excinfo: pytest.ExceptionInfo) -> tuple[str, str]:
    err = excinfo.value
    assert isinstance(err, InputError) and isinstance(err, ValueError)
    return err.field, str(err)


# --------------------------------------------------------------------------------------
# RewardInput validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("images", "given", "hint"),
    [
        (torch.rand(3, 8, 8), "shape (3, 8, 8)", ""),
        (torch.rand(2, 1, 8, 8), "shape (2, 1, 8, 8)", "grayscale"),
        (torch.rand(2, 4, 8, 8), "shape (2, 4, 8, 8)", "RGBA"),
        (torch.rand(2, 8, 8, 3), "shape (2, 8, 8, 3)", ""),
        (torch.rand(2, 3, 8, 8) * 255, "values in [", "divide by 255"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, "values in [-", "(x + 1) / 2"),
        (torch.full((2, 3, 8, 8), 1.2), "values in [1.2, 1.2]", "clamp"),
        (torch.tensor(float("nan")).expand(2, 3, 8, 8), "NaN", ""),
        (torch.tensor(float("inf")).expand(2, 3, 8, 8), "inf", ""),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), "dtype torch.uint8", "uint8"),
        (torch.randint(0, 2, (2, 3, 8, 8)), "dtype torch.int64", ""),
        (np.zeros((2, 3, 8, 8), np.float32), "ndarray", ""),
    ],
    ids=[
        "rank3",
        "one-channel",
        "four-channel",
        "channels-last",
        "0-255",
        "minus1-1",
        "slightly-over",
        "nan",
        "inf",
        "uint8",
        "int64",
        "numpy",
    ],
)
def test_bad_images_name_field_expectation_and_given(images, given, hint):
    with pytest.raises(InputError) as excinfo:
        RewardInput(images=images).validate()
    field, msg = _error(excinfo)
    assert field == "images"
    assert "(B,3,H,W)" in msg and "[0,1]" in msg
    assert given in msg
    assert hint in msg


def test_float_round_off_outside_unit_range_is_tolerated():
    x = torch.rand(2, 3, 8, 8)
    x[0, 0, 0, 0] = 1.0 + 1e-6
    x[1, 0, 0, 0] = -1e-6
    assert RewardInput(images=x).validate() == 2


def test_bad_videos_shape_and_layout():
    with pytest.raises(InputError, match=r"videos: .*\(B,T,3,H,W\)") as excinfo:
        RewardInput(videos=torch.rand(2, 3, 8, 8)).validate()
    assert excinfo.value.field == "videos"
    with pytest.raises(InputError, match="permute"):
        RewardInput(videos=torch.rand(2, 3, 5, 8, 8)).validate()


def test_mismatched_batch_sizes_name_each_field():
    batch = RewardInput(prompts=["a", "b"], images=torch.rand(3, 3, 8, 8))
    with pytest.raises(InputError) as excinfo:
        batch.validate()
    field, msg = _error(excinfo)
    assert field == "batch"
    assert "prompts=2" in msg and "images=3" in msg


def test_no_inputs_at_all():
    with pytest.raises(InputError, match="no inputs"):
        RewardInput().validate()


def test_empty_batch():
    with pytest.raises(InputError, match="empty"):
        RewardInput(images=torch.rand(0, 3, 8, 8)).validate()


def test_missing_required_field_names_it():
    rm = PromptedToy()
    with pytest.raises(InputError) as excinfo:
        rm(images=torch.rand(2, 3, 8, 8))
    field, msg = _error(excinfo)
    assert field == "prompts"
    assert "None" in msg and "needs" in msg


def test_empty_prompt_list_for_model_that_needs_prompts():
    rm = PromptedToy()
    with pytest.raises(InputError) as excinfo:
        rm(prompts=[], images=torch.rand(2, 3, 8, 8))
    _, msg = _error(excinfo)
    assert "prompts=0" in msg
    # through score(): the prompt count is checked against the number of images
    with pytest.raises(InputError) as excinfo:
        rm.score(torch.rand(2, 3, 8, 8), prompts=[])
    field, msg = _error(excinfo)
    assert field == "prompts" and "0 items" in msg and "2 items" in msg


@pytest.mark.parametrize("bad", ["", "   ", "\n"])
def test_empty_prompt_string_for_model_that_needs_prompts(bad):
    rm = PromptedToy()
    with pytest.raises(InputError) as excinfo:
        rm(prompts=["a cat", bad], images=torch.rand(2, 3, 8, 8))
    field, msg = _error(excinfo)
    assert field == "prompts"
    assert "non-empty" in msg and "index [1]" in msg


def test_empty_prompt_string_is_fine_when_prompts_are_optional():
    rm = Colorfulness()
    assert rm(prompts=[""], images=torch.rand(1, 3, 8, 8)).scores.shape == (1,)


def test_prompts_must_be_strings():
    with pytest.raises(InputError, match="prompts: expected a list of strings") as excinfo:
        RewardInput(prompts=["a", 3], images=torch.rand(2, 3, 8, 8)).validate(("prompts",))
    assert "list of length 2" in str(excinfo.value)


def test_bare_string_prompt_is_reported_as_not_a_list():
    with pytest.raises(InputError, match="prompts: expected a list of strings"):
        RewardInput(prompts="a cat", images=torch.rand(2, 3, 8, 8)).validate()


def test_steps_and_fps_validation():
    with pytest.raises(InputError, match="steps"):
        RewardInput(responses=["r"], steps=["not a list"]).validate()
    with pytest.raises(InputError, match="at least one step"):
        RewardInput(responses=["r"], steps=[[]]).validate(("responses", "steps"))
    with pytest.raises(InputError, match="fps"):
        RewardInput(videos=torch.rand(2, 2, 3, 4, 4), fps=[8.0]).validate()
    assert RewardInput(videos=torch.rand(2, 2, 3, 4, 4), fps=8.0).validate() == 2


def test_forward_takes_a_batch_or_fields_not_both():
    rm = Colorfulness()
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(rm(RewardInput(images=x)).scores, rm(images=x).scores)
    with pytest.raises(TypeError):
        rm(RewardInput(images=x), images=x)


def test_select_and_to():
    batch = RewardInput(prompts=["a", "b", "c"], images=torch.rand(3, 3, 4, 4), fps=[1, 2, 3])
    sub = batch.select([2, 0])
    assert sub.prompts == ["c", "a"] and sub.fps == [3, 1]
    torch.testing.assert_close(sub.images, batch.images[[2, 0]])
    assert batch.select(slice(1, 3)).prompts == ["b", "c"]
    moved = batch.to(dtype=torch.float64)
    assert moved.images.dtype == torch.float64 and batch.images.dtype == torch.float32


# --------------------------------------------------------------------------------------
# RewardOutput
# --------------------------------------------------------------------------------------
def _out(scores, tag):
    scores = torch.tensor(scores, dtype=torch.float32)
    return RewardOutput(
        scores=scores,
        sub_scores={"a": scores * 2, "b": scores * 3},
        step_scores=[torch.full((i + 1,), float(s)) for i, s in enumerate(scores.tolist())],
        extras={"emb": scores[:, None].repeat(1, 2), "tags": [tag] * len(scores), "const": 7},
    )


def test_concat():
    out = RewardOutput.concat([_out([1.0, 2.0], "x"), _out([3.0], "y")])
    torch.testing.assert_close(out.scores, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out.sub_scores["a"], torch.tensor([2.0, 4.0, 6.0]))
    torch.testing.assert_close(out.sub_scores["b"], torch.tensor([3.0, 6.0, 9.0]))
    assert [s.tolist() for s in out.step_scores] == [[1.0], [2.0, 2.0], [3.0]]
    assert out.extras["emb"].shape == (3, 2)
    assert out.extras["tags"] == ["x", "x", "y"]
    names, stacked = out.sub_score_tensor()
    assert names == ["a", "b"] and stacked.shape == (3, 2)
    with pytest.raises(ValueError, match="at least one"):
        RewardOutput.concat([])


def test_reorder():
    out = _out([1.0, 2.0, 3.0], "x").reorder([2, 0, 1])
    torch.testing.assert_close(out.scores, torch.tensor([3.0, 1.0, 2.0]))
    torch.testing.assert_close(out.sub_scores["a"], torch.tensor([6.0, 2.0, 4.0]))
    assert [s.tolist() for s in out.step_scores] == [[3.0, 3.0, 3.0], [1.0], [2.0, 2.0]]
    torch.testing.assert_close(out.extras["emb"][:, 0], torch.tensor([3.0, 1.0, 2.0]))
    assert out.extras["const"] == 7


def test_reorder_keeps_list_extras_aligned_with_scores():
    out = RewardOutput(scores=torch.tensor([1.0, 2.0, 3.0]), extras={"names": ["a", "b", "c"]})
    assert out.reorder([2, 0, 1]).extras["names"] == ["c", "a", "b"]


def test_to_rows_is_json_serialisable():
    rows = _out([1.0, 2.0], "x").to_rows()
    assert rows == [
        {"score": 1.0, "sub_scores": {"a": 2.0, "b": 3.0}, "step_scores": [1.0]},
        {"score": 2.0, "sub_scores": {"a": 4.0, "b": 6.0}, "step_scores": [2.0, 2.0]},
    ]
    json.dumps(rows)
    plain = RewardOutput(scores=torch.tensor([0.5], dtype=torch.bfloat16, requires_grad=True))
    assert plain.to_rows() == [{"score": 0.5}]


# --------------------------------------------------------------------------------------
# RewardModel.score / compare / rank
# --------------------------------------------------------------------------------------
def _mixed(sample_arrays):
    """Five items of three sizes, interleaved so size-grouping must reorder them."""
    a = sample_arrays
    return [a["astronaut"], a["coffee"], a["chelsea"], a["camera"], a["coffee"][::-1].copy()]


@pytest.mark.parametrize("rm_cls", [Colorfulness, lambda: TinyConvReward(16, (4, 8), 8)])
def test_score_mixed_sizes_returns_input_order(sample_arrays, rm_cls):
    rm = rm_cls().eval()
    items = _mixed(sample_arrays)
    out = rm.score(items, batch_size=2)
    alone = torch.cat([rm.score([x]).scores for x in items])
    assert out.scores.shape == (len(items),)
    torch.testing.assert_close(out.scores, alone, rtol=1e-5, atol=1e-6)
    if isinstance(rm, Colorfulness):
        assert torch.equal(out.scores, alone)
        subs = torch.cat([rm.score([x]).sub_scores["sigma_rgyb"] for x in items])
        assert torch.equal(out.sub_scores["sigma_rgyb"], subs)


def test_score_mixed_sizes_keeps_prompts_with_their_items(sample_arrays):
    rm = PromptedToy()
    items = _mixed(sample_arrays)
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    out = rm.score(items, prompts=prompts, batch_size=2)
    alone = torch.cat([rm.score([x], prompts=[p]).scores for x, p in zip(items, prompts)])
    torch.testing.assert_close(out.scores, alone)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 32])
def test_batch_size_does_not_change_scores(batch_size):
    rm = Colorfulness()
    x = torch.rand(7, 3, 12, 10)
    assert torch.equal(rm.score(x, batch_size=batch_size).scores, rm(images=x).scores)


def test_single_prompt_is_broadcast():
    rm = PromptedToy()
    x = torch.rand(4, 3, 8, 8)
    one = rm.score(x, prompts="a red bicycle").scores
    many = rm.score(x, prompts=["a red bicycle"] * 4).scores
    torch.testing.assert_close(one, many)
    torch.testing.assert_close(one, x.mean(dim=(1, 2, 3)) + 0.13)


def test_score_runs_without_grad_unless_asked():
    rm = Colorfulness()
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert not rm.score(x).scores.requires_grad
    out = rm.score(x, grad=True)
    out.scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_score_rejects_nothing_to_score():
    with pytest.raises(InputError, match="images: expected items to score"):
        Colorfulness().score()


def test_compare_is_sigmoid_of_score_difference():
    rm = Colorfulness()
    a, b = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    a[0] = 0.5  # grey: clearly less colourful than noise
    ra, rb = rm.score(a).scores, rm.score(b).scores
    p = rm.compare(a, b)
    assert p.shape == (3,)
    torch.testing.assert_close(p, torch.sigmoid(ra - rb))
    torch.testing.assert_close(rm.compare(a, b, temperature=10.0), torch.sigmoid((ra - rb) / 10))
    torch.testing.assert_close(rm.compare(b, a), 1 - p)
    assert p[0] < 0.5
    with pytest.raises(InputError):
        rm.compare(a, b[:2])


def test_rank_is_descending(sample_batch):
    rm = Colorfulness()
    grey = torch.full((1, 3, 32, 32), 0.5)
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[0, 0, :, ::2] = 1.0  # red / green stripes: very colourful
    stripes[0, 1, :, 1::2] = 1.0
    cands = torch.cat([grey, sample_batch[:1], stripes, sample_batch[3:]])  # astronaut, camera
    order, scores = rm.rank(cands, prompt=None)
    assert order[0] == 2 and order[-1] in (0, 3)  # stripes best; a grey image last
    assert scores.shape == (4,)
    ranked = scores[order]
    assert torch.all(ranked[:-1] >= ranked[1:])
    torch.testing.assert_close(scores, rm.score(cands).scores)


@pytest.mark.parametrize("bad_cls", [WrongShape, WrongShapeOutput])
def test_forward_checks_score_shape(bad_cls):
    rm = bad_cls()
    with pytest.raises(RuntimeError, match=r"scores must have shape \(3,\)"):
        rm(images=torch.rand(3, 3, 8, 8))


def test_model_metadata():
    rm = PromptedToy()
    assert rm.candidate_field == "images"
    assert rm.device == torch.device("cpu") and rm.dtype == torch.float32
    assert json.loads(rm.extra_repr())["inputs"] == ["prompts", "images"]


class _ExtrasModel(RewardModel):
    """Scores each image by its mean plus a per-item offset passed in extras."""

    inputs = ("images",)

    def compute(self, batch):
        return batch.images.mean(dim=(1, 2, 3)) + torch.tensor(batch.extras["offset"])


def test_per_item_extras_follow_their_items_through_batching():
    images = [torch.rand(3, 8, 8), torch.rand(3, 4, 4), torch.rand(3, 8, 8)]  # two sizes
    offsets = [10.0, 20.0, 30.0]
    out = _ExtrasModel().score(images, extras={"offset": offsets}, batch_size=1)
    expected = torch.stack([im.mean() for im in images]) + torch.tensor(offsets)
    torch.testing.assert_close(out.scores, expected)
    sub = RewardInput(images=torch.rand(3, 3, 4, 4), extras={"offset": offsets, "k": 1}).select(
        [2, 0]
    )
    assert sub.extras == {"offset": [30.0, 10.0], "k": 1}
