"""Open micro-sam's napari annotator on one state's planes, wired into the workflow.

The study made its masks by hand in micro-sam's 2D annotator (point prompts with SAM
vit_h). This module opens the same tool on the planes of one state so that

* image embeddings go where the ``sam-auto``/``sam-prompted`` mask methods cache theirs
  (``masks.sam.embeddings_dir/{model}/{state}/z{z}.zarr``), so each is computed once, and
* each plane's committed objects are saved as ``masks.import.dir/{state}/z{z}.tif``
  (``masks.import.template``), exactly where the ``import`` mask method reads them.

micro-sam's image-series annotator names embeddings and saved masks after the image
file's stem, so the planes are first linked into a staging folder as ``z{z}.tif``.
Everything up to the launch is plain Python (:func:`annotator_plan`,
:func:`stage_images`) and is tested without a display; napari is an optional extra
(``pip install 'protoseg[annotator]'``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from protoseg.catalogue import demo_records, lookup, records_from_config
from protoseg.errors import ConfigError, InputError, ProtosegError
from protoseg.io import read_image, write_tiff
from protoseg.masks.imported import import_path
from protoseg.masks.sam import embedding_path as sam_embedding_path
from protoseg.masks.sam import settings_from_config as sam_settings_from_config
from protoseg.stacks import PlaneAddress

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'protoseg[annotator]'"


class AnnotatorUnavailable(ProtosegError):
    """napari (or micro-sam's annotator, which needs it) cannot be imported."""


class PlaneTask(NamedTuple):
    """One plane to annotate: the image shown, its embeddings, where the mask is saved."""

    image: Path
    embedding: Path
    commit: Path


def raw_records(config: dict) -> pd.DataFrame:
    """The raw images the workflow would use, chosen exactly as workflow/rules/common.smk does."""
    data = config["data"]
    if data["source"] == "demo":
        raw_dir = Path(config["demo"]["out_dir"]) / "raw"
        return demo_records(config["demo"], data, raw_dir)
    return records_from_config(data, data["raw_dir"])


def embedding_path(config: dict, state: str, z: int) -> Path:
    """Where the image embeddings of one plane are cached: the masks stage's own cache."""
    settings = sam_settings_from_config(config["masks"]["sam"])
    if settings.embeddings_dir is None:
        raise ConfigError(
            "masks.sam.embeddings_dir",
            "is null; the annotator needs a folder to keep image embeddings in",
        )
    return sam_embedding_path(settings.embeddings_dir, settings, state, int(z))


def commit_path(config: dict, state: str, z: int) -> Path:
    """Where the annotator saves one plane's mask: where the ``import`` method reads it."""
    import_cfg = config["masks"]["import"]
    if not import_cfg.get("dir"):
        raise ConfigError(
            "masks.import.dir",
            "is null; set it to the folder where annotated masks should go (e.g. resources/annotations) "
            "so that masks.method 'import' reads them",
        )
    return import_path(import_cfg["dir"], import_cfg["template"], state, int(z))


def annotator_plan(config: dict, state: str, planes: list[int] | None = None) -> list[PlaneTask]:
    """The planes of ``state`` to annotate, in plane order: (image, embedding, commit) paths.

    Images are those of ``masks.modality`` (the study: fluorescent); ``planes`` picks a
    subset of ``data.planes`` (default: all of them). Raises :class:`InputError` for an
    unknown state or a missing image and :class:`ConfigError` for an unset import folder or
    a plane that is not configured.
    """
    records = raw_records(config)
    known_states = sorted(records["state"].unique())
    if state not in known_states:
        shown = ", ".join(known_states[:10]) + (" ..." if len(known_states) > 10 else "")
        raise InputError(state, f"no such state in the raw images (known: {shown})")
    configured = [int(z) for z in config["data"]["planes"]]
    if planes is None:
        planes = configured
    unknown = [z for z in planes if int(z) not in configured]
    if unknown:
        raise ConfigError(
            "data.planes", f"plane(s) {unknown} asked for are not configured (planes: {configured})"
        )
    modality = config["masks"]["modality"]
    plan = []
    for z in sorted(int(z) for z in planes):
        image = Path(lookup(records, state=state, modality=modality, z=z))
        plan.append(
            PlaneTask(image, embedding_path(config, state, z), commit_path(config, state, z))
        )
    return plan


def staging_dir(config: dict, state: str) -> Path:
    """Folder of the ``z{z}.tif`` links the annotator is opened on (beside the embeddings)."""
    return Path(config["masks"]["sam"]["embeddings_dir"]).parent / "annotator" / state


def stage_images(plan: list[PlaneTask], folder: str | Path) -> list[Path]:
    """Link each plane's image into ``folder`` as ``z{z}.tif`` (copy where links fail; a
    plane of a microscope container is written out).

    micro-sam's image-series annotator derives the embedding name (``{stem}.zarr``) and the
    saved mask's name (``{stem}.tif``) from the image file name; this makes both
    ``z{z}``. Raises :class:`InputError` for a missing image.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for task in plan:
        if PlaneAddress.parse(task.image) is not None:
            # A plane of a microscope container: written out as the TIFF the annotator opens.
            target = folder / (task.commit.stem + ".tif")
            write_tiff(target, read_image(task.image))
            staged.append(target)
            continue
        if not task.image.is_file():
            raise InputError(
                task.image, "image to annotate not found (run the demo/catalogue rules first?)"
            )
        target = folder / (task.commit.stem + task.image.suffix.lower())
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            os.symlink(task.image.resolve(), target)
        except OSError:  # e.g. file systems without symlinks
            shutil.copyfile(task.image, target)
        staged.append(target)
    return staged


def annotator_arguments(
    config: dict, plan: list[PlaneTask], staged: list[Path], redo: bool = False
) -> dict:
    """Keyword arguments for ``micro_sam.sam_annotator.image_series_annotator``.

    The model, checkpoint, tiling and device are the masks stage's (``masks.sam``), so the
    cached embeddings fit both.
    """
    settings = sam_settings_from_config(config["masks"]["sam"])
    embedding_dirs = {task.embedding.parent for task in plan}
    commit_dirs = {task.commit.parent for task in plan}
    if len(embedding_dirs) != 1 or len(commit_dirs) != 1:
        raise ConfigError(
            "masks.import.template",
            "the annotator saves all planes of a state into one folder; use a template such as {state}/z{z}.tif",
        )
    if any(task.embedding.stem != task.commit.stem for task in plan):
        log.warning(
            "masks.import.template names files other than z{z}.tif, so the annotator's embeddings "
            "(named after the saved masks) are not the masks stage's cache and will be computed anew"
        )
    return {
        "images": [str(path) for path in staged],
        "output_folder": str(commit_dirs.pop()),
        "model_type": settings.model_type,
        "embedding_path": str(embedding_dirs.pop()),
        "checkpoint_path": settings.checkpoint,
        "tile_shape": settings.tile_shape,
        "halo": settings.halo,
        "device": None if settings.device == "auto" else settings.device,
        # Planes already saved are skipped; with redo they are loaded into the
        # committed_objects layer for correction instead.
        "skip_segmented": not redo,
    }


def load_annotator():
    """Import napari and micro-sam's image-series annotator, or explain how to install them."""
    try:
        import napari  # noqa: F401 - imported first for the clearer error
        from micro_sam.sam_annotator import image_series_annotator
    except ImportError as error:
        raise AnnotatorUnavailable(
            f"the annotator needs napari and Qt, which are an optional extra: {INSTALL_HINT} "
            f"(import failed: {error})"
        ) from error
    return image_series_annotator


def open_annotator(
    config: dict, state: str, planes: list[int] | None = None, redo: bool = False
) -> list[PlaneTask]:
    """Open the annotator on a state's planes; returns the plan once napari is closed.

    Each plane is saved to its commit path when "Next Image [N]" is pressed (also after
    the last plane); closing the window without it leaves that plane unsaved.
    """
    plan = annotator_plan(config, state, planes)
    image_series_annotator = load_annotator()  # before staging: fail early
    staged = stage_images(plan, staging_dir(config, state))
    for task in plan:
        task.commit.parent.mkdir(parents=True, exist_ok=True)
    arguments = annotator_arguments(config, plan, staged, redo=redo)
    image_series_annotator(**arguments)  # blocks in napari's event loop until closed
    return plan
