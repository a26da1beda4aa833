"""The review report: one self-contained HTML page per run, rendered from ``report.json``.

The page must open anywhere, including an air-gapped hospital workstation and an MLflow artifact view: images are
embedded as base64 PNG, curves are inline SVG, styling is inline CSS, and there is no script and no external URL.
Every value coming from data or config is HTML-escaped. :func:`render_report` works on any subset of the sections
(a missing section says so), because the register stage re-renders the stored ``report.json`` with the gate
decision added.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate.spaces import EXTRACTORS_KEY, HOLDOUT

# Metrics where a lower value is better; shown in the metrics table.
LOWER_IS_BETTER = ("fid", "kid", "nn_copy_fraction", "mask_contrast_gap", "mask_label_mismatch")
HIGHER_IS_BETTER = ("precision", "recall", "coverage")  # and every dice_* value but dice_baseline_ok (_better)
# 1: as real data
NEAR_ONE = (
    "density",
    "diversity_ratio",
    "min_class_diversity_ratio",
    "max_class_diversity_ratio",
    "lesion_spread_ratio",
)
COLLAPSE_CURVES = {  # report.json fid_curve keys -> chart legend
    "diversity_ratio": "diversity ratio (mean)",
    "min_class_diversity_ratio": "diversity ratio (worst class)",
    "max_class_diversity_ratio": "diversity ratio (most spread class)",
    "lesion_spread_ratio": "lesion spread ratio (worst class)",
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

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


# ---------------------------------------------------------------------------------------------------------------
# small HTML helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "&ndash;"
        return f"{value:.{digits}g}"
    return _e(value)


def _img(b64: str | None, alt: str, css: str = "") -> str:
    if not b64:
        return '<span class="muted">no image</span>'
    return f'<img alt="{_e(alt)}" class="px {css}" src="data:image/png;base64,{_e(b64)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """Table from already-escaped cell HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(data: dict[str, Any]) -> str:
    rows = []
    for k, v in data.items():
        cell = f"<code>{_e(json.dumps(v, default=str))}</code>" if isinstance(v, (dict, list)) else _fmt(v)
        rows.append((_e(k), cell))
    return _table(("", ""), rows, "kv")


def _missing(what: str) -> str:
    return f'<p class="muted">No {_e(what)} in this report.</p>'


# ---------------------------------------------------------------------------------------------------------------
# SVG charts


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def svg_line_chart(
    x: Sequence[float], series: dict[str, Sequence[float]], title: str, width: int = 560, height: int = 220
) -> str:
    """Inline SVG line chart of ``series`` over ``x``: raw values faint, a moving average on top."""
    xs = np.asarray(x, dtype=np.float64)
    ys = {k: np.asarray(v, dtype=np.float64) for k, v in series.items() if len(v) == len(xs)}
    finite = [v[np.isfinite(v)] for v in ys.values()]
    finite = [v for v in finite if len(v)]
    if len(xs) < 2 or not finite:
        return f'<p class="muted">{_e(title)}: not enough points to plot.</p>'
    lo = min(float(v.min()) for v in finite)
    hi = max(float(v.max()) for v in finite)
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
# sections


def _header(r: dict[str, Any]) -> str:
    dataset = r.get("dataset") or {}
    version = dataset.get("version")
    if isinstance(version, dict):
        version = ", ".join(f"{k}={v}" for k, v in version.items()) or None
    model = r.get("model") or {}
    facts = {
        "Run key": r.get("run_key") or "local",
        "Created": r.get("created"),
        "Dataset version": version,
        "Dataset content hash": (dataset.get("hash") or "")[:16] or None,
        "Images (train / val / test)": dataset.get("split_sizes"),
        "Model": model.get("name") or model.get("path"),
        "Training steps": (model.get("options") or {}).get("steps") if isinstance(model.get("options"), dict) else None,
        "Feature extractor": _spaces_line(r) or (r.get("config") or {}).get("feature_extractor"),
        "Preset": r.get("preset"),
    }
    rows = [
        (_e(k), _e(v) if not isinstance(v, dict) else _e(json.dumps(v)))
        for k, v in facts.items()
        if v not in (None, "")
    ]
    return f"<h1>{_e(r.get('title') or 'medgan-ops evaluation report')}</h1>" + _table(("", ""), rows, "kv")


