"""Reading images and writing outputs atomically.

Every writer goes through :func:`atomic_path`: the data is written to a
temporary file beside the target and renamed into place, so an interrupted or
failed step never leaves a half-written output that Snakemake would trust.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from protoseg.errors import InputError, OutputError
from protoseg.formats import IMAGE_SUFFIXES, OTHER_IMAGE_SUFFIXES, TIFF_SUFFIXES

# What C++ writers (torch.save's zip writer, OpenCV) raise as RuntimeError when a write
# fails: no errno, often no file name ("basic_ios::clear: iostream error").
WRITE_FAILURE_TEXTS = (
    "basic_ios::clear",
    "iostream error",
    "PytorchStreamWriter failed",
    "file write failed",
    "No space left",
    # torch.save closing its zip after a failed write: "[enforce fail at
    # inline_container.cc:672] . unexpected pos 983104 vs 982992".
    "enforce fail at inline_container",
    "unexpected pos",
)
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Less free space than this after a failed write: the disk is full, whatever the error said.
NEARLY_FULL_BYTES = 2**20


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was. A
    failed write (``OSError``, or a C++ writer's ``RuntimeError`` such as torch's
    "basic_ios::clear") becomes an :class:`OutputError` naming ``path`` and saying
    whether the disk is full. Temporary files of ``path`` left by a killed process
    (``kill -9``, power cut) are removed before it is written again.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
        )
        os.close(fd)
    except OSError as error:
        raise write_error(path, error) from error
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            # mkstemp makes the file private (0600); give it the permissions of a normal file.
            os.chmod(tmp, 0o666 & ~_current_umask())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:
            if not is_write_failure(error, path, tmp):
                raise
            raise write_error(path, error) from error
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (a folder
    output: a bioimage.io package, an OME-Zarr), as :func:`atomic_path` does for a file.

    On an exception the temporary folder is removed and ``path`` is left as it was. An
    existing ``path`` folder is replaced by two renames (the old one is moved aside, then
    removed), so a reader sees the old or the new folder, never a half-written one.
    Temporary folders of ``path`` left by a killed process are removed first. A failed
    write becomes an :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(path, "exists and is not a folder; remove it or choose another")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmpdir"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent))
    except OSError as error:
        raise write_error(path, error) from error
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_current_umask())
            if path.exists():
                old = Path(
                    tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent)
                )
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except (OSError, RuntimeError) as error:
            inside = isinstance(error, OSError) and str(error.filename or "").startswith(str(tmp))
            if not (inside or is_write_failure(error, path, tmp)):
                raise
            raise write_error(path, error) from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def temporary_pattern(path: str | Path) -> str:
    """Glob pattern of the temporary files :func:`atomic_path` makes for ``path``."""
    path = Path(path)
    return f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporary files of ``path`` that a killed writer left behind; return them.

    One job writes one output, so a temporary file of ``path`` that exists before the
    next write of ``path`` starts belongs to a process that is gone.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(temporary_pattern(path)))
    for old in stale:
        old.unlink(missing_ok=True)
    return stale


def is_write_failure(error: BaseException, path: Path, tmp: Path) -> bool:
    """Whether ``error``, raised while writing ``tmp`` for ``path``, is a failed write.

    An ``OSError`` about another file (say, an input read inside the ``with`` block) is
    not one: it keeps its own message.
    """
    if isinstance(error, OSError):
        if error.errno in DISK_FULL_ERRNOS:
            return True
        names = {str(tmp), str(path), str(tmp.parent), str(path.parent)}
        return error.filename is None or str(error.filename) in names
    # torch.save raises a second error while closing the file after the first failed write:
    # every error of the chain counts.
    chain = [error, error.__context__, error.__cause__]
    return any(
        isinstance(link, RuntimeError) and any(text in str(link) for text in WRITE_FAILURE_TEXTS)
        for link in chain
    )


def free_bytes(folder: str | Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_error(path: Path, error: BaseException) -> OutputError:
    """An :class:`OutputError` naming ``path`` that says what went wrong, disk full or not."""
    detail = f"{type(error).__name__}: {error}"
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path.cwd())
    free = free_bytes(folder)
    space = f"{free / 2**20:.1f} MiB free in {folder}" if free is not None else ""
    disk_full = (
        (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS)
        or "No space left" in str(error)
        or (free is not None and free < NEARLY_FULL_BYTES)
    )
    again = "Free some space, then run again: finished outputs are kept"
    if disk_full:
        problem = (
            f"could not write it: the disk is full (no space left on device; {space}). {again}"
        )
    elif isinstance(error, RuntimeError):
        # torch's and OpenCV's C++ streams fail without an errno; a full disk is the usual cause.
        problem = (
            "could not write it: the writer failed without saying why, most likely because "
            f"the disk is full ({space}). {again}"
        )
    else:
        return OutputError(path, f"could not write it ({detail})")
    return OutputError(path, f"{problem} ({detail})")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF or PNG/JPEG image as it is stored (RGB order for colour images), or one
    plane of a microscope container given by its address (``FILE::FORMAT:s0:t0:z3:c1``, the
    catalogue's ``path`` of a container's plane: :class:`protoseg.stacks.PlaneAddress`).

    Raises :class:`InputError` naming the file when it is missing, unreadable or
    truncated.
    """
    if "::" in str(path):
        from protoseg.stacks import PlaneAddress, read_address  # here: bioio loads late

        address = PlaneAddress.parse(path)
        if address is not None:
            return read_address(address)
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        image, _ = _read_tiff(path)
    elif suffix in OTHER_IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputError(path, "unreadable or truncated image (OpenCV could not decode it)")
        if image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(
                image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
            )
    else:
        raise InputError(
            path, f"unsupported image type '{path.suffix}' (use one of {sorted(IMAGE_SUFFIXES)})"
        )
    if image.ndim not in (2, 3):
        raise InputError(
            path, f"expected a 2D greyscale or colour image, got an array of shape {image.shape}"
        )
    return np.asarray(image)


