"""The reward registry and :func:`load`.

Names are ``architecture.weights-tag`` (as in timm): ``hpsv2.v2-1`` and ``pickscore.v1``
can share code and differ in weights. Each entry carries where its weights come from,
its preprocessing config, licence and paper. Factories are lazy ``"package.module:attr"``
strings, so importing :mod:`mmreward` imports no model package.

>>> import mmreward
>>> "jpeg.compressibility" in mmreward.list_rewards("jpeg.*")
True
>>> rm = mmreward.load("colorfulness")      # architecture alone → its default tag
>>> rm.reward_name
'colorfulness.hasler'
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmreward.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_state_dict_strict,
    read_model_dir,
    read_state_dict,
)
from mmreward.errors import RemoteCodeError, WeightsNotFoundError


@dataclass(frozen=True)
class WeightsSource:
    """Where a registered model's weights come from.

    ``hub_id`` (+ optional ``filename``: one file of the repo; None: the whole repo) for the
    Hugging Face Hub, or ``url`` for a direct download. ``key`` unwraps a nested state
    dict (e.g. ``"state_dict"``).
    """

    hub_id: str | None = None
    filename: str | None = None
    url: str | None = None
    revision: str | None = None
    key: str | None = None

    def describe(self) -> str:
        if self.hub_id:
            target = f"{self.hub_id}/{self.filename}" if self.filename else self.hub_id
            return f"hf-hub:{target}"
        return self.url or "(none)"


@dataclass(frozen=True)
class RewardSpec:
    """A registry entry. ``factory`` builds the model: ``factory(weights=path|None, **kwargs)``."""

    name: str
    factory: str | Callable[..., Any]
    weights: WeightsSource | None = None
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    paper: str = ""
    description: str = ""
    default: bool = False  # the tag `load("<architecture>")` picks
    remote_code: bool = False  # building it runs code from outside the installed packages

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else ""


_REGISTRY: dict[str, RewardSpec] = {}


def register(spec: RewardSpec, *, overwrite: bool = False) -> RewardSpec:
    """Add ``spec`` to the registry (an error if the name is taken, unless ``overwrite``)."""
    if "." not in spec.name:
        raise ValueError(f"name: expected 'architecture.weights-tag', got {spec.name!r}")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"name: {spec.name!r} is already registered (pass overwrite=True)")
    _REGISTRY[spec.name] = spec
    return spec


def list_rewards(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (e.g. ``"clip*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> RewardSpec:
    """The entry for ``name`` (or for an architecture's default tag)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    family = [s for s in _REGISTRY.values() if s.architecture == name]
    if family:
        defaults = [s for s in family if s.default] or family
        return sorted(defaults, key=lambda s: s.name)[0]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(
        f"unknown reward {name!r}.{hint} See mmreward.list_rewards() or `mmreward list`; "
        "a saved model directory can be passed as a path."
    )


def _is_known(name: str) -> bool:
    return name in _REGISTRY or any(s.architecture == name for s in _REGISTRY.values())


def registered_name(model: Any) -> str:
    """The registry name of ``model``: its own if registered, else the entry built by its class."""
    name = getattr(model, "reward_name", "")
    if name in _REGISTRY:
        return name
    target = f"{type(model).__module__}:{type(model).__qualname__}"
    for spec in sorted(_REGISTRY.values(), key=lambda s: (not s.default, s.name)):
        if spec.factory == target or spec.factory is type(model):
            return spec.name
    return name or type(model).__name__


def default_cache_dir() -> Path:
    """Where downloaded or hand-placed weights live: ``$MMREWARD_CACHE`` or ``~/.cache/mmreward``."""
    return Path(os.environ.get("MMREWARD_CACHE", Path.home() / ".cache" / "mmreward"))


def resolve_weights(
    spec: RewardSpec, weights: str | Path | None = None, local_files_only: bool = False
) -> Path | None:
    """A local path to ``spec``'s weights: ``weights`` if given, the cache, or a download.

    Raises :class:`WeightsNotFoundError` saying which file to put where when the weights
    are neither local nor downloadable (e.g. offline).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"weights for {spec.name!r}: {path} does not exist")
        return path
    src = spec.weights
    if src is None:
        return None
    local = default_cache_dir() / spec.name / (src.filename or Path(src.url or "").name or "")
    if local.exists() and (local.is_file() or any(local.iterdir())):
        return local
    error: Exception | None = None
    if not local_files_only:
        try:
            return _download(src, local)
        except Exception as e:  # network failures come in many types
            error = e
    what = src.filename or (Path(src.url).name if src.url else "the repository files")
    reason = f" ({type(error).__name__}: {str(error).splitlines()[0][:200]})" if error else ""
    raise WeightsNotFoundError(
        f"weights for {spec.name!r} are not available{reason}. Download {what} from "
        f"{src.describe()} and put it at {local}, or pass "
        f"mmreward.load({spec.name!r}, weights='/path/to/{what}')."
    )


def _download(src: WeightsSource, local: Path) -> Path:
    if src.hub_id:
        from huggingface_hub import hf_hub_download, snapshot_download

        if src.filename:
            return Path(hf_hub_download(src.hub_id, src.filename, revision=src.revision))
        return Path(snapshot_download(src.hub_id, revision=src.revision))
    if src.url:
        local.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(src.url, str(local), progress=True)
        return local
    raise WeightsNotFoundError("no weights source")


def _import_attr(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"factory: expected 'package.module:attribute', got {target!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _build(
    factory: Callable[..., Any],
    weights: Path | None,
    kwargs: dict[str, Any],
    name: str,
    trust_remote_code: bool = False,
    saved_dir: Path | None = None,
    preprocess: Mapping[str, Any] | None = None,
):
    """Call ``factory``, passing ``weights``, ``trust_remote_code``, ``saved_dir`` and the
    entry's ``preprocess`` config only to factories that take them; weights for one that
    does not are loaded strictly."""
    params = inspect.signature(factory).parameters
    extra: dict[str, Any] = {}
    if "weights" in params:
        extra["weights"] = weights
    if "trust_remote_code" in params:
        extra["trust_remote_code"] = trust_remote_code
    if "saved_dir" in params and saved_dir is not None:
        extra["saved_dir"] = saved_dir
    if "preprocess" in params and preprocess is not None and "preprocess" not in kwargs:
        extra["preprocess"] = dict(preprocess)
    model = factory(**extra, **kwargs)
    if weights is not None and "weights" not in params:
        load_state_dict_strict(model, read_state_dict(weights), source=str(weights))
    if not getattr(model, "init_kwargs", None):
        model.init_kwargs = dict(kwargs)
    model.reward_name = name
    return model


def load(
    name_or_path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    weights: str | Path | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
    **kwargs: Any,
):
    """Build a reward model by registry name or from a saved directory, in eval mode.

    Args:
        name_or_path: ``"architecture.tag"``, ``"architecture"`` (default tag), or a
            directory written by ``RewardModel.save_pretrained``.
        device, dtype: where to put the model (default: CPU, fp32).
        weights: a local file/directory with the weights (skips the cache and downloads).
        trust_remote_code: allow building models whose code is not in the installed
            packages (never done silently).
        local_files_only: do not try to download.
        kwargs: overrides for the model's constructor.

    >>> import mmreward
    >>> mmreward.load("sharpness.laplacian").inputs
    ('images',)
    """
    path = Path(name_or_path)
    as_name = isinstance(name_or_path, str) and "/" not in name_or_path and _is_known(name_or_path)
    if not as_name and (isinstance(name_or_path, Path) or path.exists()):
        model = _load_dir(path, trust_remote_code, kwargs)
    else:
        spec = get_spec(str(name_or_path))
        if spec.remote_code and not trust_remote_code:
            raise RemoteCodeError(
                f"{spec.name!r} runs code from outside the installed packages; "
                "pass trust_remote_code=True if you trust its source"
            )
        factory = _import_attr(spec.factory) if isinstance(spec.factory, str) else spec.factory
        resolved = resolve_weights(spec, weights, local_files_only=local_files_only)
        model = _build(factory, resolved, {**spec.kwargs, **kwargs}, spec.name, trust_remote_code)
    model.to(device=device, dtype=dtype)
    return model.eval()


def _load_dir(path: Path, trust_remote_code: bool, overrides: dict[str, Any]):
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{path} is not a saved reward model (no {CONFIG_NAME}); to load official weights "
            "pass the architecture name: mmreward.load('<name>', weights='" + str(path) + "')"
        )
    cfg = read_model_dir(path)
    name = cfg.get("reward", "")
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        factory = _import_attr(spec.factory) if isinstance(spec.factory, str) else spec.factory
        base_kwargs = dict(spec.kwargs)
    elif trust_remote_code and cfg.get("class"):
        factory, base_kwargs = _import_attr(cfg["class"]), {}
    else:
        raise RemoteCodeError(
            f"{path / CONFIG_NAME}: reward {name!r} is not registered; building it would import "
            f"{cfg.get('class')!r}. Pass trust_remote_code=True if you trust it."
        )
    kwargs = {**base_kwargs, **cfg.get("kwargs", {}), **overrides}
    # the factory may read files saved beside the weights (tokenizer, backbone config)
    model = _build(
        factory,
        None,
        kwargs,
        name or path.name,
        trust_remote_code,
        saved_dir=path,
        preprocess=spec.preprocess if name in _REGISTRY else None,
    )
    load_state_dict_strict(model, read_state_dict(path / WEIGHTS_NAME), source=str(path))
    return model


# Built-in entries live in mmreward/catalog/ (data only: lazy factory strings, no imports
# of model packages), one module per area.
def _register_catalog() -> None:
    from mmreward.catalog import ENTRIES

    for spec in ENTRIES:
        register(spec)


_register_catalog()
