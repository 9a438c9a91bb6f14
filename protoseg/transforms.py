"""Image and label transforms, in one place: the dataset build, training, inference, QC,
evaluation and prediction all call these, so a new image is prepared exactly as the
training images were.

* intensity: :func:`scale_to_unit` (the study: integer types by their dtype's maximum),
  :func:`normalise_percentiles` (per image, as cellpose and nnU-Net do for microscopy);
* colour: :func:`convert_colour` (``rgb``: 3 channels, ``grey``: luminance, 1 channel);
* geometry: :func:`resize` (to a size), :func:`scaled_shape` (by a factor), :func:`resize_labels`
  (nearest neighbour, for instance labels), :func:`binary_mask` (the study's resize of a mask
  as a 0/255 image, then > 0), :func:`instances_at_mask` (labels onto a resized binary mask);
* :class:`Preprocessing` and :func:`prepare_image`: everything a model needs to know to
  turn a raw image into its input at the training scale;
* focal context: :func:`context_window` (which planes of a stack a plane's sample takes, the
  stack's ends repeated), :func:`prepare_stack` (those planes' images as one input, their
  channels one after the other) and :func:`centre_plane` (the plane itself again, for display);
* :func:`augment_sample`: random flips, quarter turns, scale, brightness, contrast and gamma
  of one training patch, with its mask;
* :func:`display_rgb`: any image as 8-bit RGB for overlays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from skimage import img_as_float32
from skimage.segmentation import expand_labels

from protoseg.errors import ConfigError, InputError
from protoseg.metrics import instances_from_binary

COLOURS = ("rgb", "grey")
NORMALISATIONS = ("dtype", "percentile")
GEOMETRIES = ("resize", "patches")


# ---------------------------------------------------------------- intensity
def scale_to_unit(image: np.ndarray, source: object = "image") -> np.ndarray:
    """``image`` as float32 in [0, 1]: integer types divided by their dtype's maximum.

    uint8 / 255, uint16 / 65535 (a 12-bit camera's images stay dim: the scale is the
    dtype's, never the image's own maximum, so every image of a set is scaled alike),
    bool as 0/1, floating point clipped to [0, 1].
    """
    image = np.asarray(image)
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        if info.min < 0:
            raise InputError(
                source, f"signed integer image ({image.dtype}); expected unsigned intensities"
            )
        return img_as_float32(image)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise InputError(source, f"unsupported pixel type {image.dtype}")


def normalise_percentiles(
    image: np.ndarray, percentiles: Sequence[float], source: object = "image"
) -> np.ndarray:
    """Per-image normalisation: the ``percentiles`` (low, high) of all channels go to 0 and 1.

    Not clipped (cellpose and nnU-Net do not clip either), so bright objects keep their
    contrast; scikit-image's ``rescale_intensity`` clips, hence this. A flat image
    (high == low) becomes all zeros rather than dividing by zero.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise InputError(source, "holds NaN or infinite values")
    low, high = np.percentile(image, [float(percentiles[0]), float(percentiles[1])])
    if high <= low:
        return np.zeros_like(image)
    return (image - np.float32(low)) / np.float32(high - low)


# ---------------------------------------------------------------- colour
def convert_colour(image: np.ndarray, colour: str, source: object = "image") -> np.ndarray:
    """A float image (H x W or H x W x C) as H x W x 3 (``rgb``) or H x W x 1 (``grey``)."""
    if colour not in COLOURS:
        raise ConfigError(
            "dataset.colour", f"unknown colour '{colour}'; use one of {', '.join(COLOURS)}"
        )
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # alpha carries no intensity
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2) if colour == "rgb" else image[..., None]
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            source, f"expected a greyscale, RGB or RGBA image, got shape {image.shape}"
        )
    if colour == "rgb":
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]


