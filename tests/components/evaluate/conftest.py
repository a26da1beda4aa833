"""Headless Chromium for the review report's browser checks (Debian's ``chromium``; ``make browser`` installs it)."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Injected into a *copy* of the page (the report itself has no script): what a reader at this width would see.
MEASURE = """<script>
(function () {
  const d = document.documentElement;
  const wide = [];
  for (const e of document.querySelectorAll("body *")) {
    const r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > d.clientWidth + 0.5) {
      wide.push(e.tagName.toLowerCase() + (e.className ? "." + e.className : "") + " right=" + Math.round(r.right));
    }
  }
  document.body.setAttribute("data-measure", JSON.stringify({
    scrollWidth: d.scrollWidth, clientWidth: d.clientWidth, scrollHeight: d.scrollHeight,
    headings: Array.from(document.querySelectorAll("h1, h2, h3")).map(e => e.textContent.trim()),
    brokenImages: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length,
    images: document.images.length, wide: wide.slice(0, 12)
  }));
})();
</script>"""


def chromium_binary() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """Runs headless Chromium on a report file: layout measurements, a screenshot, a PDF print."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="medgan-chromium-") as profile:
            cmd = [
                self.binary,
                "--headless",
                "--no-sandbox",  # root in CI containers
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                *args,
            ]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def measure(self, page: Path, width: int = 1280, height: int = 900) -> dict:
        """Layout of ``page`` at ``width`` px: scroll/client width, headings, images, elements beyond the right edge."""
        probe = page.with_name(page.stem + ".measure.html")
        probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
        try:
            out = self._run(f"--window-size={width},{height}", "--dump-dom", probe.as_uri())
        finally:
            probe.unlink(missing_ok=True)
        start = out.stdout.find('data-measure="')
        assert start >= 0, f"chromium did not run the measurement (rc {out.returncode}): {out.stderr[-2000:]}"
        raw = out.stdout[start + len('data-measure="') :].split('"', 1)[0]
        return json.loads(html.unescape(raw))

    def screenshot(self, page: Path, target: Path, width: int = 1280, height: int = 900) -> Path:
        """A PNG of the top ``height`` px of ``page`` at ``width`` px."""
        target.parent.mkdir(parents=True, exist_ok=True)
        self._run(f"--window-size={width},{height}", f"--screenshot={target}", page.as_uri())
        assert target.is_file() and target.stat().st_size > 0, f"no screenshot written to {target}"
        return target

    def pdf(self, page: Path, target: Path) -> Path:
        """The page printed to PDF (as a reader's browser prints it)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        self._run("--no-pdf-header-footer", f"--print-to-pdf={target}", page.as_uri())
        assert target.is_file() and target.read_bytes()[:4] == b"%PDF", f"no PDF written to {target}"
        return target


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Headless Chromium, or a skip that says why and how to get it."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip(
            "Chromium is not installed and could not be: `make test` runs `make browser`, which installs Debian's "
            "chromium package with apt-get when run as root; install it (apt-get install chromium) to run this test"
        )
    return Chromium(binary)


@pytest.fixture(scope="session")
def artifacts_dir() -> Callable[[], Path]:
    """Where browser artifacts (screenshots, PDFs) are kept after the run: ``$MEDGAN_TEST_ARTIFACTS`` or runs/."""
    root = Path(
        os.environ.get("MEDGAN_TEST_ARTIFACTS") or Path(__file__).resolve().parents[3] / "runs" / "test-artifacts"
    )

    def get() -> Path:
        root.mkdir(parents=True, exist_ok=True)
        return root

    return get
