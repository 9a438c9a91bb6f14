"""Microscope containers (OME-TIFF, OME-Zarr, Nikon ND2, Zeiss CZI, Leica LIF, multi-plane
TIFF) read through bioio: what a file holds, and one plane at a time.

A microscope writes one file per stack: scenes (stage positions), time points, focal
planes (Z) and channels (C), each plane Y x X, with the pixel size in its metadata.
:class:`Stack` opens such a file with the bioio plugin of its format and reports, per
scene, a :class:`StackInfo` (time points, planes, channel names, height, width, dtype,
pixel size in micrometres); :meth:`Stack.read_plane` reads one plane (scene, t, z, c)
lazily, through bioio's dask array, so only that plane's chunks are read from disk.

Formats (``data.format``) and the bioio plugin that reads each:

========== ================== =====================================
format     plugin             files
========== ================== =====================================
ome-tiff   bioio-ome-tiff     ``.ome.tif``, ``.ome.tiff``, TIFFs with OME-XML
ome-zarr   bioio-ome-zarr     ``.zarr`` folders (NGFF)
nd2        bioio-nd2          ``.nd2`` (Nikon)
czi        bioio-czi          ``.czi`` (Zeiss)
lif        bioio-lif          ``.lif`` (Leica)
tiff       bioio-tifffile     other multi-plane TIFFs (ImageJ hyperstacks, ...)
========== ================== =====================================

``auto`` (:func:`resolve_format`) chooses by the file's name, and for a ``.tif``/``.tiff``
by its header: OME-XML -> ``ome-tiff``; more than one plane -> ``tiff``; a single plane (or
a PNG, JPEG, BMP) -> ``None``, i.e. an ordinary image for :func:`protoseg.io.read_image`,
read exactly as before containers were supported.

Pixel sizes are converted to micrometres with the unit the file states (OME-XML's
``PhysicalSizeXUnit``, NGFF's axis units, ND2's metadata; CZI and LIF readers already give
micrometres). A TIFF that states no length unit (resolution unit ``NONE`` or ``INCH``, the
dots per inch of image editors) has no pixel size. Every problem is an
:class:`~protoseg.errors.InputError` naming the file: a corrupt container (naming the
reader), a pixel size of zero, a channel name or a plane the file does not have.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protoseg.errors import InputError
from protoseg.formats import IMAGE_SUFFIXES, TIFF_SUFFIXES

# format name -> (bioio plugin distribution, its module, what to call the format in messages)
PLUGINS = {
    "ome-tiff": ("bioio-ome-tiff", "bioio_ome_tiff", "OME-TIFF"),
    "ome-zarr": ("bioio-ome-zarr", "bioio_ome_zarr", "OME-Zarr"),
    "nd2": ("bioio-nd2", "bioio_nd2", "Nikon ND2"),
    "czi": ("bioio-czi", "bioio_czi", "Zeiss CZI"),
    "lif": ("bioio-lif", "bioio_lif", "Leica LIF"),
    "tiff": ("bioio-tifffile", "bioio_tifffile", "multi-plane TIFF"),
}
STACK_FORMATS = tuple(PLUGINS)
# What data.format takes: auto, or one of the containers.
FORMATS = ("auto", *STACK_FORMATS)
# File name endings that are a container whatever their header says (lower case).
SUFFIX_FORMATS = {
    ".ome.tif": "ome-tiff",
    ".ome.tiff": "ome-tiff",
    ".ome.zarr": "ome-zarr",
    ".zarr": "ome-zarr",
    ".nd2": "nd2",
    ".czi": "czi",
    ".lif": "lif",
}
# Pixel sizes whose X and Y differ by more than this (relative) are not square.
SQUARE_TOLERANCE = 0.01


# ---------------------------------------------------------------- which reader
def resolve_format(path: str | Path, data_format: str = "auto") -> str | None:
    """The container format of ``path`` (a key of :data:`PLUGINS`), or ``None`` for an
    ordinary single-plane image that :func:`protoseg.io.read_image` reads.

    ``data_format`` names the format (``ome-tiff``, ``czi``, ...) or is ``auto``: by the
    name's ending (:data:`SUFFIX_FORMATS`), and for other TIFFs by their header (OME-XML ->
    ``ome-tiff``, more than one plane -> ``tiff``, one plane -> ``None``). An unknown
    format, or a file that ``auto`` cannot place, is an :class:`InputError`.
    """
    path = Path(path)
    if data_format != "auto":
        if data_format not in PLUGINS:
            raise InputError(
                path, f"unknown image format '{data_format}' (use one of {', '.join(FORMATS)})"
            )
        return data_format
    name = path.name.lower()
    for suffix, found in SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return found
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        is_ome, planes = tiff_header(path)
        if is_ome:
            return "ome-tiff"
        return "tiff" if planes > 1 else None
    if suffix in IMAGE_SUFFIXES:
        return None
    known = sorted(IMAGE_SUFFIXES | set(SUFFIX_FORMATS))
    raise InputError(path, f"not an image file protoseg reads (use one of {', '.join(known)})")


def tiff_header(path: str | Path) -> tuple[bool, int]:
    """Whether a TIFF carries OME-XML, and how many planes its first series holds (every
    axis but a plane's rows, columns and colour samples), from its header alone."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            planes = math.prod(
                size
                for size, axis in zip(series.shape, series.axes, strict=True)
                if axis not in "YXS"
            )
            return bool(tif.is_ome), int(planes)
    except Exception as error:  # tifffile raises many types for corrupt files
        raise InputError(
            path, f"unreadable or truncated TIFF ({type(error).__name__}: {error})"
        ) from error


