#!/usr/bin/env bash
# The ResNet-56 / CIFAR-10 EKG search from the official checkpoint, timed.
#   bash experiments/search_resnet56.sh WORKDIR [extra --config flags]
set -euo pipefail
workdir=$1; shift
mkdir -p "$workdir"
start=$(date +%s)
python -m ekg_jax.main --config=configs/resnet56_cifar.py \
  --config.init_checkpoint=../shared/pretrained/ekg_official_resnet56_cifar10.pkl \
  --config.phases=search --workdir="$workdir" --config.quiet=True "$@" \
  > "$workdir/log.txt" 2>&1
echo "wall seconds: $(( $(date +%s) - start ))" | tee "$workdir/wall.txt"
