#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created env, from its working directory:
# the protoseg checkout where `snakemake` was started.
# 1. micro-sam and torch-em without their declared dependencies (napari, Qt, bioimageio,
#    tensorboard: only the interactive annotator needs those; see docs/annotate.md).
#    Versions as in ../requirements.lock (tests/test_envs.py checks they agree).
# 2. protoseg itself, editable, from the checkout (see io.post-deploy.sh for why here).
set -euo pipefail
if ! grep -q '^name = "protoseg"' pyproject.toml 2>/dev/null; then
    echo "envs post-deploy: run snakemake from the protoseg checkout (no protoseg pyproject.toml in $(pwd))" >&2
    exit 1
fi
python -m pip install --no-deps micro_sam==1.8.14 torch_em==0.10.9
python -m pip install --no-deps -e .
