"""Snakemake's lock of a working folder: whose it is, and whether that run is still alive.

Snakemake locks the folder it runs in (``.snakemake/locks/``) and removes the lock when it
ends, but a run killed hard (``kill -9``, a power cut, a closed SSH session) leaves it, and
the next start stops with "Directory cannot be locked". Snakemake's lock files list the
locked files only, so the Snakefile's ``onstart`` records the run that holds the lock
(:func:`record_owner`: process, host, start time, inside the lock folder, so it goes with
the lock). When the workflow is parsed again, :func:`lock_advice` says in one line whether
the lock is stale (no Snakemake process of this folder is alive: the exact command that
removes it) or belongs to a live run (which must not be unlocked). The lock itself is
never removed here: that stays the user's (or the test's) one command.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from collections.abc import Sequence
from pathlib import Path

LOCK_DIR = Path(".snakemake") / "locks"
# Beside Snakemake's own "{n}.input.lock" / "{n}.output.lock", which it removes with the folder.
OWNER_FILE = "protoseg-owner.json"
# Options of the command line that the unlock command must repeat to find the same lock.
KEPT_OPTIONS = {"-s": 1, "--snakefile": 1, "-d": 1, "--directory": 1}


def lock_files(workdir: str | Path = ".") -> list[Path]:
    """Snakemake's lock files in ``workdir`` (empty: not locked)."""
    folder = Path(workdir) / LOCK_DIR
    return sorted(folder.glob("*.lock")) if folder.is_dir() else []


def record_owner(workdir: str | Path = ".") -> None:
    """Write who holds the lock: this process (Snakemake's), its host, when it started."""
    folder = Path(workdir) / LOCK_DIR
    if not folder.is_dir():
        return  # --nolock: nothing to own
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    (folder / OWNER_FILE).write_text(json.dumps(owner))


def read_owner(workdir: str | Path = ".") -> dict | None:
    try:
        owner = json.loads((Path(workdir) / LOCK_DIR / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _ancestors(pid: int) -> set[int]:
    """``pid`` and the processes above it (the run being started, its shell, ...)."""
    found = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the command's name
    return found


def live_snakemake_processes(workdir: str | Path = ".", me: int | None = None) -> list[int] | None:
    """Processes other than ``me`` and its ancestors that run Snakemake, or a job of it,
    in ``workdir`` (by their command line and working folder). None where this cannot be
    seen (no ``/proc``: not Linux)."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return None
    workdir = os.path.realpath(workdir)
    skip = _ancestors(os.getpid() if me is None else me)
    alive = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, a zombie, or another user's
            continue
        if "snakemake" in command and os.path.realpath(cwd) == workdir:
            alive.append(int(entry.name))
    return sorted(alive)


def unlock_command(argv: Sequence[str]) -> str:
    """``snakemake --unlock`` with the options of ``argv`` that locate the same folder."""
    kept, index = [], 1
    while index < len(argv):
        name, _, value = argv[index].partition("=")
        if name in KEPT_OPTIONS:
            kept += [name, value] if value else [name, *argv[index + 1 : index + 2]]
            index += 1 if value else 2
        else:
            index += 1
    return shlex.join(["snakemake", *kept, "--unlock"])


def lock_advice(
    workdir: str | Path = ".", argv: Sequence[str] = (), me: int | None = None
) -> str | None:
    """One line about a lock in ``workdir``, or None when there is none.

    A lock whose run is gone (no Snakemake process of this folder alive on this host):
    stale, with the command that removes it. A live run's: leave it. A run on another host
    (a shared file system): this host cannot tell, so the command comes with a condition.
    """
    if not lock_files(workdir):
        return None
    folder = Path(workdir).resolve() / LOCK_DIR
    owner = read_owner(workdir)
    command = unlock_command(argv)
    whose = "the Snakemake run that took it"
    if owner:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        whose = f"Snakemake run {owner.get('pid')} (started {started})"
        if owner.get("host") != socket.gethostname():
            return (
                f"protoseg: {folder} is locked by {whose} on host {owner.get('host')}; if that "
                f"run has ended, remove the lock with `{command}` and start again"
            )
    alive = live_snakemake_processes(workdir, me)
    if alive is None:
        return (
            f"protoseg: {folder} is locked by {whose}; if no Snakemake runs in this folder, "
            f"remove the lock with `{command}` and start again"
        )
    if alive:
        return (
            f"protoseg: {folder} is locked by a live run (Snakemake process "
            f"{', '.join(map(str, alive))} runs in this folder): wait for it to end or stop it; "
            "do not unlock a running workflow"
        )
    return (
        f"protoseg: stale lock in {folder}: {whose} is no longer running (killed?); remove "
        f"the lock with `{command}` and start again (finished outputs are kept)"
    )
