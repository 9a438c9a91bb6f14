"""Result tables in the study's layout, from the per-image metrics of every model.

One table per dataset variant: rows are the focal planes (z12, z14, ...) and ``overall``,
columns are {loss} x {accuracy, F1, IoU} (the study's Tables 1 and 2). Numbers come in two
reductions (docs/metrics.md):

- ``micro``: pixels pooled over all test images of the row (the headline numbers);
- ``imagewise``: the mean of the per-image scores.

Beside our numbers stand the study's (:mod:`protoseg.study`) and the difference (ours minus
the study's) where the run is comparable (same variant name and modalities, planes and
losses the study had); otherwise the study's columns are left out.

A second table per variant gives instance scores (SA50, mean SA, matched F1 at IoU 0.5),
averaged over images; its overall row also has SA50 and matched F1 from pooled object counts.
Models with instance outputs (``model.instances``) add the same scores of their own cells
(the seeded watershed, columns ``ws_*`` of the per-image table) beside those of the
connected components.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from protoseg import metrics, study
from protoseg.errors import InputError
from protoseg.study import OVERALL, row_label

log = logging.getLogger(__name__)

PIXEL_METRICS = ("accuracy", "f1", "iou")
INSTANCE_METRICS = ("sa50", "msa", "matched_f1")
# The same scores of a network's own instances (protoseg.evaluate.WATERSHED_PREFIX).
WATERSHED_METRICS = ("ws_sa50", "ws_msa", "ws_matched_f1")
REDUCTIONS = ("micro", "imagewise")
COUNT_COLUMNS = ("tp", "fp", "fn", "tn")
METRIC_LABELS = {
    "accuracy": "acc",
    "f1": "F1",
    "iou": "IoU",
    "sa50": "SA50",
    "msa": "mSA",
    "matched_f1": "F1@0.5",
    "ws_sa50": "SA50 ws",
    "ws_msa": "mSA ws",
    "ws_matched_f1": "F1@0.5 ws",
}
REDUCTION_TITLES = {
    "micro": "pixels pooled over the images of each row",
    "imagewise": "mean of the per-image scores",
}


REQUIRED_COLUMNS = ("z", *COUNT_COLUMNS, "n_true", "n_pred", "tp50", *INSTANCE_METRICS)


def read_per_image(path) -> pd.DataFrame:
    """A per-image metrics table written by :mod:`protoseg.evaluate`, checked for the
    columns the tables need (:class:`InputError` naming the file otherwise)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputError(path, f"unreadable per-image metrics table ({error})") from error
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(path, f"per-image metrics table lacks column(s) {', '.join(missing)}")
    if table.empty:
        raise InputError(path, "per-image metrics table has no rows")
    return table


def _groups(per_image: pd.DataFrame, planes: Sequence[int]):
    """(row label, rows of per_image) for each plane, then overall."""
    z = per_image["z"].astype(int)
    for plane in planes:
        yield row_label(plane), per_image[z == int(plane)]
    yield OVERALL, per_image[z.isin([int(plane) for plane in planes])]


def pixel_summary(per_image: pd.DataFrame, planes: Sequence[int]) -> pd.DataFrame:
    """Accuracy, F1, IoU per plane and overall, in both reductions (long format).

    Columns: z, reduction, n_images, accuracy, f1, iou. Rows without images get NaN.
    """
    records = []
    for label, rows in _groups(per_image, planes):
        counts = [rows[column].to_numpy() for column in COUNT_COLUMNS]
        for reduction in REDUCTIONS:
            record = {"z": label, "reduction": reduction, "n_images": len(rows)}
            if len(rows):
                record |= metrics.pixel_scores(*counts, reduction=reduction)
            else:
                record |= dict.fromkeys(PIXEL_METRICS, np.nan)
            records.append(record)
    return pd.DataFrame.from_records(records)


