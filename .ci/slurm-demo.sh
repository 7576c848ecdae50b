#!/usr/bin/env bash
# The demo workflow through real SLURM (one node, started here), compared with a local run.
# Covers a CPU rule (index), a grouped rule (screen, shards bundled per SLURM job), an aggregate
# rule (dedup), and GPU rules in the GPU partition: a grouped one (verify), bench_scores and train.
# Daemons are stopped by PID whatever happens; snakemake runs under `timeout`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
tmp=$(mktemp -d /tmp/pixverve-slurm.XXXXXX)
chmod 755 "$tmp"  # munged runs as user munge and needs to reach its folder
trap '"$root/.ci/slurm-cluster.sh" stop "$tmp/cluster" || true' EXIT

"$root/.ci/slurm-cluster.sh" start "$tmp/cluster"
export SLURM_CONF="$tmp/cluster/etc/slurm.conf"

for run in local slurm; do
  mkdir -p "$tmp/$run"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$tmp/$run")
done
# .ci/gpu-asks.yaml: the GPU rules ask for GPUs (declared by the cluster, absent: the demo's
# models run on the CPU, which the "torch sees no GPU" guard allows only with this variable)
configs=(--configfile configs/demo.yaml tests/e2e/config.yaml .ci/gpu-asks.yaml)
export PIXVERVE_ALLOW_CPU_FALLBACK=1

echo "== local run"
# one thread per job (the SLURM run's profile says the same): thread counts change the floats
(cd "$tmp/local" && timeout -k 10 1500 "$venv/bin/snakemake" --cores 2 --max-threads 1 "${configs[@]}" -q)

echo "== SLURM run: snakemake --profile slurm, the profile as make slurm-profile installs it"
export XDG_CONFIG_HOME="$tmp/xdg"
make -s -C "$tmp/slurm" slurm-profile
"$venv/bin/python" "$root/.ci/ci_profile.py" "$XDG_CONFIG_HOME/snakemake/slurm" \
  "$tmp/slurm/profiles/default" "$tmp/slurm/profiles/ci-default"
(cd "$tmp/slurm" && timeout -k 10 2000 "$venv/bin/snakemake" --profile slurm \
  --workflow-profile profiles/ci-default "${configs[@]}") \
  >"$tmp/slurm.log" 2>&1 || { tail -n 60 "$tmp/slurm.log"; exit 1; }
grep "has been submitted with SLURM jobid" "$tmp/slurm.log"
jobs=$(sacct -X -n -S today -o JobID,JobName,State | grep -c COMPLETED || true)
echo "sacct: $jobs completed SLURM job(s)"
[ "$jobs" -ge 3 ] || { echo "expected SLURM jobs for index, screen (grouped) and dedup"; exit 1; }
grep -q "group_screen_shards" "$tmp/slurm.log" || { echo "the screen jobs were not grouped"; exit 1; }
# where each job ran and what it held: GPU rules in partition gpu with GPUs, CPU rules in cpu
status=0
check() {  # check LOGNAME PARTITION GPU(yes|no): every SLURM job of that rule/group
  local n=0
  while read -r id; do
    n=$((n + 1))
    part=$(sacct -X -n -P -j "$id" -o Partition | head -n 1)
    tres=$(sacct -X -n -P -j "$id" -o AllocTRES | head -n 1)  # gres/gpu=N: AccountingStorageTRES
    if [ "$part" != "$2" ] || { [ "$3" = yes ] && [[ "$tres" != *gres/gpu* ]]; } ||
      { [ "$3" = no ] && [[ "$tres" == *gres/gpu* ]]; }; then
      echo "WRONG PLACE: $1 job $id in partition $part holding $tres (expected $2, GPU $3)"; status=1
    fi
  done < <(sed -n "s|.*SLURM jobid \([0-9]*\) (log: .*/$1[^/]*/.*|\1|p" "$tmp/slurm.log")
  [ "$n" -gt 0 ] || { echo "no SLURM job for $1"; status=1; }
  echo "$1: $n job(s) in partition $2 (GPU $3)"
}
# Members of one group job run side by side, each its own job step (pixverve/snakemake_fixes.py):
# the most steps of any of its SLURM jobs that ran at once, per sacct; GPU steps each with a card
most_at_once() {  # most_at_once LOGNAME cpu|gpu
  local most=0 n
  while read -r id; do
    n=$(sacct -n -P -j "$id" -o JobID,Start,End,AllocTRES | "$venv/bin/python" -c '
import sys
from datetime import datetime
edges = []
for line in sys.stdin:
    step, start, end, tres = line.rstrip("\n").split("|")
    head, _, tail = step.partition(".")
    if not tail.isdigit() or (sys.argv[1] == "gpu" and "gres/gpu=1" not in tres):
        continue  # the batch and extern steps are not members
    edges += [(datetime.fromisoformat(start), 1), (datetime.fromisoformat(end), -1)]
now = most = 0
for _, delta in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same second
    now += delta
    most = max(most, now)
print(most)' "$2")
    [ "$n" -gt "$most" ] && most=$n
  done < <(sed -n "s|.*SLURM jobid \([0-9]*\) (log: .*/$1[^/]*/.*|\1|p" "$tmp/slurm.log")
  echo "$1: at most $most $2 member step(s) at once"
  [ "$most" -ge 2 ] || { echo "the members of $1 did not run side by side"; status=1; }
}
most_at_once group_screen_shards cpu
most_at_once group_verify_shards gpu
check rule_index cpu no
check rule_dedup cpu no
check group_screen_shards cpu no
check group_verify_shards gpu yes
check rule_bench_scores gpu yes
check rule_train gpu yes
[ "$status" -eq 0 ] || exit 1

echo "== compare tables"
cd "$tmp/local"
status=0
while IFS= read -r f; do
  if ! cmp -s "$f" "$tmp/slurm/$f"; then echo "DIFFERS: $f"; status=1; fi
done < <(find results \( -name '*.parquet' -o -name '*.csv' \) ! -name train_log.csv | sort)
n=$(find results \( -name '*.parquet' -o -name '*.csv' \) ! -name train_log.csv | wc -l)
# training logs hold throughput and peak memory (machine-dependent); the weights are compared
while IFS= read -r f; do
  if ! cmp -s "$f" "$tmp/slurm/$f"; then echo "DIFFERS: $f"; status=1; fi
done < <(find results/train -path '*/final/*.safetensors' | sort)
w=$(find results/train -path '*/final/*.safetensors' | wc -l)
[ "$w" -ge 5 ] || { echo "expected the demo's trained checkpoints, found $w weight files"; status=1; }
[ "$status" -eq 0 ] && echo "all $n tables and $w checkpoint files of the SLURM run equal the local run's"
exit $status
