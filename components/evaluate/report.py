"""The review report: one self-contained HTML page per run, rendered from ``report.json`` with a Jinja2 template.

The page reads top-down: first the **verdict** (the decision, the rule behind it, the deciding numbers with their
intervals next to the champion's, red banners for failed sanity checks: :mod:`components.evaluate.verdict`), then the
**evidence** (metrics grouped into fidelity, diversity, utility, privacy and training health with direction, interval,
held-out real reference, champion value, sample counts and source: :mod:`components.evaluate.metric_groups`; the Dice
evidence; samples per class, latent interpolations, discriminator saliency, nearest neighbours, per-class trust, the
top-up, mask consistency), then the **details** (curves over training, class distribution, data validation, the gate's
audit record, settings and timings).

The page must open anywhere, including an air-gapped hospital workstation and an MLflow artifact view: images are
embedded as base64 PNG, curves are inline SVG, styling is inline CSS, and there is no script and no external URL. It
fits a 1280 px wide window and prints. The template is ``templates/report.html.j2``; this module turns ``report.json``
into the plain data it shows (numbers are formatted by the filters of :mod:`components.evaluate.formatting`), and
every value is HTML-escaped on output. :func:`render_report` works on any subset of the sections (a missing section
says so), because the register stage re-renders the stored ``report.json`` with the gate's audit record added.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate.formatting import FILTERS, ci, finite, fmt, short, signed

COLLAPSE_CURVES = {  # report.json fid_curve keys -> chart legend
    "diversity_ratio": "diversity ratio (mean)",
    "min_class_diversity_ratio": "diversity ratio (worst class)",
    "max_class_diversity_ratio": "diversity ratio (most spread class)",
    "lesion_spread_ratio": "lesion spread ratio (worst class)",
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TEMPLATE = "report.html.j2"
GRID_WIDTH = 560  # CSS px at most for a sample grid: two fit side by side in the 1200 px page
# the page's section headings, in order (the browser test checks that every one is present)
SECTIONS = (
    "Verdict",
    "Metrics",
    "Downstream segmentation",
    "Samples per class",
    "Latent interpolations",
    "Discriminator saliency",
    "Memorization audit",
    "Per-class trust",
    "Synthetic top-up",
    "consistency and diversity",
    "FID over training",
    "Training curves",
    "Class distribution",
    "Data validation",
    "Gate decision",
    "Details",
)

# ---------------------------------------------------------------------------------------------------------------
# images


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map ``[-1, 1]`` float images to uint8 gray levels."""
    return np.clip((np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 view of a ``[-1, 1]`` image with its mask tinted red and outlined."""
    gray = to_uint8(image).astype(np.float32)
    rgb = np.stack([gray, gray, gray], axis=-1)
    m = np.asarray(mask) > 0
    rgb[m] = 0.6 * rgb[m] + 0.4 * np.array([255.0, 0.0, 0.0])
    inner = m.copy()
    # Outline = mask pixels with a 4-neighbour outside the mask (edges count as outside).
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    rgb[m & ~inner] = (255.0, 40.0, 40.0)
    return rgb.astype(np.uint8)


def pair_grid(images: np.ndarray, masks: np.ndarray, pad: int = 2) -> np.ndarray:
    """RGB grid with the plain images in the top row and their mask overlays below."""
    n = len(images)
    if n == 0:
        return np.full((1, 1, 3), 255, dtype=np.uint8)
    s = images.shape[-1]
    grid = np.full((2 * s + pad, n * s + (n - 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        x = i * (s + pad)
        gray = to_uint8(images[i])
        grid[:s, x : x + s] = gray[..., None]
        grid[s + pad :, x : x + s] = overlay(images[i], masks[i])
    return grid


def png_base64(array: np.ndarray) -> str:
    """Base64 PNG of a uint8 ``(H, W)`` or ``(H, W, 3)`` array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_size(b64: str) -> tuple[int, int]:
    """``(width, height)`` of a base64 PNG, from its header; ``(0, 0)`` when it is not one."""
    try:
        head = base64.b64decode(b64[:44])
    except (ValueError, TypeError):
        return 0, 0
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    return struct.unpack(">II", head[16:24])


def image(b64: str | None, alt: str, max_width: int = GRID_WIDTH, scale: float = 2.0) -> dict[str, Any] | None:
    """An embedded picture: ``src`` (base64 PNG), ``alt`` and a display ``width``; None without a picture.

    The width enlarges the pixels up to ``scale`` times, never beyond ``max_width`` CSS pixels (the page's layout).
    """
    if not b64:
        return None
    w, _ = png_size(b64)
    width = int(min(w * scale, max_width)) if w else max_width
    return {"src": b64, "alt": alt, "width": width}


# ---------------------------------------------------------------------------------------------------------------
# SVG charts


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def svg_line_chart(
    x: Sequence[float], series: dict[str, Sequence[float]], title: str, width: int = 560, height: int = 220
) -> str:
    """Inline SVG line chart of ``series`` over ``x``: raw values faint, a moving average on top (escaped markup)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = {k: np.asarray(v, dtype=np.float64) for k, v in series.items() if len(v) == len(xs)}
    finite_ys = [v[np.isfinite(v)] for v in ys.values()]
    finite_ys = [v for v in finite_ys if len(v)]
    if len(xs) < 2 or not finite_ys:
        return f'<p class="muted">{_e(title)}: not enough points to plot.</p>'
    lo = min(float(v.min()) for v in finite_ys)
    hi = max(float(v.max()) for v in finite_ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
    x1 = x1 if x1 > x0 else x0 + 1.0
    left, right, top, bottom = 52, 10, 22, 26
    pw, ph = width - left - right, height - top - bottom

    def pts(y: np.ndarray) -> str:
        ok = np.isfinite(y) & np.isfinite(xs)
        px = left + (xs[ok] - x0) / (x1 - x0) * pw
        py = top + (1.0 - (y[ok] - lo) / (hi - lo)) * ph
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))

    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}">',
        f'<text x="{left}" y="14" class="ct">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        yv = lo + frac * (hi - lo)
        yp = top + (1.0 - frac) * ph
        parts.append(f'<text x="{left - 4}" y="{yp + 4:.1f}" class="ax" text-anchor="end">{yv:.3g}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" class="ax">{x0:.6g}</text>')
    parts.append(f'<text x="{left + pw}" y="{height - 8}" class="ax" text-anchor="end">{x1:.6g}</text>')
    window = max(1, len(xs) // 25)
    for i, (name, y) in enumerate(ys.items()):
        color = PALETTE[i % len(PALETTE)]
        if window > 1:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-opacity="0.25" stroke-width="1" points="{pts(y)}"/>'
            )
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{pts(_smooth(y, window))}"/>')
        parts.append(f'<text x="{left + 8 + 110 * i}" y="{top + 14}" class="lg" fill="{color}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# section views: plain data for the template


def header(r: dict[str, Any]) -> dict[str, Any]:
    """Title and the facts that identify the run, the data and the generator behind every number."""
    from components.evaluate.metric_groups import spaces_of

    dataset = r.get("dataset") or {}
    version = dataset.get("version")
    if isinstance(version, dict):
        version = ", ".join(f"{k}={v}" for k, v in version.items()) or None
    model = r.get("model") or {}
    meta = model.get("generator") if isinstance(model.get("generator"), dict) else {}
    options = model.get("options") if isinstance(model.get("options"), dict) else {}
    sel = r.get("selection") or {}
    step, final = sel.get("selected_step", meta.get("step")), sel.get("final_step", meta.get("step"))
    generator = None
    if step is not None:
        arch = (meta.get("kwargs") or {}).get("arch", "film") if isinstance(meta.get("kwargs"), dict) else None
        which = "the final model" if step == final else f"snapshot selected by val FID; final step {fmt(final)}"
        generator = f"EMA generator of step {fmt(step)} ({which})" + (f", architecture {arch}" if arch else "")
    gate = r.get("gate") if isinstance(r.get("gate"), dict) else {}
    spaces = spaces_of(r)
    facts = {
        "Run key": r.get("run_key") or "local",
        "Created": r.get("created"),
        "Dataset version": version,
        "Dataset content hash": short(dataset.get("hash"), 16) or None,
        "Images (train / val / test)": dataset.get("split_sizes"),
        "Generator": generator or model.get("name") or model.get("path"),
        "Registered as": f"{gate.get('model_name', 'model')} version {gate['version']}"
        if gate.get("version")
        else None,
        "Training steps": options.get("train", {}).get("steps") if isinstance(options.get("train"), dict) else None,
        "Feature spaces": ", ".join(
            f"{n} ({i.get('role', '')}, {short(i.get('fingerprint'), 12)})" for n, i in spaces.items()
        )
        or (r.get("config") or {}).get("feature_extractor"),
        "Preset": r.get("preset"),
    }
    return {
        "title": r.get("title") or "medgan-ops evaluation report",
        "facts": [
            (k, v if not isinstance(v, (dict, list)) else json.dumps(v))
            for k, v in facts.items()
            if v not in (None, "")
        ],
    }


def _baseline(c: dict[str, Any]) -> str:
    """The real arm's Dice on a class, pooled over seeds, and its worst seed's."""
    return f"Dice {fmt(c.get('baseline'), 3)}, worst seed {fmt(c.get('baseline_worst_seed'), 3)}"


def dice(r: dict[str, Any]) -> dict[str, Any] | None:
    """The Dice evidence: arms, gains, a verdict per lesion class, the warning when the baseline did not learn."""
    d = r.get("dice")
    if not d:
        return None
    if "arms" not in d:
        return {"old": True}
    classes = [c.get("class") for c in d.get("classes", [])]
    topup = {g.get("class"): g for g in d.get("gains", []) if g.get("arm") == "real+synthetic"}
    seeds = len(d.get("seeds") or [])
    verdicts = []
    for c in d.get("classes", []) if topup else []:
        g = topup.get(c.get("class"), {})
        verdict = g.get("verdict", "not informative")
        n = c.get("n_patients")
        evidence = f"{fmt(n)} test patient{'s' if n != 1 else ''}, {seeds} segmenter seed{'s' if seeds != 1 else ''}"
        if verdict.startswith("skipped"):
            text = "not measured: the top-up holds no pairs of any class (every candidate was rejected)"
        elif verdict == "not informative":
            text = (
                f"not informative: the real-only baseline ({_baseline(c)}) is below the floor "
                f"{fmt(d.get('min_baseline_dice'))}; gain undefined ({evidence})"
            )
        elif verdict == "no interval":
            text = f"gain {signed(g.get('gain'))}, no interval ({evidence}: a confidence interval needs two patients)"
        else:
            words = {"helped": "top-up helped", "hurt": "top-up hurt"}.get(verdict, verdict)
            low, high = (f"{v:.3f}" if finite(v) else "\u2013" for v in (g.get("ci") or [None, None]))
            text = f"{words}: gain {signed(g.get('gain'))} (95 % CI {low}..{high} over {evidence})"
        verdicts.append(
            {"class": c.get("class"), "css": {"helped": "good", "hurt": "bad"}.get(verdict, "pending"), "text": text}
        )
    failed = [c for c in d.get("classes", []) if c.get("baseline_ok") is False]
    return {
        "old": False,
        "d": d,
        "classes": classes,
        "arms": [
            {
                "arm": a.get("arm"),
                "dice": f"{fmt(a.get('dice'), 3)} {ci(a.get('ci'))}",
                "per_class": [
                    f"{fmt((a.get('per_class') or {}).get(c), 3)} {ci((a.get('per_class_ci') or {}).get(c))}"
                    for c in classes
                ],
                "per_seed": " / ".join(fmt(v, 3) for v in a.get("per_seed", [])),
                "fp": f"{fmt(a.get('fp_rate'), 3)} {ci(a.get('fp_rate_ci'))}",
                "fp_area": fmt(a.get("fp_area"), 2),
            }
            for a in d.get("arms", [])
        ],
        "gains": [
            {
                "arm": g.get("arm"),
                "class": g.get("class") or "mean over classes",
                "gain": signed(g.get("gain")),
                "ci": ci(g.get("ci")),
                "verdict": g.get("verdict"),
            }
            for g in d.get("gains", [])
        ],
        "verdicts": verdicts,
        "baseline_failed": d.get("baseline_ok") is False,
        "failed": ", ".join(f"{c.get('class')} ({_baseline(c)})" for c in failed) or "every class",
        "tested": ", ".join(
            f"{c.get('class')}: {fmt(c.get('n_test'))} slices of {fmt(c.get('n_patients'))} patients"
            for c in d.get("classes", [])
        ),
        "n_seeds": seeds,
    }


def samples(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class: the synthetic grid and the real grid (slices of different patients), with their counts."""
    out = []
    for s in r.get("samples") or []:
        n_real, patients = s.get("n_real"), s.get("n_real_patients")
        real_caption = "real (train)"
        if n_real is not None:
            real_caption += f": {n_real} slices" + (f" of {patients} patients" if patients is not None else "")
        out.append(
            {
                "class": s.get("class"),
                "synthetic": image(s.get("synthetic"), f"synthetic {s.get('class')}"),
                "real": image(s.get("real"), f"real {s.get('class')}"),
                "synthetic_caption": "synthetic" + (f": {s['n_synthetic']} samples" if s.get("n_synthetic") else ""),
                "real_caption": real_caption,
            }
        )
    return out


def interpretability(r: dict[str, Any]) -> dict[str, Any] | None:
    """Latent interpolations and discriminator saliency maps (their pictures and numbers)."""
    it = r.get("interpretability")
    if not it:
        return None
    saliency = []
    for s in it.get("saliency") or []:
        entry = {"class": s.get("class"), "sides": []}
        for side, label in (("real", "real (train)"), ("synthetic", "synthetic")):
            v = s.get(side)
            if not v:
                continue
            share, area = v.get("lesion_share"), v.get("mask_area")
            entry["sides"].append(
                {
                    "label": label,
                    "image": image(v.get("grid"), f"saliency {label} {s.get('class')}", max_width=280, scale=2.0),
                    "logits": ", ".join(f"{x:+.2f}" for x in v.get("logits") or [] if finite(x)),
                    "lesion": (
                        f"{fmt(share, 2)} of the saliency inside the lesion mask (mask area {fmt(area, 2)})"
                        if finite(share)
                        else ""
                    ),
                }
            )
        saliency.append(entry)
    return {
        "interpolations": [
            {
                "class": i.get("class"),
                "steps": i.get("steps"),
                "image": image(i.get("grid"), f"interpolation {i.get('class')}"),
            }
            for i in it.get("interpolations") or []
        ],
        "discriminator": it.get("discriminator") or {},
        "saliency": saliency,
    }


def topup(r: dict[str, Any]) -> dict[str, Any] | None:
    """The synthetic top-up: per class needed, drawn, accepted, kept, shortfall and rejection reasons."""
    t = r.get("topup")
    if not t:
        return None
    rows = [
        {
            "class": cls,
            "cells": [
                fmt(c.get("real")),
                fmt(c.get("need")),
                fmt(c.get("drawn")),
                fmt(c.get("acceptance_rate"), 2),
                fmt(c.get("kept")),
            ],
            "shortfall": c.get("shortfall"),
            "rejected": ", ".join(f"{k} {v}" for k, v in (c.get("rejected") or {}).items() if v) or "none",
        }
        for cls, c in (t.get("per_class") or {}).items()
    ]
    return {
        "t": t,
        "rows": rows,
        "dvc": t.get("dvc") or {},
        "space": (t.get("feature_space") or {}).get("name", "medical"),
    }


def trust(r: dict[str, Any]) -> dict[str, Any] | None:
    """Per-class trust: class accuracy against the held-out real ceiling, memorization within each class."""
    t = r.get("trust")
    if not t:
        return None
    rows = []
    for c in t.get("per_class", []):
        mem = c.get("memorization") or {}
        rows.append(
            [
                c.get("class"),
                f"{fmt(c.get('accuracy'), 2)} (n={fmt(c.get('n'))})",
                f"{fmt(c.get('holdout_accuracy'), 2)} (n={fmt(c.get('holdout_n'))})",
                fmt(mem.get("copy_fraction"), 3),
                fmt(mem.get("similarity_max"), 3),
                fmt(mem.get("real_baseline_median"), 3),
            ]
        )
    return {"classifier": t.get("classifier"), "threshold": fmt(t.get("threshold"), 2), "rows": rows}


def neighbours(r: dict[str, Any]) -> dict[str, Any]:
    """The memorization audit: its verdict (not informative off the real manifold) and the labelled pairs."""
    from components.evaluate.verdict import OFF_MANIFOLD

    mem = r.get("memorization") or {}
    metrics = r.get("metrics") or {}
    keys = ("threshold", "copy_fraction", "n_flagged", "similarity_mean", "similarity_max", "real_baseline_median")
    summary = [(k, fmt(mem.get(k))) for k in (*keys, "real_baseline_p95") if k in mem]
    flagged = mem.get("n_flagged") or 0
    precision = metrics.get("precision")
    off = finite(precision) and precision <= OFF_MANIFOLD
    if not mem:
        verdict = None
    elif flagged:
        verdict = ("bad", f"{flagged} synthetic sample(s) are near copies of training images.")
    elif off:
        verdict = (
            "pending",
            "No synthetic sample exceeds the near-copy threshold, but that says nothing here: the samples are off the "
            f"real manifold (precision {fmt(precision, 2)}; mean similarity to the nearest real image "
            f"{fmt(mem.get('similarity_mean'), 3)} against the real images' own "
            f"{fmt(mem.get('real_baseline_median'), 3)}), and samples that far from every real image cannot be copies "
            "of one. Not informative until fidelity improves.",
        )
    else:
        verdict = ("good", "No synthetic sample exceeds the near-copy threshold.")
    pairs = [
        {
            "class": p.get("class", ""),
            "similarity": fmt(p.get("similarity"), 3),
            "flagged": bool(p.get("flagged")),
            "synthetic": image(p.get("synthetic"), "synthetic", max_width=140, scale=1.5),
            "real": image(p.get("real"), "nearest real", max_width=140, scale=1.5),
            "synthetic_label": f"synthetic #{p['synthetic_index']}"
            if p.get("synthetic_index") is not None
            else "synthetic",
            "real_label": "nearest real (train)",
            "real_id": p.get("real_sample_id"),
        }
        for p in r.get("neighbours") or []
    ]
    return {"present": bool(mem or pairs), "verdict": verdict, "summary": summary, "pairs": pairs}


def consistency(r: dict[str, Any]) -> dict[str, Any] | None:
    """Mask-image consistency and per-class spread, real beside synthetic."""
    c = r.get("consistency")
    if not c:
        return None
    real, synth = c.get("real", {}), c.get("synthetic", {})
    rows = []
    for cls in dict.fromkeys([*real, *synth]):
        a, b = real.get(cls, {}), synth.get(cls, {})
        rows.append(
            [
                cls,
                fmt(a.get("contrast")),
                fmt(b.get("contrast")),
                fmt(a.get("mask_area")),
                fmt(b.get("mask_area")),
                fmt(b.get("label_mismatch")),
                fmt(a.get("spread")),
                fmt(b.get("spread")),
                fmt(a.get("lesion_spread"), 3),
                fmt(b.get("lesion_spread"), 3),
            ]
        )
    return {"c": c, "rows": rows}


def curves(r: dict[str, Any]) -> list[str] | None:
    """The training curves as SVG charts (losses together, up to six further columns alone)."""
    losses = r.get("losses") or {}
    step = losses.get("step")
    if not step:
        return None
    cols = {k: v for k, v in losses.items() if k != "step"}
    loss_cols = {k: v for k, v in cols.items() if k.startswith("loss")}
    charts = [svg_line_chart(step, loss_cols, "losses")] if loss_cols else []
    charts += [svg_line_chart(step, {k: v}, k) for k, v in cols.items() if k not in loss_cols][:6]
    return charts


def distribution(r: dict[str, Any]) -> dict[str, Any] | None:
    """Images per class and split, with bars."""
    dist = r.get("class_distribution")
    if not dist:
        return None
    splits = list(dist)
    classes = list(dict.fromkeys(c for s in splits for c in dist[s]))
    top = max([int(dist[s].get(c, 0)) for s in splits for c in classes] + [1])
    rows = [
        {
            "class": cls,
            "cells": [(int(dist[s].get(cls, 0)), round(100 * int(dist[s].get(cls, 0)) / top)) for s in splits],
            "total": sum(int(dist[s].get(cls, 0)) for s in splits),
        }
        for cls in classes
    ]
    return {"splits": splits, "rows": rows}


def fid_curve(r: dict[str, Any]) -> dict[str, Any] | None:
    """FID of the trainer's EMA snapshots by step, collapse ratios beside it, and whether FID fell."""
    c = r.get("fid_curve") or {}
    points = [(s, v) for s, v in zip(c.get("steps") or [], c.get("fid") or [], strict=False) if v is not None]
    if not points:
        return None
    (s0, first), (s1, last) = points[0], points[-1]
    span = f"{fmt(first)} at step {fmt(s0)}"
    if len(points) < 2:
        verdict = ("pending", f"Only step {fmt(s1)} was scored (FID {fmt(last)}): no trend to read.")
    elif last < first:
        low_step, low = min(points, key=lambda p: p[1])
        best = f" (lowest: {fmt(low)} at step {fmt(low_step)})" if low < last else ""
        verdict = ("good", f"FID fell from {span} to {fmt(last)} at step {fmt(s1)}{best}.")
    else:
        verdict = ("bad", f"FID did not fall: {span}, {fmt(last)} at step {fmt(s1)}.")
    steps = list(c.get("steps") or [])
    ratios = {k: list(c[k]) for k in COLLAPSE_CURVES if isinstance(c.get(k), list) and len(c[k]) == len(steps)}
    by_step = {k: dict(zip(steps, v, strict=True)) for k, v in ratios.items()}
    charts = [svg_line_chart([s for s, _ in points], {"FID": [v for _, v in points]}, "FID by training step")]
    if ratios:
        charts.append(
            svg_line_chart(
                steps,
                {COLLAPSE_CURVES[k]: [np.nan if x is None else x for x in v] for k, v in ratios.items()},
                "collapse ratios by training step",
            )
        )
    return {
        "c": c,
        "verdict": verdict,
        "charts": charts,
        "columns": [COLLAPSE_CURVES[k] for k in ratios],
        "rows": [[fmt(s), fmt(v), *(fmt(by_step[k].get(s), 3) for k in ratios)] for s, v in points],
        "has_ratios": bool(ratios),
    }


def selection(r: dict[str, Any]) -> dict[str, Any] | None:
    """Which generator the metrics describe (and register registers), why, and whether the choice beats noise."""
    sel = r.get("selection")
    if not sel:
        return None
    final, chosen = sel.get("final_step"), sel.get("selected_step")
    by_step = dict(zip(sel.get("steps") or [], sel.get("fid") or [], strict=False))
    where = f"selection FID on the {sel.get('real_split', 'val')} split, {fmt(sel.get('n_samples'))} samples each"
    if sel.get("mode") == "last":
        text = f"The final model (step {fmt(final)}) is evaluated and registered (eval.select_snapshot=last)."
    elif chosen != final:
        text = (
            f"The EMA snapshot of step {fmt(chosen)} is evaluated and registered instead of the final model (step "
            f"{fmt(final)}): its {where}, is {fmt(by_step.get(chosen))} against the final model's "
            f"{fmt(by_step.get(final))}."
        )
    elif by_step:
        text = (
            f"The final model (step {fmt(final)}) was kept: no earlier snapshot had a lower {where} (final model: "
            f"{fmt(by_step.get(final))})."
        )
    else:
        text = f"The final model (step {fmt(final)}) was kept: {'; '.join(sel.get('notes') or [])}."
    gap = sel.get("gap") or {}
    noise = None
    if gap.get("compared"):
        css = "good" if gap.get("verdict") == "beats the final model beyond noise" else "pending"
        noise = (
            css,
            f"Does the snapshot beat the final model beyond noise? FID of the final model minus the snapshot's, "
            f"paired over the same {fmt(gap.get('n_synthetic'))} latents, {fmt(gap.get('resamples'))} resamples of "
            f"{fmt(gap.get('n_real'))} real images of {fmt(gap.get('n_patients'))} patients: "
            f"{signed(gap.get('gap'), 2)} {ci(gap.get('ci'), 3)} \u2014 {gap.get('verdict')}."
            + (
                " The choice is not evidence that the snapshot is better; it is as good as the final model."
                if gap.get("verdict") != "beats the final model beyond noise"
                else ""
            ),
        )
    notes = [n for n in sel.get("notes") or [] if by_step]
    return {"text": text, "noise": noise, "notes": notes}


def validation(r: dict[str, Any]) -> dict[str, Any]:
    """The validate stage's expectations (with the class drift check) and the rebalance stage's split check."""
    v = r.get("validation")
    dataset = None
    if v:
        results = v.get("results", []) if isinstance(v, dict) else list(v)
        dataset = {
            "counts": _expectation_counts(results),
            "drift": _drift(v.get("drift") if isinstance(v, dict) else None),
            "rows": _expectation_rows(results),
        }
    check = r.get("split_validation")
    split = None
    if check:
        results = check.get("results", [])
        leak_free = bool(check.get("success")) and not any(
            not x.get("success") for x in results if x.get("batch") != "class_patients"
        )
        split = {
            "leak_free": leak_free,
            "per_class": _patients_per_class(check.get("patients_per_class")),
            "counts": _expectation_counts(results),
            "rows": _expectation_rows(results),
        }
    return {"dataset": dataset, "split": split}


def _patients_per_class(check: dict[str, Any] | None) -> dict[str, Any] | None:
    if not check:
        return None
    shortfalls = check.get("shortfalls") or []
    return {
        "minimum": fmt(check.get("min_patients_per_class")),
        "shortfalls": shortfalls,
        "css": "bad" if check.get("severity") == "critical" else "pending",
    }


def _expectation_counts(results: list[dict[str, Any]]) -> str:
    failed = [x for x in results if not x.get("success")]
    critical = [x for x in failed if x.get("severity") == "critical"]
    return (
        f"{len(results)} expectations, {len(failed)} failed "
        f"({len(critical)} critical, {len(failed) - len(critical)} warnings)."
    )


def _expectation_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per expectation, failures first (critical before warnings); ``unexpected`` = rows affected."""
    return [
        {
            "batch": x.get("batch", ""),
            "expectation": x.get("expectation"),
            "column": x.get("column", ""),
            "success": bool(x.get("success")),
            "severity": x.get("severity", ""),
            "unexpected": fmt(x.get("unexpected_count")),
        }
        for x in sorted(results, key=lambda x: (bool(x.get("success")), x.get("severity") != "critical"))
    ]


def _drift(drift: dict[str, Any] | None) -> dict[str, Any] | None:
    """Class-distribution drift against the champion's data: the per-class fractions, or why it was not checked."""
    if not drift:
        return None
    if drift.get("status") != "checked":
        return {"checked": False, "reason": drift.get("reason", "")}
    limit = float(drift.get("max_class_drift", 0.0))
    return {
        "checked": True,
        "reference": drift.get("reference", "champion"),
        "total": fmt(drift.get("total_variation")),
        "limit": f"{limit:g}",
        "rows": [
            {
                "label": c.get("label"),
                "fraction": fmt(c.get("fraction")),
                "champion": fmt(c.get("champion_fraction")),
                "diff": fmt(c.get("abs_diff")),
                "bad": float(c.get("abs_diff", 0)) > limit,
            }
            for c in drift.get("classes", [])
        ],
    }


def gate_record(r: dict[str, Any]) -> dict[str, Any] | None:
    """The gate's audit record as stored (everything but the metric sets, which the verdict and tables show)."""
    gate = r.get("gate")
    if not isinstance(gate, dict) or not gate:
        return None
    skip = ("challenger_metrics", "champion_metrics")
    return {
        "rows": [
            (k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else fmt(v))
            for k, v in gate.items()
            if k not in skip
        ]
    }


def details(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The evaluation settings, the model's options and the timings, as JSON."""
    return [
        (title, json.dumps(r[key], indent=2, sort_keys=True, default=str))
        for key, title in (("config", "Evaluation settings"), ("model", "Model"), ("timings", "Timings (s)"))
        if r.get(key)
    ]


# ---------------------------------------------------------------------------------------------------------------
# rendering


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` output: markup as is, None as nothing, anything else escaped (quotes too, as html.escape)."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    if value is None:
        return ""
    return Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def context(report: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, from a (possibly partial) ``report.json``."""
    from markupsafe import Markup

    from components.evaluate.metric_groups import metric_groups
    from components.evaluate.verdict import verdict

    fid = fid_curve(report)
    if fid is not None:
        fid["charts"] = [Markup(c) for c in fid["charts"]]
    charts = curves(report)
    return {
        "header": header(report),
        "verdict": verdict(report),
        "metrics": metric_groups(report),
        "notes": report.get("notes") or [],
        "dice": dice(report),
        "samples": samples(report),
        "interpret": interpretability(report),
        "neighbours": neighbours(report),
        "trust": trust(report),
        "topup": topup(report),
        "consistency": consistency(report),
        "fid_curve": fid,
        "selection": selection(report),
        "curves": None if charts is None else [Markup(c) for c in charts],
        "distribution": distribution(report),
        "validation": validation(report),
        "gate_record": gate_record(report),
        "details": details(report),
    }


def render_report(report: dict[str, Any]) -> str:
    """Self-contained HTML of the review report; every section is optional."""
    return _environment().get_template(TEMPLATE).render(**context(report)) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """JSON without NaN/Infinity (not valid JSON): non-finite floats become null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (each atomically); return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = json_safe(report)
    atomic_write_text(out / "report.json", json.dumps(safe, indent=1, sort_keys=True, default=str))
    atomic_write_text(out / "report.html", render_report(safe))
    return out / "report.html"