def reader_class(data_format: str):
    """The bioio ``Reader`` class of a container format (its plugin imported on demand)."""
    plugin, module, _ = PLUGINS[data_format]
    try:
        return importlib.import_module(module).Reader
    except ImportError as error:  # pragma: no cover - every plugin is in requirements.lock
        raise InputError(
            plugin, f"bioio plugin not installed ({error}); install protoseg's requirements.lock"
        ) from error


# ---------------------------------------------------------------- what a stack holds
@dataclass(frozen=True)
class StackInfo:
    """One scene of a container: its axes' sizes, channel names, pixel type and size."""

    path: Path
    format: str
    reader: str  # the bioio plugin, e.g. "bioio-ome-tiff"
    scene: int
    scene_name: str
    times: int  # T
    planes: int  # Z
    channels: tuple[str, ...]  # C, by name (bioio makes names up where the file has none)
    height: int  # Y
    width: int  # X
    samples: int  # S: colour samples per pixel (3 for an RGB camera), 1 otherwise
    dtype: str
    pixel_size_y: float | None  # micrometres per pixel, None when the file does not say
    pixel_size_x: float | None
    # Micrometres between focal planes, None when the file does not say (or holds one plane).
    plane_spacing: float | None = None

    @property
    def pixel_size(self) -> float | None:
        """Micrometres per pixel (X and Y alike), or None when the file does not say.

        Pixels that are not square (X and Y differ by more than 1 %) are an
        :class:`InputError`: protoseg rescales an image by one factor.
        """
        sizes = [size for size in (self.pixel_size_y, self.pixel_size_x) if size is not None]
        if not sizes:
            return None
        if len(sizes) == 2 and abs(sizes[0] - sizes[1]) > SQUARE_TOLERANCE * max(sizes):
            raise InputError(
                self.path,
                f"pixels are not square (Y {sizes[0]:.4g} um, X {sizes[1]:.4g} um in scene "
                f"'{self.scene_name}'); protoseg rescales by one factor: resample the file first",
            )
        return sizes[-1]


