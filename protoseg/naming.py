"""From file names to records: which state, channel and focal plane each image is.

A *state* is one field of view at one time (the study: day, time point, xy position);
all focal planes of a state share one mask. Names are parsed with a regular expression
whose named groups become columns (the study's ``day1t1c1xy10z15.tif`` by default), or
read from a sample sheet. Only names are looked at here, never pixels, so this runs
when Snakemake parses the workflow and a bad name stops the run before any job starts.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import pandas as pd

from protoseg.config import complete_section
from protoseg.errors import ConfigError, InputError
from protoseg.io import IMAGE_SUFFIXES

STUDY_PATTERN = r"^day(?P<day>\d+)t(?P<time>\d+)c(?P<channel>\d+)xy(?P<xy>\d+)z(?P<z>\d+)\.tiff?$"
STUDY_STATE_FORMAT = "day{day}t{time}xy{xy}"
REQUIRED_GROUPS = ("channel", "z")


def parse_value(text: object) -> int | str:
    """Digit-only values become ints (so ``xy01`` and ``xy1`` are one position)."""
    text = str(text).strip()
    return int(text) if text.isdigit() else text


def state_fields(state_format: str) -> list[str]:
    """Field names used by a ``str.format`` template such as ``day{day}t{time}xy{xy}``."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(state_format) if field]
    except ValueError as error:
        raise ConfigError("data.state_format", f"not a valid format string: {error}") from error


def compile_pattern(pattern: str, state_format: str) -> re.Pattern:
    """Compile ``data.pattern`` and check it has every group the workflow needs."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError("data.pattern", f"not a valid regular expression: {error}") from error
    needed = list(REQUIRED_GROUPS) + state_fields(state_format)
    missing = [group for group in needed if group not in regex.groupindex]
    if missing:
        raise ConfigError(
            "data.pattern",
            f"needs the named group(s) {missing} (channel and z, plus every field of "
            f"data.state_format '{state_format}'); it has {sorted(regex.groupindex)}",
        )
    return regex


def format_state(fields: dict, state_format: str) -> str:
    return state_format.format(**fields)


def channel_key(value: object, channels: dict) -> str | None:
    """The ``data.channels`` key that a parsed channel value refers to, or None."""
    wanted = parse_value(value)
    for key in channels:
        if parse_value(key) == wanted:
            return str(key)
    return None


def _finish_records(rows: list[dict], data_cfg: dict, source: str | Path) -> pd.DataFrame:
    """Map channels to modalities, name states, and refuse duplicates and unknown planes."""
    channels = data_cfg["channels"]
    planes = {int(z) for z in data_cfg["planes"]}
    for row in rows:
        key = channel_key(row["channel"], channels)
        if key is None:
            raise InputError(
                row["path"],
                f"channel '{row['channel']}' is not in data.channels (known: {', '.join(map(str, channels))})",
            )
        row["channel"] = key
        row["modality"] = channels[key]
        if not isinstance(row["z"], int):
            raise InputError(row["path"], f"focal plane '{row['z']}' is not a whole number")
        if row["z"] not in planes:
            raise InputError(
                row["path"],
                f"focal plane z{row['z']} is not in data.planes {sorted(planes)} "
                "(add it there, or skip the file with a data.ignore pattern)",
            )
        row["state"] = format_state(row, data_cfg["state_format"])
    if not rows:
        raise InputError(source, "no images found (check data.raw_dir and data.pattern)")
    records = pd.DataFrame(rows)
    duplicated = records.duplicated(subset=["state", "channel", "z"], keep=False)
    if duplicated.any():
        clash = records[duplicated].sort_values(["state", "channel", "z"]).head(2)
        first, second = clash["path"].tolist()
        raise InputError(
            second,
            f"same state ({clash['state'].iloc[0]}), channel ({clash['channel'].iloc[0]}) and plane "
            f"(z{clash['z'].iloc[0]}) as {first}",
        )
    return records.sort_values(["state", "channel", "z"], ignore_index=True)


def scan_folder(raw_dir: str | Path, data_cfg: dict) -> pd.DataFrame:
    """Parse every image file below ``raw_dir`` with ``data.pattern``.

    Files matching a ``data.ignore`` expression are skipped; any other image whose name
    does not parse is an error, so a typo never drops an image unnoticed.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise InputError(raw_dir, "data.raw_dir folder not found")
    compile_pattern(data_cfg["pattern"], data_cfg["state_format"])  # config errors first
    ignore = []
    for expression in complete_section("data", data_cfg)["ignore"]:
        try:
            ignore.append(re.compile(expression))
        except re.error as error:
            raise ConfigError(
                "data.ignore", f"'{expression}' is not a valid regular expression: {error}"
            ) from error
    paths = []
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        relpath = path.relative_to(raw_dir).as_posix()
        if not any(expression.search(relpath) for expression in ignore):
            paths.append(path)
    return parse_paths(paths, raw_dir, data_cfg)


def parse_paths(paths: list[str | Path], raw_dir: str | Path, data_cfg: dict) -> pd.DataFrame:
    """Records of the given image files, parsed by their path relative to ``raw_dir``."""
    regex = compile_pattern(data_cfg["pattern"], data_cfg["state_format"])
    rows = []
    for path in map(Path, paths):
        relpath = (
            path.relative_to(raw_dir).as_posix() if path.is_relative_to(raw_dir) else path.name
        )
        match = regex.search(relpath)
        if match is None:
            hint = (
                ""
                if path.suffix.lower() in IMAGE_SUFFIXES
                else " (not an image? skip it with data.ignore)"
            )
            raise InputError(
                path, f"name does not match data.pattern '{data_cfg['pattern']}'{hint}"
            )
        fields = {
            name: parse_value(value)
            for name, value in match.groupdict().items()
            if value is not None
        }
        rows.append({"path": str(path), **fields})
    return _finish_records(rows, data_cfg, raw_dir)


