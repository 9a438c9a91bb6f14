"""Figures of the results: scores versus focal plane, focal-context models beside
single-plane ones, and prediction overlays per plane."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and cluster nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from protoseg import metrics, study  # noqa: E402
from protoseg.io import FIGURE_DPI  # noqa: E402
from protoseg.objects import matched_objects  # noqa: E402
from protoseg.qc import CROP_SIZE, densest_window, object_centres  # noqa: E402
from protoseg.study import OVERALL, row_label  # noqa: E402

PANEL_METRICS = {
    "accuracy": "pixel accuracy",
    "f1": "F1 (Dice)",
    "iou": "IoU",
    "sa50": "instance SA50",
}
# Red and cyan read on the light bright-field and the dark fluorescent images alike.
MASK_COLOUR = "#ff2a00"
PREDICTION_COLOUR = "#00e5ff"
# Predicted cells that match no true cell (amber: apart from both).
FALSE_COLOUR = "#ffb000"


def _colours(losses: Sequence[str]) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {loss: cycle[index % len(cycle)] for index, loss in enumerate(losses)}


def metrics_vs_z(
    summary_table: pd.DataFrame,
    planes: Sequence[int],
    variants: Sequence[str],
    losses: Sequence[str],
    variant_modalities: dict | None = None,
):
    """Scores per focal plane: one row of panels per variant, one panel per metric, one
    line per loss; the study's numbers dashed where they compare. Pixel scores and SA50
    pool the images of each plane (micro). Returns the matplotlib figure."""
    rows = summary_table[(summary_table["reduction"] == "micro") & (summary_table["z"] != OVERALL)]
    labels = [row_label(z) for z in planes]
    colours = _colours(losses)
    figure, axes = plt.subplots(
        len(variants),
        len(PANEL_METRICS),
        figsize=(3.2 * len(PANEL_METRICS), 2.8 * len(variants)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    any_study = False
    for row_index, variant in enumerate(variants):
        modalities = (variant_modalities or {}).get(variant)
        reference = study.comparable_table(variant, modalities, planes, losses)
        for column_index, name in enumerate(PANEL_METRICS):
            ax = axes[row_index, column_index]
            variant_rows = rows[rows["variant"] == variant]
            any_study |= _plot_metric(ax, variant_rows, reference, name, labels, losses, colours)
            _label_panel(ax, variant, name, row_index, column_index, len(variants), labels)
    _legend(figure, losses, colours, any_study)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


def _plot_metric(ax, rows, reference, name, labels, losses, colours) -> bool:
    """One panel's lines: each loss's scores per plane, and the study's where they compare
    (returns whether any of the study's lines was drawn)."""
    drawn = False
    for loss in losses:
        model_rows = rows[rows["loss"] == loss].set_index("z")
        values = model_rows.reindex(labels)[name].to_numpy(dtype=float)
        ax.plot(range(len(labels)), values, marker="o", color=colours[loss], label=loss.upper())
        if (
            reference is not None
            and name in study.METRICS
            and loss in reference.columns.get_level_values(0)
        ):
            study_values = reference[(loss, name)].reindex(labels).to_numpy(dtype=float)
            ax.plot(
                range(len(labels)),
                study_values,
                linestyle="--",
                marker="x",
                color=colours[loss],
                alpha=0.7,
            )
            drawn = True
    return drawn


def _label_panel(ax, variant, name, row_index, column_index, rows, labels) -> None:
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if row_index == 0:
        ax.set_title(PANEL_METRICS[name])
    if column_index == 0:
        ax.set_ylabel(f"variant {variant}\nscore")
    if row_index == rows - 1:
        ax.set_xlabel("focal plane")


def _legend(figure, losses, colours, any_study: bool) -> None:
    handles = [
        Line2D([], [], color=colours[loss], marker="o", label=f"{loss.upper()} (this run)")
        for loss in losses
    ]
    if any_study:
        handles += [
            Line2D(
                [],
                [],
                color=colours[loss],
                marker="x",
                linestyle="--",
                alpha=0.7,
                label=f"{loss.upper()} (the study)",
            )
            for loss in losses
            if loss in study.LOSSES
        ]
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        frameon=False,
        bbox_to_anchor=(0.5, -0.02),
    )


def context_groups(
    variants: Sequence[str], variant_modalities: dict, variant_context: dict
) -> list[list[str]]:
    """Variants that differ only in their focal context, grouped: one group per set of
    modalities that has a focal-context variant (``context_planes`` > 0), its variants
    ordered by context (the single-plane one first)."""
    groups: dict[tuple, list[str]] = {}
    for variant in variants:
        groups.setdefault(tuple(sorted(variant_modalities[variant])), []).append(variant)
    return [
        sorted(members, key=lambda name: (int(variant_context[name]), name))
        for members in groups.values()
        if any(int(variant_context[name]) > 0 for name in members)
    ]


def context_label(variant: str, context_planes: int) -> str:
    if not context_planes:
        return f"{variant}: single plane"
    return f"{variant}: ±{int(context_planes)} plane{'s' if context_planes > 1 else ''}"


