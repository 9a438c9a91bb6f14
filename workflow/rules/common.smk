# Shared by all rule files. It holds config validation, the image list known at parse time,
# output path templates (gathered here so one image's way through the DAG reads as a
# straight line) and the targets of `rule all`.
import sys
from pathlib import Path

from protoseg import config_checks, naming
from protoseg.config import validate

# Checked against workflow/schemas/config.schema.yaml, whose defaults fill in every key
# left out (the one place defaults live), so rules and scripts read keys directly.
validate(config)
# What the schema cannot see (keys against each other and against the images), checked
# before any job starts so `snakemake -n` refuses it too.
config_checks.check_config(config)

ENVS = "../../envs"
SCRIPTS = "../../scripts"

# ---------------------------------------------------------------- output paths
RESULTS = "results"
CATALOGUE = f"{RESULTS}/catalogue.csv"
PLANE_MASK = f"{RESULTS}/masks/planes/{{state}}/z{{z}}.tif"
STATE_MASK = f"{RESULTS}/masks/states/{{state}}.tif"
PER_Z_MASK = f"{RESULTS}/masks/per_z/{{state}}/z{{z}}.tif"
INSTANCES = f"{RESULTS}/masks/instances/{{state}}.npz"
QC_OVERLAY = f"{RESULTS}/qc/{{state}}.png"
QUALITY_CSV = f"{RESULTS}/masks/quality.csv"
QUALITY_MD = f"{RESULTS}/masks/quality.md"
DATASET_DIR = f"{RESULTS}/datasets/{{variant}}"
DATASET_MANIFEST = f"{DATASET_DIR}/manifest.csv"
MODEL_DIR = f"{RESULTS}/models/{{variant}}-{{loss}}"
METRICS_DIR = f"{RESULTS}/metrics/{{variant}}-{{loss}}"
TABLES_DIR = f"{RESULTS}/tables"
FIGURES_DIR = f"{RESULTS}/figures"

# ---------------------------------------------------------------- the images
# Known at parse time from the file names alone (cheap, no image is opened), so a bad
# name stops the run before any job starts and a dry run lists every job. The catalogue
# rule then opens every file and checks shapes, dtypes and completeness.
if config["data"]["source"] == "demo":
    RAW_DIR = str(Path(config["demo"]["out_dir"]) / "raw")
    TRUTH_DIR = str(Path(config["demo"]["out_dir"]) / "truth")
    RECORDS = naming.demo_records(config["demo"], config["data"], RAW_DIR)
else:
    RAW_DIR = config["data"]["raw_dir"]
    TRUTH_DIR = config["quality"]["truth_dir"]
    RECORDS = naming.records_from_config(config["data"], RAW_DIR)
config_checks.check_split(config["split"], RECORDS)

STATES = sorted(RECORDS["state"].unique())
PLANES = [int(z) for z in config["data"]["planes"]]
MODALITIES = sorted(set(config["data"]["channels"].values()))
VARIANTS = list(config["dataset"]["variants"])
LOSSES = list(config["train"]["losses"])


def get_states():
    return STATES


def get_split_states(split):
    """States whose split key falls in `split` ("test", "validation" or "train")."""
    return naming.states_in_split(RECORDS, config["split"], split)


def raw_image(state, modality, z):
    """Path of the raw image of one state, modality and plane."""
    return naming.lookup(RECORDS, state=state, modality=modality, z=int(z))


def state_images(state, modality):
    """Paths of one state's images of one modality, ordered by plane."""
    return [raw_image(state, modality, z) for z in PLANES]


def log_path(step, name="{state}"):
    return f"logs/{step}/{name}.log"


def benchmark_path(step, name="{state}"):
    return f"benchmarks/out/{step}/{name}.tsv"


# ---------------------------------------------------------------- rule all
# Each rule file registers the final outputs of its stage here.
FINAL_TARGETS = []


def register_targets(*paths):
    for path in paths:
        if isinstance(path, (list, tuple)):
            FINAL_TARGETS.extend(path)
        else:
            FINAL_TARGETS.append(path)


def all_targets(wildcards):
    return FINAL_TARGETS
