"""Applying a trained U-Net: the one inference path of evaluation, validation and prediction.

- :func:`predict_probabilities` runs a batch of equally sized inputs (N, C, H, W);
- :func:`sliding_window` runs one image of any size at the training scale as overlapping
  tiles, blended with Gaussian weights (nnU-Net's: sigma = tile / 8, so a tile's centre
  counts most and its border, where the network lacks context, least), padding images
  smaller than a tile by mirroring;
- :func:`to_original_size` brings outputs at the training scale back to an image's size.

:class:`protoseg.segmenter.Segmenter` puts these together with preprocessing, the
threshold and the instance step: stages call it, not this module.

For the study's ``resize`` geometry the input is exactly one tile, so the sliding window is
a plain forward pass. Precision (fp32, bf16, fp16 autocast, with channels_last for the
reduced ones) follows :func:`protoseg.device.resolve_precision`; probabilities are always
returned as float32.

Why not torch_em's ``predict_with_halo``: it crops each block's halo instead of blending,
so neighbouring blocks meet at hard seams; and MONAI's ``sliding_window_inference`` would add
a dependency for one function.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from protoseg.transforms import resize

log = logging.getLogger(__name__)


def _pair(value, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be one number or a pair (height, width), got {value}")
    return value


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def prepare_network(model, device: str = "cpu", precision: str = "fp32"):
    """The model on ``device`` in eval mode, channels_last for reduced precision."""
    import torch

    model = model.to(device).eval()
    if precision != "fp32":
        model = model.to(memory_format=torch.channels_last)
    return model


def predict_probabilities(
    model,
    images,
    device: str = "cpu",
    batch_size: int = 16,
    precision: str = "fp32",
    progress: bool = False,
    all_outputs: bool = False,
) -> np.ndarray:
    """Cell probabilities (sigmoid of the model's logits) of ``images`` (N, C, H, W).

    ``images`` may be any array-like, e.g. a memory-mapped shard; one batch at a time is
    copied to ``device``. No gradients; autocast in ``precision``. Returns float32 (N, H, W)
    of the foreground channel, or with ``all_outputs`` (N, K, H, W) of every output channel
    (a network with instance outputs, :mod:`protoseg.instances`).
    """
    import torch

    from protoseg.device import autocast_dtype

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    count = len(images)
    device = torch.device(device)
    model = prepare_network(model, device, precision)
    dtype = autocast_dtype(precision)
    memory_format = torch.channels_last if dtype is not None else torch.contiguous_format
    output = None
    batches = _batches(count, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(list(batches), desc="predict", unit="batch")
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None),
    ):
        for batch in batches:
            # A copy: dataset shards are read-only memory maps, which torch will not wrap.
            tensor = torch.from_numpy(np.array(images[batch], dtype=np.float32)).to(device)
            logits = model(tensor.contiguous(memory_format=memory_format))
            if logits.ndim == 4 and not all_outputs:
                logits = logits[:, 0]  # the foreground channel
            probabilities = torch.sigmoid(logits.float()).cpu().numpy()
            if output is None:
                output = np.empty((count, *probabilities.shape[1:]), dtype=np.float32)
            output[batch] = probabilities
    if output is None:
        return np.empty((0, *np.shape(images)[2:]), dtype=np.float32)
    return output


def output_count(model) -> int:
    """The output channels of a protoseg U-Net (1 for other modules)."""
    return int((getattr(model, "architecture", None) or {}).get("out_channels", 1))


# ---------------------------------------------------------------- the sliding window
def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` pixels, neighbours
    sharing at least ``overlap`` (a fraction of the tile); the first starts at 0 and the
    last ends at the edge, the rest evenly spaced (nnU-Net's steps)."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = int(np.ceil((length - tile) / stride)) + 1
    return [int(round(v)) for v in np.linspace(0, length - tile, count)]


BLENDINGS = ("gaussian", "uniform")


def gaussian_weights(tile: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net's tile weights: a Gaussian of sigma ``tile * sigma_scale`` peaking at 1 in
    the middle, never 0 (its smallest positive value at the corners)."""
    axes = []
    for size in tile:
        centre = (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2))
    weights = np.outer(axes[0], axes[1]).astype(np.float32)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def sliding_window(
    model,
    image: np.ndarray,
    tile: int | Sequence[int],
    overlap: float = 0.5,
    device: str = "cpu",
    batch_size: int = 4,
    precision: str = "fp32",
    all_outputs: bool = False,
    blending: str = "gaussian",
) -> np.ndarray:
    """Cell probabilities (H, W) float32 of one image (C, H, W) at the training scale, or
    with ``all_outputs`` every output channel (K, H, W), each blended the same way.

    ``tile``: the window (training patch, or training size); ``overlap``: the share of a
    tile that its neighbour covers too, in [0, 1). Overlapping predictions are averaged with
    Gaussian weights (``blending="uniform"``: a plain mean, the ablation's alternative);
    images smaller than a tile are mirrored out to it and cropped back.
    """
    if blending not in BLENDINGS:
        raise ValueError(f"blending must be one of {', '.join(BLENDINGS)}, got {blending!r}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got {image.shape}")
    tile_h, tile_w = (int(v) for v in _pair(tile, "tile"))
    if min(tile_h, tile_w) < 1 or not 0 <= overlap < 1:
        raise ValueError(
            f"need a tile of at least 1 pixel and 0 <= overlap < 1, got {tile}, {overlap}"
        )
    _, height, width = image.shape
    pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
    padded_h, padded_w = image.shape[1:]
    corners = [
        (y, x)
        for y in tile_starts(padded_h, tile_h, overlap)
        for x in tile_starts(padded_w, tile_w, overlap)
    ]
    if len(corners) == 1:  # one tile (the resize geometry): no blending to do
        probabilities = predict_probabilities(
            model, image[None], device, 1, precision, all_outputs=all_outputs
        )
        return probabilities[0][..., :height, :width]
    if blending == "gaussian":
        weights = gaussian_weights((tile_h, tile_w))
    else:
        weights = np.ones((tile_h, tile_w), dtype=np.float32)
    channels = (output_count(model),) if all_outputs else ()
    total = np.zeros((*channels, padded_h, padded_w), dtype=np.float32)
    weight_sum = np.zeros((padded_h, padded_w), dtype=np.float32)
    for batch in _batches(len(corners), batch_size):
        chunk = corners[batch]
        inputs = np.stack([image[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])
        probabilities = predict_probabilities(
            model, inputs, device, len(chunk), precision, all_outputs=all_outputs
        )
        for (y, x), probability in zip(chunk, probabilities, strict=True):
            total[..., y : y + tile_h, x : x + tile_w] += probability * weights
            weight_sum[y : y + tile_h, x : x + tile_w] += weights
    return (total / weight_sum)[..., :height, :width]


def to_original_size(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """Probabilities (H, W) or outputs (K, H, W) at the training scale brought back to an
    image's own size (linear)."""
    if probabilities.shape[-2:] == (height, width):
        return probabilities
    if probabilities.ndim == 3:
        return np.stack([resize(channel, (height, width)) for channel in probabilities])
    return resize(probabilities, (height, width))
