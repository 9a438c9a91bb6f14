"""Logging set-up shared by the workflow's scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to_file(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send ``logging`` records and stderr (tracebacks, warnings, progress bars) to ``path``.

    Snakemake keeps one log per job; a failed job's traceback then sits in that log,
    and Snakemake prints its path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stderr = stream
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=stream,
        force=True,
    )
    logging.captureWarnings(True)
    return logging.getLogger("protoseg")
