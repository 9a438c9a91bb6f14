"""protoseg: segmentation of multi-focal-plane protoplast microscopy.

The library knows nothing of Snakemake: functions take arrays and paths and
return arrays and tables. The workflow's scripts in ``scripts/`` are thin
wrappers around it.
"""

__version__ = "0.1.0"
