"""The registry, :func:`mmreward.load`, strict checkpoint loading and the weights cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import mmreward
from mmreward import (
    CheckpointError,
    RemoteCodeError,
    RewardSpec,
    WeightsNotFoundError,
    WeightsSource,
)
from mmreward import registry as registry_mod
from mmreward.analytic import Colorfulness
from mmreward.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_state_dict_strict,
    read_state_dict,
    save_state_dict,
)
from mmreward.convnet import TinyConvReward

TINY = {"resolution": 8, "channels": (4, 8), "hidden": 8}
BUILTIN = {
    "colorfulness.hasler",
    "convnet.tiny",
    "jpeg.compressibility",
    "jpeg.incompressibility",
    "sharpness.laplacian",
}


@pytest.fixture
def add_spec():
    """Register specs for one test; everything added is removed from ``_REGISTRY`` after."""
    before = dict(registry_mod._REGISTRY)
    added: list[str] = []

    def _add(spec: RewardSpec, **kwargs) -> RewardSpec:
        added.append(spec.name)
        return mmreward.register(spec, **kwargs)

    yield _add
    for name in added:
        registry_mod._REGISTRY.pop(name, None)
    registry_mod._REGISTRY.update(before)  # in case a test overwrote a built-in
    assert before == registry_mod._REGISTRY


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private ``MMREWARD_CACHE`` for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MMREWARD_CACHE", str(path))
    return path


def _tiny(**kwargs) -> TinyConvReward:
    return TinyConvReward(**{**TINY, **kwargs})


# --------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------
def test_list_rewards_patterns():
    assert set(mmreward.list_rewards()) >= BUILTIN
    assert mmreward.list_rewards() == sorted(mmreward.list_rewards())
    assert mmreward.list_rewards("jpeg.*") == ["jpeg.compressibility", "jpeg.incompressibility"]
    assert mmreward.list_rewards("*.tiny") == ["convnet.tiny"]
    assert mmreward.list_rewards("*ness.*") == ["colorfulness.hasler", "sharpness.laplacian"]
    assert mmreward.list_rewards("no-such-*") == []


def test_get_spec_by_architecture_gives_default_tag():
    assert mmreward.get_spec("colorfulness").name == "colorfulness.hasler"
    assert mmreward.get_spec("jpeg").name == "jpeg.compressibility"
    spec = mmreward.get_spec("jpeg.incompressibility")
    assert (spec.architecture, spec.tag) == ("jpeg", "incompressibility")


def test_default_flag_wins_over_alphabetical(add_spec):
    add_spec(RewardSpec("toyarch.a", Colorfulness))
    add_spec(RewardSpec("toyarch.b", Colorfulness, default=True))
    assert mmreward.get_spec("toyarch").name == "toyarch.b"


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("colorfulnes", "colorfulness.hasler"), ("convnet.tinny", "convnet.tiny")],
)
def test_unknown_name_suggests(typo, suggestion):
    with pytest.raises(KeyError) as excinfo:
        mmreward.get_spec(typo)
    msg = excinfo.value.args[0]
    assert repr(typo) in msg and f"Did you mean {suggestion!r}" in msg
    assert "list_rewards" in msg
    with pytest.raises(KeyError, match="Did you mean"):
        mmreward.load(typo)


def test_register_rejects_bad_and_duplicate_names(add_spec):
    with pytest.raises(ValueError, match="architecture.weights-tag"):
        add_spec(RewardSpec("nodot", Colorfulness))
    add_spec(RewardSpec("toydup.v1", Colorfulness))
    with pytest.raises(ValueError, match="already registered"):
        add_spec(RewardSpec("toydup.v1", Colorfulness))
    add_spec(RewardSpec("toydup.v1", TinyConvReward, kwargs=TINY), overwrite=True)
    assert isinstance(mmreward.load("toydup.v1"), TinyConvReward)


# --------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["colorfulness", "convnet.tiny", "sharpness.laplacian"])
def test_load_returns_eval_model_with_reward_name(name):
    rm = mmreward.load(name)
    assert isinstance(rm, mmreward.RewardModel)
    assert rm.reward_name == mmreward.get_spec(name).name
    assert not rm.training and not any(m.training for m in rm.modules())


def test_load_kwargs_device_and_dtype():
    rm = mmreward.load("convnet.tiny", dtype=torch.bfloat16, device="cpu", **TINY)
    assert rm.dtype == torch.bfloat16 and rm.device == torch.device("cpu")
    assert rm.init_kwargs["channels"] == [4, 8] and rm.native_resolution == (8, 8)


def test_save_pretrained_round_trip(tmp_path):
    rm = mmreward.load("convnet.tiny", **TINY)
    x = torch.rand(4, 3, 12, 10)
    expected = rm.score(x).scores
    out_dir = rm.save_pretrained(tmp_path / "saved")
    assert (out_dir / WEIGHTS_NAME).is_file()
    cfg = json.loads((out_dir / CONFIG_NAME).read_text())
    assert cfg["reward"] == "convnet.tiny" and cfg["kwargs"]["channels"] == [4, 8]
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]  # atomic writes
    for path in (out_dir, str(out_dir)):
        again = mmreward.load(path)
        assert type(again) is TinyConvReward and again.reward_name == "convnet.tiny"
        assert not again.training
        assert torch.equal(again.score(x).scores, expected)


def test_directly_built_model_saves_under_its_registry_name(tmp_path):
    rm = _tiny().eval()  # built from the class, not through mmreward.load
    x = torch.rand(2, 3, 8, 8)
    rm.save_pretrained(tmp_path / "d")
    again = mmreward.load(tmp_path / "d")
    assert again.reward_name == "convnet.tiny"
    assert torch.equal(again.score(x).scores, rm.score(x).scores)


def test_colorfulness_constructor_args_survive_save_pretrained(tmp_path):
    rm = Colorfulness(eps=100.0)
    rm.save_pretrained(tmp_path / "c")
    again = mmreward.load(tmp_path / "c")
    x = torch.full((1, 3, 4, 4), 0.5)
    torch.testing.assert_close(again(images=x).scores, rm(images=x).scores)


def test_saved_dir_with_unregistered_reward_needs_trust_remote_code(tmp_path):
    d = mmreward.load("convnet.tiny", **TINY).save_pretrained(tmp_path / "d")
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg["reward"] = "somebody-elses.model"
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeError) as excinfo:
        mmreward.load(d)
    msg = str(excinfo.value)
    assert "somebody-elses.model" in msg and "mmreward.convnet:TinyConvReward" in msg
    assert "trust_remote_code=True" in msg
    rm = mmreward.load(d, trust_remote_code=True)
    assert isinstance(rm, TinyConvReward) and rm.reward_name == "somebody-elses.model"


def test_remote_code_spec_is_refused_without_the_flag(add_spec):
    add_spec(RewardSpec("toyremote.v1", TinyConvReward, kwargs=TINY, remote_code=True))
    with pytest.raises(RemoteCodeError, match="trust_remote_code=True"):
        mmreward.load("toyremote.v1")
    assert isinstance(mmreward.load("toyremote.v1", trust_remote_code=True), TinyConvReward)


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        mmreward.load(tmp_path / "empty")


# --------------------------------------------------------------------------------------
# strict loading
# --------------------------------------------------------------------------------------
def test_strict_loading_lists_missing_unexpected_and_mismatched(tmp_path):
    sd = _tiny().state_dict()
    del sd["head.2.bias"]  # missing
    sd["head.3.weight"] = torch.zeros(1)  # unexpected
    sd["features.0.weight"] = torch.zeros(5, 3, 3, 3)  # wrong shape (model: 4 channels)
    path = tmp_path / "bad.safetensors"
    save_state_dict(sd, path)
    with pytest.raises(CheckpointError) as excinfo:
        mmreward.load("convnet.tiny", weights=path, **TINY)
    err, msg = excinfo.value, str(excinfo.value)
    assert err.missing == ["head.2.bias"] and err.unexpected == ["head.3.weight"]
    assert "missing keys (1): head.2.bias" in msg
    assert "unexpected keys (1): head.3.weight" in msg
    assert "features.0.weight: checkpoint (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg
    assert str(path) in msg


def test_strict_loading_leaves_model_untouched_on_error():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.zeros_like(v) for k, v in before.items()}
    sd["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError):
        load_state_dict_strict(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_strict_loading_with_converter():
    src, dst = _tiny(), _tiny()
    official = {f"official.{k}": v for k, v in src.state_dict().items()}
    load_state_dict_strict(
        dst, official, convert=lambda sd: {k.removeprefix("official."): v for k, v in sd.items()}
    )
    assert all(torch.equal(src.state_dict()[k], v) for k, v in dst.state_dict().items())


def test_pt_state_dict_loads_with_weights_only(tmp_path):
    src = _tiny().eval()
    x = torch.rand(3, 3, 8, 8)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "nested.ckpt")
    for name in ("plain.pt", "nested.ckpt"):
        rm = mmreward.load("convnet.tiny", weights=tmp_path / name, **TINY)
        assert torch.equal(rm.score(x).scores, src.score(x).scores)


_UNPICKLED: list[str] = []


def _record_unpickle(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    """Unpickling this would run ``_record_unpickle``: weights_only must refuse it."""

    def __reduce__(self):
        return (_record_unpickle, ("ran",))


def test_pt_with_non_tensor_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({**_tiny().state_dict(), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only") as excinfo:
        mmreward.load("convnet.tiny", weights=path, **TINY)
    assert str(path) in str(excinfo.value)
    assert _UNPICKLED == []


def test_pt_with_non_tensor_values_is_refused(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({**_tiny().state_dict(), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="epoch"):
        read_state_dict(path)


def test_pt_that_is_not_a_dict_gives_checkpoint_error(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_unknown_checkpoint_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        read_state_dict(path)


# --------------------------------------------------------------------------------------
# weights cache
# --------------------------------------------------------------------------------------
def _hub_spec(name: str) -> RewardSpec:
    return RewardSpec(
        name,
        TinyConvReward,
        weights=WeightsSource(hub_id="org/does-not-exist", filename="model.safetensors"),
        kwargs=TINY,
    )


def test_session_cache_is_private():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    cache = registry_mod.default_cache_dir()
    assert cache == Path(os.environ["MMREWARD_CACHE"])
    assert Path.home() / ".cache" not in cache.parents


@pytest.mark.parametrize("local_files_only", [True, False], ids=["local-only", "offline"])
def test_missing_weights_say_where_to_put_them(add_spec, cache, local_files_only):
    add_spec(_hub_spec("toyhub.v1"))
    expected = cache / "toyhub.v1" / "model.safetensors"
    with pytest.raises(WeightsNotFoundError) as excinfo:
        mmreward.load("toyhub.v1", local_files_only=local_files_only)
    msg = str(excinfo.value)
    assert str(expected) in msg
    assert "model.safetensors" in msg and "hf-hub:org/does-not-exist" in msg
    assert "weights=" in msg
    assert isinstance(excinfo.value, FileNotFoundError)


def test_weights_placed_in_the_cache_are_used(add_spec, cache):
    add_spec(_hub_spec("toyhub.v2"))
    src = _tiny().eval()
    save_state_dict(src.state_dict(), cache / "toyhub.v2" / "model.safetensors")
    rm = mmreward.load("toyhub.v2", local_files_only=True)
    x = torch.rand(2, 3, 16, 16)
    assert rm.reward_name == "toyhub.v2" and not rm.training
    assert torch.equal(rm.score(x).scores, src.score(x).scores)


def test_explicit_weights_path_must_exist(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        mmreward.load("convnet.tiny", weights=tmp_path / "nope.safetensors")
