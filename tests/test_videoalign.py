"""VideoAlign-style video RM: sub-scores, z-scores, invariances, persistence, BT-with-ties training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mmreward
from mmreward.errors import CheckpointError, InputError
from mmreward.interface import RewardInput
from video.videoalign import (
    DIMENSIONS,
    HEAD_FILE,
    REWARD_TOKENS,
    TrainSettings,
    VideoAlignReward,
    VideoPairs,
    evaluate_pairs,
    pair_loss,
    train_videoalign,
    video_patches,
)

PROMPTS = ["a red seven", "a small blue one on a dark background moving in a circle", "x"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def tiny():
    from vision_rm.vlm.tiny import build_tiny_qwen2vl

    return build_tiny_qwen2vl(seed=0, extra_special_tokens=REWARD_TOKENS)


def _rm(tiny, **kwargs) -> VideoAlignReward:
    import copy

    vlm, processor = tiny
    torch.manual_seed(0)
    return VideoAlignReward(copy.deepcopy(vlm), copy.deepcopy(processor), **kwargs).eval()


@pytest.fixture(scope="module")
def videos():
    return torch.rand(3, 6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------ the forward
def test_sub_scores_names_shapes_and_overall_is_sum(tiny, videos):
    rm = _rm(tiny)
    rm.set_zscore([0.1, -0.2, 0.3], [2.0, 0.5, 1.0])
    out = rm(videos=videos, prompts=PROMPTS)
    assert tuple(out.sub_scores) == DIMENSIONS == ("VQ", "MQ", "TA")
    for v in out.sub_scores.values():
        assert v.shape == (3,) and torch.isfinite(v).all()
    total = out.sub_scores["VQ"] + out.sub_scores["MQ"] + out.sub_scores["TA"]
    torch.testing.assert_close(out.scores, total)
    assert out.extras["frame_indices"][0] == list(range(6))


def test_zscore_applied_and_guarded(tiny, videos):
    rm = _rm(tiny)
    with pytest.raises(RuntimeError, match="z-score statistics are missing"):
        rm(videos=videos, prompts=PROMPTS)
    with pytest.raises(ValueError, match="std"):
        rm.set_zscore([0, 0, 0], [1.0, 0.0, 1.0])
    raw = rm.raw_scores(RewardInput(prompts=PROMPTS, videos=videos)).detach()
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 4.0, 0.25])
    rm.set_zscore(mean, std)
    out = rm(videos=videos, prompts=PROMPTS)
    for i, d in enumerate(DIMENSIONS):
        torch.testing.assert_close(out.sub_scores[d].detach(), (raw[:, i] - mean[i]) / std[i])
    # fitted statistics standardise the reference set
    stats = rm.fit_zscore(videos, PROMPTS)
    z = torch.stack([rm(videos=videos, prompts=PROMPTS).sub_scores[d] for d in DIMENSIONS], 1)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)
    assert len(stats["mean"]) == 3
    # normalize=False gives raw scores without statistics
    plain = _rm(tiny, normalize=False)(videos=videos, prompts=PROMPTS)
    torch.testing.assert_close(plain.scores, raw.sum(1), atol=1e-5, rtol=1e-5)


def test_batch_size_and_padding_invariance(tiny, videos):
    rm = _rm(tiny, normalize=False)
    batched = rm(videos=videos, prompts=PROMPTS).scores.detach()
    single = torch.cat(
        [rm(videos=videos[i : i + 1], prompts=[p]).scores for i, p in enumerate(PROMPTS)]
    )
    torch.testing.assert_close(batched, single.detach(), atol=1e-5, rtol=1e-5)
    rm.padding_side = "left"
    left = rm(videos=videos, prompts=PROMPTS).scores.detach()
    torch.testing.assert_close(batched, left, atol=1e-5, rtol=1e-5)
    # score() in batches of 2 gives the same numbers
    chunked = rm.score(videos=videos, prompts=PROMPTS, batch_size=2).scores
    torch.testing.assert_close(batched, chunked, atol=1e-5, rtol=1e-5)


def test_tensor_preprocessing_matches_the_processor(tiny):
    processor = tiny[1]
    rm = _rm(tiny, normalize=False)
    gen = torch.Generator().manual_seed(0)
    for shape, atol in (((2, 5, 3, 32, 32), 1e-5), ((1, 4, 3, 40, 52), 0.08)):
        frames = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        pixels, grid = video_patches(frames.float() / 255.0, rm.patch_cfg)
        ref = processor.video_processor(
            videos=list(frames), return_tensors="pt", do_sample_frames=False
        )
        assert grid.tolist() == ref["video_grid_thw"].tolist()
        torch.testing.assert_close(pixels, ref["pixel_values_videos"], atol=atol, rtol=0)


def test_gradient_reaches_pixels_and_frame_sampling(tiny, videos):
    rm = _rm(tiny, normalize=False, num_frames=4)
    x = videos[:2].clone().requires_grad_(True)
    out = rm(videos=x, prompts=PROMPTS[:2])
    out.scores.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert out.extras["frame_indices"][0] == [0, 2, 3, 5]  # round(linspace(0, 5, 4))
    assert x.grad[:, 1].abs().sum() == 0  # frame 1 was not sampled


def test_reward_tokens_added_when_missing():
    from vision_rm.vlm.tiny import build_tiny_qwen2vl

    vlm, processor = build_tiny_qwen2vl(seed=0)
    before = vlm.get_input_embeddings().weight.shape[0]
    rm = VideoAlignReward(vlm, processor, normalize=False)
    assert vlm.get_input_embeddings().weight.shape[0] == before + 3
    assert len(set(rm.reward_token_ids)) == 3
    out = rm(videos=torch.rand(1, 2, 3, 32, 32), prompts=["a red seven"])
    assert torch.isfinite(out.scores).all()


def test_bad_inputs_name_the_field(tiny):
    rm = _rm(tiny, normalize=False)
    with pytest.raises(InputError, match="videos"):
        rm(videos=torch.rand(1, 3, 4, 32, 32), prompts=["a"])  # (B,C,T,H,W)
    with pytest.raises(InputError, match=r"prompts\[0\]"):
        rm(videos=torch.rand(1, 2, 3, 32, 32), prompts=["<|VQ_reward|> cheat"])
    with pytest.raises(ValueError, match="prompt_template"):
        VideoAlignReward(*tiny, prompt_template="no tokens {prompt}")


# ---------------------------------------------------------------------- persistence
def test_save_load_identical_outputs(tiny, videos, tmp_path):
    rm = _rm(tiny)
    with torch.no_grad():
        rm.head.weight.normal_()
    rm.set_zscore([0.1, 0.2, 0.3], [1.5, 2.0, 0.5])
    ref = rm(videos=videos, prompts=PROMPTS)
    rm.save_pretrained(tmp_path / "saved")
    loaded = mmreward.load(tmp_path / "saved")
    assert isinstance(loaded, VideoAlignReward)
    out = loaded(videos=videos, prompts=PROMPTS)
    torch.testing.assert_close(out.scores, ref.scores, atol=0, rtol=0)
    for d in DIMENSIONS:
        torch.testing.assert_close(out.sub_scores[d], ref.sub_scores[d], atol=0, rtol=0)
    # Hugging Face layout (from_pretrained) + reward_head.safetensors
    rm.export_pretrained(tmp_path / "hf")
    again = mmreward.load("videoalign", weights=tmp_path / "hf")
    torch.testing.assert_close(again(videos=videos, prompts=PROMPTS).scores, ref.scores)
    torch.testing.assert_close(again.zscore_std, rm.zscore_std)


def test_strict_loading_lists_keys(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    rm = _rm(tiny)
    rm.set_zscore([0, 0, 0], [1, 1, 1])
    rm.export_pretrained(tmp_path / "hf")
    head = load_file(str(tmp_path / "hf" / HEAD_FILE))
    # the reference name of the head is accepted
    official = {
        "rm_head.weight": head["head.weight"],
        **{k: v for k, v in head.items() if k != "head.weight"},
    }
    save_file(official, str(tmp_path / "hf" / HEAD_FILE))
    mmreward.load("videoalign", weights=tmp_path / "hf")
    # missing statistics and an unexpected key are listed by name
    bad = {"head.weight": head["head.weight"], "head.bias": torch.zeros(3)}
    save_file(bad, str(tmp_path / "hf" / HEAD_FILE))
    with pytest.raises(CheckpointError) as err:
        mmreward.load("videoalign", weights=tmp_path / "hf")
    msg = str(err.value)
    assert "zscore_mean" in msg and "zscore_std" in msg and "head.bias" in msg
    # the mmreward layout is strict too
    rm.save_pretrained(tmp_path / "saved")
    sd = load_file(str(tmp_path / "saved" / "model.safetensors"))
    sd.pop("zscore_std")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"(?s)zscore_std.*extra\.weight"):
        mmreward.load(tmp_path / "saved")


def test_reference_layout_gets_a_clear_error(tmp_path):
    (tmp_path / "model_config.json").write_text("{}")
    with pytest.raises(ValueError, match="reference training layout"):
        mmreward.load("videoalign", weights=tmp_path)


# ------------------------------------------------------------------------- training
def test_pair_loss_matches_hand_computation():
    raw_a = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    raw_b = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    labels = {
        "VQ": torch.tensor([1, -1]),
        "MQ": torch.tensor([-1, 0]),
        "TA": torch.tensor([0, 1]),
        "Overall": torch.tensor([1, 1]),
    }
    k = 5.0
    lk = math.log(k)

    def nll(delta: float, y: int) -> float:  # Rao-Kupper, by hand
        win = lambda d: -math.log(1 / (1 + math.exp(-(d - lk))))  # noqa: E731
        if y == 0:
            return win(delta) + win(-delta) - math.log(k * k - 1)
        return win(delta if y == 1 else -delta)

    hand = []
    for name, y in labels.items():
        if name == "Overall":
            d = (raw_a.sum(1) - raw_b.sum(1)).tolist()
        else:
            i = DIMENSIONS.index(name)
            d = (raw_a[:, i] - raw_b[:, i]).tolist()
        hand.append(sum(nll(di, int(yi)) for di, yi in zip(d, y.tolist())) / 2)
    loss, logs = pair_loss(raw_a, raw_b, labels, k=k)
    assert loss.item() == pytest.approx(sum(hand) / 4, rel=1e-6)
    assert logs["loss_TA"] == pytest.approx(hand[2], rel=1e-6)
    with pytest.raises(ValueError, match="unknown dimension"):
        pair_loss(raw_a, raw_b, {"XX": torch.tensor([1, 1])})


def _toy_pairs(n: int, seed: int) -> VideoPairs:
    """Colour videos: VQ = clean beats noisy, MQ = steady beats flickering, TA = the colour
    the prompt names beats the other; Overall = the sum of those three golds."""
    gen = torch.Generator().manual_seed(seed)
    colours = {"red": torch.tensor([0.9, 0.1, 0.1]), "blue": torch.tensor([0.1, 0.2, 0.9])}

    def video(colour: str, noisy: bool, flicker: bool) -> torch.Tensor:
        x = colours[colour].view(1, 3, 1, 1).expand(2, 3, 16, 16).clone()
        if flicker:
            x = x * torch.tensor([1.0, 0.3]).view(2, 1, 1, 1)
        if noisy:
            x = x + 0.3 * torch.randn(x.shape, generator=gen)
        return x.clamp(0, 1)

    va, vb, prompts, labels = [], [], [], {d: [] for d in (*DIMENSIONS, "Overall")}
    for _ in range(n):
        asked = ["red", "blue"][int(torch.randint(2, (1,), generator=gen))]
        gold = []
        for store in (va, vb):
            colour = ["red", "blue"][int(torch.randint(2, (1,), generator=gen))]
            noisy, flicker = (bool(b) for b in torch.randint(2, (2,), generator=gen))
            store.append(video(colour, noisy, flicker))
            gold.append([float(not noisy), float(not flicker), float(colour == asked)])
        prompts.append(f"a {asked} video")
        for i, d in enumerate(DIMENSIONS):
            labels[d].append(int(torch.sign(torch.tensor(gold[0][i] - gold[1][i]))))
        labels["Overall"].append(int(torch.sign(torch.tensor(sum(gold[0]) - sum(gold[1])))))
    return VideoPairs(
        torch.stack(va), torch.stack(vb), prompts, {k: torch.tensor(v) for k, v in labels.items()}
    )


def test_bt_ties_training_raises_held_out_accuracy(tiny):
    rm = _rm(tiny, normalize=False)
    train, test = _toy_pairs(64, seed=0), _toy_pairs(40, seed=1)
    before = evaluate_pairs(rm, test)
    settings = TrainSettings(steps=50, batch_size=8, lr=3e-4, head_lr=1e-2, progress=False)
    history = train_videoalign(rm, train, settings)
    after = evaluate_pairs(rm, test)
    first = sum(h["loss"] for h in history[:10]) / 10
    last = sum(h["loss"] for h in history[-10:]) / 10
    assert last < first
    acc = {d: r["accuracy_without_ties"] for d, r in after.items()}
    assert acc["Overall"] >= 0.7 and max(acc.values()) >= 0.9, acc
    assert acc["Overall"] > before["Overall"]["accuracy_without_ties"] + 0.1
    mean_before = sum(before[d]["accuracy_without_ties"] for d in before) / 4
    assert sum(acc.values()) / 4 > mean_before + 0.1
    assert all(0 <= after[d]["tie_aware_accuracy"] <= 1 for d in after)


def test_padding_and_frames_do_not_leak_between_rows(tiny, videos):
    # the reward tokens of one row never attend to another row's video
    rm = _rm(tiny, normalize=False)
    a = rm(videos=videos, prompts=PROMPTS).scores.detach()
    changed = videos.clone()
    changed[1] = F.pad(videos[1, :, :, 2:, 2:], (0, 2, 0, 2))
    b = rm(videos=changed, prompts=PROMPTS).scores.detach()
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[1], b[1])
