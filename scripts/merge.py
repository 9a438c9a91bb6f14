"""Snakemake script: one state's plane masks -> state mask, per-z masks, instances, QC overlay."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.merge import merge_state_files  # noqa: E402 - after the log is set up

planes = list(snakemake.params.planes)
images = list(snakemake.params.images)  # modality by modality, each in plane order
modalities = list(snakemake.params.modalities)
merge_state_files(
    list(snakemake.input.planes),
    planes,
    state_path=snakemake.output.state,
    per_z_paths=list(snakemake.output.per_z),
    instances_path=snakemake.output.instances,
    qc_path=snakemake.output.qc,
    images={m: images[k * len(planes) : (k + 1) * len(planes)] for k, m in enumerate(modalities)},
    merge_cfg=snakemake.params.merge,
    state=snakemake.wildcards.state,
)
