"""Every registered text reward model: real source, offline error, tiny load, save/load round trip.

(The shape / finite / bf16 / batched-vs-single checks run in tests/test_contract.py.)
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mmreward
from mmreward.catalog import text as catalog
from tests.test_contract import B, _fields
from tests.tiny import TINY

TEXT_NAMES = [spec.name for spec in catalog.ENTRIES]


pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, mmreward; before = set(sys.modules); import mmreward.text, mmreward.catalog.text; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('transformers', 'peft', 'tokenizers', 'accelerate')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_entry_is_complete(name):
    spec = mmreward.get_spec(name)
    assert spec.weights is not None and spec.weights.hub_id and "/" in spec.weights.hub_id
    assert spec.paper and spec.license and spec.description
    module, _, attr = spec.factory.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert name in TINY, f"{name}: no tiny builder in tests/tiny/text.py"


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_tiny_checkpoint_loads_scores_and_roundtrips(name, tmp_path):
    with pytest.raises(mmreward.WeightsNotFoundError, match=mmreward.get_spec(name).weights.hub_id):
        mmreward.load(name, local_files_only=True)
    rm = mmreward.load(name, **TINY[name](tmp_path / "hf"))
    assert rm.reward_name == name and not rm.training and rm.differentiable is False
    fields = _fields(rm, torch.rand(B, 3, 8, 8))
    out = rm.score(**fields)
    assert out.scores.shape == (B,) and out.scores.dtype == torch.float32
    assert torch.isfinite(out.scores).all()
    loaded = mmreward.load(rm.save_pretrained(tmp_path / "saved"))
    assert type(loaded) is type(rm) and loaded.reward_name == name
    torch.testing.assert_close(loaded.score(**fields).scores, out.scores, rtol=1e-5, atol=1e-6)
