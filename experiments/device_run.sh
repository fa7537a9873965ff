#!/usr/bin/env bash
# One run on the GPU machine (../shared/docs/GPU.md): install the carried wheels, unpack the
# carried CIFAR-10 parts, run the given commands in order, and after each one pack what it wrote
# under results/ and runs/ into $OUT/results.tgz (the device tool brings back only a few files,
# and whatever is in $OUT comes back even when the run is cut off at its time limit).
#
#   bash experiments/device_run.sh 'python -m experiments.bench --out results/bench/h200' ...
#
# Prepare here first, from the project root (1.1 MB of wheels; CIFAR-10 in three ~45 MB xz parts):
#   ../shared/tools/device-wheels tyro docstring-parser typeguard typing-extensions shtab
#   pack the parts with the test split first (what 2026-11-29's run did, by hand with xz -6):
#   .device-data/partA = test_batch batches.meta data_batch_1, partB = data_batch_2..3, partC = 4..5.
# The working tree travels too and the cap is 64 MiB a run: the tracked tree is over 140 MB (runs/long/
# 117 MB, results/ 11 MB, agents/trained/ 9 MB on 2026-11-30), so leave those out for the GPU runs
# (12 MB left):
#   cp .git/index /tmp/index.bak && cp .gitignore /tmp/gitignore.bak
#   sed -i 's|^!/runs/long/|# !/runs/long/|' .gitignore && printf '/results/\n/agents/trained/\n' >> .gitignore
#   git rm -r -q --cached runs/long results agents/trained
# and restore right after the last run (commit nothing in between):
#   cp /tmp/index.bak .git/index && cp /tmp/gitignore.bak .gitignore
# 2026-11-30 (second GPU session): runs 1-2 (data parts) took 56 s of device time with the machine
# start; run 3 (part C, the 90-epoch ResNet-110 pretraining and its baselines) 552 s; run 4 (short
# agent run and the bench) 162 s: 770 s of the 900.
# Next, first: a ResNet-110 that never saw the validation split (the shipped one did: 99.98% there,
# so that split may not rank ResNet finetuning recipes; docs/RESULTS.md), the shipped recipe on the
# 45,000 train images, in run 3: 'timeout 560 python3 -m experiments.pretrain_resnet --depth 110
# --epochs 90 --batch-size 512 --lr 0.2 --train-split train --out runs/long/resnet110-train45k.pt'
# (the shipped one, the same flags on all 50,000: 464 s on the H200), then the agents on it (--resnet-checkpoint).
# The same run goes on on the CPU (results/pretrain/resnet110-train45k-cpu/RUN.md, 210-260 s an epoch):
# a GPU session may rather finish it, carrying its resume state and adding --resume to its own command.
# Then the ResNet-110 agent at the paper's scale (the CPU runs keep 34-45 of 54 blocks after a
# 22-epoch curriculum), continued across GPU sessions, e.g. in run 3: 'timeout 500 python3 -m
# experiments.train_blockdrop --depth 110 --stage curriculum --curriculum-epochs 2000 --curriculum-step 0.1
# --batch-size 2048 --policy-input 16 --eval-every 20 --checkpoint-every 10 --out runs/long/r110-curriculum-gpu'
# (add --resume from the second session on, carrying runs/long/r110-curriculum-gpu; time an epoch in the
# first run before choosing the counts), then joint finetuning at -10 from its best.pt with
# --finetune-forward kept --finetune-target both, as the CPU runs in docs/RESULTS.md.
# Run 1 (carry .whl and .device-data/partA) can already run the CUDA tests and the bench, with
# data_batch_1 standing in for the five train batches (throughput does not depend on the images):
#   d=/tmp/standin/cifar-10-batches-py; mkdir -p $d; for f in test_batch batches.meta data_batch_1; do
#   xz -dc .device-data/partA/$f.xz > $d/$f; done; for i in 2 3 4 5; do ln -sf data_batch_1 $d/data_batch_$i; done
#   bash experiments/device_run.sh 'python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py' \
#     'BLOCKDROP_DATA_DIR=/tmp/standin python3 -m experiments.bench --min-seconds 1 --out results/bench/h200'
# Run 2 (carry partB, command: bash experiments/device_run.sh) at once (the machine goes back 30 s
# after a run), then run 3 (carry partC) with the real work; wrap a long command in `timeout` so its
# outputs are still packed, e.g.
#   bash experiments/device_run.sh \
#     'timeout 400 python3 -m experiments.pretrain_resnet --depth 110 --epochs 60 --batch-size 512 --out runs/long/resnet110_cifar10.pt'
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