def instance_summary(per_image: pd.DataFrame, planes: Sequence[int]) -> pd.DataFrame:
    """SA50, mSA, matched F1 per plane and overall: image means (``imagewise``), and for
    SA50 and matched F1 also from pooled object counts (``micro``; mSA is NaN there)."""
    records = []
    own = "ws_sa50" in per_image.columns  # a model with instance outputs
    names = INSTANCE_METRICS + (WATERSHED_METRICS if own else ())
    for label, rows in _groups(per_image, planes):
        mean = {"z": label, "reduction": "imagewise", "n_images": len(rows)}
        pooled = {"z": label, "reduction": "micro", "n_images": len(rows), "msa": np.nan}
        if own:
            pooled["ws_msa"] = np.nan
        if len(rows):
            mean |= {name: float(rows[name].mean()) for name in names}
            scores = metrics.pooled_instance_scores(rows["n_true"], rows["n_pred"], rows["tp50"])
            pooled |= {"sa50": scores["sa50"], "matched_f1": scores["matched_f1"]}
            if own:
                scores = metrics.pooled_instance_scores(
                    rows["n_true"], rows["ws_n_pred"], rows["ws_tp50"]
                )
                pooled |= {"ws_sa50": scores["sa50"], "ws_matched_f1": scores["matched_f1"]}
        else:
            mean |= dict.fromkeys(names, np.nan)
            pooled |= {"sa50": np.nan, "matched_f1": np.nan}
            if own:
                pooled |= {"ws_sa50": np.nan, "ws_matched_f1": np.nan}
        records += [pooled, mean]
    return pd.DataFrame.from_records(records)


def summary(
    per_image_by_model: Mapping[tuple[str, str], pd.DataFrame], planes: Sequence[int]
) -> pd.DataFrame:
    """Every model's pixel and instance summary in one long table (variant, loss, z,
    reduction, n_images, accuracy, f1, iou, sa50, msa, matched_f1)."""
    frames = []
    for (variant, loss), per_image in per_image_by_model.items():
        warn_without_cells(per_image, f"{variant}-{loss}", planes)
        pixel = pixel_summary(per_image, planes)
        instance = instance_summary(per_image, planes).drop(columns="n_images")
        merged = pixel.merge(instance, on=["z", "reduction"], how="left")
        for column, value in provenance(per_image).items():
            merged[column] = value
        merged.insert(0, "loss", loss)
        merged.insert(0, "variant", variant)
        frames.append(merged)
    return pd.concat(frames, ignore_index=True)


def warn_without_cells(per_image: pd.DataFrame, model: str, planes: Sequence[int]) -> None:
    """Say why F1 and IoU are 0 when the test split's masks hold no cell (no foreground
    pixel): nothing to find, not a model that failed. Names the split's states, or the
    planes whose masks are all empty."""
    truth = per_image["tp"] + per_image["fn"]
    if not truth.any():
        states = sorted(map(str, per_image["state"].unique())) if "state" in per_image else []
        log.warning(
            "%s: the masks of the test split (%d image(s)%s) hold no cell, so its F1 and IoU "
            "are 0 by definition, not by the model's fault; check the masks of these states "
            "(results/masks/states/) or choose another split.test",
            model,
            len(per_image),
            f" of state(s) {', '.join(states)}" if states else "",
        )
        return
    z = per_image["z"].astype(int)
    rows = {int(plane): z == int(plane) for plane in planes}
    empty = [f"z{plane}" for plane, row in rows.items() if row.any() and not truth[row].any()]
    if empty:
        log.warning(
            "%s: the test split's masks hold no cell on plane(s) %s, whose F1 and IoU are "
            "therefore 0",
            model,
            ", ".join(empty),
        )


PROVENANCE_COLUMNS = ("geometry", "resolution", "threshold", "threshold_source", "context_planes")