def context_vs_z(
    summary_table: pd.DataFrame,
    planes: Sequence[int],
    variants: Sequence[str],
    losses: Sequence[str],
    variant_modalities: dict,
    variant_context: dict,
    metric: str = "f1",
):
    """F1 (pixels of each plane pooled) per focal plane of focal-context models beside the
    single-plane model of the same modalities and loss: one row of panels per set of
    modalities that has a focal-context variant (:func:`context_groups`), one panel per
    loss, one line per variant. The y axis spans the scores shown, so that differences of
    a few hundredths stay visible. Returns the matplotlib figure."""
    rows = summary_table[(summary_table["reduction"] == "micro") & (summary_table["z"] != OVERALL)]
    labels = [row_label(z) for z in planes]
    groups = context_groups(variants, variant_modalities, variant_context)
    if not groups:
        raise ValueError("no variant has a focal context (context_planes > 0) to compare")
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(
        len(groups),
        len(losses),
        figsize=(4.2 * len(losses), 3.2 * len(groups)),
        squeeze=False,
        sharex=True,
    )
    title = PANEL_METRICS.get(metric, metric)
    for row_index, members in enumerate(groups):
        modalities = " + ".join(sorted(variant_modalities[members[0]]))
        for column_index, loss in enumerate(losses):
            ax = axes[row_index, column_index]
            for index, variant in enumerate(members):
                context = int(variant_context[variant])
                model_rows = rows[(rows["variant"] == variant) & (rows["loss"] == loss)]
                values = model_rows.set_index("z").reindex(labels)[metric].to_numpy(dtype=float)
                ax.plot(
                    range(len(labels)),
                    values,
                    marker="o" if context else "s",
                    linestyle="-" if context else "--",
                    color="0.35" if not context else cycle[index % len(cycle)],
                    label=context_label(variant, context),
                )
            ax.set_xticks(range(len(labels)), labels)
            ax.grid(alpha=0.3)
            ax.set_title(f"{modalities}, {loss.upper()}", fontsize=10)
            ax.legend(fontsize=8, loc="best")
            if column_index == 0:
                ax.set_ylabel(f"test {title}")
            if row_index == len(groups) - 1:
                ax.set_xlabel("focal plane")
    figure.suptitle(f"{title} per focal plane: single-plane and focal-context models", fontsize=11)
    figure.tight_layout()
    return figure


