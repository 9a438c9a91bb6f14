"""The catalogue stage: which state, channel and focal plane each raw image is, and a check
of every image's pixels before any work is done.

**Names** (run when Snakemake parses the workflow, so a bad name stops the run before any
job starts). A *state* is one field of view at one time (the study: day, time point, xy
position); all focal planes of a state share one mask. Names are parsed with a regular
expression whose named groups become columns (the study's ``day1t1c1xy10z15.tif`` by
default), or read from a sample sheet. Only names are looked at, never pixels.

**Pixels** (the ``catalogue`` rule) open every file and read all its pixels. What stops
the run there, with a message naming the file:

* unreadable or truncated images;
* anything but one 2D plane: a z-stack or multi-page TIFF (axes ``ZYX``, ``QYX``, ...,
  named in the message) is refused, since each focal plane is its own file named with
  its ``z``; colour stored channels-first (``SYX``);
* channel counts other than 1 (greyscale), 3 (RGB) and 4 (RGBA);
* pixel types other than unsigned integers, bool and float: a signed integer image;
* float images with NaN or infinite values, or values outside [0, 1] (see
  :data:`FLOAT_TOLERANCE`): later steps take a float image as already scaled to
  [0, 1], while unsigned integers are divided by their type's maximum (uint8 by 255,
  uint16 by 65535);
* images of one state with different heights and widths;
* imported masks (``masks.method: import``) that cannot be label planes of their images:
  colour, float, negative, of another size (:func:`check_mask_pairs`), the same checks the
  masks job makes, before any mask is made.

A blank image (every pixel 0) passes, with one warning naming every blank image: its mask
will be empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import string
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg.config import complete_section
from protoseg.errors import ConfigError, InputError, OutputError
from protoseg.io import IMAGE_SUFFIXES, atomic_path, read_image_axes, write_csv
from protoseg.masks.imported import load_imported_mask
from protoseg.stacks import (
    SUFFIX_FORMATS,
    PlaneAddress,
    is_zarr_folder,
    open_stack,
    pixel_size_um,
    resolve_format,
    source_file,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- names (parse time)
STUDY_PATTERN = r"^day(?P<day>\d+)t(?P<time>\d+)c(?P<channel>\d+)xy(?P<xy>\d+)z(?P<z>\d+)\.tiff?$"
STUDY_STATE_FORMAT = "day{day}t{time}xy{xy}"
REQUIRED_GROUPS = ("channel", "z")
# Fields a microscope container gives each of its planes, for data.state_format: the scene
# (stage position) and time point indices, from 0.
CONTAINER_FIELDS = ("scene", "t")


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


def compile_pattern(pattern: str, state_format: str, containers: bool = False) -> re.Pattern:
    """Compile ``data.pattern`` and check it has every group the workflow needs: channel,
    z and every field of ``data.state_format``; for microscope ``containers`` (files with
    their own Z and C axes) channel and z may come from the file instead, and the state's
    ``scene`` and ``t`` always do."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError("data.pattern", f"not a valid regular expression: {error}") from error
    given = CONTAINER_FIELDS if containers else ()
    needed = [field for field in state_fields(state_format) if field not in given]
    if not containers:
        needed = list(REQUIRED_GROUPS) + needed
    missing = [group for group in needed if group not in regex.groupindex]
    if missing:
        raise ConfigError(
            "data.pattern",
            f"needs the named group(s) {missing} (channel and z, plus every field of "
            f"data.state_format '{state_format}'); it has {sorted(regex.groupindex)}",
        )
    clash = [group for group in CONTAINER_FIELDS if containers and group in regex.groupindex]
    if clash:
        raise ConfigError(
            "data.pattern",
            f"group(s) {clash} would hide the container's own scene and time point indices "
            "(data.state_format can use {scene} and {t}); rename them",
        )
    return regex


