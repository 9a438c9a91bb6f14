"""Export a trained protoseg U-Net as a bioimage.io model package (bioimageio.spec v0.5),
to run it where colleagues work: ilastik, deepImageJ, QuPath, napari, bioimageio.core.

    protoseg export results/models/all-bce/model.pt --out exported/all-bce

The package (a folder, written atomically; zip it with ``bioimageio package`` or upload it
as it is) holds ``rdf.yaml`` (the description), the weights twice (PyTorch
state dict, whose architecture is :class:`protoseg.model.UNet` with its arguments, and
TorchScript, which needs nothing but PyTorch), a test input and the output protoseg's own
prediction gives for it (``test_input.npy``, ``test_output.npy``), a cover image, a README
with what the model expects and how it was trained, and the citations.

What the description says, from the model file's record of its training data
(:class:`protoseg.dataset.DatasetRecord`):

* input ``raw``: (batch, channel, y, x), 3 channels (red, green, blue) for a model trained in
  ``rgb`` colour, 1 for ``grey``; y and x any multiple of 2^depth (the U-Net halves the size
  depth times); a ``resize`` model (the study's geometry) takes whole images, of its training
  images' size where they had one, and resizes them inside the network
  (:class:`protoseg.model.ResizingUNet`: to the training size, the U-Net, the sigmoid, back
  to the input's size, as ``protoseg predict`` does);
* preprocessing = protoseg's normalisation: ``dtype`` -> ``scale_linear`` by 1/255 (uint8
  input) or 1/65535 (uint16), or ``clip`` to [0, 1] (float input); ``percentile`` ->
  ``scale_range`` with the model's percentiles over channel, y and x jointly (per image,
  as :func:`protoseg.transforms.normalise_percentiles`);
* output ``probabilities``: the sigmoid of the network's logits (``sigmoid``
  postprocessing), one channel per output: ``foreground``, plus ``boundaries`` or
  ``center_distances`` and ``boundary_distances`` for a network with instance outputs
  (:mod:`protoseg.instances`); the threshold and the watershed settings that turn them into
  cells are in the README and in ``config.protoseg``.

Refused, with an :class:`~protoseg.errors.InputError` naming the model file and saying what
the package cannot express: a focal-context model (its input is 2k + 1 planes stacked as
channels, which no consumer assembles), a ``patches`` model trained at a rescale factor
other than 1 (bioimage.io preprocessing cannot resize, and a tiling consumer would rescale
each tile on its own), and percentile bounds the spec's ``scale_range`` does not take. A
``dtype``-normalised model takes the dtype its training images had (``model.pt`` records
it); ``--image`` or ``--input-dtype`` override it.

The package is tested before it is put in place with bioimageio.core's own test
(:func:`test_package`: the description validated, each weight format run on the test
input and compared with the test output), offline: the only URL in the description (the
study's) is declared known, so no request leaves the machine (bioimageio.spec would
otherwise check every URL with an HTTP request).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protoseg.errors import InputError
from protoseg.io import atomic_dir, read_image, write_png, write_text, write_tiff

log = logging.getLogger(__name__)

INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
# The input dtypes a package can take and the preprocessing gain of protoseg's ``dtype``
# normalisation (integer / its dtype's maximum; floats are clipped to [0, 1]).
DTYPE_GAIN = {"uint8": 1 / 255, "uint16": 1 / 65535, "float32": None}
INPUT_DTYPES = tuple(DTYPE_GAIN)
# The package dtype of training images stored as other floats (protoseg reads them as is).
DTYPE_NAMES = {"float64": "float32", "float16": "float32"}
# The smallest whole image a resizing network takes (it resizes anything to its size).
MIN_RESIZED_INPUT = 16
LICENSE = "CC-BY-4.0"
STUDY = (
    'Munteanu, A. M. "Automatic segmentation of microscopic cell images". TScIT 41, '
    "University of Twente, July 2024 (the study protoseg reproduces; in the university's "
    "student essay repository).",
    "https://essay.utwente.nl/",
)
UNET = (
    "Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015 (the architecture).",
    "10.1007/978-3-319-24574-4_28",
)
TAGS = ("segmentation", "2d", "unet", "pytorch", "cells", "protoplasts", "protoseg")
DEMO_SIZE = (256, 360)
# Tile borders a consumer should drop (pixels at the training scale); protoseg itself
# blends overlapping tiles with Gaussian weights instead.
HALO = 16
COVER_HEIGHT = 256  # covers of smaller tiles are enlarged (nearest) to at least this  # the demo's images (config/config.yaml)
COLOUR_CHANNELS = {"rgb": ("red", "green", "blue"), "grey": ("grey",)}


# ---------------------------------------------------------------- what can be exported
@dataclass(frozen=True)
class ExportPlan:
    """What the package will say: input, normalisation, outputs, threshold."""

    name: str
    architecture: dict
    preprocessing: object  # protoseg.transforms.Preprocessing
    input_dtype: str  # the input tensor's dtype (raw intensities)
    fixed_size: tuple[int, int] | None  # the one input size, where there is one
    outputs: tuple[str, ...]  # output channel names
    threshold: float
    threshold_source: str
    instances: dict | None
    # resize geometry whose images were resized: the network resizes each whole input to
    # this size and its probabilities back (protoseg.model.ResizingUNet).
    resize_to: tuple[int, int] | None = None
    segmenter: object = field(default=None, compare=False, repr=False)  # protoseg's own path

    @property
    def step(self) -> int:
        """Input sizes must be multiples of this (the U-Net halves the size depth times;
        a resizing network takes any size)."""
        return 1 if self.resize_to else 2 ** int(self.architecture["depth"])

    @property
    def halo(self) -> int:
        """Pixels a consumer that tiles should drop at each tile border: at least
        :data:`HALO`, and a multiple of 2^depth, so the padding a consumer adds keeps the
        max-pooling grid where it was (an unaligned shift changes every output). None for a
        resizing network: it takes whole images."""
        return 0 if self.resize_to else self.step * math.ceil(HALO / self.step)

    @property
    def min_size(self) -> int:
        if self.resize_to:
            return MIN_RESIZED_INPUT
        return 2 * self.halo + self.step  # something left once both halos are dropped

    @property
    def network_class(self) -> str:
        """The class in :mod:`protoseg.model` the package's weights belong to."""
        return "ResizingUNet" if self.resize_to else "UNet"

    @property
    def network_arguments(self) -> dict:
        if self.resize_to:
            return {"size": list(self.resize_to), **self.architecture}
        return dict(self.architecture)


