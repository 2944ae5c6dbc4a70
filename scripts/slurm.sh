#!/usr/bin/env bash
# slurm.sh - the project's own test cluster: Slurm on one host, as root, without systemd.
#
# Why it exists: the Slurm executor's tests (crates/cli/tests/slurm*.rs), its bench and
# scripts/setup.sh need a real cluster, and a fresh clone of caas must bring one up by itself.
# It installs Debian 12's slurm-wlm (22.05) and munge, writes /etc/slurm/slurm.conf, starts
# munged, slurmctld and several slurmd "nodes" on this host (ports 6818..), optionally MariaDB +
# slurmdbd (accounting, so `sacct` works), and the node engines caas runs tasks with:
#   podman           rootful Podman (Docker-compatible API) with ulimits it may set here
#   podman-rootless  Podman run by an ordinary user: uidmap (newuidmap) and subuid/subgid ranges
#   charliecloud     Debian's charliecloud (ch-run, ch-convert): unprivileged user namespaces
# and an ordinary user (CAAS_LAB_USER, default caaslab: no sudo, not in the docker group) that the
# tests run the manager and the node agent as, the way a lab runs on a university cluster.
#
# Idempotent and gentle with a running cluster: a daemon that runs is reused, never restarted,
# and slurm.conf is rewritten only when its settings (not its comments) differ. A difference in
# settings Slurm re-reads is applied with `scontrol reconfigure` (jobs keep running); only a
# different node set, port, auth or plugin type restarts the Slurm daemons (not munge, not the
# database). A second run with nothing to do takes well under a second; from nothing ~45 s.
#
# Usage:
#   slurm.sh [start]   install if needed, configure, start, wait until every node is idle
#   slurm.sh stop      stop the daemons it starts (by pid file; Docker is left alone)
#   slurm.sh status    what runs, and sinfo
#
# Environment knobs (defaults are what the caas tests use):
#   SLURM_NODES=3             slurmd "nodes" on this host (first is named after the host, then node2..)
#   SLURM_CPUS=$(nproc)       CPUs declared per node (may exceed the real count: config_overrides)
#   SLURM_PROCTRACK=pgid      pgid or linuxproc
#   SLURM_ACCOUNTING=1        1 = MariaDB + slurmdbd
#   SLURM_RESET=0             1 = wipe controller state (job ids restart, drained nodes forgotten)
#   SLURM_ENGINES="podman podman-rootless charliecloud"   node engines to install ("" = none)
#   SLURM_WITH_PODMAN=        0 drops the Podman engines from SLURM_ENGINES (older knob)
#   CAAS_LAB_USER=caaslab     the unprivileged user (created when missing, with subuid/subgid)
#   SLURM_TEST_GPUS=2         stand-in GPUs: a `gpu` GRES of this many per node on every node but
#                             the last, backed by device files made for the test
#                             (/dev/caas-test-gpu0.., character devices like /dev/null, gres.conf
#                             File=) and described for Podman by /etc/cdi/caas-test-gpu.yaml as
#                             nvidia.com/gpu=0..; the last node has none and is also partition
#                             `cpu` (a cluster with no GPU). 0 = no GRES. No real GPU is involved.
set -euo pipefail

ACTION=${1:-start}
NODES=${SLURM_NODES:-3}
CPUS=${SLURM_CPUS:-$(nproc)}
PROCTRACK=${SLURM_PROCTRACK:-pgid}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
RESET=${SLURM_RESET:-0}
ENGINES=${SLURM_ENGINES-podman podman-rootless charliecloud}
if [ "${SLURM_WITH_PODMAN:-}" = 0 ]; then ENGINES=$(echo "$ENGINES" | tr ' ' '\n' | grep -v '^podman' | paste -sd' ' || true); fi
LAB_USER=${CAAS_LAB_USER:-caaslab}
TEST_GPUS=${SLURM_TEST_GPUS:-2}
HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
T_START=$(date +%s.%N)

