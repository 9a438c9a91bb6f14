"""Snakemake script: catalogue + masks -> one variant's dataset (shards, manifest, description)."""

from pathlib import Path

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.dataset import SHARD_DIR, build_dataset  # noqa: E402 - after the log is set up

dataset_dir = Path(snakemake.output.manifest).parent
assert Path(snakemake.output.shards) == dataset_dir / SHARD_DIR, (
    "shards must sit beside the manifest"
)
manifest = build_dataset(
    snakemake.input.catalogue,
    dataset_dir,
    variant=snakemake.wildcards.variant,
    modalities=list(snakemake.params.modalities),
    split_cfg=dict(snakemake.params.split),
    dataset_cfg=dict(snakemake.params.dataset),
    mask_path=snakemake.params.mask_template,
    context_planes=int(snakemake.params.context_planes),
    instances=bool(snakemake.params.instances),
)
log.info("%s: %s", snakemake.wildcards.variant, manifest.groupby("split").size().to_dict())