def reads_containers(data_cfg: dict) -> bool:
    """Whether the raw images are microscope containers (a file per stack, with its own Z
    and C axes): ``data.format`` names a container format, or it is ``auto`` and
    ``data.pattern`` lacks a channel or z group (the file must then give them)."""
    if data_cfg.get("format", "auto") != "auto":
        return True
    try:
        groups = set(re.compile(data_cfg["pattern"]).groupindex)
    except re.error:
        return False  # compile_pattern says what is wrong
    return not set(REQUIRED_GROUPS) <= groups


def container_rows(path: Path, fields: dict, data_cfg: dict) -> list[dict]:
    """One record per plane and configured channel of every scene and time point of a
    microscope container, from its metadata (no pixel is read).

    Each record's ``path`` is the plane's address (:class:`protoseg.stacks.PlaneAddress`),
    ``file`` the container. ``z`` is the plane number ``data.planes`` gives the Z index
    (one number per index, in order) unless the name gives it (then the file holds one
    plane); channels are ``data.channels`` keys, each a channel name of the file or else
    its index from 0 (a file named with its channel holds one). ``pixel_size``: the file's,
    else ``data.pixel_size``. A file that holds none of these is an :class:`InputError`
    naming it.
    """
    data_format = data_cfg.get("format", "auto")
    resolved = resolve_format(path, data_format)
    if resolved is None:
        raise InputError(
            path,
            "holds a single plane, but data.pattern has no "
            + " and no ".join(group for group in REQUIRED_GROUPS if group not in fields)
            + " group: name each plane's file with its channel and z, or give a z-stack "
            "file (OME-TIFF, OME-Zarr, ND2, CZI, LIF, multi-page TIFF) per state",
        )
    stack = open_stack(path, resolved)
    rows = []
    for scene in range(len(stack.scenes)):
        info = stack.info(scene)
        plane_numbers = container_planes(path, info, fields, data_cfg, len(stack.scenes))
        chosen = container_channels(path, stack, info, fields, data_cfg, scene)
        size = pixel_size_um(info, data_cfg.get("pixel_size"), key="data.pixel_size")
        for t in range(info.times):
            for z_index, z in plane_numbers.items():
                for c_index, channel in sorted(chosen.items()):
                    address = PlaneAddress(str(path), resolved, scene, t, z_index, c_index)
                    rows.append(
                        {
                            **fields,
                            "path": str(address),
                            "file": str(path),
                            "scene": scene,
                            "t": t,
                            "z": z,
                            "channel": channel,
                            "pixel_size": size,
                        }
                    )
    return rows


def container_planes(path, info, fields: dict, data_cfg: dict, scenes: int) -> dict[int, int]:
    """Z index -> plane number of one scene: the name's z for a one-plane file, else
    ``data.planes`` in order (one number per Z index)."""
    where = f" in scene '{info.scene_name}'" if scenes > 1 else ""
    planes = [int(z) for z in data_cfg["planes"]]
    if "z" in fields:
        if info.planes != 1:
            raise InputError(
                path,
                f"its name gives plane z{fields['z']}, but it holds {info.planes} focal "
                f"planes (Z){where}; drop the z group from data.pattern to number the "
                "file's planes with data.planes",
            )
        return {0: fields["z"]}
    if info.planes != len(planes):
        fewer = info.planes < len(planes)
        raise InputError(
            path,
            f"holds {info.planes} focal plane(s) (Z){where}, but data.planes lists "
            f"{len(planes)} ({', '.join(f'z{z}' for z in planes)})"
            + ("" if fewer else "; list one plane number per Z index, in order (data.planes)"),
        )
    return dict(enumerate(planes))


def container_channels(path, stack, info, fields: dict, data_cfg: dict, scene: int) -> dict:
    """C index -> ``data.channels`` key of one scene: the name's channel for a one-channel
    file, else each key as a channel name of the file or its index."""
    if "channel" in fields:
        if len(info.channels) != 1:
            raise InputError(
                path,
                f"its name gives channel '{fields['channel']}', but it holds "
                f"{len(info.channels)} channels ({', '.join(map(repr, info.channels))}); "
                "drop the channel group from data.pattern to map the file's channels "
                "with data.channels",
            )
        return {0: fields["channel"]}
    return {stack.channel_index(str(key), scene): key for key in data_cfg["channels"]}


