#!/usr/bin/env bash
# A real one-node SLURM cluster for CI, with accounting (slurmdbd on MariaDB) so that the
# Snakemake SLURM plugin's default job-status polling (sacct) is what gets tested.
#
#   .ci/slurm-cluster.sh start DIR   install what is missing, write configs under DIR, start daemons
#   .ci/slurm-cluster.sh stop DIR    stop every daemon started by `start`, by PID
#
# Everything lives under DIR (configs, state, spool, logs, pid files, the database); nothing
# under /etc is changed except what the Debian packages install.  Needs root (as CI has).
set -euo pipefail

cmd=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm-cluster.sh start|stop DIR}")
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

stop() {
  # reverse start order; each daemon by the PID it wrote, then wait until it is gone
  for name in slurmd slurmctld slurmdbd mariadb munge/munged; do
    pidfile="$dir/run/$name.pid"
    [ "$name" = munge/munged ] && pidfile="$dir/munge/munged.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  [ "$(readlink /run/mysqld/mysqld.sock 2>/dev/null)" = "$dir/run/mysqld.sock" ] && rm -f /run/mysqld/mysqld.sock
  # undo the config links made by `start` (only those pointing into DIR)
  for f in slurm.conf slurmdbd.conf gres.conf; do
    if [ "$(readlink "/etc/slurm/$f" 2>/dev/null)" = "$dir/etc/$f" ]; then
      rm -f "/etc/slurm/$f"
      [ -e "/etc/slurm/$f.before-ci" ] && mv "/etc/slurm/$f.before-ci" "/etc/slurm/$f"
    fi
  done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2
  shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "slurm-cluster: timed out after ${secs}s waiting for $what" >&2
  for f in "$dir"/log/*; do echo "--- $f" >&2; tail -n 20 "$f" >&2 || true; done
  return 1
}

start() {
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "slurm-cluster: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$dir.apt.log" 2>&1 ||
      { (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}") >>"$dir.apt.log" 2>&1; }
  fi
  mkdir -p "$dir"/{etc,run,log,state,spool,db}
  host=$(hostname -s)
  # the node's real CPUs and memory: a larger RealMemory would drain the node
  gpus=${CI_GPUS:-2}  # declared, not present: see gres.conf below
  read -r cpus mem < <(slurmd -C | awk '/NodeName/ {for (i=1;i<=NF;i++) {split($i,a,"="); if (a[1]=="CPUs") c=a[2]; if (a[1]=="RealMemory") m=a[2]}; print c, m}')

  # munge: its key and socket
  mkdir -p /run/munge /etc/munge
  chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p "$dir/munge"
  chown munge:munge "$dir/munge"
  chmod 755 "$dir"
  runuser -u munge -- test -w "$dir/munge" ||
    { echo "slurm-cluster: user munge cannot write $dir/munge (make its parents world-executable)" >&2; return 1; }
  runuser -u munge -- /usr/sbin/munged --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --force
  wait_for 10 munge munge -n

  # MariaDB on a unix socket only, data under DIR
  mariadb-install-db --no-defaults --datadir="$dir/db" --user=root --auth-root-authentication-method=normal >"$dir/log/mariadb-install.log" 2>&1
  /usr/sbin/mariadbd --no-defaults --user=root --datadir="$dir/db" --socket="$dir/run/mysqld.sock" \
    --skip-networking --pid-file="$dir/run/mariadb.pid" --log-error="$dir/log/mariadb.log" &
  wait_for 30 mariadb mariadb --no-defaults --socket="$dir/run/mysqld.sock" -uroot -e "select 1"
  mariadb --no-defaults --socket="$dir/run/mysqld.sock" -uroot -e \
    "create database if not exists slurm_acct_db; create user if not exists 'slurm'@'localhost' identified by 'ci'; grant all on slurm_acct_db.* to 'slurm'@'localhost';"

  cat >"$dir/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
DebugLevel=info
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=ci
StoragePort=0
EOF
  # slurmdbd reaches MariaDB through the default socket path
  mkdir -p /run/mysqld
  ln -sf "$dir/run/mysqld.sock" /run/mysqld/mysqld.sock
  chmod 600 "$dir/etc/slurmdbd.conf"

  cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
EnforcePartLimits=ALL
MinJobAge=600
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
  # GPUs as a generic resource, no detection: SLURM schedules and hands them to job steps like
  # real ones (SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES); the jobs' code runs on the CPU.  SLURM
  # 22.05 counts a gpu without File= as 0 (node INVALID: "gres/gpu count reported lower than
  # configured"), so each GPU is a null character device named like a GPU's (a regular file
  # also counts, with an error in slurmd's log, where mknod is not allowed).
  mkdir -p "$dir/dev"
  for i in $(seq 0 $((gpus - 1))); do
    mknod "$dir/dev/nvidia$i" c 1 3 2>/dev/null || touch "$dir/dev/nvidia$i"
  done
  cat >"$dir/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu File=$dir/dev/nvidia[0-$((gpus - 1))]
EOF
  # The Snakemake SLURM plugin unsets every SLURM_* variable (SLURM_CONF included) before it
  # submits, so jobs find the config only at the default path, as on a real cluster: link it.
  mkdir -p /etc/slurm
  for f in slurm.conf slurmdbd.conf gres.conf; do
    if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then mv "/etc/slurm/$f" "/etc/slurm/$f.before-ci"; fi
    ln -sfn "$dir/etc/$f" "/etc/slurm/$f"
  done
  export SLURM_CONF="$dir/etc/slurm.conf"
  /usr/sbin/slurmdbd
  wait_for 30 slurmdbd sacctmgr -i list cluster
  sacctmgr -i add cluster ci >/dev/null 2>&1 || true
  sacctmgr -i add account ci Cluster=ci Description=ci Organization=ci >/dev/null 2>&1 || true
  sacctmgr -i add user root Account=ci Cluster=ci >/dev/null 2>&1 || true
  /usr/sbin/slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
  /usr/sbin/slurmd -f "$SLURM_CONF"
  wait_for 30 "node $host idle" bash -c "sinfo -h -N -o '%T' | grep -q idle"
  echo "slurm-cluster: up (SLURM_CONF=$SLURM_CONF, $cpus CPUs, $mem MB, partitions cpu + gpu, gres gpu:$gpus)"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
