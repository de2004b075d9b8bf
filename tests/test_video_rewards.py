"""Frame-aggregated video rewards: aggregation and gradients by hand, temporal term,
registry entries, checkpoints and the scoring path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mmreward
from mmreward.errors import InputError
from mmreward.interface import RewardInput, RewardModel
from mmreward.scoring import collect_items, run_scoring
from video.io import make_loader
from video.rewards import FrameAggregatedReward, frame_weights, temporal_consistency
from video.world import make_clips, write_world_videos


class MeanPixel(RewardModel):
    """A formula image reward: the mean pixel value (gradient 1/(3HW) per pixel)."""

    inputs = ("images",)
    differentiable = True
    sub_score_names = ("red",)

    def compute(self, batch):
        x = batch.images
        from mmreward.interface import RewardOutput

        return RewardOutput(scores=x.mean((1, 2, 3)), sub_scores={"red": x[:, 0].mean((1, 2))})


def _flat_video(levels) -> torch.Tensor:
    """(B,T,3,4,4) videos whose frame t of item b is the constant levels[b][t]."""
    v = torch.tensor(levels, dtype=torch.float32)
    return v[:, :, None, None, None].expand(*v.shape, 3, 4, 4).clone()


def test_frame_weights_by_hand():
    torch.testing.assert_close(frame_weights(4), torch.full((4,), 0.25))
    # F = 4, λ = 0.5: |i − 2| = 2, 1, 0, 1 → exp(−1), exp(−.5), 1, exp(−.5), normalised
    raw = torch.tensor([math.exp(-1), math.exp(-0.5), 1.0, math.exp(-0.5)])
    torch.testing.assert_close(frame_weights(4, "centre", 0.5), raw / raw.sum())
    torch.testing.assert_close(frame_weights(5, "centre", 0.0), torch.full((5,), 0.2))


@pytest.mark.parametrize("aggregate", ["mean", "centre", "min"])
def test_aggregation_and_gradient_by_hand(aggregate):
    levels = [[0.2, 0.4, 0.9, 0.6], [0.5, 0.1, 0.3, 0.7]]
    rm = FrameAggregatedReward(MeanPixel(), aggregate=aggregate, centre_lambda=0.5)
    assert rm.inputs == ("videos",) and rm.differentiable
    assert rm.sub_score_names == ("frames", "red")
    x = _flat_video(levels).requires_grad_(True)
    out = rm(videos=x)
    lv = torch.tensor(levels)
    if aggregate == "min":
        w = torch.nn.functional.one_hot(lv.argmin(1), 4).float()
    else:
        w = frame_weights(4, aggregate, 0.5).expand(2, 4)
    torch.testing.assert_close(out.scores, (w * lv).sum(1))
    torch.testing.assert_close(out.sub_scores["red"], out.scores)  # grey frames
    torch.testing.assert_close(out.extras["frame_scores"], lv)
    out.scores.sum().backward()
    # d score / d pixel = w_t / (3·4·4) for every pixel of frame t
    expected = (w / 48.0)[:, :, None, None, None].expand_as(x)
    torch.testing.assert_close(x.grad, expected)


def test_num_frames_subsamples_uniformly():
    levels = [[0.1 * i for i in range(10)]]
    rm = FrameAggregatedReward(MeanPixel(), num_frames=4)
    out = rm(videos=_flat_video(levels))
    assert out.extras["frame_indices"] == [[0, 3, 6, 9]]
    torch.testing.assert_close(out.scores, torch.tensor([0.1 * (0 + 3 + 6 + 9) / 4]))
    assert rm.native_frames == 4


def test_temporal_consistency_by_hand():
    e = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]], [[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
    # item 0: cos = 0.6, 1.0 → 0.8; item 1: cos = 0, 0 → 0
    torch.testing.assert_close(temporal_consistency(e), torch.tensor([0.8, 0.0]))
    torch.testing.assert_close(temporal_consistency(e[:, :1]), torch.ones(2))  # one frame

    class Flatten(torch.nn.Module):
        def forward(self, images):
            return images.flatten(1)

    rm = FrameAggregatedReward(MeanPixel(), temporal_encoder=Flatten(), temporal_weight=2.0)
    v = torch.rand(2, 3, 3, 4, 4)
    out = rm(videos=v)
    t = temporal_consistency(v.flatten(2))
    torch.testing.assert_close(out.sub_scores["temporal"], t)
    torch.testing.assert_close(out.scores, out.sub_scores["frames"] + 2.0 * t)


def test_bad_arguments_and_inputs_are_clear():
    with pytest.raises(ValueError, match="aggregate"):
        FrameAggregatedReward(MeanPixel(), aggregate="median")
    with pytest.raises(ValueError, match="temporal_weight"):
        FrameAggregatedReward(MeanPixel(), temporal_weight=1.0)
    rm = FrameAggregatedReward(MeanPixel())
    with pytest.raises(InputError, match=r"videos: .*permute to \(B,T,C,H,W\)"):
        rm(videos=torch.rand(2, 3, 5, 8, 8))  # channel-first
    with pytest.raises(InputError, match="videos"):
        rm(images=torch.rand(2, 3, 8, 8))


def test_world_rewards_prefer_right_prompt_and_smooth_motion():
    torch.set_num_threads(1)
    x, metas = make_clips(6, "expert", seed=10, frames=8)
    bad_x, _ = make_clips(6, "nonexpert", seed=10, frames=8)
    videos = torch.from_numpy(x).permute(0, 1, 4, 2, 3).float() / 255
    bad = torch.from_numpy(bad_x).permute(0, 1, 4, 2, 3).float() / 255
    prompts = [m["prompt"] for m in metas]
    gold = mmreward.load("video-frames.gold-world")
    right = gold(videos=videos, prompts=prompts).scores
    wrong = gold(videos=videos, prompts=prompts[1:] + prompts[:1]).scores
    assert (right > wrong).float().mean() >= 5 / 6
    clip = mmreward.load("video-frames.clipscore-world-tiny-temporal")
    smooth = clip(videos=videos, prompts=prompts).sub_scores["temporal"]
    jumpy = clip(videos=bad, prompts=prompts).sub_scores["temporal"]
    # consecutive frames of smooth motion look alike; jumps and jitter do not (seeded clips)
    assert (smooth > jumpy).float().mean() >= 5 / 6 and smooth.mean() > jumpy.mean()
    # gradient reaches the frames through the tiny CLIP too
    v = videos[:2].clone().requires_grad_(True)
    clip(videos=v, prompts=prompts[:2]).scores.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_save_and_load_back_identical(tmp_path):
    rm = mmreward.load("video-frames.gold-world-centre")
    x, metas = make_clips(2, "expert", seed=3, frames=6)
    videos = torch.from_numpy(x).permute(0, 1, 4, 2, 3).float() / 255
    prompts = [m["prompt"] for m in metas]
    with torch.no_grad():
        ref = rm(videos=videos, prompts=prompts)
        next(rm.image_reward.classifier.parameters()).mul_(1.5)  # a change the file must carry
        changed = rm(videos=videos, prompts=prompts).scores
    assert not torch.allclose(changed, ref.scores)
    folder = rm.save_pretrained(tmp_path / "saved")
    back = mmreward.load(folder)
    assert back.reward_name == "video-frames.gold-world-centre"
    assert back.aggregate == "centre"
    with torch.no_grad():
        torch.testing.assert_close(back(videos=videos, prompts=prompts).scores, changed)


def test_scoring_path_on_world_videos(tmp_path):
    torch.set_num_threads(1)
    manifest = write_world_videos(tmp_path / "vids", n_per_kind=2, seed=0, frames=8)
    items = collect_items(manifest)
    assert [it.kind for it in items] == ["videos"] * 4
    rm = mmreward.load("video-frames.gold-world")
    load = make_loader(num_frames=4)
    summary = run_scoring(
        rm, items, tmp_path / "out.jsonl", batch_size=3, progress=False, load_video=load
    )
    assert summary["n_scored"] == 4 and summary["n_errors"] == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    clip = load(items[0].value)
    with torch.no_grad():
        direct = rm(videos=clip.frames[None], prompts=[items[0].prompt]).scores
    assert rows[0]["score"] == pytest.approx(float(direct), abs=1e-5)
    assert rows[0]["frame_indices"] == [0, 2, 5, 7]
    assert np.isfinite([r["score"] for r in rows]).all()


def test_registered_image_reward_must_score_images():
    class TextOnly(RewardModel):
        inputs = ("responses",)

        def compute(self, batch):
            return torch.zeros(len(batch.responses))

    with pytest.raises(ValueError, match="image_reward"):
        FrameAggregatedReward(TextOnly())
    assert RewardInput(videos=torch.rand(1, 2, 3, 4, 4)).validate(("videos",)) == 1