def raw_files(raw_dir: Path) -> list[Path]:
    """Every file below ``raw_dir``, an OME-Zarr folder (``*.zarr``) counting as one file."""
    found = []
    for root, folders, files in os.walk(raw_dir):
        zarr = [name for name in folders if is_zarr_folder(Path(root) / name)]
        found += [Path(root) / name for name in zarr]
        folders[:] = [name for name in folders if name not in zarr]
        found += [Path(root) / name for name in files]
    return sorted(found)


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
        # An ordinary image is its own file; its pixel size is the config's (or unknown).
        row.setdefault("file", row["path"])
        row.setdefault("pixel_size", data_cfg.get("pixel_size"))
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
        try:
            row["state"] = format_state(row, data_cfg["state_format"])
        except KeyError as error:
            raise InputError(
                row["path"],
                f"data.state_format '{data_cfg['state_format']}' uses {{{error.args[0]}}}, "
                "which neither data.pattern nor the file gives (scene and t come from "
                "microscope containers only)",
            ) from error
    if not rows:
        raise InputError(source, "no images found (check data.raw_dir and data.pattern)")
    records = pd.DataFrame(rows)
    duplicated = records.duplicated(subset=["state", "channel", "z"], keep=False)
    if duplicated.any():
        clash = records[duplicated].sort_values(["state", "channel", "z"]).head(2)
        first, second = clash["path"].tolist()
        files = clash["file"].tolist() if "file" in clash else [first, second]
        hint = (
            ": its scenes or time points need their own states (add {scene} and {t} to "
            "data.state_format)"
            if files[0] == files[1] and first != second
            else ""
        )
        raise InputError(
            second,
            f"same state ({clash['state'].iloc[0]}), channel ({clash['channel'].iloc[0]}) and plane "
            f"(z{clash['z'].iloc[0]}) as {first}{hint}",
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
    # config errors first
    compile_pattern(data_cfg["pattern"], data_cfg["state_format"], reads_containers(data_cfg))
    ignore = []
    for expression in complete_section("data", data_cfg)["ignore"]:
        try:
            ignore.append(re.compile(expression))
        except re.error as error:
            raise ConfigError(
                "data.ignore", f"'{expression}' is not a valid regular expression: {error}"
            ) from error
    paths = []
    for path in raw_files(raw_dir):
        relpath = path.relative_to(raw_dir).as_posix()
        if not any(expression.search(relpath) for expression in ignore):
            paths.append(path)
    return parse_paths(paths, raw_dir, data_cfg)


def parse_paths(paths: list[str | Path], raw_dir: str | Path, data_cfg: dict) -> pd.DataFrame:
    """Records of the given image files, parsed by their path relative to ``raw_dir``."""
    containers = reads_containers(data_cfg)
    regex = compile_pattern(data_cfg["pattern"], data_cfg["state_format"], containers)
    rows = []
    for path in map(Path, paths):
        relpath = (
            path.relative_to(raw_dir).as_posix() if path.is_relative_to(raw_dir) else path.name
        )
        match = regex.search(relpath)
        if match is None:
            known = path.suffix.lower() in IMAGE_SUFFIXES or any(
                path.name.lower().endswith(suffix) for suffix in SUFFIX_FORMATS
            )
            hint = "" if known else " (not an image? skip it with data.ignore)"
            raise InputError(
                path, f"name does not match data.pattern '{data_cfg['pattern']}'{hint}"
            )
        fields = {
            name: parse_value(value)
            for name, value in match.groupdict().items()
            if value is not None
        }
        if containers:
            rows += container_rows(path, fields, data_cfg)
        else:
            rows.append({"path": str(path), **fields})
    return _finish_records(rows, data_cfg, raw_dir)


def match_names(paths: list[str | Path], data_cfg: dict) -> tuple[pd.DataFrame, list[Path]]:
    """Records of the files whose names ``data.pattern`` matches, and the files it does not.

    For files outside ``data.raw_dir`` (new images to predict): the pattern is tried on the
    file's name, then with as many of its parent folders as it needs (``planes/NAME`` for a
    pattern that starts with ``^planes/``). Matched names are checked as the catalogue checks
    them (known channel, a plane of ``data.planes``, no two files of one state, channel and
    plane), and an empty table is returned when none matches.
    """
    regex = compile_pattern(data_cfg["pattern"], data_cfg["state_format"])
    rows, unmatched = [], []
    for path in map(Path, paths):
        parts = path.parts
        match = None
        for start in range(len(parts) - 1, -1, -1):
            match = regex.search("/".join(parts[start:]))
            if match is not None:
                break
        if match is None:
            unmatched.append(path)
            continue
        fields = {
            name: parse_value(value)
            for name, value in match.groupdict().items()
            if value is not None
        }
        rows.append({"path": str(path), **fields})
    if not rows:
        return pd.DataFrame(columns=["path", "channel", "z", "modality", "state"]), unmatched
    return _finish_records(rows, data_cfg, "<inputs>"), unmatched


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


def missing_planes(records: pd.DataFrame, data_cfg: dict) -> list[dict]:
    """Per state and channel whose images lack configured planes: ``state``, ``channel``,
    ``modality``, the ``missing`` planes and an ``example`` file of the state."""
    planes = sorted(int(z) for z in data_cfg["planes"])
    gaps = []
    for state, group in records.groupby("state", sort=True):
        present = set(zip(group["channel"], group["z"], strict=True))
        for channel, modality in data_cfg["channels"].items():
            missing = [z for z in planes if (str(channel), z) not in present]
            if missing:
                gaps.append(
                    {
                        "state": state,
                        "channel": channel,
                        "modality": modality,
                        "missing": missing,
                        "example": group["path"].iloc[0],
                    }
                )
    return gaps


def check_complete(records: pd.DataFrame, data_cfg: dict, source: str | Path) -> None:
    """Every state must have every configured plane in every configured channel."""
    for gap in missing_planes(records, data_cfg)[:1]:
        raise InputError(
            source,
            f"state {gap['state']} has no image of channel {gap['channel']} ({gap['modality']}) "
            "at plane(s) "
            + ", ".join(f"z{z}" for z in gap["missing"])
            + f" (it has e.g. {gap['example']})",
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


def records_key(data_cfg: dict, raw_dir: str | Path) -> str | None:
    """What the records of a folder depend on: the ``data`` section, this module and the
    files' names (and, for microscope containers, whose metadata is read, their sizes and
    modification times). None for a sample sheet (its rows name the files)."""
    if data_cfg.get("sample_sheet") or not Path(raw_dir).is_dir():
        return None
    digest = hashlib.sha1(json.dumps(data_cfg, sort_keys=True, default=str).encode())
    digest.update(_checks_version().encode())
    containers = reads_containers(data_cfg)
    for path in raw_files(Path(raw_dir)):
        digest.update(f"\n{path}".encode())
        if containers:
            digest.update(str(file_stamp(path)).encode())
    return digest.hexdigest()[:20]


def cached_records(data_cfg: dict, raw_dir: str | Path, cache_dir: str | Path) -> pd.DataFrame:
    """:func:`records_from_config`, kept in ``cache_dir`` under :func:`records_key`: each
    parse of the workflow (a cluster job's too) lists the folder and reads the records
    back instead of parsing every name again. A folder whose names changed is parsed anew
    (and every check made again); the cache keeps the newest records only."""
    key = records_key(data_cfg, raw_dir)
    if key is None:
        return records_from_config(data_cfg, raw_dir)
    cached = Path(cache_dir) / f"records-{key}.pkl"
    if cached.is_file():
        try:
            return pd.read_pickle(cached)
        except (OSError, EOFError, ValueError, pickle.UnpicklingError):
            pass  # a damaged cache: parsed anew
    records = records_from_config(data_cfg, raw_dir)
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        for old in Path(cache_dir).glob("records-*.pkl"):
            old.unlink()
        with atomic_path(cached) as tmp:
            records.to_pickle(tmp)
    except (OSError, OutputError):
        pass  # a read-only folder: no cache, the same records
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


class ImageIndex:
    """The image records indexed once, for lookups in constant time (the workflow's input
    functions run once per job, so a scan of the records per call grows with the square of
    the study).

    Keys are (state, modality, z); each path's ``file`` (the container of a plane address,
    else the path) is kept beside it. Built by :func:`index_records`, which refuses two
    records of one state, channel and plane, naming both files.
    """

    def __init__(self, paths: dict, files: dict, planes: Sequence[int]):
        self._paths = paths
        self._files = files
        self.planes = tuple(int(z) for z in planes)
        self._by_state: dict[tuple[str, str], list[str]] = {}

    def path(self, state: str, modality: str, z: int) -> str:
        """Path of the one image of a state, modality and plane."""
        try:
            return self._paths[(state, modality, int(z))]
        except KeyError:
            raise InputError(
                state, f"expected one image of modality {modality} at z{z}, found 0"
            ) from None

    def state_paths(self, state: str, modality: str) -> list[str]:
        """Paths of one state's images of one modality, in the order of ``planes``."""
        key = (state, modality)
        if key not in self._by_state:
            self._by_state[key] = [self.path(state, modality, z) for z in self.planes]
        return list(self._by_state[key])

    def source_files(self, paths: Iterable[str]) -> list[str]:
        """The files on disk behind image paths (a container once), sorted."""
        return sorted({self._files.get(path) or source_file(path) for path in paths})

    def files_of(self, states: Sequence[str], modalities: Sequence[str]) -> list[str]:
        """The files on disk behind the images of ``states`` in ``modalities``."""
        return self.source_files(
            path
            for state in states
            for modality in modalities
            for path in self.state_paths(state, modality)
        )

    def __len__(self) -> int:
        return len(self._paths)


def index_records(records: pd.DataFrame, planes: Sequence[int]) -> ImageIndex:
    """Index image records by (state, modality, z): one pass over the table.

    Two records of one state, channel and plane (or of one state, modality and plane, two
    channels mapped to one modality) are an :class:`InputError` naming both files.
    """
    files = records["file"] if "file" in records else records["path"]
    paths: dict[tuple[str, str, int], str] = {}
    channel_of: dict[tuple[str, str, int], str] = {}
    file_of: dict[str, str] = {}
    for path, file, state, channel, modality, z in zip(
        records["path"].tolist(),
        files.tolist(),
        records["state"].tolist(),
        records["channel"].tolist(),
        records["modality"].tolist(),
        records["z"].tolist(),
        strict=True,
    ):
        key = (str(state), str(modality), int(z))
        if key in paths:
            what = (
                f"channel ({channel})"
                if channel_of[key] == str(channel)
                else f"modality ({modality}, channels {channel_of[key]} and {channel})"
            )
            raise InputError(
                path,
                f"same state ({state}), {what} and plane (z{z}) as {paths[key]}",
            )
        paths[key] = str(path)
        channel_of[key] = str(channel)
        file_of[str(path)] = str(file)
    return ImageIndex(paths, file_of, planes)


# ---------------------------------------------------------------- pixels (the catalogue rule)
STANDARD_COLUMNS = [
    "path",
    "day",
    "time",
    "channel",
    "modality",
    "xy",
    "z",
    "state",
    "height",
    "width",
    "channels",
    "dtype",
    "pixel_size",
    "file",
]
# Channel counts of a plane: greyscale, RGB, RGBA.
CHANNEL_COUNTS = (1, 3, 4)
# Float pixels may stray this far outside [0, 1] (rounding); later steps clip them.
FLOAT_TOLERANCE = 1e-3
# tifffile's axis letters for the rows, columns and colour samples of one plane.
PLANE_AXES = {"Y", "X", "S"}
EXPECTED_LAYOUT = "expected greyscale (1 channel), RGB (3) or RGBA (4), one 2D plane per file"


def plane_layout(path: str | Path, shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    """Height, width and channel count of an image whose axes are ``axes`` (tifffile's letters).

    Other axes of length 1 are ignored (``H x W x 1`` is greyscale; :func:`protoseg.io.read_image`
    drops leading ones, ``1 x H x W``). Raises :class:`InputError` naming the file and its axes
    when it is not one 2D plane of 1, 3 or 4 channels.
    """
    described = f"axes {axes}, shape {'x'.join(map(str, shape))}"
    kept = [
        (axis, size) for axis, size in zip(axes, shape, strict=True) if size > 1 or axis in "YX"
    ]
    letters = "".join(axis for axis, _ in kept)
    sizes = dict(kept)
    if letters in ("YX", "YXS") and axes.startswith("YX"):
        channels = sizes.get("S", 1)
        if channels not in CHANNEL_COUNTS:
            raise InputError(path, f"{channels} channels ({described}); {EXPECTED_LAYOUT}")
        return sizes["Y"], sizes["X"], channels
    if letters in ("SYX", "CYX") and sizes[letters[0]] in (3, 4):
        raise InputError(
            path,
            f"channels-first colour image ({described}); store colour as the last axis "
            f"(height x width x {sizes[letters[0]]})",
        )
    extra = [(axis, size) for axis, size in kept if axis not in PLANE_AXES]
    if "Y" in sizes and "X" in sizes and extra:
        planes = int(np.prod([size for _, size in extra]))
        problem = (
            f"a stack of {planes} planes of {sizes['Y']} x {sizes['X']} pixels ({described}), "
            "e.g. a z-stack or multi-page TIFF. Its name gives its plane (data.pattern has a z "
            "group), so protoseg reads one plane from it: save each plane as its own file, "
            "or read the file as a stack, its planes numbered by data.planes, with a "
            "data.pattern without z and channel groups (docs/troubleshooting.md)"
        )
        if len(shape) == 3 and shape[-1] not in CHANNEL_COUNTS and shape[-1] <= 4:
            # tifffile writes an H x W x 2 array as H pages of W x 2: say both readings.
            problem += (
                f". If it is one {shape[0]} x {shape[1]} image with {shape[-1]} channels: "
                f"{EXPECTED_LAYOUT}"
            )
        raise InputError(path, problem)
    raise InputError(path, f"not one 2D image ({described}); {EXPECTED_LAYOUT}")


def check_pixels(path: str | Path, image: np.ndarray) -> None:
    """Refuse pixel types and values the later steps cannot scale to [0, 1].

    Unsigned integers and bool are always fine (divided by the type's maximum, or 0/1).
    Float images must be finite and within [0, 1] (give or take :data:`FLOAT_TOLERANCE`):
    they are taken as already scaled, so a float image of 0..255 would become all 1.
    """
    dtype = image.dtype
    if np.issubdtype(dtype, np.bool_) or np.issubdtype(dtype, np.unsignedinteger):
        return
    if np.issubdtype(dtype, np.signedinteger):
        low, high = (image.min(), image.max()) if image.size else (0, 0)
        raise InputError(
            path,
            f"signed integer pixels ({dtype}, values {low}..{high}); protoseg scales unsigned "
            "integers by their type's maximum: save the image as uint8 or uint16",
        )
    if not np.issubdtype(dtype, np.floating):
        raise InputError(
            path, f"unsupported pixel type {dtype}; use uint8, uint16 or float in [0, 1]"
        )
    finite = np.isfinite(image)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = bad[0]
        kinds = sorted({"NaN" if np.isnan(v) else "infinite" for v in image[~finite][:1000]})
        raise InputError(
            path,
            f"{len(bad)} {' and '.join(kinds)} pixel value(s) ({dtype}), the first at row "
            f"{first[0]}, column {first[1]}; every pixel must be a finite number",
        )
    if not image.size:
        return
    low, high = float(image.min()), float(image.max())
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        raise InputError(
            path,
            f"float pixels ({dtype}) range from {low:g} to {high:g}, outside [0, 1]; protoseg "
            "takes float images as already scaled to [0, 1]. Divide by the right maximum "
            "(e.g. 255 or 65535) or save the image as uint8/uint16",
        )


def _read_and_describe(path: str | Path) -> tuple[dict, bool]:
    """:func:`describe_image`'s description, and whether the image is blank (all 0)."""
    image, axes = read_image_axes(path)
    height, width, channels = plane_layout(path, image.shape, axes)
    check_pixels(path, image)
    shape = {"height": height, "width": width, "channels": channels, "dtype": str(image.dtype)}
    return shape, not image.any()


def describe_image(path: str | Path) -> dict:
    """Height, width, channels and dtype of one image, after every check of one file."""
    return _read_and_describe(path)[0]


# Columns describe_image gives each image, and what the cache also keeps of it.
DESCRIBED = ("height", "width", "channels", "dtype")
CACHED = (*DESCRIBED, "blank")
# Fewer images than this are described in this process (starting workers costs more).
PARALLEL_FROM = 256


def _described(path: str) -> dict:
    """The description of one image and whether it is blank (every pixel 0)."""
    shape, blank = _read_and_describe(path)
    return {**shape, "blank": blank}


def _describe_or_error(path: str) -> tuple[dict | None, str | None]:
    """:func:`_described` in a worker process: the description, or the problem (an
    InputError does not survive pickling whole)."""
    try:
        return _described(path), None
    except InputError as error:
        return None, error.problem


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, None where it cannot be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def _checks_version() -> str:
    """Changes with this module, so a cache written by other checks is not trusted."""
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]


def read_header_cache(path: str | Path | None) -> dict[str, tuple[tuple[int, int], dict]]:
    """Earlier descriptions (:func:`write_header_cache`): image path -> (its file's size
    and mtime then, its description). Empty when absent, unreadable or made by other
    checks."""
    if not path or not Path(path).is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype={"path": str, "dtype": str, "checks": str})
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    if table.empty or set(table["checks"]) != {_checks_version()}:
        return {}
    return {
        row["path"]: (
            (int(row["size"]), int(row["mtime_ns"])),
            {key: row[key] if key == "dtype" else int(row[key]) for key in CACHED},
        )
        for row in table.to_dict("records")
    }


def write_header_cache(path: str | Path, entries: dict) -> None:
    rows = [
        {"path": image, "size": stamp[0], "mtime_ns": stamp[1], **described}
        for image, (stamp, described) in entries.items()
    ]
    table = pd.DataFrame(rows, columns=["path", "size", "mtime_ns", *CACHED])
    table["checks"] = _checks_version()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, table)
    except (OSError, OutputError) as error:  # the cache only saves time: go on without
        log.warning("catalogue cache not written: %s", error)


