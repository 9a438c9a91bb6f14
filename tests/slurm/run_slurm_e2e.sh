#!/usr/bin/env bash
# End-to-end check of profiles/slurm: a one-node SLURM cluster on loopback runs the tiny
# workflow (tests/workflow_helpers.tiny_config) through the profile, every job by sbatch.
#
#   sudo tests/slurm/run_slurm_e2e.sh                 # the whole tiny workflow (rule all)
#   sudo tests/slurm/run_slurm_e2e.sh results/catalogue.csv   # only up to some targets
#
# Needs root (Debian's slurm-wlm and munge are installed with apt-get when missing; the
# daemons run as root) and the project's Python environment active or at .venv/. Takes a
# few minutes (docs/slurm.md gives measured times). PROTOSEG_SLURM_KEEP=1 keeps the work
# folder (logs, results) for a look afterwards.
#
# What is real and what is not: slurmctld, slurmd, munge, sbatch, srun, squeue and the
# snakemake SLURM executor plugin are the real ones; the node is declared larger than this
# machine (16 CPUs, 64 GB, one GPU as a count-only generic resource), so that the profile's
# cluster-sized requests (cpus, mem_mb, gpu) are accepted and scheduled as written.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/protoseg-slurm.XXXXXX)
chmod 755 "$WORK"  # the munge user must reach its key below
STARTED_PIDS=()
INSTALLED_CONF=0

cleanup() {
    status=$?
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # The daemons are not our children (they fork away): poll until they are gone, so
    # that they write no more state files into the folder removed below.
    for pid in "${STARTED_PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    if [[ $INSTALLED_CONF == 1 ]]; then
        rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
    fi
    if [[ "${PROTOSEG_SLURM_KEEP:-0}" == 1 || $status -ne 0 ]]; then
        echo "work folder kept: $WORK" >&2
    else
        rm -rf "$WORK" || echo "could not remove $WORK" >&2
    fi
    exit $status
}
trap cleanup EXIT

