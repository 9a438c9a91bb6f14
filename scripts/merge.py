"""Snakemake script: one state's plane masks (or those of a batch of states,
merge.states_per_job) -> state mask, per-z masks, instances, QC overlay."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.merge import merge_state_files  # noqa: E402 - after the log is set up

planes = list(snakemake.params.planes)
modalities = list(snakemake.params.modalities)
n = len(planes)


def as_list(files):
    return [files] if isinstance(files, str) else list(files)


masks, per_z = as_list(snakemake.input.planes), as_list(snakemake.output.per_z)
states, instances = as_list(snakemake.output.state), as_list(snakemake.output.instances)
overlays = as_list(snakemake.output.qc)
# Every list is state by state; the per-plane ones in plane order within a state.
if "job_states" in snakemake.params.keys():  # a batch of states (merge.states_per_job)
    jobs = zip(snakemake.params.job_states, snakemake.params.images, strict=True)
else:
    jobs = [(snakemake.wildcards.state, snakemake.params.images)]
for k, (state, images) in enumerate(jobs):
    merge_state_files(
        masks[k * n : (k + 1) * n],
        planes,
        state_path=states[k],
        per_z_paths=per_z[k * n : (k + 1) * n],
        instances_path=instances[k],
        qc_path=overlays[k],
        # modality by modality, each in plane order
        images={m: list(images)[j * n : (j + 1) * n] for j, m in enumerate(modalities)},
        merge_cfg=snakemake.params.merge,
        state=state,
    )