def _spaces(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The feature spaces behind the distribution metrics (primary first), from ``extractors``; {} in old reports."""
    spaces = r.get(EXTRACTORS_KEY) or (r.get("metrics") or {}).get(EXTRACTORS_KEY) or {}
    if not isinstance(spaces, dict):
        return {}
    return dict(sorted(spaces.items(), key=lambda kv: (kv[1] or {}).get("role") != "primary"))


def _spaces_line(r: dict[str, Any]) -> str:
    return ", ".join(f"{n} ({(i or {}).get('role', '')})" for n, i in _spaces(r).items())


def _short_id(fingerprint: Any) -> str:
    text = str(fingerprint or "")
    return text if len(text) <= 24 else text[:24] + "\u2026"


def _space_caption(name: str, ident: dict[str, Any]) -> str:
    """One line: which extractor (name, short weights hash, dimension) and how many samples produced the table."""
    trained = ""
    if ident.get("trained_on"):
        source = (
            "loaded from the cache"
            if ident.get("from_cache")
            else f"trained in {_fmt(ident.get('train_seconds'), 3)} s"
        )
        trained = (
            f"; trained here on the {_fmt(ident.get('n_train'))} images of the {_e(ident['trained_on'])} only "
            f"({source}), never seen by the GAN"
        )
    return (
        f'<p class="space">Feature space <b>{_e(name)}</b> ({_e(ident.get("role", ""))}) &mdash; weights '
        f"<code>{_e(_short_id(ident.get('fingerprint')))}</code>, {_fmt(ident.get('dim'))}-d; "
        f"{_fmt(ident.get('n_real'))} real (train split) vs {_fmt(ident.get('n_fake'))} synthetic samples, "
        f"held-out real: {_fmt(ident.get('n_holdout'))} (val split){trained}.</p>"
    )


def _better(name: str) -> str:
    for names, word in ((LOWER_IS_BETTER, "lower"), (HIGHER_IS_BETTER, "higher"), (NEAR_ONE, "&asymp; 1")):
        if name in names:
            return word
    if name.startswith("seg_fp_rate_"):
        return "lower"
    if name.startswith("dice_") and name != "dice_baseline_ok":  # every arm's Dice and gain
        return "higher"
    return ""


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, Any, Any, Any]]:
    """(metric, scope, value, ci_low, ci_high) from flat keys ``name[_ci_low|_ci_high][.class]``; scalars only."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in metrics.items():
        if isinstance(value, (dict, list)):  # e.g. ``extractors``: shown as the tables' captions
            continue
        name, _, scope = key.partition(".")
        part = "value"
        for suffix in ("_ci_low", "_ci_high"):
            if name.endswith(suffix):
                name, part = name[: -len(suffix)], suffix[1:]
        rows.setdefault((name, scope), {})[part] = value
    out = [(n, s, v.get("value"), v.get("ci_low"), v.get("ci_high")) for (n, s), v in rows.items()]
    return sorted(out, key=lambda t: (t[1] != "", t[1], t[0]))


def _metrics(r: dict[str, Any]) -> str:
    metrics = r.get("metrics")
    if not metrics:
        return "<h2>Metrics</h2>" + _missing("metrics")
    spaces = _spaces(r)
    # metric name -> (space, name within the space): which table a row belongs to
    owner = {
        f"{ident.get('prefix', '')}{m}": (space, m)
        for space, ident in spaces.items()
        if isinstance(ident, dict)
        for m in ident.get("metrics") or []
    }
    tables: dict[str | None, list[tuple[str, ...]]] = {space: [] for space in spaces}
    tables[None] = []
    per_class = []
    for name, scope, value, low, high in _metric_rows(metrics):
        if name.startswith(HOLDOUT):  # shown next to the metric it is the reference of
            continue
        space, base = owner.get(name, (None, name))
        ci = f"[{_fmt(low)}, {_fmt(high)}]" if low is not None or high is not None else ""
        if scope:
            where = [_e(space or "")] if spaces else []
            per_class.append((_e(scope), _e(name), *where, _fmt(value), ci, _better(base)))
        else:
            holdout = metrics.get(HOLDOUT + name)
            tables[space].append((_e(name), _fmt(value), ci, _better(base), "" if holdout is None else _fmt(holdout)))
    notes = r.get("notes") or []
    html_notes = "".join(f"<li>{_e(n)}</li>" for n in notes)
    header = ("metric", "value", "95% CI", "better", "held-out real")
    out = [
        "<h2>Metrics</h2>",
        "<p>95% confidence intervals: centred bootstrap over real and synthetic samples. FID and KID mix "
        "fidelity and diversity; the k-nearest-neighbour metrics (in the same feature space) split them: "
        "<b>precision</b> is the share of synthetic samples that fall on the real data's manifold (fidelity), "
        "<b>recall</b> and <b>coverage</b> the share of real samples the synthetic ones reach (diversity: they "
        "fall when a class collapses onto few modes), <b>density</b> ~1 when both sets are alike. All four are 1 "
        "at best and depend on the sample sizes and k, so compare runs with equal settings. <b>Held-out real</b>: "
        "the val split's real images (other patients) scored as if they were synthetic, the reference a generator "
        "is read against (fewer samples than the synthetic side, so only a guide). Each feature space has its own "
        "table; its values compare only with values of the same extractor weights.</p>"
        if any(tables.values())
        else "",
    ]
    for space, ident in spaces.items():
        if tables[space]:
            out.append(_space_caption(space, ident if isinstance(ident, dict) else {}))
            out.append(_table(header, tables[space], "metrics"))
    if tables[None]:
        if spaces:
            out.append("<h3>Other metrics</h3>")
        out.append(_table(header, tables[None], "metrics"))
    if per_class:
        out.append("<h3>Per class</h3>")
        cols = ("class", "metric", *(("feature space",) if spaces else ()), "value", "95% CI", "better")
        out.append(_table(cols, per_class, "metrics"))
    if html_notes:
        out.append(f"<ul class='notes'>{html_notes}</ul>")
    return "".join(out)


def _ci(value: Any) -> str:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_finite(v) for v in value)
    return f"[{_fmt(value[0], 3)}, {_fmt(value[1], 3)}]" if ok else "&ndash;"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if _finite(value) else "undefined"


