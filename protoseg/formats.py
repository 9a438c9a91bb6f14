"""File endings of the images protoseg reads: one place that :mod:`protoseg.io` (single
images) and :mod:`protoseg.stacks` (microscope containers) both take them from, so neither
imports the other for them."""

from __future__ import annotations

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
OTHER_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
IMAGE_SUFFIXES = TIFF_SUFFIXES | OTHER_IMAGE_SUFFIXES
