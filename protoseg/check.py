"""``protoseg check CONFIG...``: is this run ready to start? What is wrong, in plain lines.

The config files are read as Snakemake reads them (later files over earlier ones, key by
key), then everything the workflow checks when it starts is checked again, but every
problem is listed instead of the first one stopping it, and what was found is said too:

* YAML syntax, per file, with the line, the column and the cause (an unclosed bracket, a
  tab), which Snakemake's own message leaves out;
* the schema, one line per wrong key (:func:`protoseg.config.schema_errors`), and the
  checks beyond it (:mod:`protoseg.config_checks`: keys against each other, the SAM
  weights);
* the data: folder and pattern, how many images, states, planes and channels the names
  give, what is missing; pixel sizes;
* the mask method and, for SAM, whether its weights are on this machine;
* the splits and how many states each holds;
* a lock left in the working folder by a killed run (:mod:`protoseg.locks`).

Pixels are not read (that is the catalogue job's): ``snakemake all_catalogue`` next.
:func:`check_configs` returns the exit status: 0 when the run can start.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from protoseg import config_checks
from protoseg.catalogue import (
    demo_records,
    missing_planes,
    read_sample_sheet,
    scan_folder,
    states_in_split,
)
from protoseg.config import deep_update, schema_errors
from protoseg.errors import ConfigError, ProtosegError
from protoseg.locks import lock_advice
from protoseg.masks import get_method

DEFAULT_CONFIG = "config/config.yaml"
# Shown per list in a line (states, missing planes); the rest are counted.
SHOWN = 6


@dataclass
class Report:
    """What the check found: lines of ``ok``, ``warning`` or ``error``, in order."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str) -> None:
        self.lines.append(("error", text))

    @property
    def errors(self) -> int:
        return sum(level == "error" for level, _ in self.lines)

    def text(self) -> str:
        return "\n".join(f"{level}: {line}" for level, line in self.lines)


def _listed(values: Sequence, shown: int = SHOWN) -> str:
    values = [str(value) for value in values]
    more = f" and {len(values) - shown} more" if len(values) > shown else ""
    return ", ".join(values[:shown]) + more


# ---------------------------------------------------------------- files and schema
def yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN: cause`` of a YAML error (where the cause started, if it says)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    cause = getattr(error, "problem", None) or str(error)
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start:
        at = f"line {start.line + 1}, column {start.column + 1}"
        opened = {"flow sequence": "'['", "flow mapping": "'{'"}
        kind = next((name for name in opened if name in context), None)
        cause += f" (the {opened[kind]} at {at} is not closed)" if kind else f" ({context} at {at})"
    tabs = " (YAML indents with spaces, never tabs)" if "'\\t'" in cause else ""
    return f"{where}: YAML syntax: {cause}{tabs}"


def read_configs(paths: Sequence[str | Path], report: Report) -> dict | None:
    """The config files merged, later over earlier; None after a file error (reported)."""
    config: dict = {}
    for path in map(Path, paths):
        if not path.is_file():
            report.error(f"{path}: config file not found")
            continue
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            report.error(yaml_problem(path, error))
            continue
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            report.error(
                f"{path}: a config file holds a mapping of keys, not a {type(loaded).__name__}"
            )
            continue
        deep_update(config, loaded)
        report.ok(f"{path}: YAML read")
    return None if report.errors else config


