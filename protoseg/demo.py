"""A seeded synthetic protoplast data set in the study's form, with its true masks.

No real protoplast data is public, so the demo makes its own. Each *state* (day, time
point, xy position) is one field of view imaged at several focal planes in two channels:

* ``c1`` bright-field (RGB): a light, unevenly lit background; living cells (round, slightly
  elliptical and irregular, varied in size) with green chloroplast granules pressed to the
  periphery, a dark rim and a faint bright halo; dead cells (shrunken, brownish, crenated,
  no rim) and debris (small dark specks and fragments) that are not cells.
* ``c2`` fluorescent (RGB): a dark background and blue membrane rings of the living cells
  with a faint interior; no dead cells, no debris.

Every object sits at a *depth* (a focal-plane value, most near z18-z20). On plane ``z`` it is
drawn with a Gaussian blur of sigma ``blur_per_plane * mean_radius * |z - depth|``, so cells
are sharp on the plane next to their depth and blur away from it. Bright-field is
composed by absorption (optical densities add, so overlapping cells both show through);
fluorescence by emission (intensities add).

The truth (living cells only; dead cells and debris are never in a mask):

* per plane: a cell is *present* on plane ``z`` when ``|z - depth| <= presence_range``
  (plane units); the plane's mask holds the present cells' full outlines;
* per state: every cell present on at least one plane, i.e. the union of the plane masks.

Where two cells of one mask overlap, the larger cell (by full area) takes the overlap, the
study's rule; the smaller keeps the rest of its outline. Labels are the cells' ids, the same
in the state mask and in every plane mask, so a cell can be followed through the stack.

Everything is drawn from a :class:`numpy.random.Generator` seeded by (seed, day, time, xy),
so one state's images do not depend on which other states are generated, and the same seed
gives the same bytes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg import io
from protoseg.catalogue import STUDY_STATE_FORMAT, format_state, study_file_name
from protoseg.config import complete_section
from protoseg.errors import ConfigError

log = logging.getLogger(__name__)

BRIGHTFIELD_CHANNEL = 1
FLUORESCENT_CHANNEL = 2

# Optical densities (red, green, blue) per unit strength. Transmitted light is
# background * exp(-density): chloroplasts absorb red and blue and pass green, dead cells
# absorb blue most (brown), the rim and debris absorb all colours (grey-black).
CHLOROPLAST_DENSITY = np.array([1.05, 0.50, 1.20], np.float32)
CYTOPLASM_DENSITY = np.array([0.10, 0.05, 0.12], np.float32)
RIM_DENSITY = np.array([0.75, 0.75, 0.70], np.float32)
HALO_DENSITY = np.array([-0.10, -0.10, -0.09], np.float32)
DEAD_DENSITY = np.array([0.55, 0.85, 1.30], np.float32)
DEBRIS_DENSITY = np.array([1.00, 1.05, 1.15], np.float32)
# Emission colour of the membrane stain (mostly blue, a little cyan).
MEMBRANE_COLOUR = np.array([0.10, 0.32, 1.0], np.float32)


# Columns of truth/cells.csv (one row per drawn object; label 0 = in no mask).
CELL_TABLE_COLUMNS = [
    "label",
    "kind",
    "centre_y",
    "centre_x",
    "radius",
    "semi_axis_a",
    "semi_axis_b",
    "angle_deg",
    "depth",
    "area",
    "visible_area",
    "present_planes",
]


# ---------------------------------------------------------------- parameters
@dataclass(frozen=True)
class DemoParams:
    """What a state contains. Lengths are in pixels; depths and ranges in plane units."""

    cells: tuple[int, int]
    cell_radius: tuple[float, float]
    dead_cells: tuple[int, int]
    debris: tuple[int, int]
    overlaps: tuple[int, int]
    depth_mean: float
    depth_sd: float
    presence_range: float
    blur_per_plane: float
    noise: float

    @property
    def mean_radius(self) -> float:
        return 0.5 * (self.cell_radius[0] + self.cell_radius[1])

    def blur_sigma(self, distance: float | np.ndarray) -> float | np.ndarray:
        """Gaussian sigma (pixels) of an object ``distance`` plane units from its depth."""
        return self.blur_per_plane * self.mean_radius * np.abs(distance)


def _pair(demo_cfg: dict, key: str, kind: type) -> tuple:
    value = demo_cfg[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"demo.{key}", f"expected [min, max], got {value!r}")
    low, high = (kind(v) for v in value)
    if low < 0 or high < low:
        raise ConfigError(f"demo.{key}", f"expected 0 <= min <= max, got {list(value)}")
    return low, high


def params_from_config(demo_cfg: dict) -> DemoParams:
    """:class:`DemoParams` from the ``demo:`` config section (keys left out: the schema's
    defaults)."""
    demo_cfg = complete_section("demo", demo_cfg)
    params = DemoParams(
        cells=_pair(demo_cfg, "cells", int),
        cell_radius=_pair(demo_cfg, "cell_radius", float),
        dead_cells=_pair(demo_cfg, "dead_cells", int),
        debris=_pair(demo_cfg, "debris", int),
        overlaps=_pair(demo_cfg, "overlaps", int),
        depth_mean=float(demo_cfg["depth_mean"]),
        depth_sd=float(demo_cfg["depth_sd"]),
        presence_range=float(demo_cfg["presence_range"]),
        blur_per_plane=float(demo_cfg["blur_per_plane"]),
        noise=float(demo_cfg["noise"]),
    )
    if params.cell_radius[0] < 3:
        raise ConfigError(
            "demo.cell_radius",
            f"cells need a radius of at least 3 pixels, got {list(params.cell_radius)}",
        )
    for key in ("depth_sd", "presence_range", "blur_per_plane", "noise"):
        if getattr(params, key) < 0:
            raise ConfigError(f"demo.{key}", f"must not be negative, got {getattr(params, key)}")
    height, width = demo_cfg.get("height"), demo_cfg.get("width")
    if height is not None and width is not None and 2 * params.cell_radius[1] > min(height, width):
        raise ConfigError(
            "demo.cell_radius",
            f"the largest cell ({2 * params.cell_radius[1]:g} px across) does not fit a {height}x{width} image",
        )
    return params


# ---------------------------------------------------------------- objects
@dataclass
class Blob:
    """One drawn object: a living cell, a dead cell or a piece of debris.

    Its outline is an irregular ellipse: in the frame rotated by ``angle``, the boundary
    radius at polar angle t is ``a*b / hypot(b cos t, a sin t) * (1 + sum_k amp_k cos(k t + phase_k))``.
    """

    kind: str  # "cell", "dead" or "debris"
    centre_y: float
    centre_x: float
    a: float  # semi-axes in pixels (a >= b)
    b: float
    angle: float  # radians
    depth: float  # focal-plane value where it is sharp
    harmonics: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 3), np.float32)
    )  # rows k, amp, phase
    label: int = 0  # truth label (living cells only)
    brightness: float = 1.0  # relative stain / pigment strength
    extras: list = field(default_factory=list)  # debris: further sub-blobs of one fragment

    @property
    def radius(self) -> float:
        return math.sqrt(self.a * self.b)

    @property
    def extent(self) -> float:
        """An upper bound of the distance from the centre to the outline."""
        wobble = float(np.abs(self.harmonics[:, 1]).sum()) if len(self.harmonics) else 0.0
        reach = self.a * (1 + wobble)
        for extra in self.extras:
            offset = math.hypot(extra.centre_y - self.centre_y, extra.centre_x - self.centre_x)
            reach = max(reach, offset + extra.extent)
        return reach

    def distance(self, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate signed distance to the outline (negative inside) and polar angle."""
        dy = yy - np.float32(self.centre_y)
        dx = xx - np.float32(self.centre_x)
        cos, sin = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
        u = dx * cos + dy * sin
        v = dy * cos - dx * sin
        rho = np.hypot(u, v)
        theta = np.arctan2(v, u)
        boundary = np.float32(self.a * self.b) / np.hypot(
            np.float32(self.b) * np.cos(theta), np.float32(self.a) * np.sin(theta)
        )
        if len(self.harmonics):
            wobble = np.ones_like(theta)
            for k, amplitude, phase in self.harmonics:
                wobble += np.float32(amplitude) * np.cos(np.float32(k) * theta + np.float32(phase))
            boundary = boundary * wobble
        signed = rho - boundary
        for extra in self.extras:
            signed = np.minimum(signed, extra.distance(yy, xx)[0])
        return signed, theta

    def footprint(self, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray]:
        """The object's pixels (distance <= 0) as (slices into the image, boolean mask)."""
        reach = self.extent + 1
        y0, y1 = max(0, int(self.centre_y - reach)), min(height, int(self.centre_y + reach) + 2)
        x0, x1 = max(0, int(self.centre_x - reach)), min(width, int(self.centre_x + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return (slice(y0, y1), slice(x0, x1)), self.distance(yy, xx)[0] <= 0


@dataclass
class StateSample:
    """One generated state: images per plane, truth, and the objects drawn."""

    planes: list[int]
    brightfield: np.ndarray  # (planes, H, W, 3) uint8
    fluorescent: np.ndarray  # (planes, H, W, 3) uint8
    state_truth: np.ndarray  # (H, W) uint16
    plane_truths: np.ndarray  # (planes, H, W) uint16
    blobs: list[Blob]
    params: DemoParams

    @property
    def cells(self) -> list[Blob]:
        return [blob for blob in self.blobs if blob.kind == "cell"]

    def present_planes(self, blob: Blob) -> list[int]:
        return [z for z in self.planes if abs(z - blob.depth) <= self.params.presence_range]

    def cell_table(self) -> pd.DataFrame:
        """One row per object: kind, label (0 = not in any mask), geometry, depth, areas."""
        height, width = self.state_truth.shape
        rows = []
        for blob in self.blobs:
            area = 0
            if blob.kind == "cell":
                _, mask = blob.footprint(height, width)
                area = int(mask.sum())
            present = self.present_planes(blob) if blob.kind == "cell" else []
            rows.append(
                {
                    "label": blob.label,
                    "kind": blob.kind,
                    "centre_y": round(blob.centre_y, 2),
                    "centre_x": round(blob.centre_x, 2),
                    "radius": round(blob.radius, 2),
                    "semi_axis_a": round(blob.a, 2),
                    "semi_axis_b": round(blob.b, 2),
                    "angle_deg": round(math.degrees(blob.angle), 1),
                    "depth": round(blob.depth, 2),
                    "area": area,
                    "visible_area": int((self.state_truth == blob.label).sum())
                    if blob.label
                    else 0,
                    "present_planes": " ".join(f"z{z}" for z in present),
                }
            )
        return pd.DataFrame(rows, columns=CELL_TABLE_COLUMNS)


# ---------------------------------------------------------------- placement
def _harmonics(
    rng: np.random.Generator, orders: range, amplitude: tuple[float, float]
) -> np.ndarray:
    ks = np.array(list(orders), np.float32)
    amps = rng.uniform(*amplitude, size=len(ks)).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=len(ks)).astype(np.float32)
    return np.stack([ks, amps, phases], axis=1)


def _living_cell(rng, y, x, radius, depth) -> Blob:
    elongation = rng.uniform(1.0, 1.18)  # slightly elliptical
    return Blob(
        kind="cell",
        centre_y=float(y),
        centre_x=float(x),
        a=float(radius * math.sqrt(elongation)),
        b=float(radius / math.sqrt(elongation)),
        angle=float(rng.uniform(0, np.pi)),
        depth=float(depth),
        harmonics=_harmonics(rng, range(3, 6), (0.0, 0.025)),
        brightness=float(rng.uniform(0.65, 1.0)),
    )


def _fits(y, x, reach, placed: list[tuple[float, float, float]], gap: float) -> bool:
    return all(math.hypot(y - py, x - px) > reach + preach + gap for py, px, preach in placed)


def _sample_depths(rng, n: int, params: DemoParams, planes: list[int]) -> np.ndarray:
    depths = rng.normal(params.depth_mean, params.depth_sd, size=n)
    # Clipped to the stack, so every cell is present on some plane when planes are no
    # more than 2 * presence_range apart.
    return np.clip(depths, min(planes), max(planes))


def place_objects(
    rng: np.random.Generator, height: int, width: int, planes: list[int], params: DemoParams
) -> list[Blob]:
    """Living cells (some overlapping in pairs at different depths), dead cells, debris.

    The random draws happen in one fixed order (pairs, single cells, dead cells, debris), so
    a seed always gives the same state."""
    placed: list[tuple[float, float, float]] = []  # (y, x, reach) of everything so far
    n_cells = int(rng.integers(params.cells[0], params.cells[1] + 1))
    cells = _place_pairs(rng, height, width, planes, params, n_cells, placed)
    cells += _place_single_cells(rng, height, width, planes, params, n_cells, len(cells), placed)
    if len(cells) < n_cells:
        log.warning(
            "placed %d of %d cells: the image is too crowded for more (lower demo.cells "
            "or demo.cell_radius)",
            len(cells),
            n_cells,
        )
    for label, cell in enumerate(cells, start=1):
        cell.label = label
    others = _place_dead_cells(rng, height, width, planes, params, placed)
    others += _place_debris(rng, height, width, planes, params, placed)
    return cells + others


def _place_pairs(rng, height, width, planes, params, n_cells, placed) -> list[Blob]:
    """Overlapping pairs: a large cell partly covers a small one lying at another depth."""
    r_low, r_high = params.cell_radius
    r_mid = 0.5 * (r_low + r_high)
    cells: list[Blob] = []
    n_pairs = min(int(rng.integers(params.overlaps[0], params.overlaps[1] + 1)), n_cells // 2)
    for _ in range(n_pairs):
        big_r = rng.uniform(max(r_mid, r_low), r_high)
        small_r = rng.uniform(r_low, max(r_low, min(r_mid, 0.7 * big_r)))
        for _attempt in range(50):
            y, x = rng.uniform(big_r, height - big_r), rng.uniform(big_r, width - big_r)
            direction = rng.uniform(0, 2 * np.pi)
            # About a quarter to three quarters of the small cell lies under the large one.
            offset = big_r + small_r * rng.uniform(-0.45, 0.35)
            sy, sx = y + offset * math.sin(direction), x + offset * math.cos(direction)
            if not (small_r <= sy <= height - small_r and small_r <= sx <= width - small_r):
                continue
            pair_reach = offset + small_r * 1.2
            if _fits(y, x, pair_reach + big_r * 0.1, placed, gap=2):
                big_depth = float(_sample_depths(rng, 1, params, planes)[0])
                shift = rng.uniform(3, 6) * rng.choice([-1, 1])
                small_depth = float(np.clip(big_depth + shift, min(planes), max(planes)))
                if abs(small_depth - big_depth) < 2:  # clipped against the stack's end
                    small_depth = float(np.clip(big_depth - shift, min(planes), max(planes)))
                cells.append(_living_cell(rng, y, x, big_r, big_depth))
                cells.append(_living_cell(rng, sy, sx, small_r, small_depth))
                placed.append((y, x, pair_reach + big_r * 0.1))
                break
    return cells


def _place_single_cells(rng, height, width, planes, params, n_cells, paired, placed) -> list[Blob]:
    """Single cells, to make ``n_cells`` with the ``paired`` ones: anywhere, partly outside
    the image allowed, not touching others."""
    r_low, r_high = params.cell_radius
    cells: list[Blob] = []
    depths = _sample_depths(rng, n_cells, params, planes)  # one per cell, as always drawn
    for index in range(n_cells - paired):
        radius = rng.uniform(r_low, r_high)
        for _attempt in range(60):
            y, x = (
                rng.uniform(0.3 * radius, height - 0.3 * radius),
                rng.uniform(0.3 * radius, width - 0.3 * radius),
            )
            if _fits(y, x, radius * 1.1, placed, gap=2):
                cells.append(_living_cell(rng, y, x, radius, depths[index]))
                placed.append((y, x, radius * 1.1))
                break
    return cells


def _place_dead_cells(rng, height, width, planes, params, placed) -> list[Blob]:
    """Dead cells: shrunken, crenated, pigmented, no rim."""
    r_low = params.cell_radius[0]
    dead: list[Blob] = []
    for _ in range(int(rng.integers(params.dead_cells[0], params.dead_cells[1] + 1))):
        radius = rng.uniform(0.35, 0.7) * r_low
        for _attempt in range(40):
            y, x = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
            if _fits(y, x, radius * 1.3, placed, gap=2):
                elongation = rng.uniform(1.0, 1.5)
                dead.append(
                    Blob(
                        kind="dead",
                        centre_y=y,
                        centre_x=x,
                        a=radius * math.sqrt(elongation),
                        b=radius / math.sqrt(elongation),
                        angle=float(rng.uniform(0, np.pi)),
                        depth=float(_sample_depths(rng, 1, params, planes)[0]),
                        harmonics=_harmonics(rng, range(2, 8), (0.02, 0.09)),
                        brightness=float(rng.uniform(0.6, 1.0)),
                    )
                )
                placed.append((y, x, radius * 1.3))
                break
    return dead


def _place_debris(rng, height, width, planes, params, placed) -> list[Blob]:
    """Debris: small dark fragments of one to four irregular pieces, mostly apart from cells."""
    r_mid = 0.5 * sum(params.cell_radius)
    debris: list[Blob] = []
    for _ in range(int(rng.integers(params.debris[0], params.debris[1] + 1))):
        size = rng.uniform(0.06, 0.22) * r_mid
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        for _attempt in range(20):
            if _fits(y, x, size * 2.5, placed, gap=1):
                break
            y, x = rng.uniform(0, height), rng.uniform(0, width)
        pieces = []
        for _piece in range(int(rng.integers(1, 5))):
            elongation = rng.uniform(1.0, 3.5)
            piece_size = size * rng.uniform(0.4, 1.0)
            pieces.append(
                Blob(
                    kind="debris",
                    centre_y=y + rng.normal(0, size * 0.8),
                    centre_x=x + rng.normal(0, size * 0.8),
                    a=max(0.7, piece_size * math.sqrt(elongation)),
                    b=max(0.6, piece_size / math.sqrt(elongation)),
                    angle=float(rng.uniform(0, np.pi)),
                    depth=0.0,
                    harmonics=_harmonics(rng, range(2, 6), (0.05, 0.15)),
                )
            )
        head, *rest = pieces
        head.extras = rest
        head.depth = float(_sample_depths(rng, 1, params, planes)[0])
        head.brightness = float(rng.uniform(0.6, 1.0))
        debris.append(head)
        placed.append((y, x, size * 2.5))
    return debris


# ---------------------------------------------------------------- drawing
def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas run on a downsampled copy (blur removes what it loses)."""
    if sigma < 0.3:
        return image
    height, width = image.shape[:2]
    factor = int(sigma // 4)
    if factor < 2 or min(height, width) < 8 * factor:
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    small = cv2.resize(
        image, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA
    )
    # Area averaging already blurred by about factor/2 pixels; take that off.
    small = cv2.GaussianBlur(
        small,
        (0, 0),
        math.sqrt(max(sigma**2 - (0.5 * factor) ** 2, 1e-6)) / factor,
        borderType=cv2.BORDER_REPLICATE,
    )
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).reshape(image.shape)


def _soft_disc(radius: float) -> np.ndarray:
    reach = int(math.ceil(radius + 1))
    yy, xx = np.mgrid[-reach : reach + 1, -reach : reach + 1].astype(np.float32)
    rho = np.hypot(yy, xx)
    # Anti-aliased disc with a darker core: chloroplasts are lens-shaped.
    return np.clip(radius + 0.5 - rho, 0, 1) * (
        1 - 0.35 * np.clip(rho / max(radius, 1e-3), 0, 1) ** 2
    )


def _splat(
    shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, weights: np.ndarray, kernel: np.ndarray
) -> np.ndarray:
    """Sum of ``kernel`` placed at sub-pixel points (bilinear impulses, one convolution)."""
    impulses = np.zeros(shape, np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yi, xi = y0 + dy, x0 + dx
        inside = (yi >= 0) & (yi < shape[0]) & (xi >= 0) & (xi < shape[1])
        np.add.at(impulses, (yi[inside], xi[inside]), (w * weights)[inside])
    return cv2.filter2D(impulses, -1, kernel, borderType=cv2.BORDER_CONSTANT)


@dataclass
class _Sprite:
    """An object's drawing on its own patch: densities (bright-field), emission (fluorescent)."""

    y0: int
    x0: int
    density: np.ndarray  # (h, w, 3) optical density
    emission: np.ndarray | None  # (h, w) stain intensity, or None (not fluorescent)
    depth: float


def _render(rng: np.random.Generator, blob: Blob, margin: int, mean_radius: float) -> _Sprite:
    reach = int(math.ceil(blob.extent)) + margin
    cy, cx = int(round(blob.centre_y)), int(round(blob.centre_x))
    y0, x0 = cy - reach, cx - reach
    yy, xx = np.mgrid[y0 : cy + reach + 1, x0 : cx + reach + 1].astype(np.float32)
    signed, theta = blob.distance(yy, xx)
    inside = np.clip(0.5 - signed, 0, 1)  # anti-aliased coverage
    shape = signed.shape
    emission = None

    if blob.kind == "cell":
        rim_width = max(0.9, 0.06 * blob.radius)
        density = inside[..., None] * CYTOPLASM_DENSITY * rng.uniform(0.6, 1.2)
        # Chloroplasts: many granules, pushed towards the membrane by the central vacuole.
        granule_r = max(0.8, rng.uniform(0.065, 0.09) * mean_radius)
        n_granules = int(rng.uniform(0.5, 0.8) * (blob.radius / granule_r) ** 2)
        # Fraction of the way from centre to outline, biased outwards.
        s = np.sqrt(rng.uniform(0.05, 1.0, n_granules)) ** 0.6 * 0.88
        phi = rng.uniform(0, 2 * np.pi, n_granules)
        cos, sin = math.cos(blob.angle), math.sin(blob.angle)
        u, v = s * blob.a * np.cos(phi), s * blob.b * np.sin(phi)
        gy = blob.centre_y - y0 + u * sin + v * cos
        gx = blob.centre_x - x0 + u * cos - v * sin
        granules = _splat(
            shape,
            gy,
            gx,
            rng.uniform(0.5, 1.0, n_granules).astype(np.float32),
            _soft_disc(granule_r),
        )
        granules = 1 - np.exp(-1.6 * granules)  # overlapping granules saturate
        density += (granules * blob.brightness)[..., None] * CHLOROPLAST_DENSITY
        rim = np.exp(-0.5 * ((signed + 0.6 * rim_width) / rim_width) ** 2)
        density += rim[..., None] * RIM_DENSITY * rng.uniform(0.7, 1.0)
        halo = np.exp(-0.5 * ((signed - 1.8 * rim_width) / (1.3 * rim_width)) ** 2)
        density += halo[..., None] * HALO_DENSITY
        # Fluorescent membrane: a ring on the outline, uneven along it, faint inside.
        ring_width = max(0.8, 0.05 * blob.radius)
        unevenness = (
            1
            + 0.3 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
            + 0.15 * np.cos(5 * theta + rng.uniform(0, 2 * np.pi))
        )
        ring = np.exp(-0.5 * ((signed + 0.7 * ring_width) / ring_width) ** 2) * unevenness
        interior = inside * rng.uniform(0.08, 0.18) * (1 + 0.6 * granules)
        emission = (blob.brightness * (ring + interior)).astype(np.float32)
    elif blob.kind == "dead":
        # Dense pigmented body, fuzzy edge, mottled with dark clumps, no rim.
        fuzzy = np.clip(0.5 - signed / 1.5, 0, 1)
        clump_r = max(0.8, 0.12 * blob.radius)
        n_clumps = int(rng.uniform(4, 9))
        s = np.sqrt(rng.uniform(0, 0.7, n_clumps))
        phi = rng.uniform(0, 2 * np.pi, n_clumps)
        clumps = _splat(
            shape,
            blob.centre_y - y0 + s * blob.b * np.sin(phi),
            blob.centre_x - x0 + s * blob.b * np.cos(phi),
            rng.uniform(0.5, 1.0, n_clumps).astype(np.float32),
            _soft_disc(clump_r),
        )
        strength = (1.0 + 0.8 * np.clip(clumps, 0, 1.5)) * fuzzy * blob.brightness
        density = strength[..., None] * DEAD_DENSITY
    else:
        density = (inside * blob.brightness * 1.3)[..., None] * DEBRIS_DENSITY
    return _Sprite(
        y0=y0, x0=x0, density=density.astype(np.float32), emission=emission, depth=blob.depth
    )


def _paste(canvas: np.ndarray, patch: np.ndarray, y0: int, x0: int) -> None:
    """Add ``patch`` into ``canvas`` at (y0, x0), clipped to the canvas."""
    height, width = canvas.shape[:2]
    ph, pw = patch.shape[:2]
    cy0, cx0 = max(0, y0), max(0, x0)
    cy1, cx1 = min(height, y0 + ph), min(width, x0 + pw)
    if cy0 < cy1 and cx0 < cx1:
        canvas[cy0:cy1, cx0:cx1] += patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency random field in about [-1, 1] (uneven illumination, autofluorescence)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) / 1.5


def _brightfield_background(rng, height, width) -> np.ndarray:
    base = np.array([204, 207, 196], np.float32) + rng.uniform(-4, 4, 3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    gradient = (
        np.cos(direction) * (xx / width - 0.5) + np.sin(direction) * (yy / height - 0.5)
    ) * rng.uniform(0.10, 0.20)
    vignette = -0.08 * (((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) / 0.5)
    uneven = 0.03 * _smooth_field(rng, height, width, 5)
    light = 1 + gradient + vignette + uneven
    return light[..., None] * base


def _fluorescent_background(rng, height, width) -> np.ndarray:
    base = np.array([3, 5, 12], np.float32)
    glow = 1 + 0.5 * _smooth_field(rng, height, width, 4)
    return glow[..., None] * base


def _paint(shape: tuple[int, int], cells: list[Blob]) -> np.ndarray:
    """Instance mask of ``cells``; the larger cell (full area) takes any overlap."""
    height, width = shape
    mask = np.zeros(shape, np.uint16)
    footprints = [(blob, *blob.footprint(height, width)) for blob in cells]
    # Painted small to large, so a larger cell overwrites a smaller one where they overlap.
    footprints.sort(key=lambda item: (int(item[2].sum()), item[0].label))
    for blob, where, inside in footprints:
        mask[where][inside] = blob.label
    return mask


def make_state(
    rng: np.random.Generator,
    height: int,
    width: int,
    planes: list[int],
    params: DemoParams | None = None,
) -> StateSample:
    """Draw one state: objects, images at every plane in both channels, and the truth."""
    params = params or params_from_config({})
    planes = [int(z) for z in planes]
    if not planes:
        raise ConfigError("data.planes", "needs at least one focal plane")
    blobs = place_objects(rng, height, width, planes, params)

    deepest = max(max(abs(z - blob.depth) for z in planes) for blob in blobs) if blobs else 0
    margin = int(math.ceil(3 * params.blur_sigma(deepest) + 0.3 * params.mean_radius + 3))
    sprites = [_render(rng, blob, margin, params.mean_radius) for blob in blobs]

    bf_light = _brightfield_background(rng, height, width)
    fl_base = _fluorescent_background(rng, height, width)
    peak_emission = rng.uniform(190, 235)
    brightfield = np.empty((len(planes), height, width, 3), np.uint8)
    fluorescent = np.empty_like(brightfield)
    for index, z in enumerate(planes):
        density = np.zeros((height, width, 3), np.float32)
        emission = np.zeros((height, width), np.float32)
        for sprite in sprites:
            sigma = float(params.blur_sigma(z - sprite.depth))
            _paste(density, gaussian_blur(sprite.density, sigma), sprite.y0, sprite.x0)
            if sprite.emission is not None:
                _paste(emission, gaussian_blur(sprite.emission, sigma), sprite.y0, sprite.x0)
        bf = bf_light * np.exp(-density)
        bf += rng.standard_normal(bf.shape, dtype=np.float32) * np.float32(2.5 * params.noise)
        fl = fl_base + emission[..., None] * MEMBRANE_COLOUR * np.float32(peak_emission)
        # Shot noise grows with the signal; a floor of read noise on the dark background.
        fl += (
            rng.standard_normal(fl.shape, dtype=np.float32)
            * (np.float32(1.2) + 0.08 * fl)
            * np.float32(params.noise)
        )
        brightfield[index] = np.clip(np.rint(bf), 0, 255).astype(np.uint8)
        fluorescent[index] = np.clip(np.rint(fl), 0, 255).astype(np.uint8)

    cells = [blob for blob in blobs if blob.kind == "cell"]
    plane_truths = np.stack(
        [
            _paint((height, width), [c for c in cells if abs(z - c.depth) <= params.presence_range])
            for z in planes
        ]
    )
    ever_present = [
        c for c in cells if any(abs(z - c.depth) <= params.presence_range for z in planes)
    ]
    state_truth = _paint((height, width), ever_present)
    return StateSample(planes, brightfield, fluorescent, state_truth, plane_truths, blobs, params)


# ---------------------------------------------------------------- the data set
def state_rng(seed: int, day: int, time: int, xy: int) -> np.random.Generator:
    """The generator of one state: depends only on the seed and the state's name."""
    return np.random.default_rng([int(seed), int(day), int(time), int(xy)])


def demo_states(demo_cfg: dict) -> list[tuple[int, int, int]]:
    return [
        (d, t, xy) for d in demo_cfg["days"] for t in demo_cfg["times"] for xy in demo_cfg["xy"]
    ]


def state_name(day: int, time: int, xy: int, state_format: str = STUDY_STATE_FORMAT) -> str:
    """The demo's state name (by default ``day{day}t{time}xy{xy}``, the study's)."""
    try:
        return format_state({"day": day, "time": time, "xy": xy}, state_format)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            "data.state_format",
            f"'{state_format}' can use only {{day}}, {{time}} and {{xy}} for the demo set ({error})",
        ) from error


def demo_channels(channels: dict | None) -> dict[str, str]:
    """Channel value of each demo modality, from ``data.channels`` (channel -> modality)."""
    if channels is None:
        return {"brightfield": str(BRIGHTFIELD_CHANNEL), "fluorescent": str(FLUORESCENT_CHANNEL)}
    found = {modality: str(channel) for channel, modality in channels.items()}
    missing = [m for m in ("brightfield", "fluorescent") if m not in found]
    if missing:
        raise ConfigError(
            "data.channels",
            f"the demo set needs a channel for each of brightfield and fluorescent; none for {missing}",
        )
    return {m: found[m] for m in ("brightfield", "fluorescent")}


def truth_paths(out_dir: str | Path, state: str, planes: list[int]) -> tuple[Path, list[Path]]:
    truth = Path(out_dir) / "truth"
    return truth / "states" / f"{state}.tif", [
        truth / "planes" / state / f"z{z}.tif" for z in planes
    ]


def montage(sample: StateSample, title: str = "", max_panel_width: int = 480):
    """A matplotlib figure: bright-field, fluorescent and plane truth at every plane, plus the state truth."""
    import matplotlib
    from matplotlib.figure import Figure

    n = len(sample.planes)
    height, width = sample.state_truth.shape
    step = max(1, int(math.ceil(width / max_panel_width)))  # shrink full-size images for the page

    def shrink(image):
        return image[::step, ::step]

    # One colour per label, the same in every panel, so a cell can be followed across planes.
    palette = np.vstack([[0, 0, 0], matplotlib.colormaps["tab20"](np.arange(20))[:, :3]])

    def labels(mask):
        mask = shrink(mask).astype(np.int64)
        return palette[np.where(mask > 0, (mask - 1) % 20 + 1, 0)]

    aspect = height / width
    figure = Figure(figsize=(2.0 * (n + 1), 2.0 * 3 * aspect + 0.6))
    axes = figure.subplots(3, n + 1, squeeze=False)
    for column, z in enumerate(sample.planes):
        axes[0, column].imshow(shrink(sample.brightfield[column]))
        axes[0, column].set_title(f"z{z}", fontsize=9)
        axes[1, column].imshow(shrink(sample.fluorescent[column]))
        axes[2, column].imshow(labels(sample.plane_truths[column]))
    axes[0, n].set_visible(False)
    axes[1, n].set_visible(False)
    axes[2, n].imshow(labels(sample.state_truth))
    axes[2, n].set_title("state truth", fontsize=9)
    for axis, name in zip(
        axes[:, 0], ("bright-field c1", "fluorescent c2", "plane truth"), strict=True
    ):
        axis.set_ylabel(name, fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(wspace=0.03, hspace=0.08, left=0.03, right=0.99, bottom=0.01, top=0.9)
    return figure


def generate_demo(
    demo_cfg: dict,
    planes: list[int],
    out_dir: str | Path,
    *,
    channels: dict | None = None,
    state_format: str = STUDY_STATE_FORMAT,
) -> None:
    """Write the demo set: raw TIFFs, truth masks, a cell table and a montage, under ``out_dir``.

    ``out_dir/raw/day{d}t{t}c{c}xy{xy}z{z}.tif`` (c1 bright-field, c2 fluorescent, RGB uint8),
    ``out_dir/truth/states/{state}.tif`` and ``out_dir/truth/planes/{state}/z{z}.tif`` (uint16),
    ``out_dir/truth/cells.csv`` (every drawn object) and ``out_dir/montage.png`` (first state).
    ``channels`` (``data.channels``: channel -> modality) and ``state_format``
    (``data.state_format``) name the files as the rest of the workflow expects them.
    """
    out_dir = Path(out_dir)
    demo_cfg = complete_section("demo", demo_cfg)
    params = params_from_config(demo_cfg)
    height, width = int(demo_cfg["height"]), int(demo_cfg["width"])
    channel_of = demo_channels(channels)
    states = demo_states(demo_cfg)
    if not states:
        raise ConfigError("demo.days", "days x times x xy gives no state to generate")
    tables = []
    first = None
    for day, time, xy in tqdm(states, desc="demo states", unit="state"):
        sample = make_state(
            state_rng(demo_cfg["seed"], day, time, xy), height, width, planes, params
        )
        state = state_name(day, time, xy, state_format)
        for index, z in enumerate(sample.planes):
            for channel, images in (
                (channel_of["brightfield"], sample.brightfield),
                (channel_of["fluorescent"], sample.fluorescent),
            ):
                io.write_tiff(
                    out_dir / "raw" / study_file_name(day, time, channel, xy, z),
                    images[index],
                    photometric="rgb",
                )
        state_path, plane_paths = truth_paths(out_dir, state, sample.planes)
        io.write_tiff(state_path, sample.state_truth)
        for path, mask in zip(plane_paths, sample.plane_truths, strict=True):
            io.write_tiff(path, mask)
        table = sample.cell_table()
        table.insert(0, "state", state)
        tables.append(table)
        if first is None:
            first = (state, sample)
        log.info(
            "%s: %d cells (%d dead, %d debris)",
            state,
            len(sample.cells),
            *(sum(b.kind == k for b in sample.blobs) for k in ("dead", "debris")),
        )
    io.write_csv(out_dir / "truth" / "cells.csv", pd.concat(tables, ignore_index=True))
    state, sample = first
    io.save_figure(
        out_dir / "montage.png",
        montage(sample, title=f"demo state {state}: every plane, both channels, truth"),
    )
