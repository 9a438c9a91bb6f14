"""Logging set-up shared by the workflow's scripts, and the warnings gathered from the logs.

Every script logs through :func:`log_to_file` in :data:`LOG_FORMAT`; Python warnings
(``warnings.warn``) go to the same log as ``WARNING py.warnings`` lines. At the end of a
run, :func:`collect_warnings` finds every warning in ``logs/`` again, so that a user sees
them (console summary, the report's warnings table) without opening a log file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import pandas as pd

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A record in LOG_FORMAT ("2024-07-01 12:00:00,123 WARNING protoseg.masks: ..."). Not
# anchored: a progress bar (tqdm, to the same stderr) can precede it on its line.
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$"
)
# How logging.captureWarnings words a warning: "/path/file.py:185: UserWarning: message".
PYTHON_WARNING = re.compile(r"^\S.*?:\d+: (?P<category>\w*Warning): (?P<message>.*)$")
WARNING_COLUMNS = ["step", "log", "logger", "message"]


def log_to_file(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send ``logging`` records and stderr (tracebacks, warnings, progress bars) to ``path``.

    Snakemake keeps one log per job; a failed job's traceback then sits in that log,
    and Snakemake prints its path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Progress bars in a log file: one line every 30 s, not one per batch (tqdm reads its
    # defaults from TQDM_* variables when it is first imported, which is after this).
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    stream = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stderr = stream
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=stream, force=True)
    logging.captureWarnings(True)
    return logging.getLogger("protoseg")


def read_warnings(path: str | Path) -> list[dict]:
    """The WARNING lines of one log file: logger and message (first line of each)."""
    found = []
    with open(path, errors="replace") as handle:
        for line in handle:
            match = LOG_LINE.search(line.rstrip("\n"))
            if match is None or match["level"] != "WARNING":
                continue
            message = match["message"].strip()
            python = PYTHON_WARNING.match(message)
            if match["logger"] == "py.warnings" and python is not None:
                message = python["message"].strip()
            found.append({"logger": match["logger"], "message": message})
    return found


def collect_warnings(
    log_dir: str | Path = "logs", exclude: tuple[str, ...] = (), since: float | None = None
) -> pd.DataFrame:
    """Every warning in the ``*.log`` files below ``log_dir``, one row each.

    ``step`` is the log's first folder below ``log_dir`` (the workflow step); folders
    named in ``exclude`` are skipped; ``since`` (seconds since the epoch) keeps only logs
    written from then on (one run's).
    """
    log_dir = Path(log_dir)
    rows = []
    for path in sorted(log_dir.rglob("*.log")) if log_dir.is_dir() else []:
        relative = path.relative_to(log_dir)
        if relative.parts[0] in exclude:
            continue
        if since is not None and path.stat().st_mtime < since:
            continue
        step = relative.parts[0] if len(relative.parts) > 1 else ""
        rows.extend({"step": step, "log": str(path), **found} for found in read_warnings(path))
    return pd.DataFrame(rows, columns=WARNING_COLUMNS)


def format_warnings(table: pd.DataFrame, limit: int = 20, where: str = "") -> str:
    """A console summary: one line per distinct warning (with its log and count)."""
    if table.empty:
        return "protoseg: no warnings in the logs" + (f" {where}" if where else "") + "."
    grouped = (
        table.groupby(["step", "message"], sort=False)
        .agg(log=("log", "first"), count=("log", "size"))
        .reset_index()
    )
    lines = [
        f"protoseg: {len(table)} warning{'s' if len(table) != 1 else ''} in the logs"
        + (f" {where}" if where else "")
        + " (read them before trusting the results):"
    ]
    for row in grouped.head(limit).itertuples():
        times = f" ({row.count} times)" if row.count > 1 else ""
        lines.append(f"  [{row.step or 'log'}] {row.message}{times}  <- {row.log}")
    if len(grouped) > limit:
        lines.append(f"  ... and {len(grouped) - limit} more distinct warnings")
    return "\n".join(lines)


def warnings_markdown(table: pd.DataFrame) -> str:
    """The warnings as a Markdown list, grouped by step."""
    lines = ["# Warnings", ""]
    if table.empty:
        lines.append("No job logged a warning.")
        return "\n".join(lines) + "\n"
    lines.append(f"{len(table)} warnings logged by the jobs behind these results.")
    for step, group in table.groupby("step", sort=False):
        lines += ["", f"## {step or 'other'}", ""]
        lines += [f"- {row.message} (`{row.log}`)" for row in group.itertuples()]
    return "\n".join(lines) + "\n"


def summarise_warnings(
    log_dir: str | Path = "logs",
    since: float | None = None,
    full_list: str = "results/warnings.md",
    exclude: tuple[str, ...] = ("warnings",),
    stream=None,
    quiet_if_none: bool = False,
) -> None:
    """Print a run's warnings (logs written since ``since``) and how many earlier ones there are.

    The Snakefile calls this when a run ends, successfully or not (then with
    ``quiet_if_none``, so the error stays the last thing on screen when nothing warned).
    It never raises: a summary must not hide the run's own outcome.
    """
    stream = stream or sys.stderr
    try:
        every = collect_warnings(log_dir, exclude=exclude)
        this_run = every if since is None else collect_warnings(log_dir, exclude, since)
    except OSError as error:
        print(f"protoseg: could not read {log_dir}/ for warnings: {error}", file=stream)
        return
    if quiet_if_none and every.empty:
        return
    print(format_warnings(this_run, where="of this run" if since else ""), file=stream)
    earlier = len(every) - len(this_run)
    if earlier:
        print(
            f"protoseg: {earlier} more from earlier runs; all are listed in {full_list}",
            file=stream,
        )
