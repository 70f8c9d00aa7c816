#!/usr/bin/env bash
# A one-node Slurm on this machine, for `make test-slurm` (tests marked `slurm`): slurmctld + slurmd on
# localhost, munge for authentication, one node with this machine's CPUs, one partition. Debian/Ubuntu, as root.
#
#   tools/slurm-local.sh install   # apt-get install slurm-wlm munge (once)
#   tools/slurm-local.sh start     # write /etc/slurm/slurm.conf (only one this script wrote), start the daemons
#   tools/slurm-local.sh status    # sinfo
#   tools/slurm-local.sh stop      # stop the daemons this script started
#
# What works with Debian's slurm-wlm 22.05 as root in a container: ProctrackType=proctrack/linuxproc,
# TaskPlugin=task/none, SelectType=select/cons_tres and no cgroup.conf (with CgroupPlugin=disabled slurmd refuses
# to start). State and logs go to $SLURM_LOCAL_DIR (default /var/lib/refconv-slurm).
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/var/lib/refconv-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by refconv tools/slurm-local.sh"
HOST=$(hostname -s)

die() { echo "slurm-local: $*" >&2; exit 1; }

install() {
    command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu); install slurm-wlm and munge yourself."
    [ "$(id -u)" = 0 ] || die "run as root (apt-get, the daemons)."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; }
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -q "^$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: refusing to replace a real Slurm configuration."
    fi
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
    cat > "$CONF" <<CONFEOF
$MARK
ClusterName=refconv-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=600
KillWait=10
SchedulerParameters=defer_batch
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONFEOF
}

start() {
    command -v slurmctld >/dev/null || die "slurm-wlm is not installed: tools/slurm-local.sh install"
    [ "$(id -u)" = 0 ] || die "run as root (the daemons)."
    write_conf
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
    fi
    [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null || /usr/sbin/slurmctld -c
    [ -f "$STATE/slurmd.pid" ] && kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null || /usr/sbin/slurmd -c
    for _ in $(seq 60); do
        if sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
            sinfo
            return 0
        fi
        sleep 1
    done
    sinfo || true
    tail -5 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    die "the node did not become idle in 60 s (logs above, in $STATE)."
}

stop() {
    for d in slurmd slurmctld; do
        if [ -f "$STATE/$d.pid" ]; then
            kill "$(cat "$STATE/$d.pid")" 2>/dev/null || true
            rm -f "$STATE/$d.pid"
        fi
    done
    echo "slurm-local: stopped (munged keeps running; state and logs in $STATE)"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) sinfo; squeue ;;
    *) die "usage: $0 install|start|stop|status" ;;
esac
