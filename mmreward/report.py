"""Report writers shared by the demo, scoring runs and alignment runs.

Everything here writes plain files into one output folder: PNG images and plots, JSON
(atomically), and a single self-contained ``report.html`` that references its PNGs by
relative path (no external CSS, JavaScript or network). A report is a list of
:class:`Section` objects; each section has a heading, a paragraph, optional figures, an
optional table (a list of dict rows) and optional galleries of scored images.

>>> import tempfile, torch
>>> from pathlib import Path
>>> out = Path(tempfile.mkdtemp())
>>> png = save_png(torch.rand(3, 16, 16), out / "images" / "a.png")
>>> section = Section("Samples", "Two random images.", galleries=[
...     Gallery("best", [GalleryItem(png, "a random image", {"score": 0.5})])])
>>> write_gallery_html(out / "report.html", "Demo", [section]).name
'report.html'
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "Figure",
    "Gallery",
    "GalleryItem",
    "Section",
    "plot_curves",
    "plot_heatmap",
    "plot_score_histograms",
    "save_image_grid",
    "save_png",
    "to_jsonable",
    "write_gallery_html",
    "write_json",
    "write_jsonl",
]

# ----------------------------------------------------------------------------- files


def _atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path``, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic on POSIX and Windows (same filesystem)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """``obj`` with tensors, numpy values, paths and dataclasses made JSON-serialisable.

    Non-finite floats become ``None`` (JSON has no NaN/inf).

    >>> to_jsonable({"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": float("nan")})
    {'a': 1.5, 'b': [1, 2], 'c': None}
    """
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return obj.as_posix()
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"to_jsonable: cannot serialise {type(obj).__name__}")


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (temporary file, then ``os.replace``)."""
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    return _atomic_write_text(path, text + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line, atomically."""
    lines = [json.dumps(to_jsonable(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows]
    return _atomic_write_text(path, "".join(lines))


# ---------------------------------------------------------------------------- images


def _check_image(image: Tensor, name: str = "image") -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        given = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected a (3,H,W) float tensor in [0,1], got {given}")
    x = image.detach().float().cpu()
    if not torch.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4:
        raise ValueError(
            f"{name}: expected values in [0,1], got [{x.min().item():.4g}, {x.max().item():.4g}]"
        )
    return x.clamp(0, 1)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Save a ``(3,H,W)`` float tensor in [0,1] as an 8-bit RGB PNG; returns ``path``."""
    x = _check_image(image)
    arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")
    return path


def save_image_grid(
    images: Tensor | Sequence[Tensor],
    path: str | Path,
    nrow: int = 8,
    padding: int = 2,
    fill: float = 1.0,
) -> Path:
    """Tile images (a ``(B,3,H,W)`` tensor or a list of ``(3,H,W)``) into one PNG.

    Images of different sizes are centred in cells of the largest height and width;
    ``nrow`` images per row, ``padding`` pixels of colour ``fill`` between them.
    """
    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        raise ValueError("images: expected at least one image, got none")
    items = [_check_image(x, f"images[{i}]") for i, x in enumerate(items)]
    cell_h = max(x.shape[1] for x in items)
    cell_w = max(x.shape[2] for x in items)
    ncol = max(1, min(nrow, len(items)))
    nrows = math.ceil(len(items) / ncol)
    grid = torch.full(
        (3, nrows * (cell_h + padding) + padding, ncol * (cell_w + padding) + padding), fill
    )
    for i, x in enumerate(items):
        r, c = divmod(i, ncol)
        top = padding + r * (cell_h + padding) + (cell_h - x.shape[1]) // 2
        left = padding + c * (cell_w + padding) + (cell_w - x.shape[2]) // 2
        grid[:, top : top + x.shape[1], left : left + x.shape[2]] = x
    return save_png(grid, path)


# ----------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
    # Object-oriented matplotlib with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_score_histograms(
    scores: Mapping[str, Sequence[float]], path: str | Path, bins: int = 20, ncols: int = 4
) -> Path:
    """One histogram per reward (own axes: reward scales differ), saved as a PNG.

    The mean is marked with a dashed line and written in each title.
    """
    if not scores:
        raise ValueError("scores: expected at least one reward, got none")
    names = list(scores)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure(3.2 * ncols, 2.6 * nrows)
    for k, name in enumerate(names):
        values = np.asarray(list(scores[name]), dtype=np.float64)
        values = values[np.isfinite(values)]
        ax = fig.add_subplot(nrows, ncols, k + 1)
        if values.size:
            ax.hist(values, bins=bins, color="#4c72b0", edgecolor="white")
            ax.axvline(values.mean(), color="#c44e52", linestyle="--", linewidth=1)
            ax.set_title(f"{name}\nmean {values.mean():.4g} (n={values.size})", fontsize=9)
        else:
            ax.set_title(f"{name}\n(no finite scores)", fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str = "step",
    ylabel: str = "value",
    title: str | None = None,
) -> Path:
    """Line plot of named ``(xs, ys)`` curves on one axes (e.g. reward vs training step)."""
    if not curves:
        raise ValueError("curves: expected at least one curve, got none")
    fig = _new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in curves.items():
        if len(xs) != len(ys):
            raise ValueError(f"curves[{name!r}]: {len(xs)} xs but {len(ys)} ys")
        ax.plot(list(xs), list(ys), marker="o" if len(xs) <= 20 else None, markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_heatmap(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
) -> Path:
    """A square annotated heat-map (e.g. rank correlations between rewards) as a PNG."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix: expected shape {(len(labels),) * 2}, got {m.shape}")
    size = 1.4 + 0.7 * len(labels)
    fig = _new_figure(size + 1.2, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            text = "n/a" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}"
            dark = np.isfinite(m[i, j]) and abs(m[i, j]) > 0.6 * max(abs(vmin), abs(vmax))
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save_figure(fig, path)


# ------------------------------------------------------------------------------ HTML


@dataclass
class Figure:
    """A PNG shown full width in a section."""

    path: str | Path
    caption: str = ""


@dataclass
class GalleryItem:
    """One scored image: ``scores`` is a number or named numbers (shown in order)."""

    image: str | Path
    caption: str
    scores: float | Mapping[str, float] | None = None


@dataclass
class Gallery:
    """A titled row of :class:`GalleryItem` cards."""

    title: str
    items: list[GalleryItem]


@dataclass
class Section:
    """One report section: heading, paragraph, figures, a table, galleries (all optional)."""

    heading: str
    text: str = ""
    figures: list[Figure | str | Path] = field(default_factory=list)
    table: list[Mapping[str, Any]] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 background:#f6f7f9;color:#1d232b;line-height:1.45}
main{max-width:1140px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}h2{margin:28px 0 8px;font-size:20px;
 border-bottom:2px solid #dde2e8;padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.meta{color:#66707c;font-size:13px}nav{font-size:13px;margin:10px 0 0}
nav a{margin-right:12px;color:#2a5db0;text-decoration:none}
section{background:#fff;border:1px solid #e3e7ec;border-radius:8px;padding:4px 18px 16px;
 margin:18px 0}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #e3e7ec}
figcaption{font-size:12px;color:#66707c}
table{border-collapse:collapse;font-size:13px;margin:8px 0;overflow-x:auto;display:block}
th,td{border:1px solid #dde2e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.card{width:156px;background:#fafbfc;border:1px solid #e3e7ec;border-radius:6px;
 padding:6px;font-size:12px}
.card img{width:144px;height:120px;object-fit:contain;background:#e9ecef;
 image-rendering:pixelated;display:block;margin:0 auto 4px}
.cap{font-weight:600;overflow-wrap:anywhere}.sc{color:#39424e;font-variant-numeric:tabular-nums}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _src(image: str | Path, root: Path) -> str:
    """The relative, URL-quoted path of ``image`` from the report folder (must exist)."""
    p = Path(image)
    full = p if p.is_absolute() else root / p
    if not full.is_file():
        raise FileNotFoundError(f"report image {full} does not exist; write it before the HTML")
    rel = Path(os.path.relpath(full.resolve(), root.resolve())).as_posix()
    return quote(rel)


def _table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        lookup = {str(k): v for k, v in row.items()}
        for c in columns:
            v = lookup.get(c)
            cls = ' class="num"' if isinstance(v, (int, float, np.number)) else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _scores_html(scores: float | Mapping[str, float] | None) -> str:
    if scores is None:
        return ""
    if isinstance(scores, Mapping):
        return "<br>".join(
            f"{html.escape(str(k))}: {html.escape(_fmt(v))}" for k, v in scores.items()
        )
    return f"score: {html.escape(_fmt(scores))}"


def _gallery_html(gallery: Gallery, root: Path) -> str:
    cards = []
    for item in gallery.items:
        cap = html.escape(item.caption)
        cards.append(
            f'<div class="card"><img src="{html.escape(_src(item.image, root))}" alt="{cap}" '
            f'loading="lazy"><div class="cap">{cap}</div>'
            f'<div class="sc">{_scores_html(item.scores)}</div></div>'
        )
    return f'<h3>{html.escape(gallery.title)}</h3><div class="gallery">{"".join(cards)}</div>'


def _as_section(s: Section | Mapping[str, Any]) -> Section:
    if isinstance(s, Section):
        return s
    galleries = [
        g
        if isinstance(g, Gallery)
        else Gallery(
            g["title"], [i if isinstance(i, GalleryItem) else GalleryItem(**i) for i in g["items"]]
        )
        for g in s.get("galleries", [])
    ]
    return Section(
        heading=s["heading"],
        text=s.get("text", ""),
        figures=list(s.get("figures", [])),
        table=list(s.get("table", [])),
        galleries=galleries,
    )


def write_gallery_html(
    path: str | Path,
    title: str,
    sections: Sequence[Section | Mapping[str, Any]],
    subtitle: str = "",
) -> Path:
    """Write one self-contained HTML report; image paths are made relative to its folder.

    ``sections`` are :class:`Section` objects (or dicts with the same keys). Image and
    figure paths may be absolute or relative to the report's folder and must exist. All
    text is HTML-escaped. The file is written atomically.
    """
    path = Path(path)
    root = path.parent
    root.mkdir(parents=True, exist_ok=True)
    parts, nav = [], []
    for k, raw in enumerate(sections):
        s = _as_section(raw)
        anchor = f"s{k}"
        nav.append(f'<a href="#{anchor}">{html.escape(s.heading)}</a>')
        body = [f'<section id="{anchor}"><h2>{html.escape(s.heading)}</h2>']
        if s.text:
            body.append(f"<p>{html.escape(s.text)}</p>")
        for fig in s.figures:
            fig = fig if isinstance(fig, Figure) else Figure(fig)
            cap = html.escape(fig.caption)
            body.append(
                f'<figure><img src="{html.escape(_src(fig.path, root))}" alt="{cap}">'
                + (f"<figcaption>{cap}</figcaption>" if cap else "")
                + "</figure>"
            )
        if s.table:
            body.append(_table_html(s.table))
        body += [_gallery_html(g, root) for g in s.galleries]
        body.append("</section>")
        parts.append("".join(body))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    meta = html.escape(f"{subtitle} · generated {stamp}" if subtitle else f"generated {stamp}")
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f'<h1>{html.escape(title)}</h1><div class="meta">{meta}</div>'
        f"<nav>{''.join(nav)}</nav>{''.join(parts)}</main></body></html>\n"
    )
    return _atomic_write_text(path, doc)