def _dice_warning(d: dict[str, Any]) -> str:
    """The loud part: which classes the real-only segmenter did not learn, so that their comparison says nothing."""
    if d.get("baseline_ok", True):
        return ""
    failed = [c for c in d.get("classes", []) if c.get("baseline_ok") is False]
    which = ", ".join(f"{_e(c.get('class'))} ({_baseline(c)})" for c in failed) or "every class"
    return (
        f'<p class="bad warning">WARNING &mdash; the Dice comparison is not informative for {which}: the segmenter '
        f"trained on real data alone stays below Dice {_fmt(d.get('min_baseline_dice'))} "
        "(<code>eval.seg_min_baseline_dice</code>) in at least one segmenter seed, i.e. it has not learned the "
        "lesions there, and the arms would be compared on near-zero scores. Those gains are undefined (null) in "
        "metrics.json and for the gate (<code>dice_baseline_ok</code> = 0). Give the segmenter more steps "
        "(<code>eval.seg_steps</code>) or check the test masks before reading any synthetic-data effect.</p>"
    )


def _baseline(c: dict[str, Any]) -> str:
    """The real arm's Dice on a class, pooled over seeds, and its worst seed's."""
    return f"Dice {_fmt(c.get('baseline'), 3)}, worst seed {_fmt(c.get('baseline_worst_seed'), 3)}"


def _dice_verdicts(d: dict[str, Any]) -> str:
    """One sentence per lesion class: did the top-up (real + synthetic vs real) help, by how much, how sure."""
    topup = {g.get("class"): g for g in d.get("gains", []) if g.get("arm") == "real+synthetic"}
    if not topup:
        return ""
    seeds = len(d.get("seeds") or [])
    items = []
    for c in d.get("classes", []):
        g = topup.get(c.get("class"), {})
        verdict = g.get("verdict", "not informative")
        n = c.get("n_patients")
        evidence = f"{_fmt(n)} test patient{'s' if n != 1 else ''}, {seeds} segmenter seed{'s' if seeds != 1 else ''}"
        if verdict.startswith("skipped"):
            text = "not measured: the top-up holds no pairs of any class (every candidate was rejected)"
        elif verdict == "not informative":
            text = (
                f"not informative: the real-only baseline ({_baseline(c)}) is below the floor "
                f"{_fmt(d.get('min_baseline_dice'))}; gain undefined ({evidence})"
            )
        elif verdict == "no interval":
            text = f"gain {_signed(g.get('gain'))}, no interval ({evidence}: a confidence interval needs two patients)"
        else:
            words = {"helped": "top-up helped", "hurt": "top-up hurt"}.get(verdict, verdict)
            ci = [f"{v:.3f}" if _finite(v) else "&ndash;" for v in (g.get("ci") or [None, None])]
            text = f"{words}: gain {_signed(g.get('gain'))} (95 % CI {ci[0]}..{ci[1]} over {evidence})"
        css = {"helped": "good", "hurt": "bad"}.get(verdict, "pending")
        items.append(f'<li class="{css}"><b>{_e(c.get("class"))}</b>: {text}</li>')
    return (
        "<p>Did the synthetic pairs help? (real + synthetic vs real only, per lesion class)</p><ul>"
        + "".join(items)
        + "</ul>"
    )


def _dice_banner(r: dict[str, Any]) -> str:
    """A line under the header when the Dice evidence is not informative, so that no reader misses it."""
    d = r.get("dice") or {}
    if "arms" not in d or d.get("baseline_ok", True):
        return ""
    return (
        '<p class="bad warning">WARNING &mdash; the Dice evidence of this run is not informative: the real-only '
        "segmenter did not learn the lesions (see Downstream segmentation).</p>"
    )


