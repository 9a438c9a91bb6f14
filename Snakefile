# protoseg: raw multi-focal-plane TIFFs -> SAM/classical masks -> per-state merge ->
# xy-split datasets -> U-Net (BCE, MSE) -> per-z-level tables, figures and report.
#
#   snakemake --cores all                         # the demo, end to end
#   snakemake --cores all --configfile config/paper.yaml
#   snakemake --report results/report.html
import sys

from snakemake.utils import min_version

from protoseg.locks import lock_advice, record_owner
from protoseg.logs import summarise_warnings

min_version("9.0")

# A lock left by a run killed hard (kill -9, power cut): one line on whether its run is
# gone (then the exact command that removes it) or still alive (then leave it alone).
if workflow.is_main_process and "--unlock" not in sys.argv:
    LOCK_ADVICE = lock_advice(".", sys.argv)
    if LOCK_ADVICE:
        print(LOCK_ADVICE, file=sys.stderr)


# The demo config is the default. A --configfile replaces it whole instead of being laid
# over it key by key: a real data set's channel names must not inherit the demo's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


wildcard_constraints:
    state=r"[^/]+",
    z=r"\d+",
    variant=r"[A-Za-z0-9_]+",
    loss=r"[A-Za-z0-9_+]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/catalogue.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/quality.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/export.smk"
# Last: its rule waits for every other result.
include: "workflow/rules/warnings.smk"


rule all:
    default_target: True
    input:
        all_targets,


# Who holds the lock (inside it, so it goes with it): what lock_advice reads.
onstart:
    record_owner()


# Warnings sit in the job logs; print them when a run ends, however it ends.
onsuccess:
    summarise_warnings(LOG_DIR, since=RUN_STARTED, full_list=WARNINGS_MD)


onerror:
    summarise_warnings(
        LOG_DIR, since=RUN_STARTED, full_list=WARNINGS_MD, quiet_if_none=True
    )
