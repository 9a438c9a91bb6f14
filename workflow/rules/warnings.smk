# The warnings every job logged (empty masks, NaN planes, discarded checkpoints, ...),
# gathered from logs/ into one table of the report, once every other result is made.
# The Snakefile's onsuccess/onerror handlers print the same list on the console.
import time

WARNINGS_CSV = f"{RESULTS}/warnings.csv"
WARNINGS_MD = f"{RESULTS}/warnings.md"
LOG_DIR = "logs"
# Logs written after this (parse) time are this run's.
RUN_STARTED = time.time()
# Every other final result: included last, this rule runs after them all.
WARNING_SOURCES = all_targets(None)


rule warnings:
    input:
        WARNING_SOURCES,
    output:
        csv=report(
            WARNINGS_CSV,
            caption="../report/warnings.rst",
            category="Warnings",
            labels={"table": "warnings in the job logs"},
        ),
        md=WARNINGS_MD,
    log:
        log_path("warnings", "warnings"),
    benchmark:
        benchmark_path("warnings", "warnings")
    conda:
        f"{ENVS}/io.yaml"
    params:
        log_dir=LOG_DIR,
        exclude=["warnings"],
    script:
        f"{SCRIPTS}/warnings.py"


stage_targets("warnings", WARNINGS_CSV, WARNINGS_MD)


# `snakemake all_warnings`: the warnings of every job, in one table.
rule all_warnings:
    input:
        STAGE_TARGETS["warnings"],
    localrule: True
