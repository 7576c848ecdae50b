#!/usr/bin/env bash
# The demo workflow through real SLURM (one node, started here), compared with a local run.
# Covers a CPU rule (index), a grouped rule (screen, 8 shards per SLURM job) and an aggregate
# rule (dedup).  Daemons are stopped by PID whatever happens; snakemake runs under `timeout`.
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
configs=(--configfile configs/demo.yaml tests/e2e/config.yaml)

echo "== local run"
(cd "$tmp/local" && timeout -k 10 1200 "$venv/bin/snakemake" --cores 2 "${configs[@]}" -q)

echo "== SLURM run"
"$venv/bin/python" "$root/.ci/ci_profile.py" "$root/profiles/slurm" "$tmp/slurm/profiles/ci-slurm" ci
(cd "$tmp/slurm" && timeout -k 10 1500 "$venv/bin/snakemake" --profile profiles/ci-slurm "${configs[@]}") \
  >"$tmp/slurm.log" 2>&1 || { tail -n 60 "$tmp/slurm.log"; exit 1; }
grep "has been submitted with SLURM jobid" "$tmp/slurm.log"
jobs=$(sacct -X -n -S today -o JobID,JobName,State | grep -c COMPLETED || true)
echo "sacct: $jobs completed SLURM job(s)"
[ "$jobs" -ge 3 ] || { echo "expected SLURM jobs for index, screen (grouped) and dedup"; exit 1; }
grep -q "group_screen_shards" "$tmp/slurm.log" || { echo "the screen jobs were not grouped"; exit 1; }

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
