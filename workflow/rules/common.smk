# Shared by all rule files. It holds config validation, the image list known at parse time, log
# and benchmark paths, and the registry of each stage's final outputs.
import sys
from pathlib import Path

from protoseg import config_checks
from protoseg.catalogue import (
    cached_records,
    demo_records,
    index_records,
    states_in_split,
)
from protoseg.config import validate
from protoseg.masks import method_inputs

# Checked against workflow/schemas/config.schema.yaml, whose defaults fill in every key
# left out (the one place defaults live), so rules and scripts read keys directly.
validate(config)
# What the schema cannot see (keys against each other and against the images), checked
# before any job starts so `snakemake -n` refuses it too.
config_checks.check_config(config)

ENVS = "../../envs"
SCRIPTS = "../../scripts"

# Each stage's output paths are declared once, at the top of its rule file, and its final
# outputs are the input of its `all_<stage>` rule (`snakemake all_masks` runs one stage).
RESULTS = "results"

# ---------------------------------------------------------------- the images
# Known at parse time from the file names alone (cheap, no image is opened), so a bad
# name stops the run before any job starts and a dry run lists every job. The catalogue
# rule then opens every file and checks shapes, dtypes and completeness.
if config["data"]["source"] == "demo":
    RAW_DIR = str(Path(config["demo"]["out_dir"]) / "raw")
    TRUTH_DIR = str(Path(config["demo"]["out_dir"]) / "truth")
    RECORDS = demo_records(config["demo"], config["data"], RAW_DIR)
else:
    RAW_DIR = config["data"]["raw_dir"]
    TRUTH_DIR = config["quality"]["truth_dir"]
    # Read back from .snakemake/protoseg/ while the folder's names are unchanged.
    RECORDS = cached_records(config["data"], RAW_DIR, ".snakemake/protoseg")
config_checks.check_split(config["split"], RECORDS)
config_checks.check_pixel_sizes(config["dataset"], RECORDS)

STATES = sorted(RECORDS["state"].unique())
PLANES = [int(z) for z in config["data"]["planes"]]
MODALITIES = sorted(set(config["data"]["channels"].values()))
VARIANTS = list(config["dataset"]["variants"])
LOSSES = list(config["train"]["losses"])
# (state, modality, z) -> path, built once: input functions run once per job, and a scan
# of the records per call made planning grow with the square of the study.
INDEX = index_records(RECORDS, PLANES)


def get_states():
    return STATES


def get_split_states(split):
    """States whose split key falls in `split` ("test", "validation" or "train")."""
    return states_in_split(RECORDS, config["split"], split)


def raw_image(state, modality, z):
    """Path of the raw image of one state, modality and plane: the file, or the address of
    the plane in a microscope container (what protoseg.io.read_image reads)."""
    return INDEX.path(state, modality, z)


def state_images(state, modality):
    """Paths of one state's images of one modality, ordered by plane."""
    return INDEX.state_paths(state, modality)


def source_files(images):
    """The files on disk behind raw image paths (a container once), a rule's input."""
    return INDEX.source_files(images)


def state_image_lists(states, modalities):
    """Per state, its images of `modalities`, modality by modality, each in plane order."""
    return [[path for m in modalities for path in state_images(s, m)] for s in states]


def mask_method_inputs(masks_cfg, states):
    """Files masks.method reads besides the images, for `states`: the prompts CSV
    (sam-prompted) or the states' mask files (import)."""
    return [
        path
        for state in states
        for path in method_inputs(
            masks_cfg, state, PLANES, state_images(state, masks_cfg["modality"])
        )
    ]


# ---------------------------------------------------------------- jobs of several states
# A per-state stage (masks, merge) runs one job per state (`<stage>.states_per_job: 1`,
# a rule with a {state} wildcard), or one job per batch of that many consecutive states
# (one rule per batch, `<stage>_batch<n>`, listing its states' outputs one by one, so
# every output stays a file of its own state). docs/large-studies.md.
def state_jobs(stage, per_job):
    """(rule name, states) of each rule of a per-state stage, where states None means
    one rule with a {state} wildcard."""
    if per_job == 1:
        return [(stage, None)]
    starts = range(0, len(STATES), per_job)
    width = len(str(len(starts) - 1))
    return [
        (f"{stage}_batch{number:0{width}d}", STATES[start : start + per_job])
        for number, start in enumerate(starts)
    ]


def for_job(states, function):
    """`function(states)` for a batch; for a per-state rule (states None), the input
    function that gives `function([wildcards.state])`."""
    if states is None:
        return lambda wildcards: function([wildcards.state])
    return function(states)


def state_or_batch(states, function):
    """`function(states)` (one value per state) for a batch; for a per-state rule, the
    input function that gives the value of its {state} alone."""
    if states is None:
        return lambda wildcards: function([wildcards.state])[0]
    return function(states)


def batch_params(states):
    """A batch's states, a parameter of batch rules only (a per-state rule's parameters
    stay as they were, so finished outputs are not redone for changed parameters)."""
    return {} if states is None else {"job_states": list(states)}


def job_outputs(template, states, **wildcards):
    """`template` expanded over the job's states (kept as {state} in a per-state rule)."""
    if states is None:
        return expand(template, **wildcards, allow_missing=True)
    return expand(template, state=states, **wildcards)


def job_name(rule_name, stage, per_job="{state}"):
    """Log and benchmark name of a rule's jobs: `per_job` ({state}), or with the batch
    (`batch<n>`, after the wildcards of `per_job` other than {state})."""
    if rule_name == stage:
        return per_job
    batch = rule_name[len(stage) + 1 :]
    return batch if per_job == "{state}" else f"{per_job}/{batch}"


def share_rule_settings(base, rule_name):
    """Let a batch rule take the --set-resources / --set-threads given for its stage
    (profiles/slurm names `masks`, not `masks_batch<n>`). Snakemake applies these by rule
    name when the rule is defined; this adds the batch rule's name to them."""
    settings = workflow.resource_settings
    for parsed in ("_parsed_overwrite_resources", "_parsed_overwrite_threads"):
        table = getattr(settings, parsed, None)
        if isinstance(table, dict) and base in table and rule_name != base:
            table[rule_name] = table[base]


def log_path(step, name="{state}"):
    return f"logs/{step}/{name}.log"


def benchmark_path(step, name="{state}"):
    return f"benchmarks/out/{step}/{name}.tsv"


# ---------------------------------------------------------------- targets
# Stage name -> its final outputs, filled by each rule file; `rule all` and the warnings
# rule take them all.
STAGE_TARGETS = {}


def stage_targets(stage, *paths):
    """Record `stage`'s final outputs (paths or lists of paths); returns them flat."""
    flat = []
    for path in paths:
        flat.extend(path if isinstance(path, (list, tuple)) else [path])
    STAGE_TARGETS[stage] = flat
    return flat


def all_targets(wildcards):
    """Every stage's final outputs; once the warnings rule is defined (it takes all the
    others as input), its outputs alone: the same jobs, without Snakemake resolving every
    per-state file a second time (docs/large-studies.md)."""
    if STAGE_TARGETS.get("warnings"):
        return STAGE_TARGETS["warnings"]
    return [path for paths in STAGE_TARGETS.values() for path in paths]
