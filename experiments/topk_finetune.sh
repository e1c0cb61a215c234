#!/usr/bin/env bash
# One epoch of EKG fine-tuning of a finished ResNet-56 search with a top-k
# memory bank (issue 17, item 4), to compare with the dense bank's arm
# (workdirs/evidence/ekg_ft_ensemble: same search, flags and seed).
#
#   bash experiments/topk_finetune.sh SRC_WORKDIR DEST_WORKDIR K [flags]
#
# Copies SRC's search (state, warm-up, history; SRC is only read) into a
# new DEST, then builds DEST's bank with memory_bank.top_k=K and fine-tunes.
# Rerunning the same command resumes. About 20 min (bank) + 30 min (one
# epoch) on 2 quiet CPU cores.
set -euo pipefail
src=$1 dest=$2 k=$3
shift 3
if [ ! -e "$dest/summary.json" ]; then
  mkdir -p "$dest"
  cp -r "$src/search" "$src/config.json" "$dest/"
  .venv/bin/python - "$src" "$dest" <<'PY'
import json, sys
src, dest = sys.argv[1:]
with open(f'{src}/summary.json') as f:
  summary = json.load(f)
with open(f'{dest}/summary.json', 'w') as f:
  json.dump({k: v for k, v in summary.items() if k in ('search', 'weights')},
            f, indent=2)
PY
fi
TFDS_DATA_DIR=${TFDS_DATA_DIR:-../shared/tfds} .venv/bin/python -m ekg_jax.main \
  --config=configs/resnet56_cifar.py --workdir="$dest" \
  --config.init_checkpoint=../shared/pretrained/ekg_official_resnet56_cifar10.pkl \
  --config.phases=memory_bank,finetune --config.memory_bank.top_k="$k" \
  --config.finetune.knowledge=ensemble --config.finetune.epochs=1 \
  --config.quiet=True "$@"