def refusals(prep, record: dict) -> list[str]:
    """Why a package cannot express a model (empty when it can)."""
    problems = []
    context = int(record.get("context_planes") or 0)
    if context:
        problems.append(
            f"its input is a focal window of {2 * context + 1} planes stacked as channels "
            f"(context_planes {context}); a bioimage.io input is one image, and no consumer "
            "assembles neighbouring planes"
        )
    if prep.geometry == "patches" and prep.pixel_size is not None:
        problems.append(
            f"it rescales each image by its own pixel size to {prep.pixel_size:.4g} um per "
            "pixel (dataset.cell_diameter_um); bioimage.io preprocessing cannot resize, so "
            "the package would see cells at the wrong size (rescale the images to that pixel "
            "size first, or train with dataset.scale 1)"
        )
    elif prep.geometry == "patches" and not math.isclose(float(prep.scale), 1.0):
        problems.append(
            f"it sees every image rescaled by {float(prep.scale):.4g} (dataset.scale or "
            "cell_diameter); bioimage.io preprocessing cannot resize, so the package would "
            "see cells at the wrong size (train at dataset.scale 1, or rescale the images "
            "to the training scale first)"
        )
    if prep.normalise == "percentile":
        low, high = (float(v) for v in prep.percentiles)
        if not (0 <= low < 100 and 1 < high <= 100):
            problems.append(
                f"its percentiles {low:g}..{high:g}: bioimage.io's scale_range takes a low "
                "percentile in [0, 100) and a high one in (1, 100]"
            )
    return problems


def resize_geometry(prep, record: dict) -> tuple[tuple | None, tuple | None]:
    """(fixed input size, size the network resizes to) of a model: a ``resize`` model whose
    training images all had the training size takes exactly that size as it is; one whose
    images were resized resizes each input inside the network (:class:`ResizingUNet`),
    taking the training images' size where they had one, else any size."""
    if prep.geometry != "resize":
        return None, None
    sources = {tuple(int(v) for v in size) for size in record.get("source_sizes") or []}
    size = tuple(int(v) for v in prep.size)
    if sources and sources <= {size}:
        return size, None  # no image was resized: the network at its one input size
    return (next(iter(sources)) if len(sources) == 1 else None), size


def package_dtype(model_path, prep, record: dict, input_dtype: str | None) -> str:
    """The package's input dtype: ``input_dtype`` (--input-dtype, --image) where given, else
    float32 for percentile normalisation (the dtype's scale does not matter), else the one
    dtype of the training images that ``model.pt`` records."""
    if input_dtype is not None:
        dtype = input_dtype
    elif prep.normalise == "percentile":
        dtype = "float32"
    else:
        recorded = sorted({DTYPE_NAMES.get(d, d) for d in record.get("source_dtypes") or []})
        if len(recorded) != 1:
            seen = ", ".join(record.get("source_dtypes") or []) or "not recorded"
            raise InputError(
                model_path,
                "normalises images by their dtype's maximum (dataset.normalise dtype), and "
                f"the training images' dtype is not one ({seen}): give an image like them "
                f"(--image) or their dtype (--input-dtype {'|'.join(INPUT_DTYPES)})",
            )
        dtype = recorded[0]
    if dtype not in DTYPE_GAIN:
        raise InputError(model_path, f"input dtype {dtype} is not one of {', '.join(INPUT_DTYPES)}")
    return dtype


