#!/usr/bin/env bash
# Debian packages CI needs beyond Python: headless Chromium (the report and atlas tests), npm (the
# atlas viewer's package) and a one-node
# SLURM with accounting (.ci/slurm-demo.sh).  Installs only what is missing.
set -euo pipefail
wanted=(chromium slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# npm vendors the atlas's viewer (make vendor); Debian's package only where no npm is on PATH
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/tmp/pixverve-apt.log 2>&1 ||
  { apt-get update -q >>/tmp/pixverve-apt.log 2>&1 && apt-get install -y -q "${missing[@]}" >>/tmp/pixverve-apt.log 2>&1; } ||
  { tail -n 30 /tmp/pixverve-apt.log; exit 1; }