class Stack:
    """A microscope container opened through bioio; the file stays open for lazy reads.

    ``Stack(path, data_format="auto")``; use as a context manager, or call :meth:`close`.
    ``scenes`` lists the file's scenes; :meth:`info` describes one; :meth:`channel_index`
    turns a channel name or index into an index; :meth:`read_plane` reads one plane.
    """

    def __init__(self, path: str | Path, data_format: str = "auto"):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "file not found")
        resolved = resolve_format(self.path, data_format)
        if resolved is None:
            raise InputError(
                self.path,
                "holds a single plane, not a stack: read it as an ordinary image "
                "(data.format auto), or name its container format",
            )
        self.format = resolved
        self.reader, _, self.kind = PLUGINS[resolved]
        from bioio import BioImage

        reader = reader_class(resolved)
        try:
            self._image = BioImage(self.path, reader=reader)
            self.scenes: tuple[str, ...] = tuple(str(scene) for scene in self._image.scenes)
        except Exception as error:  # each reader raises its own types for a corrupt file
            own = _own_error(reader, self.path) or error
            raise InputError(self.path, self._corrupt(own)) from own
        self._infos: dict[int, StackInfo] = {}

    def _corrupt(self, error: BaseException) -> str:
        """What is wrong with a container the reader refused, naming the reader."""
        problem = describe_error(error)
        if "physical_size" in problem:
            problem = f"a pixel size of zero or less in its metadata ({problem})"
        return f"not a readable {self.kind} file (reader {self.reader}: {problem})"

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        reader = getattr(self._image, "_reader", None)
        close = getattr(reader, "close", None)
        if callable(close):
            close()

    # ---------------------------------------------------------------- metadata
    def _scene(self, scene: int | str) -> int:
        """A scene's index from its index or name; an :class:`InputError` if there is none."""
        if isinstance(scene, str):
            if scene in self.scenes:
                return self.scenes.index(scene)
            if not scene.lstrip("-").isdigit():
                raise InputError(
                    self.path, f"has no scene '{scene}' (scenes: {', '.join(self.scenes)})"
                )
        index = int(scene)
        if not 0 <= index < len(self.scenes):
            raise InputError(
                self.path,
                f"has {len(self.scenes)} scene(s) (0..{len(self.scenes) - 1}); scene {index} asked",
            )
        return index

    def _select(self, scene: int) -> None:
        try:
            if self._image.current_scene_index != scene:
                self._image.set_scene(scene)
        except Exception as error:
            raise InputError(self.path, self._corrupt(error)) from error

    def info(self, scene: int | str = 0) -> StackInfo:
        """What ``scene`` (index or name) holds; pixel sizes in micrometres (checked)."""
        index = self._scene(scene)
        if index not in self._infos:
            self._select(index)
            try:
                dims = self._image.dims
                sizes = dict(zip(dims.order, dims.shape, strict=True))
                channels = tuple(str(name) for name in self._image.channel_names)
                dtype = str(np.dtype(self._image.dtype))
                pixel_y, pixel_x = self._pixel_sizes()
                spacing = self._plane_spacing() if sizes.get("Z", 1) > 1 else None
            except InputError:
                raise
            except Exception as error:
                raise InputError(self.path, self._corrupt(error)) from error
            self._infos[index] = StackInfo(
                path=self.path,
                format=self.format,
                reader=self.reader,
                scene=index,
                scene_name=self.scenes[index],
                times=int(sizes.get("T", 1)),
                planes=int(sizes.get("Z", 1)),
                channels=channels,
                height=int(sizes["Y"]),
                width=int(sizes["X"]),
                samples=int(sizes.get("S", 1)),
                dtype=dtype,
                pixel_size_y=pixel_y,
                pixel_size_x=pixel_x,
                plane_spacing=spacing,
            )
        return self._infos[index]

    def _pixel_sizes(self) -> tuple[float | None, float | None]:
        """(Y, X) micrometres per pixel of the current scene, None where the file says nothing."""
        sizes = self._image.physical_pixel_sizes
        units = self._length_units()
        result = []
        for axis, value in (("Y", sizes.Y), ("X", sizes.X)):
            if value is None or units.get(axis, "") is None:
                result.append(None)
                continue
            value = float(value)
            if units.get(axis):
                from bioio_base.types import ureg

                value = float(ureg.Quantity(value, units[axis]).to("micrometer").magnitude)
            if not math.isfinite(value) or value <= 0:
                raise InputError(
                    self.path,
                    f"pixel size of {value:g} um along {axis} in its metadata (scene "
                    f"'{self._image.current_scene}'): a pixel size must be positive; fix the "
                    "file's metadata",
                )
            result.append(value)
        return result[0], result[1]

    def _plane_spacing(self) -> float | None:
        """Micrometres between the current scene's focal planes, None where the file says
        nothing usable (a spacing of zero or less is left out, not refused: only the
        OME-Zarr output's z scale uses it)."""
        value = self._image.physical_pixel_sizes.Z
        unit = self._length_units(("Z",)).get("Z", "")
        if value is None or unit is None:
            return None
        value = float(value)
        if unit:
            from bioio_base.types import ureg

            value = float(ureg.Quantity(value, unit).to("micrometer").magnitude)
        return value if math.isfinite(value) and value > 0 else None

    def _length_units(self, axes: Sequence[str] = ("Y", "X")) -> dict[str, str | None]:
        """Unit of the physical sizes of ``axes`` (pint names) where the file states one; an
        axis mapped to None has no usable size; an axis left out is in micrometres."""
        properties = self._image.dimension_properties
        stated = {axis: getattr(properties, axis).unit for axis in axes}
        if any(unit is not None for unit in stated.values()):
            return {axis: None if unit is None else str(unit) for axis, unit in stated.items()}
        if self.format == "ome-zarr":  # an NGFF scale without a unit is no physical size
            return dict.fromkeys(axes)
        images = getattr(self._image.reader.metadata, "images", None)  # ome_types.OME
        if images:
            pixels = images[self._image.current_scene_index].pixels
            units = {}
            for axis in axes:
                name = f"physical_size_{axis.lower()}"
                units[axis] = (
                    str(getattr(pixels, f"{name}_quantity").units)
                    if getattr(pixels, name) is not None
                    else None
                )
            return units
        if self.format == "tiff" and not _tiff_states_length_unit(self.path):
            return dict.fromkeys(axes)
        return {}  # ND2, CZI, LIF: the readers give micrometres

    def channel_index(self, channel: int | str, scene: int | str = 0) -> int:
        """The index of ``channel`` in ``scene``: a name the file gives (names are matched
        first, so a channel named "1" is found by its name), or an index."""
        info = self.info(scene)
        if isinstance(channel, str):
            if channel in info.channels:
                return info.channels.index(channel)
            if not channel.lstrip("-").isdigit():
                raise InputError(
                    self.path,
                    f"has no channel named '{channel}' (channels: "
                    f"{', '.join(repr(name) for name in info.channels)})",
                )
        index = int(channel)
        if not 0 <= index < len(info.channels):
            raise InputError(
                self.path,
                f"has {len(info.channels)} channel(s) (0..{len(info.channels) - 1}); "
                f"channel {index} asked",
            )
        return index

    # ---------------------------------------------------------------- pixels
    def read_plane(
        self, z: int = 0, channel: int | str = 0, t: int = 0, scene: int | str = 0
    ) -> np.ndarray:
        """One plane as stored: (Y, X), or (Y, X, S) for colour samples. Only its chunks are
        read (bioio's dask array). A plane, time point or channel the scene does not have is
        an :class:`InputError` naming the file."""
        info = self.info(scene)
        c = self.channel_index(channel, info.scene)
        for name, value, size in (("plane (Z)", z, info.planes), ("time point", t, info.times)):
            if not 0 <= int(value) < size:
                raise InputError(
                    self.path,
                    f"has {size} {name} index(es) 0..{size - 1} in scene '{info.scene_name}'; "
                    f"index {value} asked",
                )
        self._select(info.scene)
        order = "YXS" if info.samples > 1 else "YX"
        try:
            plane = self._image.get_image_dask_data(order, T=int(t), C=c, Z=int(z)).compute()
        except Exception as error:
            raise InputError(
                self.path,
                f"could not read plane z={z}, c={c}, t={t} of scene '{info.scene_name}' "
                f"(reader {self.reader}: {type(error).__name__}: {error})",
            ) from error
        return np.asarray(plane)