def read_image_axes(path: str | Path) -> tuple[np.ndarray, str]:
    """The pixels of an image file as stored, and what each axis is.

    Axes use tifffile's letters: ``Y`` and ``X`` the rows and columns of a plane, ``S``
    the samples (colour channels) of a pixel, ``Z`` focal planes, ``C`` channels, ``T``
    time, ``Q``/``I`` unnamed pages. For a TIFF they are those of its first series
    (``YX``, ``YXS``, a z-stack ``ZYX`` or ``QYX``, ...); other formats hold one plane,
    ``YX`` or ``YXS``. Unlike :func:`read_image`, any number of axes is returned, so the
    caller can say what a file holds. Raises :class:`InputError` naming the file when it
    is missing, unreadable or truncated.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        return _read_tiff(path)
    image = read_image(path)
    return image, "YX" if image.ndim == 2 else "YXS"


def read_planes(path: str | Path) -> list[np.ndarray]:
    """The focal planes of an image file, each as :func:`read_image` returns one image: the
    pages of a multi-page TIFF (a z-stack, axes ``ZYX``, ``QYX``, ``ZYXS``, ...), in file
    order, or the one plane of any other image. Raises :class:`InputError` naming the file
    when it holds more than one axis besides a plane's (e.g. time and z)."""
    image, axes = read_image_axes(path)
    if axes in ("YX", "YXS"):
        return [image]
    if len(axes) == image.ndim and axes[0] not in "YXS" and axes[1:] in ("YX", "YXS"):
        return [np.asarray(page) for page in image]
    if axes == "SYX":
        raise InputError(
            path,
            f"holds one image of {image.shape[0]} colour samples stored one after the other "
            f"(axes SYX, shape {'x'.join(map(str, image.shape))}), which is how tifffile "
            "stores 3 or 4 planes written as one array: if they are focal planes, save them "
            "as pages (tifffile.imwrite(..., photometric='minisblack'))",
        )
    raise InputError(
        path,
        f"not one plane or one stack of planes (axes {axes}, shape "
        f"{'x'.join(map(str, image.shape))}); expected pages of greyscale or colour planes",
    )


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    """A TIFF's first series and its axes, without leading axes of length 1 (``1 x H x W``)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            image, axes = np.asarray(series.asarray()), str(series.axes)
    except Exception as error:  # tifffile raises many types for corrupt files
        raise InputError(
            path, f"unreadable or truncated TIFF ({type(error).__name__}: {error})"
        ) from error
    while image.ndim > 2 and image.shape[0] == 1 and axes[0] not in "YX":
        image, axes = image[0], axes[1:]
    return image, axes


def image_header(path: str | Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of an image (decoded whole: a truncated file often has an intact header)."""
    image, _ = read_image_axes(path)
    return tuple(image.shape), str(image.dtype)


def write_tiff(path: str | Path, array: np.ndarray, **kwargs) -> None:
    """Write ``array`` as a (zlib-compressed) TIFF atomically."""
    kwargs.setdefault("compression", "zlib")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)


def write_csv(path: str | Path, table: pd.DataFrame, **kwargs) -> None:
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, **kwargs)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB (or greyscale) uint8 image as PNG atomically."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):  # tmp keeps the .png suffix cv2 needs
            raise OSError("OpenCV could not write the PNG")


FIGURE_DPI = 120


def save_figure(path: str | Path, figure, **kwargs) -> None:
    """Save a matplotlib figure atomically (format from the target's suffix)."""
    kwargs.setdefault("dpi", FIGURE_DPI)
    kwargs.setdefault("bbox_inches", "tight")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)


def save_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