def provenance(per_image: pd.DataFrame) -> dict:
    """What made a model's scores: geometry, scoring resolution, threshold and its source,
    focal context (one value each; tables written before these columns existed give NaN)."""
    found = {}
    for column in PROVENANCE_COLUMNS:
        values = per_image[column].dropna().unique() if column in per_image else []
        found[column] = values[0] if len(values) == 1 else (np.nan if not len(values) else "mixed")
    if "instance_mode" in per_image:  # only models with instance outputs have it
        values = per_image["instance_mode"].dropna().unique()
        found["instance_mode"] = values[0] if len(values) == 1 else "mixed"
    if "object_filter" in per_image:  # only models with an object filter have it
        values = per_image["object_filter"].dropna().unique()
        found["object_filter"] = values[0] if len(values) == 1 else "mixed"
    if "matched_f1_at_05" in per_image:  # only models whose threshold is not 0.5
        found["at_05"] = scores_at_half(per_image)
    return found


def scores_at_half(per_image: pd.DataFrame) -> str:
    """Mean per-image pixel F1 and matched F1 at the chosen threshold and at 0.5."""
    means = {
        c: float(per_image[c].mean()) for c in ("f1", "matched_f1", "f1_at_05", "matched_f1_at_05")
    }
    return (
        f"mean per-image pixel F1 / matched F1 {means['f1']:.3f} / {means['matched_f1']:.3f} "
        f"at the chosen threshold, {means['f1_at_05']:.3f} / {means['matched_f1_at_05']:.3f} at 0.5"
    )


def describe_provenance(row: Mapping) -> str:
    """One line saying how a model's scores were made."""
    parts = []
    if isinstance(row.get("geometry"), str):
        parts.append(f"{row['geometry']} geometry")
    if isinstance(row.get("resolution"), str):
        parts.append(f"scored at the {row['resolution']} resolution")
    threshold = row.get("threshold")
    if threshold is not None and not (isinstance(threshold, float) and np.isnan(threshold)):
        source = row.get("threshold_source")
        parts.append(
            f"threshold {float(threshold):.2f}"
            + (f" ({source})" if isinstance(source, str) else "")
        )
    if isinstance(row.get("instance_mode"), str):
        parts.append(f"instance outputs: {row['instance_mode']} (seeded watershed)")
    if isinstance(row.get("object_filter"), str):
        parts.append(f"object filter: {row['object_filter']}")
    if isinstance(row.get("at_05"), str):
        parts.append(row["at_05"])
    context = row.get("context_planes")
    if isinstance(context, (int, float, np.integer, np.floating)) and context > 0:
        parts.append(f"focal context: {int(context)} neighbouring plane(s) on each side")
    return ", ".join(parts) if parts else "not recorded"


def _wide(
    summary_table: pd.DataFrame, variant: str, losses: Sequence[str], reduction: str, metric_names
) -> pd.DataFrame:
    """Rows z.., overall; columns (loss, metric), for one variant and reduction."""
    rows = summary_table[
        (summary_table["variant"] == variant) & (summary_table["reduction"] == reduction)
    ]
    pieces = {}
    for loss in losses:
        by_z = rows[rows["loss"] == loss].set_index("z")
        for name in metric_names:
            pieces[(loss, name)] = by_z[name]
    wide = pd.DataFrame(pieces)
    wide.columns = pd.MultiIndex.from_tuples(wide.columns, names=["loss", "metric"])
    order = list(dict.fromkeys(rows["z"]))
    wide = wide.reindex(order)
    wide.index.name = "z"
    return wide