log() { printf '[caas slurm %6.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T_START" 'BEGIN{print a-b}')" "$*"; }
has_engine() { case " $ENGINES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

alive() { [ -d "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

# is_running PIDFILE COMM -> 0 when the pid in PIDFILE is alive (not a zombie) and is COMM
is_running() {
  local pidfile=$1 comm=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  alive "$pid" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# stop_pidfiles COMM PIDFILE... : SIGTERM all at once, wait up to 10 s, then SIGKILL
stop_pidfiles() {
  local comm=$1 f pid any; shift
  local pids=()
  for f in "$@"; do
    if [ -e "$f" ] && is_running "$f" "$comm"; then pid=$(cat "$f"); kill "$pid"; pids+=("$pid"); echo "stopping $comm ($pid)"; fi
    rm -f "$f"
  done
  for _ in $(seq 1 100); do
    any=0; for pid in "${pids[@]}"; do if alive "$pid"; then any=1; fi; done
    [ "$any" = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do if alive "$pid"; then kill -9 "$pid"; fi; done
}

node_names() { echo "$HOST"; for i in $(seq 2 "$NODES"); do echo "node$i"; done; }
slurmd_pidfile() { if [ "$NODES" -gt 1 ]; then echo "/run/slurmd-$1.pid"; else echo /run/slurmd.pid; fi; }

do_stop() {
  stop_pidfiles slurmd /run/slurmd.pid /run/slurmd-*.pid
  stop_pidfiles slurmctld /run/slurmctld.pid
  stop_pidfiles slurmdbd /run/slurmdbd.pid
  stop_pidfiles mariadbd /run/mysqld/mysqld.pid
  stop_pidfiles munged /run/munge/munged.pid
}

do_status() {
  local f p c
  for f in /run/munge/munged.pid:munged /run/slurmctld.pid:slurmctld /run/slurmdbd.pid:slurmdbd \
           /run/mysqld/mysqld.pid:mariadbd $(ls /run/slurmd.pid /run/slurmd-*.pid 2>/dev/null | sed 's/$/:slurmd/'); do
    p=${f%%:*}; c=${f##*:}
    [ -e "$p" ] || continue
    if is_running "$p" "$c"; then echo "$c running (pid $(cat "$p"), $p)"; else echo "$c NOT running (stale $p)"; fi
  done
  sinfo -N -l 2>/dev/null || true
}

case "$ACTION" in
  stop) do_stop; exit 0 ;;
  status) do_status; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "scripts/slurm.sh must run as root (it installs packages and starts daemons)" >&2; exit 1; }

# ---------------------------------------------------------------- 1. packages
PKGS=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
has_engine podman && PKGS+=(podman catatonit)
has_engine podman-rootless && PKGS+=(podman catatonit uidmap slirp4netns)
has_engine charliecloud && PKGS+=(charliecloud squashfs-tools)
missing=()
for p in $(printf '%s\n' "${PKGS[@]}" | sort -u); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # no systemd here; Debian's policy-rc.d may forbid starting services (we start them ourselves)
  apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/caas-slurm-apt.log 2>&1 || {
    apt-get update >/dev/null 2>&1
    apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/caas-slurm-apt.log 2>&1 || {
      tail -20 /tmp/caas-slurm-apt.log >&2; exit 1; }
  }
fi
log "packages ok ($(slurmd -V))"

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
if ! is_running /run/munge/munged.pid munged; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged      # forks into the background, writes its pid file
fi
for _ in $(seq 1 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null || { echo "munge does not work" >&2; exit 1; }

# ---------------------------------------------------------------- 3. accounting (MariaDB + slurmdbd)
install -d -m 0755 /etc/slurm
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld $LOGDIR
if [ "$ACCOUNTING" = 1 ]; then
  install -d -o mysql -g root -m 0755 /run/mysqld
  if ! is_running /run/mysqld/mysqld.pid mariadbd; then
    log "starting mariadbd"
    # setsid + no inherited stdio: not a job of this script, no CI output pipe held open
    ( setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock </dev/null >/var/log/mariadbd-slurm.log 2>&1 & )
  fi
  for _ in $(seq 1 100); do mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 && break; sleep 0.1; done
  mysql --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  DBDCONF="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6809
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw"
  if [ ! -f /etc/slurm/slurmdbd.conf ] || [ "$(cat /etc/slurm/slurmdbd.conf)" != "$DBDCONF" ]; then
    printf '%s\n' "$DBDCONF" >/etc/slurm/slurmdbd.conf
  fi
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  if ! is_running /run/slurmdbd.pid slurmdbd; then log "starting slurmdbd"; slurmdbd; fi
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6809
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

# ---------------------------------------------------------------- 4. slurm.conf
MEM=4000
if [ "$NODES" -gt 1 ]; then
  SPOOL="/var/spool/slurmd/%n"; DPID="/run/slurmd-%n.pid"; DLOG="$LOGDIR/slurmd-%n.log"
else
  SPOOL="/var/spool/slurmd"; DPID="/run/slurmd.pid"; DLOG="$LOGDIR/slurmd.log"
fi
# Stand-in GPUs (SLURM_TEST_GPUS): every node but the last (which has none) declares a `gpu`
# GRES backed by device files made here; Podman gets a CDI specification for the same files.
GPU_NODES=""; GRES_LINES=""; LAST_NODE=$(node_names | tail -1)
if [ "$TEST_GPUS" -gt 0 ] && [ "$NODES" -gt 1 ]; then
  GPU_NODES=$(node_names | sed -n "1,$((NODES - 1))p" | paste -sd,)
  CDI="cdiVersion: \"0.5.0\"
kind: nvidia.com/gpu
devices:"
  for g in $(seq 0 $((TEST_GPUS - 1))); do
    # character devices like /dev/null (1,3): harmless, and a container can be given them
    [ -c "/dev/caas-test-gpu$g" ] || { rm -f "/dev/caas-test-gpu$g"; mknod -m 0666 "/dev/caas-test-gpu$g" c 1 3; }
    CDI+="
  - name: \"$g\"
    containerEdits:
      deviceNodes:
        - path: /dev/caas-test-gpu$g"
  done
  GRES_LINES="NodeName=$GPU_NODES Name=gpu File=/dev/caas-test-gpu[0-$((TEST_GPUS - 1))]"
  if has_engine podman || has_engine podman-rootless; then
    install -d -m 0755 /etc/cdi
    if [ ! -f /etc/cdi/caas-test-gpu.yaml ] || [ "$(cat /etc/cdi/caas-test-gpu.yaml)" != "$CDI" ]; then
      printf '%s\n' "$CDI" >/etc/cdi/caas-test-gpu.yaml
    fi
  fi
fi
NEWGRES="# generated by slurm.sh: stand-in GPUs (device files made for the tests, no real GPU)
$GRES_LINES"
NODE_LINES=""; i=0
for n in $(node_names); do
  gres=""
  case ",$GPU_NODES," in *",$n,"*) gres=" Gres=gpu:$TEST_GPUS" ;; esac
  NODE_LINES+="NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((6818 + i)) CPUs=$CPUS RealMemory=$MEM$gres State=UNKNOWN"$'\n'
  i=$((i + 1))
done
GPU_CONF=""; CPU_PARTITION=""
if [ -n "$GPU_NODES" ]; then
  GPU_CONF="GresTypes=gpu"
  CPU_PARTITION="PartitionName=cpu Nodes=$LAST_NODE Default=NO MaxTime=INFINITE State=UP"
fi
# The first line stays "# generated by setup.sh": an older copy of this script (the team's
# shared one) compares the whole file and restarts Slurm when it differs.
NEWCONF=$(cat <<EOF
# generated by setup.sh
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=$DPID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$DLOG
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
KillWait=30
Waittime=0
$GPU_CONF
${NODE_LINES}PartitionName=debug Nodes=$(node_names | paste -sd,) Default=YES MaxTime=INFINITE State=UP
$CPU_PARTITION
EOF
)
install -d -m 0755 /var/spool/slurmd
if [ "$NODES" -gt 1 ]; then for n in $(node_names); do install -d -m 0755 "/var/spool/slurmd/$n"; done; fi
touch $LOGDIR/jobcomp.log; chown slurm:slurm $LOGDIR/jobcomp.log

settings() { grep -v '^[[:space:]]*#' | grep -v '^[[:space:]]*$' | sort; }
# Keys whose change needs the daemons restarted (node set, addresses, plugins); others reconfigure.
STRUCTURAL='^(GresTypes|NodeName|PartitionName|ClusterName|SlurmctldHost|Slurm(ctld|d)?Port|SlurmdPort|SlurmUser|SlurmdUser|AuthType|CredType|.*PidFile|SlurmdSpoolDir|StateSaveLocation|ProctrackType|TaskPlugin|SelectType|SwitchType|MpiDefault|AccountingStorage|JobAcctGatherType)'
RESTART=0
RECONFIGURE=0
if [ ! -f $CONF ]; then
  printf '%s\n' "$NEWCONF" >$CONF; log "wrote $CONF"
elif [ "$(settings <$CONF)" != "$(printf '%s\n' "$NEWCONF" | settings)" ]; then
  # (diff exits 1 when the files differ: not a failure under pipefail)
  changed=$({ diff <(settings <$CONF) <(printf '%s\n' "$NEWCONF" | settings) || true; } | sed -n 's/^[<>] //p' | sort -u)
  printf '%s\n' "$NEWCONF" >$CONF
  if printf '%s\n' "$changed" | grep -Eq "$STRUCTURAL"; then
    RESTART=1; log "wrote $CONF (node set or plugins changed: restarting the Slurm daemons)"
  else
    RECONFIGURE=1; log "wrote $CONF (settings changed: scontrol reconfigure)"
  fi
fi
# gres.conf: read by slurmd at start, so a change restarts the daemons like a node change.
if [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$NEWGRES" ]; then
  printf '%s\n' "$NEWGRES" >/etc/slurm/gres.conf
  if [ -f /run/slurmctld.pid ] && [ "$RESTART" = 0 ]; then RESTART=1; RECONFIGURE=0; log "wrote /etc/slurm/gres.conf: restarting the Slurm daemons"; fi
fi
if [ "$RESTART" = 1 ] || [ "$RESET" = 1 ]; then
  stop_pidfiles slurmd /run/slurmd.pid /run/slurmd-*.pid & p1=$!
  stop_pidfiles slurmctld /run/slurmctld.pid & p2=$!
  wait "$p1" "$p2"      # (a bare `wait` would also wait for a mariadbd this script started)
fi
if [ "$RESET" = 1 ]; then rm -rf /var/spool/slurmctld/*; log "controller state wiped"; fi

if [ "$ACCOUNTING" = 1 ]; then
  for _ in $(seq 1 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
  sacctmgr -n list cluster format=cluster | grep -qw ci || sacctmgr -i add cluster ci >/dev/null
fi

# ---------------------------------------------------------------- 5. daemons
if ! is_running /run/slurmctld.pid slurmctld; then log "starting slurmctld"; slurmctld
elif [ "$RECONFIGURE" = 1 ]; then scontrol reconfigure; fi
for n in $(node_names); do
  if ! is_running "$(slurmd_pidfile "$n")" slurmd; then
    log "starting slurmd for node $n"
    if [ "$NODES" -gt 1 ]; then slurmd -N "$n"; else slurmd; fi
  fi
done

# ---------------------------------------------------------------- 6. wait until every node is usable
want=$(node_names | wc -l); idle=0
for i in $(seq 1 300); do
  idle=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)/' | sort -u | wc -l || true)
  [ "$idle" -ge "$want" ] && break
  # nodes remembered as drained/down from an earlier config or a test that set them down
  if [ $((i % 20)) = 0 ]; then
    for n in $(sinfo -h -N -t drain,drained,down,inval -o %N 2>/dev/null | sort -u); do
      scontrol update nodename="$n" state=resume 2>/dev/null || true
    done
  fi
  sleep 0.1
done
[ "$idle" -ge "$want" ] || { sinfo -N -l >&2; echo "nodes not ready, see $LOGDIR" >&2; exit 1; }

# ---------------------------------------------------------------- 7. node engines
if has_engine podman; then
  # Root Podman asks for nofile=1048576/nproc=4194304 in the container; without CAP_SYS_RESOURCE
  # runc fails with "error setting rlimit type 7". Pin them to what may be set here.
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  if [ "$nofile" = unlimited ]; then nofile=1048576; fi
  want_conf="[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  install -d /etc/containers
  if [ ! -f /etc/containers/containers.conf ] || [ "$(cat /etc/containers/containers.conf)" != "$want_conf" ]; then
    printf '%s\n' "$want_conf" >/etc/containers/containers.conf
  fi
fi

if has_engine podman-rootless || has_engine charliecloud; then
  # an ordinary user: own group, a home, no sudo, in no group that reaches an engine's socket
  if ! id -u "$LAB_USER" >/dev/null 2>&1; then
    log "creating the unprivileged user $LAB_USER"
    useradd --create-home --shell /bin/bash --user-group "$LAB_USER"
  fi
  for g in docker sudo podman; do
    if id -nG "$LAB_USER" | tr ' ' '\n' | grep -qx "$g"; then gpasswd -d "$LAB_USER" "$g" >/dev/null; fi
  done
  # unprivileged user namespaces (Charliecloud and rootless Podman both need them)
  if [ -f /proc/sys/kernel/unprivileged_userns_clone ] && [ "$(cat /proc/sys/kernel/unprivileged_userns_clone)" != 1 ]; then
    sysctl -qw kernel.unprivileged_userns_clone=1
  fi
  if [ "$(cat /proc/sys/user/max_user_namespaces)" -lt 1000 ]; then sysctl -qw user.max_user_namespaces=15000; fi
fi

if has_engine podman-rootless; then
  # 65,536 subordinate ids per user: the range a rootless image's uids 1.. map to
  uid=$(id -u "$LAB_USER")
  grep -q "^$LAB_USER:" /etc/subuid 2>/dev/null || usermod --add-subuids "$((100000 + uid * 65536))-$((100000 + uid * 65536 + 65535))" "$LAB_USER"
  grep -q "^$LAB_USER:" /etc/subgid 2>/dev/null || usermod --add-subgids "$((100000 + uid * 65536))-$((100000 + uid * 65536 + 65535))" "$LAB_USER"
fi

if has_engine podman-rootless || has_engine charliecloud; then
  # a quick check, as the lab user, that each unprivileged engine can make its namespaces
  if has_engine charliecloud; then
    runuser -u "$LAB_USER" -- ch-checkns >/tmp/caas-slurm-checkns.log 2>&1 \
      || { cat /tmp/caas-slurm-checkns.log >&2; echo "Charliecloud cannot run as $LAB_USER" >&2; exit 1; }
  fi
  if has_engine podman-rootless; then
    runuser -u "$LAB_USER" -- unshare --map-root-user true \
      || { echo "no unprivileged user namespaces for $LAB_USER" >&2; exit 1; }
  fi
fi
log "slurm ready: $want node(s), $CPUS CPU(s) each, engines: ${ENGINES:-none}, lab user: $LAB_USER"

# ---------------------------------------------------------------------------------------------------
# Facts the caas Slurm executor relies on (measured on this kind of machine):
# - sbatch -> job start ~0.6-0.9 s with batch_sched_delay=0 (the default delay makes it ~3 s).
# - scancel or a time limit does NOT stop a Docker or rootful Podman container started by a batch
#   script (it belongs to containerd-shim / conmon, not to the job): the node agent traps
#   SIGTERM/SIGINT/USR1 and stops its container itself; KillWait (30 s) exceeds its stop grace.
# - Exit codes propagate: a batch script exiting 3 gives JobState=FAILED, ExitCode=3:0.
