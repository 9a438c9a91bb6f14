"""The study's published numbers (Munteanu 2024, Tables 1 and 2), as data.

Test split, per focal plane and overall: pixel accuracy, F1 (Dice) and IoU (Jaccard) of
U-Nets trained with binary cross-entropy (bce) or mean squared error (mse).
Table 1: trained on bright-field and fluorescent images (protoseg variant ``all``);
Table 2: trained on bright-field images only (variant ``brightfield``).
The study does not say whether its overall row pools pixels or averages images.
"""

from __future__ import annotations

import pandas as pd

PLANES = (12, 14, 16, 18, 20, 22, 24)
LOSSES = ("bce", "mse")
METRICS = ("accuracy", "f1", "iou")
OVERALL = "overall"

# Rows: z12..z24, overall; columns: (bce accuracy, F1, IoU, mse accuracy, F1, IoU).
_TABLE_1 = [
    (0.68, 0.68, 0.52, 0.67, 0.71, 0.55),
    (0.70, 0.71, 0.55, 0.69, 0.72, 0.56),
    (0.72, 0.73, 0.57, 0.71, 0.74, 0.58),
    (0.73, 0.74, 0.59, 0.71, 0.75, 0.60),
    (0.74, 0.76, 0.61, 0.72, 0.75, 0.60),
    (0.73, 0.75, 0.60, 0.71, 0.75, 0.60),
    (0.71, 0.73, 0.58, 0.69, 0.73, 0.58),
    (0.72, 0.73, 0.58, 0.70, 0.73, 0.58),
]
_TABLE_2 = [
    (0.69, 0.65, 0.46, 0.69, 0.65, 0.49),
    (0.71, 0.69, 0.52, 0.71, 0.69, 0.53),
    (0.73, 0.71, 0.55, 0.72, 0.71, 0.55),
    (0.73, 0.72, 0.57, 0.73, 0.72, 0.56),
    (0.73, 0.73, 0.57, 0.72, 0.72, 0.56),
    (0.72, 0.71, 0.55, 0.70, 0.70, 0.54),
    (0.70, 0.69, 0.52, 0.70, 0.67, 0.53),
    (0.71, 0.70, 0.54, 0.71, 0.70, 0.54),
]
# protoseg variant name -> (table number in the study, its rows)
_TABLES = {"all": (1, _TABLE_1), "brightfield": (2, _TABLE_2)}
# Modalities each study table was trained on; a variant of the same name but other
# modalities is a different experiment and gets no study columns.
VARIANT_MODALITIES = {"all": ("brightfield", "fluorescent"), "brightfield": ("brightfield",)}


def row_label(z) -> str:
    """``12 -> "z12"``; the overall row keeps its name."""
    return OVERALL if str(z) == OVERALL else f"z{int(z)}"


def study_table(variant: str) -> pd.DataFrame | None:
    """The study's table for ``variant`` (index z12..z24, overall; columns (loss, metric)),
    or None when the study has no table for it."""
    if variant not in _TABLES:
        return None
    _, rows = _TABLES[variant]
    columns = pd.MultiIndex.from_product([LOSSES, METRICS], names=["loss", "metric"])
    index = pd.Index([row_label(z) for z in PLANES] + [OVERALL], name="z")
    return pd.DataFrame(rows, index=index, columns=columns)


def table_number(variant: str) -> int | None:
    """The study's table number for ``variant`` (1 or 2), or None."""
    return _TABLES[variant][0] if variant in _TABLES else None


def comparable_table(variant: str, modalities, planes, losses) -> pd.DataFrame | None:
    """The study's numbers for the rows and losses this run shares with the study.

    None when the study has nothing to compare: another variant name or modalities, or no
    shared plane or loss. The overall row is kept only when the run has exactly the study's
    seven planes (an overall over other planes is a different number).
    """
    table = study_table(variant)
    if table is None:
        return None
    if modalities is not None and tuple(sorted(modalities)) != tuple(
        sorted(VARIANT_MODALITIES[variant])
    ):
        return None
    planes = [int(z) for z in planes]
    shared_planes = [z for z in planes if z in PLANES]
    shared_losses = [loss for loss in losses if loss in LOSSES]
    if not shared_planes or not shared_losses:
        return None
    rows = [row_label(z) for z in shared_planes]
    if sorted(planes) == list(PLANES):
        rows.append(OVERALL)
    return table.loc[rows, shared_losses]
