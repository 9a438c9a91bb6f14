"""A lock left by a killed run: stale (its run is gone) or live, and the command to clear it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from protoseg import locks


def lock(workdir, owner=None):
    folder = workdir / locks.LOCK_DIR
    folder.mkdir(parents=True)
    (folder / "0.output.lock").write_text("results/catalogue.csv\n")
    if owner:
        (folder / locks.OWNER_FILE).write_text(__import__("json").dumps(owner))


def test_no_lock_no_advice(tmp_path):
    assert locks.lock_advice(tmp_path) is None


def test_the_unlock_command_repeats_what_locates_the_folder():
    argv = ["snakemake", "--snakefile", "/r/Snakefile", "-d=/w", "--cores", "2", "all_masks"]
    assert locks.unlock_command(argv) == "snakemake --snakefile /r/Snakefile -d /w --unlock"
    assert locks.unlock_command(["snakemake"]) == "snakemake --unlock"


def test_a_lock_whose_run_is_gone_is_stale_with_the_command(tmp_path):
    lock(tmp_path, {"pid": 999999, "host": socket.gethostname(), "started": 0})
    advice = locks.lock_advice(tmp_path, ["snakemake", "--directory", str(tmp_path)])
    assert advice.startswith(f"protoseg: stale lock in {tmp_path.resolve() / locks.LOCK_DIR}: ")
    assert "Snakemake run 999999 (started 19" in advice and "is no longer running" in advice
    assert f"`snakemake --directory {tmp_path} --unlock`" in advice
    assert (tmp_path / locks.LOCK_DIR / "0.output.lock").exists()  # never removed here


def test_a_live_run_keeps_its_lock(tmp_path):
    lock(tmp_path)
    # Anything whose command line names snakemake, running in the locked folder. It says
    # when it runs: on a loaded machine the test could otherwise look before it does.
    started = "import pathlib, time; pathlib.Path('started').touch(); time.sleep(60)"
    alive = subprocess.Popen([sys.executable, "-c", started, "snakemake"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        advice = locks.lock_advice(tmp_path, ["snakemake"])
    finally:
        alive.kill()
        alive.wait()
    assert f"locked by a live run (Snakemake process {alive.pid} runs in this folder)" in advice
    assert "do not unlock a running workflow" in advice


def test_a_run_on_another_host_cannot_be_judged_here(tmp_path):
    lock(tmp_path, {"pid": os.getpid(), "host": "node042", "started": 0})
    advice = locks.lock_advice(tmp_path, ["snakemake"])
    assert (
        "on host node042; if that run has ended, remove the lock with `snakemake --unlock`"
        in advice
    )


def test_record_owner_writes_into_the_lock_only(tmp_path):
    locks.record_owner(tmp_path)  # --nolock: no lock folder, nothing written
    assert not (tmp_path / ".snakemake").exists()
    lock(tmp_path)
    locks.record_owner(tmp_path)
    assert locks.read_owner(tmp_path)["pid"] == os.getpid()
