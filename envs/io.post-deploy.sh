#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created env, from its working directory:
# the protoseg checkout where `snakemake` was started. It installs that checkout's
# protoseg package (editable, so later code changes need no new env). A relative path
# in the yaml's pip section would not do: Snakemake copies the yaml into the conda prefix
# (.snakemake/conda/ or --conda-prefix) before conda reads it.
set -euo pipefail
if ! grep -q '^name = "protoseg"' pyproject.toml 2>/dev/null; then
    echo "envs post-deploy: run snakemake from the protoseg checkout (no protoseg pyproject.toml in $(pwd))" >&2
    exit 1
fi
python -m pip install --no-deps -e .
