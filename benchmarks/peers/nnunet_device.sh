#!/bin/bash
# nnU-Net's peer rows on a lent GPU machine, in one call of the device tool:
#   run(command="bash benchmarks/peers/nnunet_device.sh 5 50", carry=[".whl", ".nnunet"])
# with the epochs for aiSEGcell and BABY. .whl holds nnU-Net's wheels for the machine's
# Python 3.12 and .nnunet/{aisegcell,baby} what `nnunet_peer.py prepare` wrote
# (benchmarks/peers/README.md says how to make both). Results come back from $OUT.
set -euo pipefail
aisegcell_epochs=${1:-5}
baby_epochs=${2:-50}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
standin=""
if ! python3 -c "import SimpleITK" 2>/dev/null; then
    standin="$PWD/benchmarks/peers/simpleitk_standin:"
fi
export PYTHONPATH="/tmp/site:${standin}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for data in aisegcell baby; do
    epochs=$aisegcell_epochs
    [ "$data" = baby ] && epochs=$baby_epochs
    python3 benchmarks/peers/nnunet_peer.py run ".nnunet/$data" "$OUT/peers-nnunet-$data.json" \
        --device cuda --epochs "$epochs" --processes 8 > "$OUT/nnunet-$data.log" 2>&1 \
        || { tail -40 "$OUT/nnunet-$data.log"; exit 1; }
    grep -E "^(planned|training|nnU-Net on)" "$OUT/nnunet-$data.log"
done