def plan_export(
    model_path: str | Path, network, meta: dict, input_dtype: str | None = None
) -> ExportPlan:
    """Check that the package can express the model (:class:`InputError` naming the file
    and everything it cannot) and what it will say. ``input_dtype``: the dtype of the
    images a ``dtype``-normalised model takes (uint8, uint16, float32); by default the one
    its training images had, as ``model.pt`` records it."""
    from protoseg.instances import EXTRA_OUTPUTS
    from protoseg.segmenter import Segmenter

    # On the CPU in float32, where the test output is made: cuDNN's TF32 convolutions on a
    # GPU could differ by more than bioimage.io's test tolerance.
    model = Segmenter.from_meta(network, meta, name=str(model_path), device="cpu")
    prep, record = model.preprocessing, meta["dataset"]
    problems = refusals(prep, record)
    if problems:
        raise InputError(
            model_path,
            "cannot be exported as a bioimage.io model: " + "; ".join(problems),
        )
    fixed_size, resize_to = resize_geometry(prep, record)
    mode = (model.own or {}).get("mode", "none")
    return ExportPlan(
        name=str(meta.get("name") or Path(model_path).parent.name or "model"),
        architecture=dict(network.architecture),
        preprocessing=prep,
        input_dtype=package_dtype(model_path, prep, record, input_dtype),
        fixed_size=fixed_size,
        outputs=("foreground", *EXTRA_OUTPUTS[mode]),
        threshold=model.threshold,
        threshold_source=model.threshold_source,
        instances=model.own,
        resize_to=resize_to,
        segmenter=model,
    )


def exported_network(plan: ExportPlan, network):
    """The module whose weights the package holds: the U-Net, or the U-Net inside the
    resizing network of a ``resize`` model whose images were resized."""
    if not plan.resize_to:
        return network
    from protoseg.model import ResizingUNet

    wrapper = ResizingUNet(**plan.network_arguments)
    wrapper.unet.load_state_dict(network.state_dict())
    return wrapper.eval()


def image_dtype(image: np.ndarray, source: object = "image") -> str:
    """The package input dtype an image stands for (floats as float32)."""
    dtype = np.asarray(image).dtype
    if dtype in (np.uint8, np.uint16):
        return str(dtype)
    if np.issubdtype(dtype, np.floating):
        return "float32"
    raise InputError(source, f"pixel type {dtype}: the package takes uint8, uint16 or float images")


# ---------------------------------------------------------------- the test image
def synthetic_image(plan: ExportPlan) -> np.ndarray:
    """A bright-field plane of protoseg's demo generator (RGB, in the package's input dtype:
    uint8 scaled to its range), at the model's input size (fixed) or its tile, for a
    package exported without an image of its own."""
    from protoseg.demo import make_state

    if plan.fixed_size is not None:
        height, width = plan.fixed_size
    elif plan.resize_to:
        height, width = DEMO_SIZE  # a whole field, as the model's training images were
    else:  # the demo's own size (its cell count fits it), or a tile if larger
        height, width = (
            max(int(t), d) for t, d in zip(plan.preprocessing.tile, DEMO_SIZE, strict=True)
        )
    sample = make_state(np.random.default_rng(0), int(height), int(width), [0])
    image = sample.brightfield[0]
    if plan.input_dtype == "uint16":
        return image.astype(np.uint16) * 257  # 255 -> 65535: the same intensities
    if plan.input_dtype == "float32":
        return image.astype(np.float32) / 255
    return image


