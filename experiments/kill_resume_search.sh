#!/usr/bin/env bash
# SIGKILLs a ResNet-56 EKG search after step $KILL_AFTER, reruns the same
# command, and compares kept channels with an uninterrupted run's summary.
#   bash experiments/kill_resume_search.sh REFERENCE_WORKDIR [KILL_AFTER]
set -euo pipefail
reference=$1
kill_after=${2:-30}
workdir=workdirs/r56_search_killed
rm -rf "$workdir"; mkdir -p "$workdir"
cmd=(python -m ekg_jax.main --config=configs/resnet56_cifar.py
     --config.init_checkpoint=../shared/pretrained/ekg_official_resnet56_cifar10.pkl
     --config.phases=search --workdir="$workdir" --config.quiet=True)
setsid "${cmd[@]}" > "$workdir/log_killed.txt" 2>&1 &
pid=$!
steps() { python -c "import json,sys; print(len(json.load(open('$workdir/search/history.json')))-1)" 2>/dev/null || echo 0; }
while [ "$(steps)" -lt "$kill_after" ]; do sleep 1; done
kill -KILL -- -"$pid"; wait "$pid" || true
echo "killed after step $(steps)"
"${cmd[@]}" > "$workdir/log_resumed.txt" 2>&1
python - "$reference" "$workdir" <<'PY'
import json, sys
a = json.load(open(f'{sys.argv[1]}/summary.json'))['search']
b = json.load(open(f'{sys.argv[2]}/summary.json'))['search']
same = a['kept_channels'] == b['kept_channels']
print(f"uninterrupted: steps {a['steps']} flops_rate {a['flops_rate']:.4f}")
print(f"killed+resumed: steps {b['steps']} flops_rate {b['flops_rate']:.4f}")
print('kept_channels identical:', same)
sys.exit(0 if same else 1)
PY
