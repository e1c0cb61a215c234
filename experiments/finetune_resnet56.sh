#!/usr/bin/env bash
# Memory bank + EKG fine-tuning of the searched ResNet-56, timed. Runs in the
# workdir of experiments/search_resnet56.sh (it needs the finished search).
#   bash experiments/finetune_resnet56.sh WORKDIR [extra --config flags]
set -euo pipefail
workdir=$1; shift
start=$(date +%s)
python -m ekg_jax.main --config=configs/resnet56_cifar.py \
  --config.init_checkpoint=../shared/pretrained/ekg_official_resnet56_cifar10.pkl \
  --config.phases=memory_bank,finetune --workdir="$workdir" \
  --config.quiet=True "$@" > "$workdir/log_finetune.txt" 2>&1
echo "wall seconds: $(( $(date +%s) - start ))" | tee "$workdir/wall_finetune.txt"
