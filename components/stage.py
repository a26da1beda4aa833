"""What every pipeline component does around its stage core: parse inputs, report user errors cleanly.

A ``MedganError`` raised by a stage is printed as one readable line (prefixed ``MEDGAN-ERROR``) instead of a
traceback, recorded in ``$MEDGAN_ERROR_FILE`` when the local runner set it, and turned into exit status 2, which
fails the pipeline task. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from components.config import Config
from components.errors import MedganError
from components.tracking import RunTracker

ERROR_MARK = "MEDGAN-ERROR"


@contextlib.contextmanager
def reported(stage: str) -> Iterator[None]:
    """Run a stage body, turning user errors into a clean message and exit status 2."""
    try:
        yield
    except MedganError as exc:
        message = str(exc)
        print(f"\n{ERROR_MARK} [{stage}] {message}", file=sys.stderr, flush=True)
        path = os.environ.get("MEDGAN_ERROR_FILE")
        if path:
            with open(path, "w") as fh:
                json.dump({"stage": stage, "type": type(exc).__name__, "message": message}, fh)
        raise SystemExit(2) from None


def load_inputs(config_json: str, tracking_json: str) -> tuple[Config, dict[str, str], RunTracker]:
    """Parse the config and tracking parameters every component receives, and open the run's tracker."""
    cfg = Config.from_json(config_json)
    tracking = json.loads(tracking_json)
    tracker = RunTracker.of(tracking)
    return cfg, tracking, tracker


def dump(obj: Any) -> str:
    """JSON for a component's string output."""
    return json.dumps(obj, sort_keys=True, default=str)