def test_image(plan: ExportPlan, image: np.ndarray, source: object = "image") -> np.ndarray:
    """``image`` as the package's test input shows it, still in its own dtype (protoseg
    predicts it as it is; the package's input holds it cast to the input dtype): in the
    model's channels (:func:`protoseg.transforms.convert_colour`, as the data set stage
    converted colours), cropped (centre) to a size the input accepts, at most a tile."""
    from protoseg.transforms import convert_colour

    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        image = np.clip(image.astype(np.float32), 0.0, 1.0)  # what protoseg reads of it
    image = convert_colour(image, plan.preprocessing.colour, source)
    if plan.input_dtype != "float32" and image.dtype != np.dtype(plan.input_dtype):
        raise InputError(
            source,
            f"is {image.dtype}, but the package takes {plan.input_dtype} images (--input-dtype)",
        )
    height, width = image.shape[:2]
    if plan.fixed_size is not None:
        if (height, width) != plan.fixed_size:
            raise InputError(
                source,
                f"is {height}x{width}; the model takes {plan.fixed_size[0]}x"
                f"{plan.fixed_size[1]} images (its training images' size)",
            )
        return image
    if plan.resize_to:  # the whole image: the network resizes it, as protoseg did
        if min(height, width) < plan.min_size:
            raise InputError(
                source,
                f"is {height}x{width}; the package takes whole images of at least "
                f"{plan.min_size}x{plan.min_size} pixels",
            )
        return image
    tile = plan.preprocessing.tile
    sizes = [
        min(length, int(limit)) // plan.step * plan.step
        for length, limit in zip((height, width), tile, strict=True)
    ]
    if min(sizes) < plan.min_size:
        raise InputError(
            source,
            f"is {height}x{width}; the test input needs at least {plan.min_size}x"
            f"{plan.min_size} pixels (twice the halo of {plan.halo} and one step of 2^depth)",
        )
    top, left = (height - sizes[0]) // 2, (width - sizes[1]) // 2
    return np.ascontiguousarray(image[top : top + sizes[0], left : left + sizes[1]])


def protoseg_prediction(plan: ExportPlan, image: np.ndarray) -> np.ndarray:
    """protoseg's own outputs (K, H, W) of a test image, as ``protoseg predict`` makes them
    (:class:`protoseg.segmenter.Segmenter`, float32 on the CPU): a ``patches`` model's with
    the image as one tile, a ``resize`` model's of the image resized whole."""
    segmenter = plan.segmenter
    if plan.preprocessing.geometry == "patches":
        segmenter = segmenter.with_settings(tile=image.shape[:2])
    return segmenter.outputs(segmenter.prepare(image), image.shape[:2])


