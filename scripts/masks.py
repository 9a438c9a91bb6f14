"""Snakemake script: the images of masks.modality of one state (or of a batch of states,
masks.states_per_job) -> results/masks/planes/{state}/z{z}.tif."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.masks import get_method, make_state_masks  # noqa: E402 - after the log is set up

masks_cfg = snakemake.params.masks
if get_method(masks_cfg["method"]).uses_sam:
    import torch

    torch.set_num_threads(snakemake.threads)

planes = list(snakemake.params.planes)
outputs = list(snakemake.output)  # state by state, each in plane order
if "job_states" in snakemake.params.keys():  # a batch of states (masks.states_per_job)
    jobs = zip(snakemake.params.job_states, snakemake.params.images, strict=True)
else:
    jobs = [(snakemake.wildcards.state, snakemake.params.images)]
for number, (state, images) in enumerate(jobs):
    make_state_masks(
        list(images),
        outputs[number * len(planes) : (number + 1) * len(planes)],
        method=masks_cfg["method"],
        masks_cfg=masks_cfg,
        state=state,
        planes=planes,
        states=list(snakemake.params.states),
    )