# ---------------------------------------------------------------- geometry
def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize H x W (x C) to ``size`` = [height, width] with linear interpolation."""
    height, width = int(size[0]), int(size[1])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[..., None]
    return resized


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """(height, width) of an image of ``shape`` rescaled by ``scale`` (at least 1 pixel)."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Instance labels resized to ``size`` by nearest neighbour (ids kept)."""
    labels = np.asarray(labels)
    if tuple(labels.shape[:2]) == (int(size[0]), int(size[1])):
        return labels
    # OpenCV's nearest resize does not take uint16/uint32 on every build; int32 works.
    resized = cv2.resize(
        labels.astype(np.int32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST
    )
    return resized.astype(labels.dtype)


def label_image(mask: np.ndarray, source: object = "mask") -> np.ndarray:
    """A mask file's array as a 2D label image (a trailing single channel dropped)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(source, f"expected a 2D label mask, got shape {mask.shape}")
    return mask


def binary_mask(mask: np.ndarray, size: Sequence[int], source: object = "mask") -> np.ndarray:
    """Instance labels -> binary uint8 H x W at ``size``: resized linearly, then > 0 -> 1.

    The labels become 0/255 uint8 first (a binary mask image, as the study saved and read
    them), so OpenCV's fixed-point interpolation decides the fringe: a pixel becomes cell
    where the interpolated value rounds to at least 1 of 255.
    """
    mask = label_image(mask, source)
    binary = np.where(mask > 0, np.uint8(255), np.uint8(0))
    if tuple(binary.shape) == (int(size[0]), int(size[1])):
        return (binary > 0).astype(np.uint8)
    return (resize(binary, size) > 0).astype(np.uint8)


def instances_at_mask(labels: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """True instances at the dataset's scale: instance labels resized (nearest) onto the
    dataset's binary mask, whose fringe pixels take the label of the nearest cell.

    The binary mask stays the reference (it is what pixel scores use); the labels only say
    which of its pixels belong to which cell, so touching cells stay apart.
    """
    binary = np.asarray(binary) > 0
    height, width = binary.shape
    small = cv2.resize(
        np.asarray(labels).astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST
    )
    small[~binary] = 0
    fringe = binary & (small == 0)
    if fringe.any():
        grown = expand_labels(small, distance=3)
        small[fringe] = grown[fringe]
        # Mask pixels far from any resized cell (a cell lost by the resize) get their own ids.
        orphans = binary & (small == 0)
        if orphans.any():
            extra = instances_from_binary(orphans).astype(np.int32)
            small[orphans] = extra[orphans] + small.max()
    return small.astype(np.uint32)


def is_binary_labels(labels: np.ndarray) -> bool:
    """Whether a mask carries no instance labels: one non-zero value shared by several
    separate objects (a binary mask saved as 0/1 or 0/255)."""
    labels = np.asarray(labels)
    values = np.unique(labels[labels > 0])
    return len(values) == 1 and int(instances_from_binary(labels).max()) > 1


# ---------------------------------------------------------------- preprocessing of a model
@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes model input; recorded with every data set and model.

    ``geometry``: ``resize`` (the study: every whole image to ``size``) or ``patches``
    (every image rescaled by ``scale``, so cells keep one size; trained on patches).
    ``tile``: the window the network sees at once in inference ([height, width]).
    ``pixel_size``: with a cell diameter in micrometres (``dataset.cell_diameter_um``), the
    micrometres per pixel the model works at; each image is then rescaled by its own pixel
    size over this one (``scale`` is None), so images of different magnifications show
    cells at one size.
    """

    geometry: str
    colour: str
    normalise: str
    percentiles: tuple[float, float]
    size: tuple[int, int] | None  # resize geometry
    scale: float | None  # patches geometry
    tile: tuple[int, int]
    pixel_size: float | None = None  # patches geometry in micrometres

    @property
    def channels(self) -> int:
        return 3 if self.colour == "rgb" else 1

    def scale_for(self, pixel_size: float | None = None, source: object = "image") -> float:
        """The patches geometry's rescale factor of an image of ``pixel_size`` micrometres per
        pixel: the model's one ``scale``, or the image's pixel size over the model's. An
        image of unknown pixel size for a model that works in micrometres is an
        :class:`InputError` naming ``source``."""
        if self.pixel_size is None:
            return float(self.scale)
        if pixel_size is None or not np.isfinite(pixel_size) or pixel_size <= 0:
            raise InputError(
                source,
                f"no pixel size known, but the model works at {self.pixel_size:.4g} um per "
                "pixel (dataset.cell_diameter_um): give the file's pixel size in its metadata "
                "or data.pixel_size",
            )
        return float(pixel_size) / float(self.pixel_size)

    def shape_at_training_scale(
        self, height: int, width: int, pixel_size: float | None = None, source: object = "image"
    ) -> tuple[int, int]:
        if self.geometry == "resize":
            return int(self.size[0]), int(self.size[1])
        return scaled_shape((height, width), self.scale_for(pixel_size, source))

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        def pair(value):
            return None if value is None else tuple(value)

        return cls(
            geometry=str(values["geometry"]),
            colour=str(values["colour"]),
            normalise=str(values["normalise"]),
            percentiles=tuple(float(v) for v in values["percentiles"]),
            size=pair(values.get("size")),
            scale=None if values.get("scale") is None else float(values["scale"]),
            tile=tuple(int(v) for v in values["tile"]),
            pixel_size=None if values.get("pixel_size") is None else float(values["pixel_size"]),
        )


def prepare_image(
    raw: np.ndarray, prep: Preprocessing, source: object = "image", pixel_size: float | None = None
) -> np.ndarray:
    """A raw image (as :func:`protoseg.io.read_image` returns it) as float32 model input
    (C, H, W) at the training scale: intensity, colour, then geometry. ``pixel_size``
    (micrometres per pixel of the image) is needed by a model that works in micrometres."""
    unit = scale_to_unit(raw, source)
    if prep.normalise == "percentile":
        # Percentiles of the colour-converted image, so grey and RGB storage agree.
        converted = convert_colour(unit, prep.colour, source)
        converted = normalise_percentiles(converted, prep.percentiles, source)
    else:
        converted = convert_colour(unit, prep.colour, source)
    target = prep.shape_at_training_scale(*converted.shape[:2], pixel_size, source)
    if tuple(converted.shape[:2]) != target:
        converted = resize(converted, target)
    return np.ascontiguousarray(converted.transpose(2, 0, 1), dtype=np.float32)


# ---------------------------------------------------------------- focal context
def context_window(planes: Sequence[int], z: int, context_planes: int) -> list[int]:
    """The planes a sample of plane ``z`` takes with ``context_planes`` = k: its k
    neighbours on each side in the stack ``planes`` (ordered by depth), then ``z`` itself in
    the middle: 2k + 1 planes, from the k-th below to the k-th above.

    Neighbours are counted in the stack, not in z units (z12's neighbour in z12, z14, ... is
    z14). Planes beyond the stack's ends repeat the nearest plane (clamping), so a sample of
    the first plane of ``[12, 14, 16]`` with k = 1 takes ``[12, 12, 14]``. k = 0 is ``[z]``.
    """
    stack = sorted(int(plane) for plane in planes)
    k = int(context_planes)
    if k < 0:
        raise ValueError(f"context_planes must be 0 or more, got {k}")
    if int(z) not in stack:
        raise ValueError(f"plane z{z} is not in the stack {stack}")
    index = stack.index(int(z))
    last = len(stack) - 1
    return [stack[min(max(index + offset, 0), last)] for offset in range(-k, k + 1)]


def prepare_stack(
    raws: Sequence[np.ndarray], prep: Preprocessing, sources: Sequence[object] | None = None
) -> np.ndarray:
    """The images of a focal window (:func:`context_window`, in its order) as one model input
    (C x (2k + 1), H, W): each prepared by :func:`prepare_image` (so each plane is normalised
    on its own, as a single-plane model's input is), their channels one after the other. One
    image gives exactly :func:`prepare_image`'s result."""
    sources = list(sources) if sources is not None else ["image"] * len(raws)
    if not raws:
        raise ValueError("a focal window holds at least one image")
    prepared = [prepare_image(raw, prep, source) for raw, source in zip(raws, sources, strict=True)]
    return join_planes(prepared, sources)


def join_planes(prepared: Sequence[np.ndarray], sources: Sequence[object]) -> np.ndarray:
    """Prepared images (C, H, W) of one focal window as one input, channels one after the
    other; images of different sizes are an :class:`InputError` naming the odd one."""
    shape = prepared[0].shape
    for image, source in zip(prepared, sources, strict=True):
        if image.shape != shape:
            raise InputError(
                source,
                f"is {image.shape[1]} x {image.shape[2]} ({image.shape[0]} channels) at the "
                f"training scale but {sources[0]} of the same focal stack is "
                f"{shape[1]} x {shape[2]} ({shape[0]}): the planes of a stack must share one size",
            )
    if len(prepared) == 1:
        return prepared[0]
    return np.ascontiguousarray(np.concatenate(prepared, axis=0), dtype=np.float32)


def centre_plane(image: np.ndarray, context_planes: int) -> np.ndarray:
    """The middle plane's channels of a focal window's input (C x (2k + 1), H, W): the plane
    the sample is of, for display."""
    planes = 2 * int(context_planes) + 1
    channels, rem = divmod(image.shape[0], planes)
    if rem:
        raise ValueError(
            f"{image.shape[0]} channels do not split into {planes} planes (context_planes "
            f"{context_planes})"
        )
    start = int(context_planes) * channels
    return image[start : start + channels]


# ---------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Augmentation:
    """Random changes of one training sample; 0 (or False) turns each off.

    ``scale``: zoom factor drawn log-uniformly in [1/(1+s), 1+s]; ``brightness``: shift
    drawn in [-b, b]; ``contrast``: factor in [1-c, 1+c] about the mean; ``gamma``: exponent
    drawn log-uniformly in [1/(1+g), 1+g], applied to the patch rescaled to [0, 1];
    ``noise``: Gaussian noise of a standard deviation drawn in [0, n] per sample (nnU-Net's
    GaussianNoiseTransform), for images whose percentile stretch amplifies their noise.
    """

    flip: bool = False
    rotate90: bool = False
    scale: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0

    @classmethod
    def from_config(cls, values: dict | None) -> Augmentation:
        values = values or {}
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


def crop_size_for_scale(patch: Sequence[int], augmentation: Augmentation, rng) -> tuple:
    """The region to cut (height, width) so that resizing it to ``patch`` zooms by a draw."""
    if augmentation.scale <= 0:
        return int(patch[0]), int(patch[1])
    zoom = float(np.exp(rng.uniform(-np.log1p(augmentation.scale), np.log1p(augmentation.scale))))
    return max(2, round(patch[0] / zoom)), max(2, round(patch[1] / zoom))


def augment_sample(
    image: np.ndarray,
    labels: np.ndarray,
    patch: Sequence[int],
    augmentation: Augmentation,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Bring a cut region (C, h, w) and its labels (h, w) to ``patch`` size and augment them.

    The region was cut at :func:`crop_size_for_scale`'s size; resizing it to the patch is
    the scale jitter (linear for the image, nearest for the labels). Flips and quarter turns
    go to both; intensity changes to the image only.
    """
    height, width = int(patch[0]), int(patch[1])
    if image.shape[1:] != (height, width):
        image = resize(np.ascontiguousarray(image.transpose(1, 2, 0)), (height, width))
        image = image.transpose(2, 0, 1)
        labels = resize_labels(labels, (height, width))
    if augmentation.flip:
        if rng.random() < 0.5:
            image, labels = image[:, :, ::-1], labels[:, ::-1]
        if rng.random() < 0.5:
            image, labels = image[:, ::-1, :], labels[::-1, :]
    if augmentation.rotate90 and height == width:
        turns = int(rng.integers(4))
        image, labels = np.rot90(image, turns, (1, 2)), np.rot90(labels, turns)
    image = np.array(image, dtype=np.float32)  # a copy: the region may be a memory map
    if augmentation.gamma > 0:
        gamma = float(
            np.exp(rng.uniform(-np.log1p(augmentation.gamma), np.log1p(augmentation.gamma)))
        )
        low, high = float(image.min()), float(image.max())
        if high > low:
            image = (((image - low) / (high - low)) ** gamma) * (high - low) + low
    if augmentation.contrast > 0:
        factor = rng.uniform(1 - augmentation.contrast, 1 + augmentation.contrast)
        mean = image.mean()
        image = (image - mean) * np.float32(factor) + mean
    if augmentation.brightness > 0:
        image = image + np.float32(rng.uniform(-augmentation.brightness, augmentation.brightness))
    if augmentation.noise > 0:
        sigma = rng.uniform(0, augmentation.noise)
        image = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)


# ---------------------------------------------------------------- display
def display_rgb(image: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """Any grey or colour image as uint8 RGB (H, W, 3), contrast stretched to its
    0.5-99.5 percentiles. ``channels_first``: the image is model input (C, H, W)."""
    image = np.asarray(image)
    if channels_first:
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3].astype(np.float32)
    low, high = np.percentile(image, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    scaled = np.clip((image - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    return scaled