# ---------------------------------------------------------------- the description
def citations(extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(text, DOI or URL) of the study, the U-Net and ``extra`` (e.g. the training data)."""
    return [STUDY, UNET, *extra]


def _cite_entry(text: str, reference: str):
    from bioimageio.spec.model.v0_5 import CiteEntry, Doi, HttpUrl

    reference = reference.strip()
    for prefix in ("https://doi.org/", "doi:"):
        if reference.lower().startswith(prefix):
            reference = reference[len(prefix) :]
    if reference.startswith("10."):
        return CiteEntry(text=text, doi=Doi(reference))
    return CiteEntry(text=text, url=HttpUrl(reference))


def _preprocessing(plan: ExportPlan) -> list:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ClipDescr,
        ClipKwargs,
        EnsureDtypeDescr,
        EnsureDtypeKwargs,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        ScaleRangeDescr,
        ScaleRangeKwargs,
    )

    steps = [EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32"))]
    prep = plan.preprocessing
    if prep.normalise == "percentile":
        low, high = (float(v) for v in prep.percentiles)
        steps.append(
            ScaleRangeDescr(
                kwargs=ScaleRangeKwargs(
                    axes=[AxisId("channel"), AxisId("y"), AxisId("x")],
                    min_percentile=low,
                    max_percentile=high,
                )
            )
        )
    elif DTYPE_GAIN[plan.input_dtype] is None:
        steps.append(ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0)))
    else:
        steps.append(ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=DTYPE_GAIN[plan.input_dtype])))
    # Without a closing ensure_dtype the spec adds one back to the input dtype (uint8 ...).
    steps.append(EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32")))
    return steps


def _space_size(plan: ExportPlan, axis: int):
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    if plan.fixed_size is not None:
        return int(plan.fixed_size[axis])
    return ParameterizedSize(min=plan.min_size, step=plan.step)


def _input_descr(plan: ExportPlan, folder: Path):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        SpaceInputAxis,
        TensorId,
    )

    colour = plan.preprocessing.colour
    whole = "; a whole image, resized inside the network" if plan.resize_to else ""
    return InputTensorDescr(
        id=TensorId(INPUT_ID),
        description=(
            f"{'Colour (RGB)' if colour == 'rgb' else 'Greyscale'} image, raw intensities "
            f"({plan.input_dtype}), at the pixel size of the training images{whole}"
        ),
        axes=[
            BatchAxis(),
            ChannelAxis(channel_names=[Identifier(c) for c in COLOUR_CHANNELS[colour]]),
            SpaceInputAxis(id=AxisId("y"), size=_space_size(plan, 0)),
            SpaceInputAxis(id=AxisId("x"), size=_space_size(plan, 1)),
        ],
        test_tensor=FileDescr(source=folder / "test_input.npy"),
        sample_tensor=FileDescr(source=folder / "sample_input.tif"),
        data=IntervalOrRatioDataDescr(type=plan.input_dtype),
        preprocessing=_preprocessing(plan),
    )


def _output_descr(plan: ExportPlan, folder: Path):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        Identifier,
        IntervalOrRatioDataDescr,
        OutputTensorDescr,
        SigmoidDescr,
        SizeReference,
        SpaceOutputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
    )

    def space(axis: str):
        size = SizeReference(tensor_id=TensorId(INPUT_ID), axis_id=AxisId(axis))
        if plan.halo:
            return SpaceOutputAxisWithHalo(id=AxisId(axis), size=size, halo=plan.halo)
        return SpaceOutputAxis(id=AxisId(axis), size=size)

    return OutputTensorDescr(
        id=TensorId(OUTPUT_ID),
        description=(
            "Probability of each pixel (sigmoid of the network's logits): "
            + ", ".join(plan.outputs)
            + f"; cells are foreground > {plan.threshold:.2f}"
        ),
        axes=[
            BatchAxis(),
            ChannelAxis(channel_names=[Identifier(c) for c in plan.outputs]),
            space("y"),
            space("x"),
        ],
        test_tensor=FileDescr(source=folder / "test_output.npy"),
        sample_tensor=FileDescr(source=folder / "sample_output.tif"),
        data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        # A resizing network gives probabilities itself: it resizes them, not the logits,
        # as protoseg does.
        postprocessing=[] if plan.resize_to else [SigmoidDescr()],
    )


def _weights_descr(plan: ExportPlan, folder: Path):
    import torch
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromLibraryDescr,
        Identifier,
        PytorchStateDictWeightsDescr,
        Version,
        WeightsDescr,
    )

    return WeightsDescr(
        pytorch_state_dict=PytorchStateDictWeightsDescr(
            source=folder / "weights_state_dict.pt",
            architecture=ArchitectureFromLibraryDescr(
                callable=Identifier(plan.network_class),
                import_from="protoseg.model",
                kwargs=plan.network_arguments,
            ),
            pytorch_version=Version(torch.__version__.split("+")[0]),
        )
    )


def _protoseg_config(plan: ExportPlan, meta: dict) -> dict:
    import protoseg

    return {
        "version": protoseg.__version__,
        "name": plan.name,
        "threshold": plan.threshold,
        "threshold_source": plan.threshold_source,
        "instances": plan.instances,
        "preprocessing": plan.preprocessing.to_dict(),
        "resize_to": list(plan.resize_to) if plan.resize_to else None,
        "loss": meta.get("loss"),
        "epochs": meta.get("epochs"),
        "epoch_kept": meta.get("epoch_kept"),
        "variant": meta.get("dataset", {}).get("variant"),
    }


def describe(
    plan: ExportPlan,
    folder: Path,
    *,
    name: str | None = None,
    authors: Sequence[str] = (),
    cite: Sequence[tuple[str, str]] = (),
    license: str = LICENSE,
    meta: dict | None = None,
):
    """The bioimage.io model description of the files in ``folder`` (test tensors, state
    dict, cover, README), with the state-dict weights only."""
    from bioimageio.spec.model.v0_5 import Author, FileDescr, ModelDescr

    meta = meta or {}
    modalities = ", ".join(meta.get("dataset", {}).get("modalities", []))
    return ModelDescr(
        name=name or f"protoseg {plan.name} U-Net",
        description=(
            f"protoseg U-Net '{plan.name}' ({modalities} images, {meta.get('loss', 'unknown')} "
            "loss): probability that a pixel belongs to a cell (plant protoplasts "
            "photographed at several focal planes)"
        ),
        authors=[Author(name=author) for author in authors],
        cite=[_cite_entry(text, reference) for text, reference in citations(cite)],
        license=license,
        documentation=FileDescr(source=folder / "README.md"),
        covers=[FileDescr(source=folder / "cover.png")],
        tags=list(TAGS),
        inputs=[_input_descr(plan, folder)],
        outputs=[_output_descr(plan, folder)],
        weights=_weights_descr(plan, folder),
        config={"protoseg": _protoseg_config(plan, meta)},
    )


# ---------------------------------------------------------------- README and cover
THRESHOLD_SOURCES = {
    "validation": "chosen on protoseg's validation images",
    "config": "set in protoseg's config",
    "default": "protoseg's default, no validation images",
}


def _normalisation_text(plan: ExportPlan) -> str:
    prep = plan.preprocessing
    if prep.normalise == "percentile":
        low, high = prep.percentiles
        return (
            f"per image, the percentiles {low:g} and {high:g} of all channels together go to "
            "0 and 1 (preprocessing `scale_range`, not clipped)"
        )
    if DTYPE_GAIN[plan.input_dtype] is None:
        return "float intensities clipped to [0, 1] (preprocessing `clip`)"
    maximum = round(1 / DTYPE_GAIN[plan.input_dtype])
    return (
        f"{plan.input_dtype} intensities divided by {maximum}, the dtype's maximum, never "
        "the image's own (preprocessing `scale_linear`)"
    )


def _size_text(plan: ExportPlan) -> str:
    prep = plan.preprocessing
    if plan.resize_to:
        takes = (
            f"exactly {plan.fixed_size[0]} x {plan.fixed_size[1]} pixels, the size of its "
            "training images"
            if plan.fixed_size is not None
            else f"any size from {plan.min_size} x {plan.min_size} pixels"
        )
        return (
            f"{takes}. Give it whole fields of view, never tiles: the network resizes each "
            f"input to {plan.resize_to[0]} x {plan.resize_to[1]} (bilinear), as protoseg's "
            "`resize` geometry (the study's) resized every training image, and resizes its "
            "probabilities back to the input's size"
        )
    if plan.fixed_size is not None:
        return (
            f"exactly {plan.fixed_size[0]} x {plan.fixed_size[1]} pixels, the size of its "
            "training images (protoseg's `resize` geometry, where nothing was resized)"
        )
    return (
        f"any multiple of {plan.step} pixels from {plan.min_size} on; a consumer tiles "
        f"larger images and drops {plan.halo} pixels (the halo) at each tile border "
        f"(protoseg itself blends tiles of {prep.tile[0]} x {prep.tile[1]} with Gaussian "
        "weights)"
    )


def _outputs_text(plan: ExportPlan) -> str:
    source = THRESHOLD_SOURCES.get(plan.threshold_source, plan.threshold_source)
    outputs = [
        "- `foreground`: probability that the pixel belongs to a cell; cells are "
        f"`foreground > {plan.threshold:.2f}` (threshold {source})"
    ]
    if plan.instances:
        settings = ", ".join(f"{k} {v}" for k, v in plan.instances["settings"].items())
        outputs.append(
            {
                "boundaries": "- `boundaries`: probability that the pixel lies on the edge "
                "between a cell and anything else (torch_em's `BoundaryTransform`, thick)",
                "distances": "- `center_distances`, `boundary_distances`: each cell's "
                "distance to its centre and to its boundary, normalised per cell, 0 at the "
                "centre and 1 at the edge (torch_em's `PerObjectDistanceTransform`)",
            }[plan.instances["mode"]]
        )
        outputs.append(
            "\nprotoseg turns them into cells with torch_em's seeded watershed "
            "(`torch_em.util.segmentation.watershed_from_components` for boundaries, "
            "`watershed_from_center_and_boundary_distances` for distances) with the settings "
            f"chosen on its validation images: {settings} (also in `config.protoseg`). The "
            "package gives the probabilities; the watershed is not part of it."
        )
    return "\n".join(outputs)


def _training_text(plan: ExportPlan, meta: dict) -> str:
    dataset = meta.get("dataset", {})
    training = [
        f"data set variant `{dataset.get('variant', '?')}` "
        f"({', '.join(dataset.get('modalities', [])) or '?'} images)",
        f"{meta['loss']} loss" if meta.get("loss") else "",
        f"{meta['epochs']} epochs" if meta.get("epochs") else "",
        f"the weights of epoch {meta['epoch_kept']} kept" if meta.get("epoch_kept") else "",
        f"precision {meta['precision']}" if meta.get("precision") else "",
        f"U-Net depth {plan.architecture['depth']}, {plan.architecture['base_channels']} "
        "base channels",
    ]
    return "; ".join(part for part in training if part)


def readme(plan: ExportPlan, meta: dict, cite: Sequence[tuple[str, str]] = ()) -> str:
    """The package's documentation: what the model expects, gives and was trained on."""
    import protoseg

    prep = plan.preprocessing
    channels = (
        "three channels, red, green, blue"
        if prep.colour == "rgb"
        else "one channel (the luminance of a colour image)"
    )
    references = "\n".join(
        f"- {text} {'doi:' if ref.startswith('10.') else ''}{ref}" for text, ref in citations(cite)
    )
    return f"""# protoseg U-Net `{plan.name}`

A U-Net (Ronneberger et al. 2015) trained by protoseg to segment plant protoplasts
photographed at several focal planes: the probability that each pixel belongs to a cell.
Trained on: {_training_text(plan, meta)}.

## Input

`{INPUT_ID}`: (batch, channel, y, x), {channels}; {_size_text(plan)}. The pixel size must be
that of the training images.

Normalisation: {_normalisation_text(plan)}.

## Output

`{OUTPUT_ID}`: (batch, channel, y, x), the input's size, float32 in [0, 1] (postprocessing
`sigmoid` of the network's logits):

{_outputs_text(plan)}

## Validation

`test_input.npy` is an image as the input takes it; `test_output.npy` is what protoseg's own
prediction (`protoseg predict`, float32 on the CPU) gives for it.
bioimageio.core's test (`bioimageio test rdf.yaml`) runs both weight formats on the test
input and compares their output with it; protoseg ran that test on this package before
writing it. The model's scores on its test split are in `results/metrics/` and
`results/tables/` of the protoseg run that trained it (pixel accuracy, F1 and IoU per focal
plane, as the study reports them).

## Limitations

Trained on the images of one microscope and one kind of cell: on other images, check the
output against a few hand-made masks first. Colour images go to a greyscale model as their
luminance, and greyscale images to a colour model as three equal channels, as protoseg's
data set stage prepared them; the consumer has to do that conversion.

## Citations

{references}
- protoseg {protoseg.__version__}, the workflow that trained and exported the model.
"""


def cover(image: np.ndarray, probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """The test image beside its prediction's cells outlined (8-bit RGB, 2:1)."""
    from protoseg.qc import overlay_outlines
    from protoseg.segmenter import binary_instances
    from protoseg.transforms import display_rgb

    labels = binary_instances(probabilities[0] > threshold, "cc")
    left, right = display_rgb(image), overlay_outlines(image, labels)
    gap = np.full((left.shape[0], max(2, left.shape[1] // 50), 3), 255, np.uint8)
    panel = np.concatenate([left, gap, right], axis=1)
    zoom = max(1, math.ceil(COVER_HEIGHT / panel.shape[0]))  # small tiles, blown up
    return np.repeat(np.repeat(panel, zoom, axis=0), zoom, axis=1)


# ---------------------------------------------------------------- export and test
def export_model(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    image: str | Path | None = None,
    input_dtype: str | None = None,
    name: str | None = None,
    authors: Sequence[str] = (),
    cite: Sequence[tuple[str, str]] = (),
    license: str = LICENSE,
    test: bool = True,
) -> Path:
    """Write the bioimage.io package of ``model_path`` to the folder ``out_dir``; return it.

    ``image``: an image like the training images, the package's test input and cover
    (default: a synthetic bright-field plane of protoseg's demo); its dtype is the input
    dtype of a ``dtype``-normalised model unless ``input_dtype`` says it. ``cite``: more
    (text, DOI or URL) citations, e.g. the training data. ``test``: run bioimage.io's own
    test (:func:`test_package`) before the folder is put in place; a failed test is an
    :class:`InputError` and writes nothing.
    """
    import torch

    from protoseg.model import load_model

    model_path = Path(model_path)
    network, meta = load_model(model_path, device="cpu")
    if image is not None:
        raw = read_image(image)
        source: object = image
    else:
        raw, source = None, "the synthetic test image"
    dtype = input_dtype or (image_dtype(raw, source) if raw is not None else None)
    plan = plan_export(model_path, network, meta, dtype)
    if raw is None:
        raw = synthetic_image(plan)
    test_raw = test_image(plan, raw, source)
    probabilities = protoseg_prediction(plan, test_raw)
    log.info("%s: test input %s, %s", model_path, test_raw.shape, plan.input_dtype)

    from bioimageio.spec import save_bioimageio_package_as_folder

    with tempfile.TemporaryDirectory(prefix="protoseg-export-") as staging_name:
        staging = Path(staging_name)
        tensors = {
            "input": np.moveaxis(test_raw, -1, 0)[None].astype(plan.input_dtype),
            "output": probabilities[None].astype(np.float32),
        }
        for kind, tensor in tensors.items():
            # the test tensors (.npy) and the same as TIFF, the 'sample' people look at
            np.save(staging / f"test_{kind}.npy", np.ascontiguousarray(tensor))
            write_tiff(staging / f"sample_{kind}.tif", np.ascontiguousarray(tensor))
        weights = exported_network(plan, network).state_dict()
        torch.save(
            {k: v.detach().cpu() for k, v in weights.items()}, staging / "weights_state_dict.pt"
        )
        write_png(staging / "cover.png", cover(test_raw, probabilities, plan.threshold))
        write_text(staging / "README.md", readme(plan, meta, cite))
        urls = [ref for _, ref in citations(cite) if ref.startswith(("http://", "https://"))]
        with known_urls(urls):
            description = describe(
                plan, staging, name=name, authors=authors, cite=cite, license=license, meta=meta
            )
            description = _with_torchscript(description, staging)
        with atomic_dir(out_dir) as folder:
            with known_urls(urls):
                save_bioimageio_package_as_folder(description, output_path=folder)
            if test:
                # On the CPU, where the test output was made: cuDNN's TF32 convolutions on
                # a GPU could differ by more than the test's tolerance.
                summary = test_package(folder, devices=["cpu"])
                if summary.status != "passed":
                    raise InputError(
                        model_path,
                        "the exported package failed bioimage.io's test, so nothing was "
                        f"written:\n{summary.format()}",
                    )
    return Path(out_dir)


def _with_torchscript(description, staging: Path):
    """The description with TorchScript weights converted from the state dict by
    bioimageio.core (scripted, not traced: the U-Net pads odd sizes)."""
    from bioimageio.core.weight_converters.pytorch_to_torchscript import convert

    torchscript = convert(description, staging / "weights_torchscript.pt", use_tracing=False)
    weights = description.weights.model_copy(update={"torchscript": torchscript})
    return description.model_copy(update={"weights": weights})


def known_urls(urls: Sequence[str]):
    """A bioimageio.spec validation context in which ``urls`` count as checked, so that
    describing, converting and saving a package requests none of them (bioimageio.spec
    checks every URL of a description with an HTTP request otherwise)."""
    from bioimageio.spec import get_validation_context

    known = dict(get_validation_context().known_files)
    known.update({url: None for url in urls})
    return get_validation_context().replace(known_files=known)


def description_file(folder: str | Path) -> Path:
    """A package folder's description: ``rdf.yaml`` (what bioimageio.spec writes) or
    ``bioimageio.yaml``."""
    for name in ("rdf.yaml", "bioimageio.yaml"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise InputError(folder, "holds no bioimage.io description (rdf.yaml or bioimageio.yaml)")


def package_urls(folder: str | Path) -> list[str]:
    """Every http(s) URL a package's description holds."""
    import yaml

    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith(("http://", "https://")):
            found.append(value)

    walk(yaml.safe_load(description_file(folder).read_text()))
    return found


def test_package(folder: str | Path, devices: Sequence[str] | None = None):
    """bioimageio.core's own test of a package folder (format, then every weight format
    on the test input against the test output), offline: the package's URLs are declared
    known, so bioimageio.spec does not request them. Returns the ValidationSummary."""
    from bioimageio.core import test_model
    from bioimageio.spec import InvalidDescr, load_description

    folder = Path(folder)
    known = {url: None for url in package_urls(folder)}
    description = load_description(
        description_file(folder), perform_io_checks=True, known_files=known
    )
    if isinstance(description, InvalidDescr):
        return description.validation_summary
    return test_model(description, devices=list(devices) if devices else None)


# ---------------------------------------------------------------- what a consumer gets
def package_outputs(
    folder: str | Path, tensor: np.ndarray, weight_format: str = "torchscript"
) -> np.ndarray:
    """What a consumer of the package gets for one input ``tensor`` (1, C, H, W) in the
    package's input dtype: bioimageio.core runs the package (its preprocessing, the weights,
    its postprocessing) on it whole, offline. Returns (K, H, W) float32."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_description

    known = {url: None for url in package_urls(folder)}
    description = load_description(
        description_file(folder), perform_io_checks=True, known_files=known
    )
    sample = create_sample_for_model(description, inputs={INPUT_ID: tensor}, sample_id="image")
    with create_prediction_pipeline(
        description, weight_format=weight_format, devices=["cpu"]
    ) as pipeline:
        # The whole input at once, as protoseg's own prediction of it (no tiling).
        sample = pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True
        )
    return np.asarray(sample.members[OUTPUT_ID].data.to_numpy()[0], dtype=np.float32)


def compare_with_protoseg(
    folder: str | Path,
    model_path: str | Path,
    images: Sequence[str | Path],
    weight_format: str = "torchscript",
) -> list[dict]:
    """The package's cells against protoseg's own on each image: the share of pixels whose
    cell or background call differs (foreground above the model's threshold), and the
    largest difference in probability. Each image is given as the package takes it
    (:func:`test_image`: a ``resize`` model's whole image, a ``patches`` model's centre
    crop, which protoseg then predicts as one tile)."""
    from protoseg.model import load_model

    network, meta = load_model(model_path, device="cpu")
    plan = plan_export(model_path, network, meta)
    rows = []
    for path in images:
        image = test_image(plan, read_image(path), path)
        ours = protoseg_prediction(plan, image)
        tensor = np.moveaxis(np.atleast_3d(image), -1, 0)[None].astype(plan.input_dtype)
        theirs = package_outputs(folder, tensor, weight_format)
        differ = (ours[0] > plan.threshold) != (theirs[0] > plan.threshold)
        rows.append(
            {
                "image": str(path),
                "height": image.shape[0],
                "width": image.shape[1],
                "pixels_differing": float(differ.mean()),
                "max_probability_difference": float(np.abs(ours - theirs).max()),
                "cell_fraction": float((ours[0] > plan.threshold).mean()),
            }
        )
    return rows