def _dice(r: dict[str, Any]) -> str:
    d = r.get("dice")
    if not d:
        return ""
    title = "<h2>Downstream segmentation (Dice on real test patients)</h2>"
    if "arms" not in d:
        return title + _missing("per-arm Dice (the report predates it)")
    classes = [c.get("class") for c in d.get("classes", [])]
    arms = d.get("arms", [])
    rows = [
        (
            _e(a.get("arm")),
            f"{_fmt(a.get('dice'), 3)} {_ci(a.get('ci'))}",
            *(
                f"{_fmt((a.get('per_class') or {}).get(c), 3)} {_ci((a.get('per_class_ci') or {}).get(c))}"
                for c in classes
            ),
            " / ".join(_fmt(v, 3) for v in a.get("per_seed", [])),
            f"{_fmt(a.get('fp_rate'), 3)} {_ci(a.get('fp_rate_ci'))}",
            _fmt(a.get("fp_area"), 2),
        )
        for a in arms
    ]
    header = (
        "arm",
        "Dice, mean over classes [95% CI]",
        *(f"{_e(c)} [95% CI]" for c in classes),
        "per seed",
        "false-positive rate [95% CI]",
        "predicted area on lesion-free slices",
    )
    gains = [
        (
            _e(g.get("arm")),
            _e(g.get("class") or "mean over classes"),
            _signed(g.get("gain")),
            _ci(g.get("ci")),
            _e(g.get("verdict")),
        )
        for g in d.get("gains", [])
    ]
    tested = ", ".join(
        f"{_e(c.get('class'))}: {_fmt(c.get('n_test'))} slices of {_fmt(c.get('n_patients'))} patients"
        for c in d.get("classes", [])
    )
    text = (
        f"<p>A {_e(d.get('model', 'segmentation net'))} is trained on each arm's data &mdash; real: the train split "
        "drawn uniformly (the reference); weighted-sampler: drawn with the split's class weights; class-weighted-loss: "
        "each sample's loss weighted by its class weight; real+synthetic: plus "
        f"{_fmt(d.get('n_synthetic'))} synthetic pairs; synthetic: those pairs only &mdash; with the same "
        f"{_fmt(d.get('steps'))} optimiser steps of {_fmt(d.get('batch_size'))} ({_e(d.get('schedule', ''))}) and the "
        f"same {len(d.get('seeds') or [])} segmenter seeds, whose scores are averaged per test slice. Scored on the "
        f"real test split ({tested}). <b>Convention</b>: Dice is scored on test slices with a lesion (the headline); "
        f"a lesion-free slice ({_fmt(d.get('n_lesion_free'))} in the test split) has no Dice and counts as a false "
        "positive when the net predicts any lesion pixel on it. Intervals: paired bootstrap over test patients "
        "(all of a patient's slices together, the same resample for every arm); a class with one test patient has "
        "none.</p>"
    )
    skipped = "".join(
        f'<p class="bad warning">Arm {_e(k.get("arm"))} was not trained: {_e(k.get("reason"))}; its Dice and gain '
        "are undefined (null) in metrics.json and for the gate.</p>"
        for k in d.get("skipped", [])
    )
    out = [title, _dice_warning(d), skipped, _dice_verdicts(d), text, _table(header, rows, "metrics")]
    if gains:
        out.append("<h3>Gain over the real-only arm</h3>")
        out.append(_table(("arm", "class", "gain", "95% CI", "verdict"), gains, "metrics"))
    return "".join(out)


