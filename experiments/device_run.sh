#!/usr/bin/env bash
# One run on the GPU machine (../shared/docs/GPU.md): install the carried wheels, unpack the
# carried CIFAR-10 parts, run the given commands in order, and after each one pack what it wrote
# under results/ and runs/ into $OUT/results.tgz (the device tool brings back only a few files,
# and whatever is in $OUT comes back even when the run is cut off at its time limit).
#
#   bash experiments/device_run.sh 'python -m experiments.bench --out results/bench/h200' ...
#
# Prepare here first, from the project root (1.1 MB of wheels; CIFAR-10 in three ~45 MB parts):
#   ../shared/tools/device-wheels tyro docstring-parser typeguard typing-extensions
#   ../shared/tools/device-data-pack
# then send .device-data/part1 with .whl (the wheels stay installed in /tmp/site while the machine
# is warm) in a first run that can already run the CUDA tests (synthetic data):
#   bash experiments/device_run.sh 'python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py'
# part2 in a short second run (command: bash experiments/device_run.sh), and part3 in the run that
# does the work, e.g.
#   bash experiments/device_run.sh \
#     'python3 -m experiments.pretrain_resnet --epochs 60 --batch-size 256 --lr 0.2 --out runs/pretrain/resnet32_cifar10_h200.pt' \
#     'python3 -m experiments.bench --checkpoint runs/pretrain/resnet32_cifar10_h200.pt --compile default --out results/bench/h200'
# Unpack what comes back here with: tar xzf results.tgz
set -euo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT" /tmp/dd
export PYTHONUNBUFFERED=1
log="$OUT/log.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# Installed by this run or an earlier one on the same (warm) machine: later runs need not carry .whl.
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PWD"; fi

# CIFAR-10 arrives in three xz parts over three runs; /tmp survives while the machine is warm.
if compgen -G ".device-data/part*/*.xz" >/dev/null; then
  cp .device-data/part*/*.xz /tmp/dd/
fi
data=/tmp/cifar/cifar-10-batches-py
if [ "$(ls /tmp/dd/*.xz 2>/dev/null | wc -l)" -eq 7 ] && [ ! -f "$data/test_batch" ]; then
  mkdir -p "$data"
  for f in /tmp/dd/*.xz; do xz -dc "$f" >"$data/$(basename "$f" .xz)"; done
fi
echo "CIFAR-10 parts here: $(ls /tmp/dd 2>/dev/null | wc -l) of 7; unpacked: $(ls "$data" 2>/dev/null | wc -l) files" | tee -a "$log"
[ -f "$data/test_batch" ] && export BLOCKDROP_DATA_DIR=/tmp/cifar

pack() {
  local paths=()
  for p in results runs; do if [ -d "$p" ]; then paths+=("$p"); fi; done
  [ ${#paths[@]} -gt 0 ] || return 0
  # Everything the commands wrote (results/ is tracked: only files newer than the start).
  find "${paths[@]}" -type f -newer /tmp/device-run.start -print0 2>/dev/null | tar czf "$OUT/results.tgz.tmp" --null -T - \
    && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
}
touch /tmp/device-run.start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$log" || true
status=0
for cmd in "$@"; do
  echo "=== $(date -u +%FT%TZ) $cmd" | tee -a "$log"
  start=$(date +%s)
  if bash -c "$cmd" 2>&1 | tee -a "$log"; then :; else status=1; echo "=== failed: $cmd" | tee -a "$log"; fi
  echo "=== took $(($(date +%s) - start)) s" | tee -a "$log"
  pack
done
exit $status