def variant_tables(
    summary_table: pd.DataFrame,
    variant: str,
    losses: Sequence[str],
    planes: Sequence[int],
    modalities: Sequence[str] | None = None,
) -> dict:
    """The study-layout tables of one variant.

    Returns a dict: ``ours`` {reduction: wide table}, ``study`` (wide table or None),
    ``difference`` {reduction: ours - study, or None}, ``instances`` {reduction: wide
    table} and ``study_table_number`` (1, 2 or None).
    """
    ours = {
        reduction: _wide(summary_table, variant, losses, reduction, PIXEL_METRICS)
        for reduction in REDUCTIONS
    }
    reference = study.comparable_table(variant, modalities, planes, losses)
    difference = None
    if reference is not None:
        difference = {
            reduction: (table - reference.reindex(index=table.index, columns=table.columns))
            for reduction, table in ours.items()
        }
    own = [
        name
        for name in WATERSHED_METRICS
        if name in summary_table.columns
        and summary_table.loc[summary_table["variant"] == variant, name].notna().any()
    ]
    instance_names = INSTANCE_METRICS + tuple(own)
    instances = {
        reduction: _wide(summary_table, variant, losses, reduction, instance_names)
        for reduction in REDUCTIONS
    }
    instances["micro"] = instances["micro"].drop(
        columns=[name for name in ("msa", "ws_msa") if name in instance_names], level="metric"
    )
    made = {}
    for loss in losses:
        rows = summary_table[
            (summary_table["variant"] == variant) & (summary_table["loss"] == loss)
        ]
        made[loss] = describe_provenance(rows.iloc[0].to_dict()) if len(rows) else "not recorded"
    return {
        "provenance": made,
        "ours": ours,
        "study": reference,
        "difference": difference,
        "instances": instances,
        "own_instances": bool(own),
        "study_table_number": study.table_number(variant) if reference is not None else None,
    }


def flat_csv(tables: dict) -> pd.DataFrame:
    """One CSV of a variant's pixel tables: z, reduction, then ``{loss}_{metric}`` (ours),
    ``study_{loss}_{metric}`` and ``diff_{loss}_{metric}`` where the study compares."""
    frames = []
    for reduction, ours in tables["ours"].items():
        frame = _flatten(ours, "")
        if tables["study"] is not None:
            study_part = tables["study"].reindex(index=ours.index, columns=ours.columns)
            frame = frame.join(_flatten(study_part, "study_")).join(
                _flatten(tables["difference"][reduction], "diff_")
            )
        frame.insert(0, "reduction", reduction)
        frames.append(frame.reset_index())
    return pd.concat(frames, ignore_index=True)


def flat_instances_csv(tables: dict) -> pd.DataFrame:
    frames = []
    for reduction, table in tables["instances"].items():
        frame = _flatten(table, "")
        frame.insert(0, "reduction", reduction)
        frames.append(frame.reset_index())
    return pd.concat(frames, ignore_index=True)


def _flatten(wide: pd.DataFrame, prefix: str) -> pd.DataFrame:
    flat = wide.copy()
    flat.columns = [f"{prefix}{loss}_{name}" for loss, name in wide.columns]
    return flat