def _samples(r: dict[str, Any]) -> str:
    samples = r.get("samples")
    if not samples:
        return "<h2>Samples</h2>" + _missing("sample images")
    rows = "".join(
        f"<tr><th>{_e(s.get('class'))}</th><td>{_img(s.get('synthetic'), 'synthetic ' + str(s.get('class')))}</td>"
        f"<td>{_img(s.get('real'), 'real ' + str(s.get('class')))}</td></tr>"
        for s in samples
    )
    return (
        "<h2>Samples per class</h2><p>Top row: image; bottom row: lesion mask overlay (red).</p>"
        f'<table class="samples"><thead><tr><th>class</th><th>synthetic</th><th>real (train)</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _topup(r: dict[str, Any]) -> str:
    t = r.get("topup")
    if not t:
        return ""
    title = "<h2>Synthetic top-up (split.strategy=gan-topup)</h2>"
    if not t.get("built"):
        return title + f'<p class="muted">No top-up in this run: split.strategy={_e(t.get("strategy"))}.</p>'
    rows = []
    for cls, c in (t.get("per_class") or {}).items():
        rejected = ", ".join(f"{k} {v}" for k, v in (c.get("rejected") or {}).items() if v) or "none"
        rows.append(
            (
                _e(cls),
                _fmt(c.get("real")),
                _fmt(c.get("need")),
                _fmt(c.get("drawn")),
                _fmt(c.get("acceptance_rate"), 2),
                _fmt(c.get("kept")),
                f'<span class="{"bad" if c.get("shortfall") else ""}">{_fmt(c.get("shortfall"))}</span>',
                _e(rejected),
            )
        )
    dvc = t.get("dvc") or {}
    if dvc.get("tracked"):
        version = (
            f"Versioned with DVC: md5 <code>{_e(dvc.get('md5'))}</code> ({_fmt(dvc.get('nfiles'))} files) pushed to "
            f"<code>{_e(dvc.get('remote'))}</code>; its pointer is <code>topup/topup.dvc</code> of the MLflow run."
        )
    else:
        version = f'<span class="bad">Not versioned: {_e(dvc.get("reason", "no DVC remote"))}.</span>'
    space = t.get("feature_space") or {}
    return (
        title + f"<p>{_fmt(t.get('n'))} synthetic pairs from the generator of step {_fmt(t.get('generator_step'))} "
        f"(SHA-256 <code>{_e(str(t.get('generator_sha256', ''))[:16])}</code>), every class topped up to "
        f"{_fmt(t.get('target_ratio'), 2)} of the largest class's train count. They join the <b>train</b> split only "
        "and are the synthetic side of the Dice comparison above. Filter, per class against its real train pairs: "
        "mask (plausible area, empty for lesion-free classes), contrast (lesion-like), outlier (realism score "
        f"&lt; 1 in the {_e(space.get('name', 'medical'))} feature space, which the GAN never trained against), "
        "copy (too similar to one real sample).</p>"
        + _table(("class", "real (train)", "needed", "drawn", "accepted share", "kept", "shortfall", "rejected"), rows)
        + f"<p>{version}</p>"
    )


def _trust(r: dict[str, Any]) -> str:
    t = r.get("trust")
    if not t:
        return ""
    rows = []
    for c in t.get("per_class", []):
        mem = c.get("memorization") or {}
        rows.append(
            (
                _e(c.get("class")),
                f"{_fmt(c.get('accuracy'), 2)} (n={_fmt(c.get('n'))})",
                f"{_fmt(c.get('holdout_accuracy'), 2)} (n={_fmt(c.get('holdout_n'))})",
                _fmt(mem.get("copy_fraction"), 3),
                _fmt(mem.get("similarity_max"), 3),
                _fmt(mem.get("real_baseline_median"), 3),
            )
        )
    return (
        "<h2>Per-class trust</h2><p>Class accuracy: share of a class's synthetic samples that the "
        f"{_e(t.get('classifier'))} calls that class, beside the same classifier on the val split's real images. "
        "Memorization within the class: synthetic samples against the real train samples of their own class "
        f"(cosine similarity above {_fmt(t.get('threshold'), 2)} flags a near copy); the rare classes are where a "
        "generator copies first.</p>"
        + _table(
            (
                "class",
                "class accuracy (synthetic)",
                "class accuracy (held-out real)",
                "near-copy share",
                "max similarity",
                "real-to-real median",
            ),
            rows,
        )
    )


def _neighbours(r: dict[str, Any]) -> str:
    mem = r.get("memorization") or {}
    pairs = r.get("neighbours") or []
    if not mem and not pairs:
        return "<h2>Memorization audit</h2>" + _missing("memorization audit")
    summary = {
        k: mem.get(k)
        for k in (
            "threshold",
            "copy_fraction",
            "n_flagged",
            "similarity_mean",
            "similarity_max",
            "real_baseline_median",
            "real_baseline_p95",
        )
        if k in mem
    }
    flagged = mem.get("n_flagged") or 0
    verdict = (
        (
            f'<p class="bad">{flagged} synthetic sample(s) are near copies of training images.</p>'
            if flagged
            else '<p class="good">No synthetic sample exceeds the near-copy threshold.</p>'
        )
        if mem
        else ""
    )
    cells = []
    for p in pairs:
        css = "bad" if p.get("flagged") else ""
        cells.append(
            f'<div class="pair {css}">{_img(p.get("synthetic"), "synthetic")}{_img(p.get("real"), "nearest real")}'
            f"<div>{_e(p.get('class', ''))} cos {_fmt(p.get('similarity'), 3)}"
            f"{' &mdash; FLAGGED' if p.get('flagged') else ''}</div></div>"
        )
    return (
        "<h2>Memorization audit (nearest real neighbours)</h2>"
        "<p>Cosine similarity of centred features between each synthetic sample and its nearest real training "
        "sample; the real baseline is each real sample's similarity to its nearest other real sample.</p>"
        + verdict
        + (_kv(summary) if summary else "")
        + (f'<div class="pairs">{"".join(cells)}</div>' if cells else "")
    )


def _consistency(r: dict[str, Any]) -> str:
    c = r.get("consistency")
    if not c:
        return ""
    real, synth = c.get("real", {}), c.get("synthetic", {})
    rows = []
    for cls in dict.fromkeys([*real, *synth]):
        a, b = real.get(cls, {}), synth.get(cls, {})
        rows.append(
            (
                _e(cls),
                _fmt(a.get("contrast")),
                _fmt(b.get("contrast")),
                _fmt(a.get("mask_area")),
                _fmt(b.get("mask_area")),
                _fmt(b.get("label_mismatch")),
                _fmt(a.get("spread")),
                _fmt(b.get("spread")),
                _fmt(a.get("lesion_spread"), 3),
                _fmt(b.get("lesion_spread"), 3),
            )
        )
    return (
        "<h2>Mask&ndash;image consistency and diversity</h2><p>Contrast: mean intensity inside the mask minus "
        "outside. Label mismatch: lesion-class samples without a mask, or other samples with one. Spread: each "
        "pixel's standard deviation across the class's images, averaged over pixels; a synthetic spread far below "
        f"the real one means the class collapsed onto few modes (synthetic / real, mean over classes: "
        f"{_fmt(c.get('diversity_ratio'))}, worst class: {_fmt(c.get('min_class_diversity_ratio'))}). Lesion "
        "spread: how far the lesion-mask centroids of a lesion class lie from their mean, in pixels (root of the "
        "trace of their covariance); far below the real spread, the generator paints the lesions in one place "
        f"(synthetic / real, worst lesion class: {_fmt(c.get('lesion_spread_ratio'))}). Recall and coverage in the "
        "metrics tables measure diversity in feature space.</p>"
        + _table(
            (
                "class",
                "contrast real",
                "contrast synthetic",
                "mask area real",
                "mask area synthetic",
                "label mismatch synthetic",
                "spread real",
                "spread synthetic",
                "lesion spread real (px)",
                "lesion spread synthetic (px)",
            ),
            rows,
            "metrics",
        )
    )


def _curves(r: dict[str, Any]) -> str:
    losses = r.get("losses") or {}
    step = losses.get("step")
    if not step:
        return "<h2>Training curves</h2>" + _missing("training curves (losses.csv)")
    cols = {k: v for k, v in losses.items() if k != "step"}
    loss_cols = {k: v for k, v in cols.items() if k.startswith("loss")}
    charts = [svg_line_chart(step, loss_cols, "losses")] if loss_cols else []
    charts += [svg_line_chart(step, {k: v}, k) for k, v in cols.items() if k not in loss_cols][:6]
    return "<h2>Training curves</h2>" + '<div class="charts">' + "".join(charts) + "</div>"


def _distribution(r: dict[str, Any]) -> str:
    dist = r.get("class_distribution")
    if not dist:
        return "<h2>Class distribution</h2>" + _missing("class distribution")
    splits = list(dist)
    classes = list(dict.fromkeys(c for s in splits for c in dist[s]))
    top = max([int(dist[s].get(c, 0)) for s in splits for c in classes] + [1])
    rows = []
    for cls in classes:
        cells = []
        for s in splits:
            n = int(dist[s].get(cls, 0))
            cells.append(f'<span class="bar" style="width:{100 * n / top:.0f}px"></span> {n}')
        rows.append((_e(cls), *cells, str(sum(int(dist[s].get(cls, 0)) for s in splits))))
    return "<h2>Class distribution per split</h2>" + _table(("class", *map(_e, splits), "total"), rows, "dist")


def _fid_curve(r: dict[str, Any]) -> str:
    """FID of the trainer's EMA snapshots by step, and one sentence on whether it fell from first to last."""
    c = r.get("fid_curve") or {}
    points = [(s, v) for s, v in zip(c.get("steps") or [], c.get("fid") or [], strict=False) if v is not None]
    if not points:
        return (
            '<h2>FID over training</h2><p class="muted">No FID curve in this report: the trainer kept no snapshots '
            "(train.fid_snapshots=0, or a model trained before they existed).</p>"
        )
    (s0, first), (s1, last) = points[0], points[-1]
    span = f"{_fmt(first)} at step {_fmt(s0)}"
    if len(points) < 2:
        verdict = f'<p class="pending">Only step {_fmt(s1)} was scored (FID {_fmt(last)}): no trend to read.</p>'
    elif last < first:
        low_step, low = min(points, key=lambda p: p[1])
        best = f" (lowest: {_fmt(low)} at step {_fmt(low_step)})" if low < last else ""
        verdict = f'<p class="good">FID fell from {span} to {_fmt(last)} at step {_fmt(s1)}{best}.</p>'
    else:
        verdict = f'<p class="bad">FID did not fall: {span}, {_fmt(last)} at step {_fmt(s1)}.</p>'
    text = (
        f"<p>FID of {_fmt(c.get('n_samples'))} synthetic samples per point (the same latents and labels at every "
        f"step; the headline FID uses {_fmt(c.get('n_samples_headline'))}, and FID is biased upward at small sample "
        "counts, so compare the points with each other) against the headline FID's real features. The last point is "
        "the final model.</p>"
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in c.get("notes") or [])
    # collapse ratios of the same samples, by step (present when evaluate computed them)
    steps = list(c.get("steps") or [])
    ratios = {k: list(c[k]) for k in COLLAPSE_CURVES if isinstance(c.get(k), list) and len(c[k]) == len(steps)}
    by_step = {k: dict(zip(steps, v, strict=True)) for k, v in ratios.items()}
    rows = [(_fmt(s), _fmt(v), *(_fmt(by_step[k].get(s), 3) for k in ratios)) for s, v in points]
    chart = ""
    if ratios:
        text += (
            "<p>Collapse over training, from the same samples: synthetic / real pixel spread per class (mean and "
            "worst class) and lesion-position spread (worst lesion class); 1 is as varied as the real images, near 0 "
            "a collapsed class. Few samples per class per point: read the trend.</p>"
        )
        chart = svg_line_chart(
            steps,
            {COLLAPSE_CURVES[k]: [np.nan if x is None else x for x in v] for k, v in ratios.items()},
            "collapse ratios by training step",
        )
    return (
        "<h2>FID over training</h2>"
        + verdict
        + text
        + svg_line_chart([s for s, _ in points], {"FID": [v for _, v in points]}, "FID by training step")
        + chart
        + _table(("step", "FID", *(COLLAPSE_CURVES[k] for k in ratios)), rows, "metrics")
        + (f"<ul class='notes'>{notes}</ul>" if notes else "")
    )


def _selection(r: dict[str, Any]) -> str:
    """One sentence: which generator the metrics describe (and register registers), and why."""
    sel = r.get("selection")
    if not sel:
        return ""
    final, chosen = sel.get("final_step"), sel.get("selected_step")
    by_step = dict(zip(sel.get("steps") or [], sel.get("fid") or [], strict=False))
    where = f"selection FID on the {_e(sel.get('real_split', 'val'))} split, {_fmt(sel.get('n_samples'))} samples each"
    if sel.get("mode") == "last":
        text = f"The final model (step {_fmt(final)}) is evaluated and registered (eval.select_snapshot=last)."
    elif chosen != final:
        text = (
            f"The EMA snapshot of step {_fmt(chosen)} is evaluated and registered instead of the final model (step "
            f"{_fmt(final)}): its {where}, is {_fmt(by_step.get(chosen))} against the final model's "
            f"{_fmt(by_step.get(final))}."
        )
    elif by_step:
        text = (
            f"The final model (step {_fmt(final)}) was kept: no earlier snapshot had a lower {where} (final model: "
            f"{_fmt(by_step.get(final))})."
        )
    else:
        text = f"The final model (step {_fmt(final)}) was kept: {'; '.join(map(_e, sel.get('notes') or []))}."
    notes = [n for n in sel.get("notes") or [] if by_step]
    return f"<p>{text}</p>" + "".join(f'<p class="muted">{_e(n)}</p>' for n in notes)


def _validation(r: dict[str, Any]) -> str:
    v = r.get("validation")
    if v:
        results = v.get("results", []) if isinstance(v, dict) else list(v)
        drift = _drift(v.get("drift") if isinstance(v, dict) else None)
        dataset = _expectation_counts(results) + drift + _expectation_table(results)
    else:
        dataset = _missing("data-validation results")
    return (
        "<h2>Data validation</h2><h3>Dataset (validate stage)</h3>"
        + dataset
        + "<h3>Patient-level split (rebalance stage)</h3>"
        + _split_check(r.get("split_validation"))
    )


def _split_check(check: dict[str, Any] | None) -> str:
    """The rebalance stage's great-expectations split check, in the validate stage's layout."""
    if not check:
        return _missing("split check results (the split was made without the check)")
    results = check.get("results", [])
    verdict = (
        '<p class="good">No patient is in two splits; every sample is in exactly one known split.</p>'
        if check.get("success") and not any(not x.get("success") for x in results if x.get("batch") != "class_patients")
        else ""
    )
    return (
        verdict
        + _patients_per_class(check.get("patients_per_class"))
        + _expectation_counts(results)
        + _expectation_table(results)
    )


def _patients_per_class(check: dict[str, Any] | None) -> str:
    """Whether every class has ``validate.min_patients_per_class`` patients in every split, and where it has not."""
    if not check:
        return ""
    minimum = _fmt(check.get("min_patients_per_class"))
    shortfalls = check.get("shortfalls") or []
    if not shortfalls:
        return f'<p class="good">Every class has at least {minimum} patients in every split.</p>'
    severity = "bad" if check.get("severity") == "critical" else "pending"
    return (
        f'<p class="{severity}">Classes with fewer than {minimum} patients in a split (validate.min_patients_per_class;'
        f" their metrics on that split rest on so few patients):</p><ul>"
        + "".join(f"<li>{_e(line)}</li>" for line in shortfalls)
        + "</ul>"
    )


def _expectation_counts(results: list[dict[str, Any]]) -> str:
    failed = [x for x in results if not x.get("success")]
    critical = [x for x in failed if x.get("severity") == "critical"]
    return (
        f"<p>{len(results)} expectations, {len(failed)} failed "
        f"({len(critical)} critical, {len(failed) - len(critical)} warnings).</p>"
    )


def _expectation_table(results: list[dict[str, Any]]) -> str:
    """One row per expectation, failures first (critical before warnings); ``unexpected`` = rows affected."""
    rows = [
        (
            _e(x.get("batch", "")),
            _e(x.get("expectation")),
            _e(x.get("column", "")),
            '<span class="good">pass</span>' if x.get("success") else '<span class="bad">FAIL</span>',
            _e(x.get("severity", "")),
            _fmt(x.get("unexpected_count")),
        )
        for x in sorted(results, key=lambda x: (bool(x.get("success")), x.get("severity") != "critical"))
    ]
    return _table(("batch", "expectation", "column", "result", "severity", "unexpected rows"), rows, "metrics")


def _drift(drift: dict[str, Any] | None) -> str:
    """Class-distribution drift against the champion's data: the per-class fractions, or why it was not checked."""
    if not drift:
        return ""
    if drift.get("status") != "checked":
        return f'<p class="pending">Class drift vs champion: skipped &mdash; {_e(drift.get("reason", ""))}</p>'
    limit = float(drift.get("max_class_drift", 0.0))
    rows = [
        (
            _e(c.get("label")),
            _fmt(c.get("fraction")),
            _fmt(c.get("champion_fraction")),
            f'<span class="{"bad" if float(c.get("abs_diff", 0)) > limit else "good"}">'
            f"{_fmt(c.get('abs_diff'))}</span>",
        )
        for c in drift.get("classes", [])
    ]
    return (
        f"<p>Class drift vs {_e(drift.get('reference', 'champion'))}: total variation "
        f"{_fmt(drift.get('total_variation'))} (warning above {limit:g} per class).</p>"
        + _table(("class", "fraction", "champion fraction", "|difference|"), rows, "metrics")
    )


def _gate(r: dict[str, Any]) -> str:
    gate = r.get("gate")
    if not gate:
        return (
            '<h2>Gate decision</h2><p class="pending">pending &mdash; the model has not been through the '
            "champion/challenger gate yet.</p>"
        )
    if not isinstance(gate, dict):
        return f"<h2>Gate decision</h2><p>{_e(gate)}</p>"
    action = gate.get("action") or gate.get("decision") or "pending"
    css = "good" if str(action).startswith("promot") else "bad" if str(action).startswith("reject") else "pending"
    out = [f'<h2>Gate decision</h2><p class="{css} decision">{_e(action)}</p>']
    if gate.get("reason"):
        out.append(f"<p>{_e(gate['reason'])}</p>")
    new, old = gate.get("challenger_metrics") or {}, gate.get("champion_metrics") or {}
    rules = [x.get("name") for x in gate.get("rules", []) if isinstance(x, dict)]
    if new:
        scalar = [k for k in sorted(new) if not isinstance(new[k], (dict, list))]
        keys = [k for k in rules if k in new] + [k for k in scalar if k not in rules and "." not in k][:12]
        out.append(
            _table(
                ("metric", "challenger", "champion"),
                [
                    (_e(k) + (" (gate)" if k in rules else ""), _fmt(new.get(k)), _fmt(old.get(k)))
                    for k in dict.fromkeys(keys)
                ],
                "metrics",
            )
        )
    rest = {k: v for k, v in gate.items() if k not in ("challenger_metrics", "champion_metrics", "reason", "action")}
    out.append(_kv(rest))
    return "".join(out)


def _config(r: dict[str, Any]) -> str:
    parts = []
    for key, title in (("config", "Evaluation settings"), ("model", "Model"), ("timings", "Timings (s)")):
        if r.get(key):
            parts.append(
                f"<details><summary>{title}</summary><pre>"
                f"{_e(json.dumps(r[key], indent=2, sort_keys=True, default=str))}</pre></details>"
            )
    return "<h2>Details</h2>" + "".join(parts) if parts else ""


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.3em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.8em}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top;font-size:.92em}th{background:#f5f5f5}table.kv th{display:none}table.kv td:first-child{
font-weight:600;background:#fafafa}img.px{image-rendering:pixelated;height:176px}.pair img.px{height:120px}
.pairs{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ddd;padding:6px;font-size:.85em}
.pair.bad{border-color:#c00;background:#fee}.good{color:#16751d}.bad{color:#b00000;font-weight:600}
.pending{color:#8a6d00;font-weight:600}.decision{font-size:1.3em;text-transform:uppercase}.muted{color:#888}
.bar{display:inline-block;height:10px;background:#1f77b4;vertical-align:middle}
svg.chart{margin:4px 12px 4px 0;background:#fff}svg .ct{font-size:13px;font-weight:600}
svg .ax{font-size:10px;fill:#555}svg .lg{font-size:11px;font-weight:600}pre{background:#f7f7f7;padding:8px;
overflow:auto;font-size:.85em}code{font-size:.85em}p.space{margin:14px 0 2px}
.warning{border:2px solid #c00;background:#fee;padding:8px}
"""


def render_report(report: dict[str, Any]) -> str:
    """Self-contained HTML of the review report; every section is optional."""
    title = _e(report.get("title") or "medgan-ops evaluation report")
    body = "".join(
        [
            _header(report),
            _dice_banner(report),
            _gate(report),
            _metrics(report),
            _dice(report),
            _samples(report),
            _fid_curve(report),
            _selection(report),
            _topup(report),
            _trust(report),
            _neighbours(report),
            _consistency(report),
            _curves(report),
            _distribution(report),
            _validation(report),
            _config(report),
        ]
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


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
