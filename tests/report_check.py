"""Look at a Snakemake report the way a person does: render it in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    html: str | Path, png: str | Path, width: int = 1400, height: int = 1000, wait_ms: int = 8000
) -> Path:
    """Render ``html`` in headless Chromium and save a PNG screenshot of the window."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium not found: install Debian's `chromium` package")
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={png}",
            Path(html).resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    return png
