"""Applying a trained U-Net: whole batches, and tiles of images of any size.

- :func:`prepare_image` turns a raw image (as :func:`protoseg.io.read_image` returns it)
  into model input at the training scale, the way the dataset stage prepared its samples;
- :func:`predict_probabilities` runs a batch of model-sized images (evaluation);
- :func:`predict_tiled` runs one image of any size as overlapping tiles of the training
  size (prediction on new images), padding images smaller than a tile;
- :func:`predict_image` does all three for one raw image and returns probabilities at the
  image's own size.

Tiles are blended by cropping: where two tiles overlap, each pixel is taken from the tile
in which it lies farther from the tile's edge (the idea of torch_em's ``predict_with_halo``,
written out here because the evaluation environment has torch but not torch_em). A model
whose receptive field reaches at most ``overlap / 2`` pixels therefore gives exactly the
same output tiled as untiled; a U-Net's reaches further, but context beyond that distance
changes its output little.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import pairwise

import cv2
import numpy as np

from protoseg.dataset import convert_colour, resize, scale_to_unit
from protoseg.errors import InputError

log = logging.getLogger(__name__)


def _pair(value, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be one number or a pair (height, width), got {value}")
    return value


def prepare_image(
    image_array: np.ndarray,
    in_channels: int,
    colour: str = "rgb",
    scale: float | Sequence[float] | None = None,
    source: str = "image",
) -> np.ndarray:
    """A raw image as float32 model input (C, H, W) in [0, 1] at the training scale.

    ``image_array``: (H, W) greyscale or (H, W, C) with C in 1, 3, 4 (RGB order, alpha
    dropped), scaled and converted by the dataset stage's functions
    (:func:`protoseg.dataset.scale_to_unit`: integer types by their dtype's maximum;
    :func:`protoseg.dataset.convert_colour`: "rgb" keeps three channels, greyscale repeated,
    "grey" converts colour to luminance, one channel). ``scale``: factor, or (height, width)
    factors, by which the image is resized with linear interpolation, as the dataset stage
    resized its images (None or 1: as it is). Raises :class:`InputError` naming ``source`` when the
    image cannot give the ``in_channels`` channels the model takes.
    """
    # The dataset stage's own transforms, so new images are scaled exactly as training data.
    unit = convert_colour(scale_to_unit(np.asarray(image_array), source), colour, source)
    if unit.shape[2] != in_channels:
        raise InputError(
            source,
            f"gives {unit.shape[2]} channel(s) with colour '{colour}', but the model takes {in_channels}"
            " (was it trained with another dataset.colour?)",
        )
    if scale is not None:
        scale_y, scale_x = _pair(scale, "scale")
        height = max(1, int(round(unit.shape[0] * scale_y)))
        width = max(1, int(round(unit.shape[1] * scale_x)))
        if (height, width) != unit.shape[:2]:
            unit = resize(unit, (height, width))
    channels = np.moveaxis(unit, 2, 0)
    return np.ascontiguousarray(channels, dtype=np.float32)


# ---------------------------------------------------------------- batches
def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def predict_probabilities(
    model, images, device: str = "cpu", batch_size: int = 16, progress: bool = False
) -> np.ndarray:
    """Cell probabilities (sigmoid of the model's logits) of ``images`` (N, C, H, W).

    ``images`` may be any array-like, e.g. a memory-mapped shard; one batch at a time is
    copied to ``device``. No gradients; mixed precision (float16) on CUDA. Returns float32
    (N, H, W).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    count = len(images)
    device = torch.device(device)
    model = model.to(device).eval()
    output = None
    batches = _batches(count, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(list(batches), desc="predict", unit="batch")
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"),
    ):
        for batch in batches:
            # A copy: dataset shards are read-only memory maps, which torch will not wrap.
            tensor = torch.from_numpy(np.array(images[batch], dtype=np.float32)).to(device)
            logits = model(tensor)
            if logits.ndim == 4:
                if logits.shape[1] != 1:
                    raise ValueError(
                        f"expected a model with one output channel, got {logits.shape[1]}"
                    )
                logits = logits[:, 0]
            probabilities = torch.sigmoid(logits.float()).cpu().numpy()
            if output is None:
                output = np.empty((count, *probabilities.shape[1:]), dtype=np.float32)
            output[batch] = probabilities
    if output is None:
        return np.empty((0, *np.shape(images)[2:]), dtype=np.float32)
    return output


# ---------------------------------------------------------------- tiles
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` pixels, neighbours
    overlapping by at least ``overlap``; the last tile ends at the edge."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _owned_ranges(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part of each tile whose pixels it supplies: overlaps are split at their middle."""
    bounds = [0]
    for start, following in pairwise(starts):
        bounds.append((following + start + tile) // 2)
    bounds.append(max(length, starts[-1] + tile))
    return list(pairwise(bounds))


def predict_tiled(
    model,
    image: np.ndarray,
    tile: int | Sequence[int],
    overlap: int | Sequence[int],
    device: str = "cpu",
    batch_size: int = 8,
) -> np.ndarray:
    """Cell probabilities (H, W) of one image (C, H, W) of any size, in tiles.

    ``tile``: the tile size (the training image size, so the model sees cells at the scale
    it learnt); ``overlap``: pixels shared by neighbouring tiles, at most ``tile - 1``.
    Images smaller than a tile are padded by mirroring their edge, and the padding is
    cropped off the result.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got {image.shape}")
    tile_h, tile_w = (int(value) for value in _pair(tile, "tile"))
    overlap_h, overlap_w = (int(value) for value in _pair(overlap, "overlap"))
    for size, lap in ((tile_h, overlap_h), (tile_w, overlap_w)):
        if size < 1 or not 0 <= lap < size:
            raise ValueError(f"need 0 <= overlap < tile, got tile {size} and overlap {lap}")
    _, height, width = image.shape
    pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
    padded_h, padded_w = image.shape[1:]

    starts_y = tile_starts(padded_h, tile_h, overlap_h)
    starts_x = tile_starts(padded_w, tile_w, overlap_w)
    owned_y = _owned_ranges(starts_y, tile_h, padded_h)
    owned_x = _owned_ranges(starts_x, tile_w, padded_w)
    tiles = [
        (y, x, oy, ox)
        for y, oy in zip(starts_y, owned_y, strict=True)
        for x, ox in zip(starts_x, owned_x, strict=True)
    ]

    output = np.zeros((padded_h, padded_w), dtype=np.float32)
    for batch in _batches(len(tiles), batch_size):
        chunk = tiles[batch]
        inputs = np.stack([image[:, y : y + tile_h, x : x + tile_w] for y, x, _, _ in chunk])
        probabilities = predict_probabilities(model, inputs, device=device, batch_size=len(chunk))
        for (y, x, (y0, y1), (x0, x1)), probability in zip(chunk, probabilities, strict=True):
            output[y0:y1, x0:x1] = probability[y0 - y : y1 - y, x0 - x : x1 - x]
    return output[:height, :width]


def predict_image(
    model,
    image_array: np.ndarray,
    *,
    in_channels: int,
    colour: str,
    scale: float | Sequence[float] | None,
    tile: int | Sequence[int],
    overlap: int | Sequence[int],
    device: str = "cpu",
    batch_size: int = 8,
    source: str = "image",
) -> np.ndarray:
    """Cell probabilities (H, W) of one raw image at the image's own size.

    The image is prepared as the model's training data was (:func:`prepare_image`),
    predicted in tiles at the training scale (:func:`predict_tiled`) and the result
    resized back with linear interpolation.
    """
    height, width = np.asarray(image_array).shape[:2]
    prepared = prepare_image(image_array, in_channels, colour, scale, source=source)
    probabilities = predict_tiled(
        model, prepared, tile, overlap, device=device, batch_size=batch_size
    )
    if probabilities.shape != (height, width):
        probabilities = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
    return probabilities