def read_sample_sheet(sheet: str | Path, data_cfg: dict, raw_dir: str | Path) -> pd.DataFrame:
    """Records from a CSV with columns path, channel, z and the fields of data.state_format."""
    sheet = Path(sheet)
    if not sheet.is_file():
        raise InputError(sheet, "data.sample_sheet not found")
    try:
        table = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    except Exception as error:
        raise InputError(sheet, f"unreadable sample sheet: {error}") from error
    needed = ["path", *REQUIRED_GROUPS, *state_fields(data_cfg["state_format"])]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise InputError(sheet, f"missing column(s) {missing}; it has {list(table.columns)}")
    rows = []
    for line, row in enumerate(table.to_dict("records"), start=2):
        path = Path(row["path"])
        if not path.is_absolute():
            path = Path(raw_dir) / path
        if not path.is_file():
            raise InputError(sheet, f"line {line}: image {path} not found")
        fields = {name: parse_value(value) for name, value in row.items() if name != "path"}
        rows.append({"path": str(path), **fields})
    return _finish_records(rows, data_cfg, sheet)


def check_complete(records: pd.DataFrame, data_cfg: dict, source: str | Path) -> None:
    """Every state must have every configured plane in every configured channel."""
    planes = sorted(int(z) for z in data_cfg["planes"])
    for state, group in records.groupby("state", sort=True):
        present = set(zip(group["channel"], group["z"], strict=True))
        for channel, modality in data_cfg["channels"].items():
            missing = [z for z in planes if (str(channel), z) not in present]
            if missing:
                example = group["path"].iloc[0]
                raise InputError(
                    source,
                    f"state {state} has no image of channel {channel} ({modality}) at plane(s) "
                    + ", ".join(f"z{z}" for z in missing)
                    + f" (it has e.g. {example})",
                )


def records_from_config(data_cfg: dict, raw_dir: str | Path) -> pd.DataFrame:
    """All raw images of a folder (or sample sheet), checked for completeness by name."""
    if data_cfg.get("sample_sheet"):
        records = read_sample_sheet(data_cfg["sample_sheet"], data_cfg, raw_dir)
        source = data_cfg["sample_sheet"]
    else:
        records = scan_folder(raw_dir, data_cfg)
        source = raw_dir
    check_complete(records, data_cfg, source)
    return records


def study_file_name(
    day: int, time: int, channel: int | str, xy: int, z: int, suffix: str = ".tif"
) -> str:
    """The study's naming scheme, e.g. ``day1t1c1xy10z15.tif``."""
    return f"day{day}t{time}c{channel}xy{xy}z{z}{suffix}"


def demo_records(demo_cfg: dict, data_cfg: dict, raw_dir: str | Path) -> pd.DataFrame:
    """Records of the images the demo generator will write (they need not exist yet)."""
    rows = []
    for day in demo_cfg["days"]:
        for time in demo_cfg["times"]:
            for xy in demo_cfg["xy"]:
                for channel in data_cfg["channels"]:
                    for z in data_cfg["planes"]:
                        name = study_file_name(day, time, channel, xy, z)
                        rows.append(
                            {
                                "path": str(Path(raw_dir) / name),
                                "day": day,
                                "time": time,
                                "channel": channel,
                                "xy": xy,
                                "z": int(z),
                            }
                        )
    return _finish_records(rows, data_cfg, raw_dir)


def states_in_split(records: pd.DataFrame, split_cfg: dict, split: str) -> list[str]:
    """States of the ``test``, ``validation`` or ``train`` split (by ``split.key``)."""
    key = split_cfg["key"]
    if key not in records.columns:
        known = [c for c in records.columns if c not in ("path", "modality")]
        raise ConfigError(
            "split.key", f"'{key}' is not a column of the image records (known: {known})"
        )
    per_state = records.groupby("state")[key].unique()
    mixed = per_state[per_state.map(len) > 1]
    if len(mixed):
        raise ConfigError(
            "split.key", f"'{key}' takes several values within state {mixed.index[0]}"
        )
    value_of_state = per_state.map(lambda values: parse_value(values[0]))
    test = {parse_value(v) for v in split_cfg["test"]}
    validation = {parse_value(v) for v in complete_section("split", split_cfg)["validation"]}
    if split == "test":
        chosen = value_of_state.isin(test)
    elif split == "validation":
        chosen = value_of_state.isin(validation)
    elif split == "train":
        chosen = ~value_of_state.isin(test | validation)
    else:
        raise ValueError(f"unknown split '{split}'")
    return sorted(value_of_state.index[chosen])


def lookup(records: pd.DataFrame, *, state: str, modality: str, z: int) -> str:
    """Path of the one image of a state, modality and plane."""
    hit = records[
        (records["state"] == state) & (records["modality"] == modality) & (records["z"] == int(z))
    ]
    if len(hit) != 1:
        raise InputError(
            state, f"expected one image of modality {modality} at z{z}, found {len(hit)}"
        )
    return hit["path"].iloc[0]
