# Shared by all rule files. It holds config validation, the image list known at parse time, log
# and benchmark paths, and the registry of each stage's final outputs.
import sys
from pathlib import Path

from protoseg import config_checks
from protoseg.catalogue import (
    demo_records,
    lookup,
    records_from_config,
    states_in_split,
)
from protoseg.config import validate
from protoseg.stacks import source_file

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
    RECORDS = records_from_config(config["data"], RAW_DIR)
config_checks.check_split(config["split"], RECORDS)
config_checks.check_pixel_sizes(config["dataset"], RECORDS)

STATES = sorted(RECORDS["state"].unique())
PLANES = [int(z) for z in config["data"]["planes"]]
MODALITIES = sorted(set(config["data"]["channels"].values()))
VARIANTS = list(config["dataset"]["variants"])
LOSSES = list(config["train"]["losses"])


def get_states():
    return STATES


def get_split_states(split):
    """States whose split key falls in `split` ("test", "validation" or "train")."""
    return states_in_split(RECORDS, config["split"], split)


def raw_image(state, modality, z):
    """Path of the raw image of one state, modality and plane: the file, or the address of
    the plane in a microscope container (what protoseg.io.read_image reads)."""
    return lookup(RECORDS, state=state, modality=modality, z=int(z))


def state_images(state, modality):
    """Paths of one state's images of one modality, ordered by plane."""
    return [raw_image(state, modality, z) for z in PLANES]


def source_files(images):
    """The files on disk behind raw image paths (a container once), a rule's input."""
    return sorted({source_file(image) for image in images})


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
    return [path for paths in STAGE_TARGETS.values() for path in paths]
