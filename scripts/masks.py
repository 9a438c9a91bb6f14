"""Snakemake script: one state's images of masks.modality -> results/masks/planes/{state}/z{z}.tif."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.masks import get_method, make_state_masks  # noqa: E402 - after the log is set up

masks_cfg = snakemake.params.masks
if get_method(masks_cfg["method"]).uses_sam:
    import torch

    torch.set_num_threads(snakemake.threads)

make_state_masks(
    list(snakemake.params.images),
    list(snakemake.output),
    method=masks_cfg["method"],
    masks_cfg=masks_cfg,
    state=snakemake.wildcards.state,
    planes=list(snakemake.params.planes),
    states=list(snakemake.params.states),
)