def check_keys(config: dict, report: Report) -> bool:
    """Schema and cross-key checks; whether the config is usable for the data checks."""
    problems = schema_errors(config)
    for problem in problems:
        report.error(str(problem))
    if problems:
        return False
    report.ok("every key matches workflow/schemas/config.schema.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config_checks.check_config(config)
        except ProtosegError as error:
            report.error(str(error))
            return False
    for warned in caught:
        report.warning(str(warned.message))
    return True


# ---------------------------------------------------------------- data
def find_records(config: dict, report: Report) -> pd.DataFrame | None:
    """The image records the names give, as the workflow finds them; None after an error."""
    data = config["data"]
    if data["source"] == "demo":
        raw_dir = Path(config["demo"]["out_dir"]) / "raw"
        records = demo_records(config["demo"], data, raw_dir)
        report.ok(f"data: the synthetic demo, written to {raw_dir} by the demo job")
        return records
    raw_dir = data["raw_dir"]
    source = data.get("sample_sheet") or raw_dir
    try:
        if data.get("sample_sheet"):
            records = read_sample_sheet(data["sample_sheet"], data, raw_dir)
        else:
            records = scan_folder(raw_dir, data)
    except ProtosegError as error:
        report.error(f"data: {error}")
        return None
    how = f"sample sheet {source}" if data.get("sample_sheet") else f"pattern {data['pattern']}"
    report.ok(f"data: {raw_dir}, names read by {how}")
    gaps = missing_planes(records, data)
    for gap in gaps[:SHOWN]:
        report.error(
            f"data: state {gap['state']} has no image of channel {gap['channel']} "
            f"({gap['modality']}) at plane(s) {_listed([f'z{z}' for z in gap['missing']])}"
        )
    if len(gaps) > SHOWN:
        report.error(f"data: {len(gaps) - SHOWN} more state/channel pairs lack planes")
    return None if gaps else records


def describe_records(records: pd.DataFrame, config: dict, report: Report) -> None:
    """How many images, states, planes and channels; pixel sizes."""
    data = config["data"]
    channels = ", ".join(f"{key} ({value})" for key, value in data["channels"].items())
    files = records["file"].nunique() if "file" in records else len(records)
    report.ok(
        f"data: {len(records)} images ({files} files) of {records['state'].nunique()} states, "
        f"{records['z'].nunique()} planes ({', '.join(f'z{z}' for z in sorted(records['z'].unique()))}), "
        f"{records['channel'].nunique()} channels ({channels})"
    )
    sizes = pd.to_numeric(records.get("pixel_size"), errors="coerce")
    if sizes is None or sizes.isna().all():
        report.ok(
            "pixel size: none stated (data.pixel_size unset, no file metadata); "
            "only dataset.cell_diameter_um needs one"
        )
    else:
        known = sorted(sizes.dropna().unique())
        unknown = int(sizes.isna().sum())
        line = f"pixel size: {_listed([f'{size:g} um' for size in known])}"
        report.ok(line + (f"; {unknown} image(s) without one" if unknown else ""))


def check_data(config: dict, report: Report) -> pd.DataFrame | None:
    records = find_records(config, report)
    if records is None:
        return None
    describe_records(records, config, report)
    try:
        config_checks.check_split(config["split"], records)
        config_checks.check_pixel_sizes(config["dataset"], records)
    except ProtosegError as error:
        report.error(str(error))
        return None
    return records


# ---------------------------------------------------------------- masks and splits
def check_masks(config: dict, report: Report) -> None:
    """The mask method, and a SAM method's weights (check_config has refused missing ones)."""
    masks = config["masks"]
    method = get_method(masks["method"])
    if not method.uses_sam:
        report.ok(
            f"masks: {masks['method']} of the {masks['modality']} images (no SAM weights needed)"
        )
        return
    sam = masks["sam"]
    if sam["checkpoint"]:
        report.ok(f"masks: {masks['method']}, SAM weights {sam['checkpoint']} found")
        return
    from protoseg.masks.sam import missing_weights

    if missing_weights(sam["model_type"]):
        report.ok(
            f"masks: {masks['method']}, SAM '{sam['model_type']}' will be downloaded (masks.sam.download)"
        )
    else:
        report.ok(
            f"masks: {masks['method']}, SAM '{sam['model_type']}' weights in micro-sam's cache"
        )


def check_splits(config: dict, records: pd.DataFrame, report: Report) -> None:
    key = config["split"]["key"]
    if key in config_checks.CATALOGUE_ONLY_COLUMNS:
        report.ok(f"split: by {key}, known once the catalogue job has read the images")
        return
    for split in ("train", "validation", "test"):
        states = states_in_split(records, config["split"], split)
        line = f"split {split}: {len(states)} state(s)"
        if states:
            report.ok(f"{line}: {_listed(states)}")
        elif split == "validation":
            report.ok(f"{line} (split.validation chooses none)")
        else:
            report.error(f"{line}; split.key {key} leaves it empty")


# ---------------------------------------------------------------- all of it
def check(paths: Sequence[str | Path], workdir: str | Path = ".") -> Report:
    """Every check, in order; later ones run only when what they need passed."""
    report = Report()
    config = read_configs(paths, report)
    if config is not None and check_keys(config, report):
        records = check_data(config, report)
        try:
            check_masks(config, report)
            if records is not None:
                check_splits(config, records, report)
        except ConfigError as error:
            report.error(str(error))
    advice = lock_advice(workdir, ["snakemake"])
    if advice:
        report.warning(advice.removeprefix("protoseg: "))
    return report


def check_configs(
    paths: Sequence[str | Path] = (), workdir: str | Path = ".", out: Callable[[str], None] = print
) -> int:
    """Print the report of :func:`check`; 0 when the run can start, else 1."""
    paths = list(paths) or [DEFAULT_CONFIG]
    report = check(paths, workdir)
    out(report.text())
    verdict = (
        "the run can start (pixels are checked by the catalogue job: snakemake all_catalogue)"
        if not report.errors
        else f"{report.errors} error(s): the run would stop"
    )
    out(f"protoseg check: {verdict}")
    return 0 if not report.errors else 1