log() { echo "[slurm-e2e $(date +%H:%M:%S)] $*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root: it installs packages and starts the SLURM daemons" >&2
    exit 1
fi

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi

if [[ -z "${VIRTUAL_ENV:-}" && -f "$REPO/.venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$REPO/.venv/bin/activate"
fi
python -c "import snakemake_executor_plugin_slurm" || {
    echo "snakemake-executor-plugin-slurm is not installed (see README: the pinned install)" >&2
    exit 1
}

# ---------------------------------------------------------------- munge
# A fresh key and socket of our own, so an existing munge set-up is left alone.
mkdir -p "$WORK/munge"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$WORK/munge"
chmod 700 "$WORK/munge"
chmod 400 "$WORK/munge/munge.key"
MUNGE_SOCKET="$WORK/munge/munge.socket"
runuser -u munge -- munged --key-file="$WORK/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" \
    --seed-file="$WORK/munge/munged.seed" --force
for _ in $(seq 50); do [[ -s "$WORK/munge/munged.pid" ]] && break; sleep 0.1; done
STARTED_PIDS+=("$(cat "$WORK/munge/munged.pid")")

# ---------------------------------------------------------------- slurm
mkdir -p "$WORK/etc" "$WORK/state" "$WORK/spool" "$WORK/log"
cat > "$WORK/etc/slurm.conf" <<EOF
ClusterName=protoseg-e2e
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/state/slurmctld.pid
SlurmdPidFile=$WORK/spool/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Finished jobs stay visible to squeue for 5 minutes: the plugin polls squeue, as there
# is no accounting database (sacct) here.
MinJobAge=300
ReturnToService=2
GresTypes=gpu
# Trust the node sizes below instead of measuring this machine.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$WORK/etc/gres.conf" <<EOF
NodeName=localhost Name=gpu File=/dev/null
EOF
# Where every SLURM command looks, also inside jobs (the plugin clears SLURM_* variables
# there, SLURM_CONF included). An existing cluster configuration is never replaced.
if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    echo "/etc/slurm/slurm.conf exists: this machine has a SLURM set-up; not touching it" >&2
    exit 1
fi
mkdir -p /etc/slurm
ln -sfn "$WORK/etc/slurm.conf" /etc/slurm/slurm.conf
ln -sfn "$WORK/etc/gres.conf" /etc/slurm/gres.conf
INSTALLED_CONF=1

log "starting slurmctld and slurmd on localhost"
slurmctld -c -i
slurmd -c
for _ in $(seq 100); do [[ -s "$WORK/state/slurmctld.pid" && -s "$WORK/spool/slurmd.pid" ]] && break; sleep 0.1; done
STARTED_PIDS+=("$(cat "$WORK/state/slurmctld.pid")" "$(cat "$WORK/spool/slurmd.pid")")
for _ in $(seq 60); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && break
    sleep 1
done
sinfo -h -o %t | grep -qx idle || {
    echo "the SLURM node did not come up; logs in $WORK/log" >&2
    cat "$WORK/log/"*.log >&2 || true
    exit 1
}
log "cluster up: $(sinfo -h -o '%P %D %t %c CPUs %m MB %G')"

# ---------------------------------------------------------------- the profile
# profiles/slurm as shipped, with its placeholders filled for this cluster: partition
# "debug" for all jobs, no account (there is no accounting here).
mkdir -p "$WORK/profile"
python - "$REPO/profiles/slurm/config.yaml" "$WORK/profile/config.yaml" <<'EOF'
import sys

import yaml

profile = yaml.safe_load(open(sys.argv[1]))
profile["default-resources"].pop("slurm_account")
profile["default-resources"]["slurm_partition"] = "debug"
for resources in profile.get("set-resources", {}).values():
    if "slurm_partition" in resources:
        resources["slurm_partition"] = "debug"
# Poll soon after submitting: the default 40 s wait suits a busy cluster, not a test.
profile["slurm-init-seconds-before-status-checks"] = 5
profile["slurm-status-command"] = "squeue"
profile["slurm-keep-successful-logs"] = True
yaml.safe_dump(profile, open(sys.argv[2], "w"), sort_keys=False)
EOF

# ---------------------------------------------------------------- the tiny workflow
RUN="$WORK/run"
mkdir -p "$RUN/config"
PYTHONPATH="$REPO" python - "$RUN/config/config.yaml" "$WORK/new_images" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import tifffile
import yaml

from tests.workflow_helpers import tiny_config

# A new image for rule predict (so it runs through SLURM too): bright discs on dark.
new_images = Path(sys.argv[2])
new_images.mkdir()
yy, xx = np.mgrid[:80, :100]
image = np.zeros((80, 100, 3), np.uint8)
image[((yy - 40) ** 2 + (xx - 30) ** 2 < 150) | ((yy - 30) ** 2 + (xx - 70) ** 2 < 100)] = (40, 60, 250)
tifffile.imwrite(new_images / "new_field.tif", image)
config = tiny_config()
config["predict"]["input_dir"] = str(new_images)
yaml.safe_dump(config, open(sys.argv[1], "w"), sort_keys=False)
EOF

log "running the tiny workflow through the slurm profile"
START=$(date +%s)
set +e
(
    cd "$RUN"
    # The Snakefile reads config/config.yaml from this working directory: the tiny config.
    OMP_NUM_THREADS=1 snakemake --snakefile "$REPO/Snakefile" --workflow-profile "$WORK/profile" "$@"
) 2>&1 | tee "$WORK/snakemake.log"
STATUS=${PIPESTATUS[0]}
set -e
ELAPSED=$(( $(date +%s) - START ))

SUBMITTED=$(grep -c "submitted with SLURM jobid\|has been submitted with SLURM" "$WORK/snakemake.log" || true)
log "snakemake exit status $STATUS after ${ELAPSED} s; ${SUBMITTED} job(s) went through sbatch"
squeue -h -t all -o "%i %j %T %M %b" | sed 's/^/  squeue: /' || true
if [[ $STATUS -ne 0 ]]; then
    echo "snakemake failed; see $WORK/snakemake.log and $RUN/logs, $RUN/logs/slurm" >&2
    exit "$STATUS"
fi
if [[ $SUBMITTED -eq 0 ]]; then
    echo "no job was submitted through SLURM (nothing to do?)" >&2
    exit 1
fi
log "OK: slurm end-to-end run took ${ELAPSED} s"
