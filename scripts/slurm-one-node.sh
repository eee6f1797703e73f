#!/usr/bin/env bash
# A private one-node Slurm cluster on this machine (loopback), for trying the workbench's Slurm
# launcher and for its tests: munged, slurmctld and slurmd, all with their files in one folder.
#   sudo scripts/slurm-one-node.sh start /tmp/slurm     # prints the SLURM_CONF to export
#   export SLURM_CONF=/tmp/slurm/slurm.conf; sinfo; sbatch --wrap hostname
#   sudo scripts/slurm-one-node.sh stop /tmp/slurm
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). No accounting
# database: sacct has nothing to report (the workbench does not need it).
set -euo pipefail
cmd=${1:?usage: $0 start|stop DIR}
dir=$(realpath -m "${2:?usage: $0 start|stop DIR}")
stop() {
    for pid in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
        [[ -f $pid ]] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    sleep 1
}
if [[ $cmd == stop ]]; then stop; exit 0; fi
[[ $cmd == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install slurm-wlm munge" >&2; exit 3; }
mkdir -p "$dir/state" "$dir/spool"
# munged's socket lives in $dir: every folder above it must be traversable by everyone
d=$(dirname "$dir")
while [[ $d != / ]]; do
    [[ $(( 0$(stat -c %a "$d") & 01 )) -ne 0 ]] || {
        echo "$d is not traversable by others (munged refuses a socket below it): choose a" \
             "folder such as /tmp/slurm" >&2; exit 2; }
    d=$(dirname "$d")
done
chown munge:munge "$dir" && chmod 711 "$dir"          # munged's socket lives here
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
node=$(hostname -s)
cpus=$(nproc)
cat > "$dir/slurm.conf" <<CONF
ClusterName=workbench
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=300
KillWait=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
[[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged --key-file=/etc/munge/munge.key --socket="$dir/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
slurmctld -f "$dir/slurm.conf" -c
slurmd -f "$dir/slurm.conf"
export SLURM_CONF=$dir/slurm.conf
for _ in $(seq 60); do
    [[ $(sinfo -h -o %T 2>/dev/null) == idle ]] && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.5
done
echo "the cluster did not come up: see $dir/slurmctld.log and $dir/slurmd.log" >&2
stop
exit 1
