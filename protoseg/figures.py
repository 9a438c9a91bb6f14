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

from protoseg import metrics, study  # noqa: E402
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


def prediction_overlays(overlay: dict, threshold: float, title: str):
    """The test state's images per plane (columns) and modality (rows), with the mask's
    outline (red) and the prediction's (cyan outline, light cyan shade); each panel titled with its pixel F1.
    Overlays of a model with instance outputs (an ``instances`` array) show each of its
    cells in its own colour instead of the cyan shade, titled with their number too.
    Returns the matplotlib figure."""
    modalities = list(dict.fromkeys(str(m) for m in overlay["modality"]))
    planes = sorted(set(int(z) for z in overlay["z"]))
    if not modalities:
        figure, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}\nno test images of this state", ha="center", va="center")
        return figure
    height, width = overlay["images"].shape[1:3]
    panel = 2.4
    figure, axes = plt.subplots(
        len(modalities),
        len(planes),
        figsize=(panel * len(planes), panel * height / width * len(modalities) + 0.9),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for index in range(len(overlay["z"])):
        row = modalities.index(str(overlay["modality"][index]))
        column = planes.index(int(overlay["z"][index]))
        ax = axes[row, column]
        mask = overlay["masks"][index]
        probability = overlay["probabilities"][index].astype(np.float32)
        score = metrics.f1(*metrics.confusion(probability > threshold, mask))
        ax.imshow(overlay["images"][index], interpolation="nearest")
        # A light fill as well as the outline, so that a prediction covering (nearly) the
        # whole image, whose outline hugs the border, is still plain to see.
        fill = np.zeros((*probability.shape, 4), np.float32)
        cells = overlay["instances"][index] if "instances" in overlay else None
        if cells is None:
            fill[probability > threshold] = (*to_rgb(PREDICTION_COLOUR), 0.25)
        else:
            from protoseg.qc import instance_colours

            colours = instance_colours(int(cells.max())).astype(np.float32) / 255
            fill[cells > 0, :3] = colours[cells[cells > 0] - 1]
            fill[cells > 0, 3] = 0.45
        ax.imshow(fill, interpolation="nearest")
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.0)
        if (probability > threshold).any():
            ax.contour(probability, levels=[threshold], colors=PREDICTION_COLOUR, linewidths=1.0)
        counted = "" if cells is None else f", {int(len(np.unique(cells[cells > 0])))} cells"
        ax.set_title(f"z{overlay['z'][index]}  F1 {score:.2f}{counted}", fontsize=9)
        if column == 0:
            ax.text(
                -0.04,
                0.5,
                modalities[row],
                transform=ax.transAxes,
                rotation=90,
                ha="right",
                va="center",
                fontsize=9,
            )
    handles = [
        Line2D([], [], color=MASK_COLOUR, label="mask"),
        Line2D(
            [],
            [],
            color=PREDICTION_COLOUR,
            label=f"prediction (p > {threshold:g}, outline and shade)"
            if "instances" not in overlay
            else f"prediction (p > {threshold:g}); its cells one colour each",
        ),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return figure