def _own_error(reader, path: Path) -> BaseException | None:
    """The error the bioio ``reader`` class itself raises on ``path`` (None if it opens it).

    BioImage replaces a reader's error by "none of the specified readers were able to read
    this image"; called directly, the reader says what is wrong."""
    try:
        reader(path)
    except Exception as error:
        return error
    return None


def describe_error(error: BaseException) -> str:
    """One line saying what a reader's exception (and the errors it was raised from) says:
    a pydantic validation error of the metadata as ``field: problem (got value)``."""
    from pydantic import ValidationError

    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for cause in seen:
        if isinstance(cause, ValidationError):
            return "; ".join(
                f"{cause.title}.{'.'.join(str(part) for part in item['loc'])}: {item['msg']} "
                f"(got {item.get('input')!r})"
                for item in cause.errors()
            )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _tiff_states_length_unit(path: Path) -> bool:
    """Whether a plain TIFF states its pixel size in a length unit (ImageJ's ``unit``, or a
    centimetre or millimetre resolution unit); tifffile's defaults and inches do not count."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_imagej:
            unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
            return unit not in ("", "pixel", "pixels", "none", "inch")
        tag = tif.series[0].pages[0].tags.get("ResolutionUnit")
        return tag is not None and tag.value in (
            tifffile.RESUNIT.CENTIMETER,
            tifffile.RESUNIT.MILLIMETER,
            tifffile.RESUNIT.MICROMETER,
        )


# ---------------------------------------------------------------- checks for callers
def require_planes(info: StackInfo, wanted: Sequence[int] | int, key: str = "data.planes") -> None:
    """An :class:`InputError` unless the scene's Z axis holds the planes ``wanted`` asks for
    (a count, or the list of plane numbers of config ``key``, one per Z index)."""
    count = wanted if isinstance(wanted, int) else len(wanted)
    if info.planes < count:
        raise InputError(
            info.path,
            f"holds {info.planes} focal plane(s) (Z) in scene '{info.scene_name}', but {key} "
            f"asks for {count}",
        )


def configured_pixel_size(value: float | None, key: str = "") -> float | None:
    """A configured pixel size (micrometres per pixel, e.g. ``data.pixel_size``) as a
    float, or None; zero, negative or non-finite sizes are a :class:`ConfigError` naming
    ``key``."""
    from protoseg.errors import ConfigError

    if value is None:
        return None
    if not math.isfinite(float(value)) or float(value) <= 0:
        raise ConfigError(key or "pixel size", f"must be a positive number of um, got {value}")
    return float(value)


def pixel_size_um(
    info: StackInfo, configured: float | None = None, needed: bool = False, key: str = ""
) -> float | None:
    """Micrometres per pixel of a scene: the file's, else ``configured`` (a config value,
    ``key`` names it in messages), else None; with ``needed`` (micrometres were asked for),
    None is an :class:`InputError` saying where to give one. A configured size of zero or
    less is refused, naming ``key``."""
    configured = configured_pixel_size(configured, key)
    size = info.pixel_size if info.pixel_size is not None else configured
    if size is None and needed:
        raise InputError(
            info.path,
            "states no pixel size in its metadata and none is configured"
            + (f" ({key})" if key else "")
            + ", but a size in micrometres was asked for",
        )
    return size


# ---------------------------------------------------------------- one plane of a container
# A plane's address is the text ``FILE::FORMAT:sSCENE:tT:zZ:cC`` (indices from 0). The
# catalogue's ``path`` column holds it for a container's planes (a plain path for an
# ordinary image), so every stage that reads a raw image reads a plane of a container
# through the same :func:`protoseg.io.read_image` call.
ADDRESS = re.compile(
    r"^(?P<file>.+)::(?P<format>[a-z0-9-]+):s(?P<scene>\d+):t(?P<t>\d+):z(?P<z>\d+):c(?P<c>\d+)$"
)
# Containers kept open between plane reads (a job reads a state's planes one after another).
OPEN_STACKS = 4
_open: OrderedDict[tuple, Stack] = OrderedDict()


@dataclass(frozen=True)
class PlaneAddress:
    """Where one plane lies in a container: file, format, scene, time point, Z and C index."""

    file: str
    format: str
    scene: int
    t: int
    z: int
    c: int

    def __str__(self) -> str:
        return f"{self.file}::{self.format}:s{self.scene}:t{self.t}:z{self.z}:c{self.c}"

    @classmethod
    def parse(cls, text: str | Path) -> PlaneAddress | None:
        """The address written in ``text``, or None for a plain file path."""
        match = ADDRESS.match(str(text))
        if match is None or match["format"] not in PLUGINS:
            return None
        fields = match.groupdict()
        return cls(
            file=fields["file"],
            format=fields["format"],
            **{key: int(fields[key]) for key in ("scene", "t", "z", "c")},
        )


def is_zarr_folder(path: str | Path) -> bool:
    """Whether ``path`` is an OME-Zarr folder: one image, not a folder of images."""
    path = Path(path)
    return path.name.lower().endswith(".zarr") and path.is_dir()


def source_file(source: str | Path) -> str:
    """The file on disk behind a catalogue ``path``: a plane address's container, or the
    path itself (what Snakemake must see as a rule's input)."""
    address = PlaneAddress.parse(source)
    return str(source) if address is None else address.file


def open_stack(path: str | Path, data_format: str) -> Stack:
    """A :class:`Stack` of ``path``, kept open for the next reads (the last few files); a
    file changed since it was opened (size or modification time) is opened again."""
    try:
        status = Path(path).stat()
    except OSError:
        return Stack(path, data_format)  # says the file is missing
    key = (str(path), data_format, status.st_mtime_ns, status.st_size)
    if key in _open:
        _open.move_to_end(key)
        return _open[key]
    stack = Stack(path, data_format)
    _open[key] = stack
    while len(_open) > OPEN_STACKS:
        _open.popitem(last=False)[1].close()
    return stack


def read_address(address: PlaneAddress) -> np.ndarray:
    """The plane at ``address``: (Y, X), or (Y, X, S) for colour samples."""
    return open_stack(address.file, address.format).read_plane(
        z=address.z, channel=address.c, t=address.t, scene=address.scene
    )