def _described_in_workers(paths: list[str], workers: int, progress: bool) -> Iterable:
    """(path, description, problem) of each path, in order, from ``workers`` processes."""
    bar = tqdm(total=len(paths), desc="catalogue", unit="image", disable=not progress)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(paths) >= PARALLEL_FROM else None
    try:
        if pool is None:
            described = ((_described(path), None) for path in paths)
        else:
            chunk = max(1, min(256, len(paths) // (8 * workers)))
            described = pool.map(_describe_or_error, paths, chunksize=chunk)
        for path, (description, problem) in zip(paths, described, strict=True):
            yield path, description, problem
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            # a failure stops the reading: images not yet begun are dropped
            pool.shutdown(wait=True, cancel_futures=True)


def describe_images(
    records: pd.DataFrame,
    progress: bool = True,
    workers: int = 1,
    cache: str | Path | None = None,
) -> pd.DataFrame:
    """Add height, width, channels and dtype, read and checked from each file; warn once
    about the blank ones (:func:`warn_blank`).

    ``workers`` > 1 reads the files in that many processes. ``cache``: a table of earlier
    descriptions keyed by the file's size and modification time: an image whose file has
    not changed is not opened again; the table is rewritten with every image described
    (also when one fails, which then raises :class:`InputError` naming it)."""
    paths = records["path"].tolist()
    files = (records["file"] if "file" in records else records["path"]).tolist()
    known = read_header_cache(cache)
    stamps = {path: file_stamp(file) for path, file in zip(paths, files, strict=True)}
    entries = {
        path: known[path]
        for path in paths
        if path in known and stamps[path] is not None and known[path][0] == stamps[path]
    }
    todo = [path for path in paths if path not in entries]
    try:
        for path, described, problem in _described_in_workers(todo, workers, progress):
            if problem is not None:
                raise InputError(path, problem)
            entries[path] = (stamps[path], described)
    finally:
        if cache and todo:
            write_header_cache(cache, {p: e for p, e in entries.items() if e[0] is not None})
    shapes = [{key: entries[path][1][key] for key in DESCRIBED} for path in paths]
    warn_blank([str(path) for path in paths if entries[path][1]["blank"]])
    return pd.concat([records.reset_index(drop=True), pd.DataFrame(shapes)], axis=1)


def warn_blank(paths: list[str], shown: int = 5) -> None:
    """One warning naming the blank images (every pixel 0): an empty plane or a failed
    acquisition. They pass (a plane can be empty), but their masks will hold no cell."""
    if not paths:
        return
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    log.warning(
        "%d blank image(s), every pixel 0: %s%s; their masks will hold no cell "
        "(an empty plane, or a failed acquisition?)",
        len(paths),
        ", ".join(paths[:shown]),
        more,
    )


def check_mask_pairs(catalogue: pd.DataFrame, mask_pairs: list[tuple[str, str]]) -> None:
    """Each imported mask against the image it belongs to (``(image, mask)`` paths, as the
    masks rule pairs them): found, one integer label plane (not colour, not float, no
    negative labels) of the image's height and width. The first that is not raises
    :class:`InputError` naming the mask, with the masks job's own message."""
    sizes = dict(
        zip(
            catalogue["path"].map(str),
            zip(catalogue["height"], catalogue["width"], strict=True),
            strict=True,
        )
    )
    for image, mask in mask_pairs:
        if str(image) in sizes:  # else the masks job checks it against the image it reads
            load_imported_mask(mask, sizes[str(image)])


def check_shapes(catalogue: pd.DataFrame) -> None:
    """All images of a state (both channels, all planes) must share height and width."""
    for state, group in catalogue.groupby("state", sort=True):
        sizes = group[["height", "width"]].drop_duplicates()
        if len(sizes) > 1:
            reference = group.iloc[0]
            odd = group[
                (group["height"] != reference["height"]) | (group["width"] != reference["width"])
            ].iloc[0]
            raise InputError(
                odd["path"],
                f"shape {odd['height']}x{odd['width']} differs from the other images of state {state} "
                f"({reference['height']}x{reference['width']}, e.g. {reference['path']})",
            )


def build_catalogue(
    paths: list[str | Path],
    raw_dir: str | Path,
    data_cfg: dict,
    progress: bool = True,
    mask_pairs: list[tuple[str, str]] = (),
    workers: int = 1,
    cache: str | Path | None = None,
) -> pd.DataFrame:
    """Parse, open and check every image, and the imported masks of ``mask_pairs``
    (:func:`check_mask_pairs`); return the catalogue table. ``workers`` and ``cache``: see
    :func:`describe_images`."""
    if not paths:
        raise InputError(raw_dir, "no images found (check data.raw_dir and data.pattern)")
    if data_cfg.get("sample_sheet"):
        # The sheet, not the names, says what each file is.
        records = read_sample_sheet(data_cfg["sample_sheet"], data_cfg, raw_dir)
        records = records[records["file"].isin([str(path) for path in paths])].reset_index(
            drop=True
        )
    else:
        records = parse_paths(paths, raw_dir, data_cfg)
    check_complete(records, data_cfg, data_cfg.get("sample_sheet") or raw_dir)
    catalogue = describe_images(records, progress=progress, workers=workers, cache=cache)
    check_shapes(catalogue)
    check_mask_pairs(catalogue, mask_pairs)
    ordered = [c for c in STANDARD_COLUMNS if c in catalogue.columns]
    return catalogue[ordered + [c for c in catalogue.columns if c not in ordered]]
