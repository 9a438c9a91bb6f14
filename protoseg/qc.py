"""QC overlays: mask outlines over every plane of a state, for checking masks by eye.

The study checked each mask by overlaying it on its image. :func:`overlay_grid` draws one
column per plane (labelled with its z) and one row per modality (fluorescent, bright-field,
...), with the plane's own mask outlined in one colour and the merged state mask in
another. Panels are scaled to ``panel_width`` pixels so a full-size 2880 x 2048 stack makes
a PNG one can open; outlines are found after scaling so they stay one or two pixels wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from protoseg.transforms import display_rgb

OUTLINE_COLOUR = (255, 220, 0)  # predictions: yellow reads on bright-field and fluorescence
PLANE_COLOUR = (255, 120, 0)  # orange: the plane's own mask
STATE_COLOUR = (255, 0, 255)  # magenta: the merged state mask
BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)
HEADER = 22  # pixels above each column for its z label
ROW_LABEL = 22  # pixels left of each row for its modality (written vertically)
FOOTER = 22  # pixels below the grid for the legend
GAP = 4
DIM = 0.7  # image brightness under the outlines


def _resize(image: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    height, width = size
    interpolation = cv2.INTER_NEAREST if labels else cv2.INTER_AREA
    if labels:
        # OpenCV cannot resize uint16/uint32 with nearest on every build; int32 works.
        return cv2.resize(image.astype(np.int32), (width, height), interpolation=interpolation)
    return cv2.resize(image, (width, height), interpolation=interpolation)


def outline(
    panel: np.ndarray,
    labels: np.ndarray,
    colour: tuple[int, int, int] | np.ndarray,
    thickness: int = 1,
    mode: str = "inner",
) -> np.ndarray:
    """Draw the instance boundaries of ``labels`` on an RGB panel of the same size: every
    outline protoseg draws (QC grids, prediction overlays) goes through here.

    ``colour``: one RGB colour, or an RGB image of the panel's size to take each edge
    pixel's colour from (each cell outlined in its own colour). ``mode`` as in
    :func:`skimage.segmentation.find_boundaries`: "inner" draws on the object's edge
    pixels, "outer" on the background pixels just outside it.
    """
    edges = find_boundaries(labels, mode=mode)
    if thickness > 1:
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((thickness, thickness), np.uint8)) > 0
    panel = panel.copy()
    colour = np.asarray(colour)
    panel[edges] = colour[edges] if colour.ndim == 3 else colour
    return panel


def panel_size(shape: tuple[int, int], panel_width: int) -> tuple[int, int]:
    """(height, width) of one panel for an image of ``shape`` scaled to ``panel_width``."""
    height, width = shape[:2]
    scale = min(1.0, panel_width / width) if panel_width else 1.0
    return max(1, round(height * scale)), max(1, round(width * scale))


def grid_size(shape: tuple[int, int], planes: int, rows: int, panel_width: int) -> tuple[int, int]:
    """(height, width) in pixels of the PNG :func:`overlay_grid` makes."""
    ph, pw = panel_size(shape, panel_width)
    return HEADER + rows * ph + (rows - 1) * GAP + FOOTER, ROW_LABEL + planes * pw + (
        planes - 1
    ) * GAP


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT, 1, cv2.LINE_AA)


def overlay_grid(
    images: dict[str, Sequence[np.ndarray]],
    plane_masks: Sequence[np.ndarray],
    state_mask: np.ndarray | None,
    z: Sequence[int],
    *,
    panel_width: int,
    title: str = "",
) -> np.ndarray:
    """RGB uint8 grid: a column per plane, a row per modality, mask outlines on each panel.

    ``images``: modality name -> that modality's images, one per plane, in the order of
    ``z``; ``plane_masks``: each plane's label image; ``state_mask``: the merged mask drawn
    on every plane (None: left out). All images and masks share one height and width.
    """
    z = list(z)
    if not images:
        raise ValueError("no images to draw")
    shape = (
        np.asarray(plane_masks[0]).shape[:2]
        if plane_masks
        else next(iter(images.values()))[0].shape[:2]
    )
    for modality, stack in images.items():
        if len(stack) != len(z):
            raise ValueError(f"{modality}: {len(stack)} images for {len(z)} planes")
        for plane, image in zip(z, stack, strict=True):
            if image.shape[:2] != shape:
                raise ValueError(
                    f"{modality} z{plane}: image shape {image.shape[:2]} differs from mask shape {shape}"
                )
    if len(plane_masks) != len(z):
        raise ValueError(f"{len(plane_masks)} plane masks for {len(z)} planes")

    ph, pw = panel_size(shape, panel_width)
    thickness = 2 if pw >= 300 else 1
    height, width = grid_size(shape, len(z), len(images), panel_width)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    small_state = (
        _resize(np.asarray(state_mask), (ph, pw), labels=True) if state_mask is not None else None
    )

    for column, plane in enumerate(z):
        x = ROW_LABEL + column * (pw + GAP)
        _text(canvas, f"z{plane}", (x + 4, HEADER - 6))
        small_plane = _resize(np.asarray(plane_masks[column]), (ph, pw), labels=True)
        for row, stack in enumerate(images.values()):
            y = HEADER + row * (ph + GAP)
            panel = _resize(display_rgb(stack[column]), (ph, pw), labels=False)
            # Dimmed so the outlines stand out on bright rims; the state outline sits
            # just outside the plane outline, so both show where they agree.
            panel = (panel * DIM).astype(np.uint8)
            if small_state is not None:
                panel = outline(panel, small_state, STATE_COLOUR, thickness, mode="outer")
            panel = outline(panel, small_plane, PLANE_COLOUR, thickness, mode="inner")
            canvas[y : y + ph, x : x + pw] = panel

    for row, modality in enumerate(images):
        # Row names run upwards along the left edge, like a y-axis label.
        y = HEADER + row * (ph + GAP)
        strip = np.full((ROW_LABEL, ph, 3), BACKGROUND, dtype=np.uint8)
        _text(strip, modality[: max(1, ph // 8)], (4, ROW_LABEL - 6))
        canvas[y : y + ph, :ROW_LABEL] = np.rot90(strip)

    legend = "orange: plane mask   magenta: merged state mask"
    if title:
        legend = f"{title}   {legend}"
    _text(canvas, legend, (ROW_LABEL, height - 7))
    return canvas


# ---------------------------------------------------------------- prediction overlays
# Images larger than this many pixels (either side) get a zoomed crop beside them.
CROP_SIZE = 256


def densest_window(weight: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``size`` x ``size`` window (smaller on a smaller image) holding the most of
    ``weight`` (the first of equal ones), moved to centre what it holds."""
    height, width = weight.shape
    rows, columns = min(size, height), min(size, width)
    integral = np.pad(np.asarray(weight, np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (
        integral[rows:, columns:]
        - integral[:-rows, columns:]
        - integral[rows:, :-columns]
        + integral[:-rows, :-columns]
    )
    top, left = (int(v) for v in np.unravel_index(int(np.argmax(sums)), sums.shape))
    # Centred on what it holds (the first best window has it at an edge), within the image.
    inside = np.asarray(weight, np.float64)[top : top + rows, left : left + columns]
    if inside.sum() > 0:
        ys, xs = np.indices(inside.shape)
        centre_y = top + (ys * inside).sum() / inside.sum()
        centre_x = left + (xs * inside).sum() / inside.sum()
        top = int(np.clip(round(centre_y - rows / 2), 0, height - rows))
        left = int(np.clip(round(centre_x - columns / 2), 0, width - columns))
    return slice(top, top + rows), slice(left, left + columns)


def object_centres(labels: np.ndarray) -> np.ndarray:
    """An image of ``labels``' size with 1 at each object's centroid: a crop chosen on it
    shows the most cells, not the largest one."""
    labels = np.asarray(labels).astype(np.int64)
    points = np.zeros(labels.shape, np.float32)
    if labels.max(initial=0) == 0:
        return points
    rows, columns = np.nonzero(labels)
    values = labels[rows, columns]
    counts = np.bincount(values)
    present = np.flatnonzero(counts)
    centre_rows = np.bincount(values, weights=rows)[present] / counts[present]
    centre_columns = np.bincount(values, weights=columns)[present] / counts[present]
    np.add.at(points, (centre_rows.astype(int), centre_columns.astype(int)), 1.0)
    return points


def with_zoomed_crop(
    overlay: np.ndarray, labels: np.ndarray, crop: int = CROP_SIZE, gap: int = 8
) -> np.ndarray:
    """An overlay (RGB, the image's own size) with, to its right, the ``crop`` window holding
    the most cells, enlarged by a whole factor to half the image's shorter side (pixels
    repeated: nothing interpolated), and that window marked on the image in white. A 2048 px
    image of 15 px cells shrunk to fit a screen or a report page loses its 1 px outlines;
    its enlarged crop keeps them. Images of at most 2 x ``crop`` pixels come back as they are."""
    height, width = overlay.shape[:2]
    if max(height, width) <= 2 * crop:
        return overlay
    rows, columns = densest_window(object_centres(labels), crop)
    factor = max(1, min(height, width) // (2 * crop))
    zoomed = np.repeat(np.repeat(overlay[rows, columns], factor, axis=0), factor, axis=1)
    marked = overlay.copy()
    frame = np.zeros((height, width), bool)
    frame[rows, columns] = True
    frame[rows.start + 2 : rows.stop - 2, columns.start + 2 : columns.stop - 2] = False
    marked[frame] = 255
    canvas = np.full(
        (max(height, zoomed.shape[0]), width + gap + zoomed.shape[1], 3), 255, np.uint8
    )
    canvas[:height, :width] = marked
    canvas[: zoomed.shape[0], width + gap :] = zoomed
    return canvas


def overlay_outlines(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image (8-bit RGB) with each instance's outline drawn in yellow."""
    return outline(display_rgb(image), labels, OUTLINE_COLOUR)


def instance_colours(count: int, seed: int = 0) -> np.ndarray:
    """``count`` bright, distinct-looking RGB colours (uint8), the same for the same seed."""
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(seed)
    hsv = np.stack(
        [rng.permutation(np.linspace(0, 1, count, endpoint=False)) if count else np.zeros(0)]
        + [rng.uniform(0.6, 1.0, count), rng.uniform(0.8, 1.0, count)],
        axis=1,
    )
    return (hsv_to_rgb(hsv) * 255).astype(np.uint8).reshape(count, 3)


def overlay_instances(image: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The image (8-bit RGB) with each instance tinted and outlined in its own colour, so
    that touching cells the network separated are told apart."""
    overlay = display_rgb(image).astype(np.float32)
    labels = np.asarray(labels)
    colours = np.vstack([np.zeros((1, 3), np.uint8), instance_colours(int(labels.max()))])
    painted = colours[labels].astype(np.float32)
    inside = labels > 0
    overlay[inside] = (1 - alpha) * overlay[inside] + alpha * painted[inside]
    return outline(overlay, labels, painted).astype(np.uint8)
