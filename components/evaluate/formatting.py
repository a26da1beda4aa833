"""How the review report writes numbers: one set of rules for the page and its sentences (Jinja2 filters too).

Plain text only: the template escapes everything it is given, so these functions never return HTML.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DASH = "\u2013"  # an undefined value


def finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (bools are not numbers here)."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def fmt(value: Any, digits: int = 4) -> str:
    """A value for the page: ``digits`` significant digits, integers as integers, ``–`` when undefined."""
    if value is None:
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return DASH
        if 10**digits <= abs(value) < 1e9:  # 218.7 at 2 digits: "219", not "2.2e+02"
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def count(value: Any) -> str:
    """A count or a step: an integer, whatever type it is stored as (metrics.json holds floats)."""
    return str(int(round(float(value)))) if finite(value) else DASH


def ci(value: Any, digits: int = 3) -> str:
    """An interval ``[low, high]``; ``–`` unless both ends are defined."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(finite(v) for v in value)
    return f"[{fmt(value[0], digits)}, {fmt(value[1], digits)}]" if ok else DASH


def signed(value: Any, digits: int = 3) -> str:
    """A difference with its sign (``+0.050``); ``undefined`` when it is not a number."""
    return f"{value:+.{digits}f}" if finite(value) else "undefined"


def short(text: Any, n: int = 8) -> str:
    """The first ``n`` characters of a hash or fingerprint (the page shows prefixes; report.json the whole)."""
    s = str(text or "")
    return s if len(s) <= n else s[:n] + "\u2026"


FILTERS = {"fmt": fmt, "count": count, "ci": ci, "signed": signed, "short": short}