# ---------------------------------------------------------------- text formats
def _cell(value, digits: int, signed: bool = False, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return missing
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _header(wide: pd.DataFrame) -> list[str]:
    return ["z"] + [f"{loss.upper()} {METRIC_LABELS[name]}" for loss, name in wide.columns]


def _body(
    wide: pd.DataFrame, digits: int, signed: bool = False, missing: str = "–"
) -> list[list[str]]:
    return [
        [str(label)] + [_cell(value, digits, signed, missing) for value in row]
        for label, row in wide.iterrows()
    ]


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _panels(tables: dict) -> list[tuple[str, pd.DataFrame, int, bool]]:
    """(title, table, digits, signed) of each panel of a variant's pixel table."""
    panels = [(f"This run ({REDUCTION_TITLES['micro']})", tables["ours"]["micro"], 3, False)]
    if tables["study"] is not None:
        number = tables["study_table_number"]
        panels.append((f"The study (Munteanu 2024, Table {number})", tables["study"], 2, False))
        panels.append(("Difference (this run - the study)", tables["difference"]["micro"], 3, True))
    panels.append(
        (f"This run ({REDUCTION_TITLES['imagewise']})", tables["ours"]["imagewise"], 3, False)
    )
    return panels


def to_markdown(variant: str, tables: dict) -> str:
    """A variant's pixel and instance tables as Markdown."""
    parts = [
        f"# Test-split scores, variant `{variant}`",
        "",
        "Pixel accuracy, F1 (Dice) and IoU of the thresholded prediction against the mask. "
        "Rows z.. are the focal planes; `overall` covers every plane. docs/metrics.md "
        "explains the two reductions.",
        "",
        "How each model's scores were made:",
        "",
        *[f"- {loss}: {text}" for loss, text in tables.get("provenance", {}).items()],
    ]
    if any("no validation" in text for text in tables.get("provenance", {}).values()):
        parts += [
            "",
            "**Warning:** without a validation split the threshold was not chosen on data "
            "(0.5); set `split.validation` to choose it on validation images.",
        ]
    if tables["study"] is None:
        parts += [
            "",
            "The study has no table for this variant and planes, so no comparison is shown.",
        ]
    elif OVERALL not in tables["study"].index:
        parts += [
            "",
            "The study's overall row covers its planes z12..z24; this run has other planes, "
            "so only the shared planes are compared.",
        ]
    for title, wide, digits, signed in _panels(tables):
        parts += [
            "",
            f"## {title}",
            "",
            _markdown_table(_header(wide), _body(wide, digits, signed)),
        ]
    parts += [
        "",
        "## Instances (connected components of the prediction against the true cells)",
        "",
        "SA50 and mSA: micro-sam's segmentation accuracy TP / (TP + FP + FN) at IoU 0.5 and "
        "averaged over IoU 0.50..0.95; F1@0.5: F1 of the one-to-one matching at IoU 0.5. "
        + (
            "Columns marked ws: the network's own cells (the seeded watershed of its instance "
            "outputs, `model.instances`, settings chosen on validation images; "
            "docs/instances.md); the others: connected components of its foreground. "
            if tables.get("own_instances")
            else ""
        )
        + "Mean of the per-image scores:",
        "",
        _markdown_table(
            _header(tables["instances"]["imagewise"]), _body(tables["instances"]["imagewise"], 3)
        ),
        "",
        "From object counts pooled over the images of each row:",
        "",
        _markdown_table(
            _header(tables["instances"]["micro"]), _body(tables["instances"]["micro"], 3)
        ),
    ]
    return "\n".join(parts) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(variant: str, tables: dict) -> str:
    """A variant's pixel table as a LaTeX (booktabs) table, one panel per block of rows."""
    first = tables["ours"]["micro"]
    losses = list(dict.fromkeys(loss for loss, _ in first.columns))
    names = list(dict.fromkeys(name for _, name in first.columns))
    width = 1 + len(first.columns)
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{Test-split pixel scores per focal plane, variant {_latex_escape(variant)}"
        + "".join(
            f"; {_latex_escape(loss)}: {_latex_escape(text)}"
            for loss, text in tables.get("provenance", {}).items()
        )
        + ".}",
        rf"\label{{tab:protoseg-{_latex_escape(variant)}}}",
        r"\begin{tabular}{l" + "r" * (width - 1) + "}",
        r"\toprule",
        " & ".join(
            [""] + [rf"\multicolumn{{{len(names)}}}{{c}}{{{loss.upper()}}}" for loss in losses]
        )
        + r" \\",
        " ".join(
            rf"\cmidrule(lr){{{2 + index * len(names)}-{1 + (index + 1) * len(names)}}}"
            for index in range(len(losses))
        ),
        " & ".join(["z"] + [METRIC_LABELS[name] for _, name in first.columns]) + r" \\",
    ]
    for title, wide, digits, signed in _panels(tables):
        lines += [
            r"\midrule",
            rf"\multicolumn{{{width}}}{{l}}{{\textit{{{_latex_escape(title)}}}}} \\",
        ]
        lines += [" & ".join(row) + r" \\" for row in _body(wide, digits, signed, missing="--")]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_variant_tables(variant: str, tables: dict, *, csv, instances_csv, md, tex) -> None:
    """Write a variant's tables (:func:`variant_tables`) as CSV, Markdown and LaTeX."""
    from protoseg.io import write_csv, write_text

    write_csv(csv, flat_csv(tables))
    write_csv(instances_csv, flat_instances_csv(tables))
    write_text(md, to_markdown(variant, tables))
    write_text(tex, to_latex(variant, tables))
