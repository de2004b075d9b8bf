"""Shared test set-up: offline, a private weights cache, seeded RNGs, small sample images.

Everything here runs on CPU with no network. The sample images are scikit-image's bundled
photographs (no download), downscaled so a test scores them in milliseconds.
"""

from __future__ import annotations

import os
import random

# Must be set before huggingface_hub is imported anywhere (it reads the flag at import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

#: (height, width) each sample is downscaled to; different sizes on purpose (mixed batches).
SAMPLE_SIZES = {
    "astronaut": (48, 48),
    "coffee": (40, 60),
    "chelsea": (36, 54),
    "camera": (48, 48),  # grayscale
}


@pytest.fixture(scope="session", autouse=True)
def _offline_private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``MMREWARD_CACHE`` at a fresh directory for the whole session."""
    cache = tmp_path_factory.mktemp("mmreward_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMREWARD_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield cache


@pytest.fixture
def one_thread():
    """One torch CPU thread for the test (restored afterwards): small models run fastest
    and most reproducibly on one thread. Use with ``pytestmark = pytest.mark.usefixtures``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_module():
    """:func:`one_thread` for a whole module, module-scoped fixtures included."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state (torch, numpy, random)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def _sample_arrays_cached() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name, (h, w) in SAMPLE_SIZES.items():
        arr = getattr(data, name)()
        im = Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)
        out[name] = np.asarray(im).copy()
    return out


@pytest.fixture
def sample_arrays(_sample_arrays_cached) -> dict[str, np.ndarray]:
    """name → uint8 array, ``(H,W,3)`` (``camera`` is ``(H,W)`` grayscale), mixed sizes."""
    return {k: v.copy() for k, v in _sample_arrays_cached.items()}


@pytest.fixture
def sample_pils(sample_arrays) -> dict[str, Image.Image]:
    """The samples as PIL images (``camera`` in mode ``L``)."""
    return {k: Image.fromarray(v) for k, v in sample_arrays.items()}


@pytest.fixture
def sample_batch(sample_arrays) -> torch.Tensor:
    """The four samples resized to 32×32 and stacked: ``(4,3,32,32)`` float in [0,1]."""
    items = []
    for arr in sample_arrays.values():
        im = Image.fromarray(arr).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        items.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(items)