def object_outcomes(cells: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels of the predicted cells that match a true cell at IoU 0.5 (``matched``), of
    those that match none (``false``) and of the true cells (connected components of
    ``mask``) that no predicted cell matches (``missed``), with their counts."""
    truth = metrics.instances_from_binary(np.asarray(mask) > 0)
    cells = np.asarray(cells)
    labels, hits = matched_objects(cells, truth)
    true_labels, found = matched_objects(truth, cells)
    return {
        "matched": np.isin(cells, labels[hits]),
        "false": np.isin(cells, labels[~hits]),
        "missed": np.isin(truth, true_labels[~found]),
        "n_pred": len(labels),
        "n_true": len(true_labels),
        "n_false": int((~hits).sum()),
        "n_missed": int((~found).sum()),
    }


def _outcome_fill(outcomes: dict, window) -> np.ndarray:
    """RGBA shades: matched cells light cyan, false ones amber, missed true cells red."""
    matched = outcomes["matched"][window]
    fill = np.zeros((*matched.shape, 4), np.float32)
    fill[matched] = (*to_rgb(PREDICTION_COLOUR), 0.25)
    fill[outcomes["missed"][window]] = (*to_rgb(MASK_COLOUR), 0.45)
    fill[outcomes["false"][window]] = (*to_rgb(FALSE_COLOUR), 0.55)
    return fill


def _draw_panel(ax, overlay: dict, index: int, outcomes: dict, window) -> None:
    """One image (or its crop ``window``): the shades of :func:`_outcome_fill`, the true
    mask's outline (red) and the predicted cells' (cyan)."""
    mask = overlay["masks"][index][window]
    cells = overlay["instances"][index][window]
    ax.imshow(overlay["images"][index][window], interpolation="nearest")
    # Shades as well as outlines: a prediction covering (nearly) the whole image, whose
    # outline hugs the border, is still plain to see, and so are cells too small to outline.
    ax.imshow(_outcome_fill(outcomes, window), interpolation="nearest")
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.0)
    if (cells > 0).any():
        # Each cell its own outline, so that touching cells the network separated show.
        edges = find_boundaries(cells, mode="inner")
        ax.imshow(
            np.dstack([np.broadcast_to(to_rgb(PREDICTION_COLOUR), (*edges.shape, 3)), edges]),
            interpolation="nearest",
        )


def _overlay_cells(overlay: dict, threshold: float) -> np.ndarray:
    """The stored cells; overlays written before they were stored: components of p > t."""
    if "instances" in overlay and len(overlay["instances"]) == len(overlay["z"]):
        return overlay["instances"]
    return np.stack(
        [
            metrics.instances_from_binary(p.astype(np.float32) > threshold)
            for p in overlay["probabilities"]
        ]
    )


def _crop_windows(overlay: dict, outcomes: list[dict], modalities, crop: int | None) -> dict:
    """Per modality, the ``crop`` window holding the most cells (true, predicted, and
    false and missed ones again) over all its planes; None without crops."""
    windows = {}
    for modality in modalities:
        if crop is None:
            windows[modality] = None
            continue
        of_modality = [i for i, m in enumerate(overlay["modality"]) if str(m) == modality]
        # Objects, not pixels: every true and predicted cell once, false and missed twice.
        weight = sum(
            object_centres(metrics.instances_from_binary(overlay["masks"][i]))
            + object_centres(overlay["instances"][i])
            + object_centres(
                metrics.instances_from_binary(outcomes[i]["false"] | outcomes[i]["missed"])
            )
            for i in of_modality
        )
        windows[modality] = densest_window(weight, crop)
    return windows


def _outcome_legend(threshold: float) -> list:
    return [
        Line2D([], [], color=MASK_COLOUR, label="true cell (mask outline)"),
        Line2D([], [], color=PREDICTION_COLOUR, label=f"predicted cell (p > {threshold:g})"),
        Patch(color=PREDICTION_COLOUR, alpha=0.4, label="matched (IoU >= 0.5)"),
        Patch(color=FALSE_COLOUR, alpha=0.7, label="false: no true cell"),
        Patch(color=MASK_COLOUR, alpha=0.6, label="missed true cell"),
    ]


def _mark_window(ax, window) -> None:
    top, left = window[0].start, window[1].start
    ax.add_patch(
        Rectangle(
            (left - 0.5, top - 0.5),
            window[1].stop - left,
            window[0].stop - top,
            fill=False,
            edgecolor="white",
            linestyle="--",
            linewidth=1.0,
        )
    )


def prediction_overlays(overlay: dict, threshold: float, title: str, crop: int = CROP_SIZE):
    """The test state's images per plane (columns) and modality (rows): the true mask's
    outline (red), the predicted cells' (cyan), predicted cells that match a true cell at
    IoU 0.5 shaded cyan, false ones amber, missed true cells red; each panel titled with its
    pixel F1 and its counts. Images larger than ``crop`` pixels get a second row per
    modality: a ``crop`` x ``crop`` window at the stored (training) scale, one pixel of the
    image at least one pixel of the figure, where the most cells are (the same window on
    every plane, marked on the whole image), so that small cells and 1 px outlines can be
    seen. Returns the matplotlib figure."""
    modalities = list(dict.fromkeys(str(m) for m in overlay["modality"]))
    planes = sorted(set(int(z) for z in overlay["z"]))
    if not modalities:
        figure, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}\nno test images of this state", ha="center", va="center")
        return figure
    overlay = {**overlay, "instances": _overlay_cells(overlay, threshold)}
    outcomes = [
        object_outcomes(overlay["instances"][i], overlay["masks"][i])
        for i in range(len(overlay["z"]))
    ]
    height, width = overlay["images"].shape[1:3]
    cropped = max(height, width) > crop
    windows = _crop_windows(overlay, outcomes, modalities, crop if cropped else None)
    rows_per_modality = 2 if cropped else 1
    # A crop's axes keep at least one figure pixel per image pixel, margins aside.
    panel = max(2.4, 1.3 * crop / FIGURE_DPI) if cropped else 2.4
    figure, axes = plt.subplots(
        len(modalities) * rows_per_modality,
        len(planes),
        figsize=(
            panel * len(planes),
            (panel * height / width + (panel if cropped else 0)) * len(modalities) + 1.1,
        ),
        squeeze=False,
        height_ratios=[height / width, 1.0] * len(modalities) if cropped else None,
    )
    for ax in axes.flat:
        ax.axis("off")
    whole = (slice(None), slice(None))
    for index in range(len(overlay["z"])):
        modality = str(overlay["modality"][index])
        row = modalities.index(modality) * rows_per_modality
        column = planes.index(int(overlay["z"][index]))
        found = outcomes[index]
        probability = overlay["probabilities"][index].astype(np.float32)
        score = metrics.f1(*metrics.confusion(probability > threshold, overlay["masks"][index]))
        ax = axes[row, column]
        _draw_panel(ax, overlay, index, found, whole)
        ax.set_title(
            f"z{overlay['z'][index]}  F1 {score:.2f}, {found['n_pred']} cells / "
            f"{found['n_true']} true\n{found['n_false']} false, {found['n_missed']} missed",
            fontsize=8,
        )
        window = windows[modality]
        if window is not None:
            _mark_window(ax, window)
            _draw_panel(axes[row + 1, column], overlay, index, found, window)
            axes[row + 1, column].set_title(
                f"crop y {window[0].start}-{window[0].stop}, x {window[1].start}-"
                f"{window[1].stop} (1:1)",
                fontsize=8,
            )
        if column == 0:
            ax.text(
                -0.04,
                0.5,
                modality,
                transform=ax.transAxes,
                rotation=90,
                ha="right",
                va="center",
                fontsize=9,
            )
    handles = _outcome_legend(threshold)
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure
