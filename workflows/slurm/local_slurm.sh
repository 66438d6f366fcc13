#!/usr/bin/env bash
# A single-node SLURM (slurmctld + slurmd + slurmdbd with MariaDB accounting, munge authentication) on this
# machine, for the tests of workflows/ (tests/test_slurm.py) and for trying the templates without a cluster.
#
#   workflows/slurm/local_slurm.sh install   # apt-get install slurm-wlm slurmdbd munge mariadb-server (as root)
#   workflows/slurm/local_slurm.sh start     # write the configs, start the daemons, wait until the node is idle
#   workflows/slurm/local_slurm.sh status    # the daemons, sinfo
#   workflows/slurm/local_slurm.sh stop      # stop exactly the daemons that `start` started
#
# Debian/Ubuntu, as root, no systemd needed: every daemon runs in the foreground (-D/-F) in its own session,
# its PID (and start time, so a reused PID is never mistaken for it) recorded in $STATE/pids/. Everything the
# cluster writes lives in the state directory: configs (etc/), logs (log/), MariaDB data (mysql/), controller
# state (ctld/), slurmd spool (spool/). Only the munge key (/etc/munge/munge.key, created if missing) and
# /run/munge are shared with the system; /etc/slurm/slurm.conf is made a link to $STATE/etc/slurm.conf when
# no other slurm.conf is there, so that sinfo/sbatch/sacct find the cluster without SLURM_CONF.
#
# Environment (all optional):
#   SCIENCEGEN_SLURM_STATE   state directory (default /tmp/sciencegen-slurm)
#   SCIENCEGEN_SLURM_PORTS   "CTLD SLURMD DBD MYSQL" TCP ports on 127.0.0.1 (default "6817 6818 6819 3307")
#   SCIENCEGEN_SLURM_TIMEOUT seconds to wait for each daemon (default 90)
#   SCIENCEGEN_SLURM_CLUSTER cluster name (default sciencegen)
set -euo pipefail

STATE=${SCIENCEGEN_SLURM_STATE:-/tmp/sciencegen-slurm}
read -r CTLD_PORT SLURMD_PORT DBD_PORT MYSQL_PORT <<<"${SCIENCEGEN_SLURM_PORTS:-6817 6818 6819 3307}"
TIMEOUT=${SCIENCEGEN_SLURM_TIMEOUT:-90}
CLUSTER=${SCIENCEGEN_SLURM_CLUSTER:-sciencegen}
ACCOUNT=sciencegen
CONF=$STATE/etc/slurm.conf
DBCONF=$STATE/etc/slurmdbd.conf
MYSQL_SOCK=$STATE/run/mysqld.sock
DAEMONS=(mariadbd munged slurmdbd slurmctld slurmd)   # start order; stop is the reverse
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
export SLURM_CONF=$CONF

say() { printf 'local_slurm: %s\n' "$*"; }
die() {
    printf 'local_slurm: error: %s\n' "$*" >&2
    [[ ${STARTING:-0} == 1 ]] && printf 'local_slurm: the daemons started so far keep running (state %s): %s stop\n' "$STATE" "$0" >&2
    exit 1
}

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (it starts system daemons and installs packages)"; }

# ------------------------------------------------------------------------------------------------ install

missing_packages() {
    local p out=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out+=("$p")
    done
    echo "${out[@]:-}"
}

cmd_install() {
    need_root
    local missing
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        say "installed already: ${PACKAGES[*]}"
        return 0
    fi
    # no service may start during the installation (mariadb-server's postinst would start its own server)
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    # shellcheck disable=SC2064
    trap "[[ $made_policy == 1 ]] && rm -f $policy" EXIT
    export DEBIAN_FRONTEND=noninteractive
    local p stale=0
    for p in $missing; do
        apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -qv '(none)' || stale=1
    done
    if [[ $stale == 1 ]]; then
        say "apt-get update (a package has no install candidate)"
        apt-get update -q || say "apt-get update reported errors; trying the install anyway"
    fi
    say "apt-get install $missing"
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends $missing; then
        say "install failed; apt-get update and one more try (stale package lists?)"
        apt-get update -q || true
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
    fi
    missing=$(missing_packages)
    [[ -z $missing ]] || die "still not installed: $missing"
    say "installed: ${PACKAGES[*]} ($(dpkg-query -W -f='${Version}' slurmd 2>/dev/null || echo '?'))"
}

# ------------------------------------------------------------------------------------------------ processes

# a pid file holds "PID STARTTIME" (field 22 of /proc/PID/stat), so a PID reused by another process is not ours
start_time() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }

# PID of our running daemon NAME, or nothing (a stale pid file is removed)
our_pid() {
    local name=$1 file=$STATE/pids/$1.pid pid st comm
    [[ -f $file ]] || return 0
    read -r pid st <"$file" || true
    if [[ $pid =~ ^[0-9]+$ ]] && [[ -d /proc/$pid ]]; then
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        if [[ $comm == "$name" && $(start_time "$pid") == "$st" && $(proc_state "$pid") != Z ]]; then
            echo "$pid"
            return 0
        fi
    fi
    rm -f "$file"   # stale: the process is gone, or the PID now belongs to something else
}

log_tail() {
    local f=$STATE/log/$1.log
    if [[ -s $f ]]; then
        printf -- '---- last lines of %s\n' "$f" >&2
        tail -n 25 "$f" >&2
        printf -- '----\n' >&2
    fi
}

# launch NAME: CMD... in its own session, stdio to $STATE/log/NAME.out; record its PID
launch() {
    local name=$1
    shift
    # in a non-interactive shell the background child is not a process-group leader, so setsid does not fork
    # and $! is the daemon itself (checked below)
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    local pid=$! st comm i
    for i in $(seq 50); do   # setsid execs the daemon: wait until /proc shows it
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        [[ $comm == "$name" || -z $comm ]] && break
        sleep 0.1
    done
    [[ $comm == "$name" ]] || { tail -n 25 "$STATE/log/$name.out" >&2 || true; log_tail "$name"; die "$name did not start (exited at once)"; }
    st=$(start_time "$pid")
    echo "$pid $st" >"$STATE/pids/$name.pid"
}

# wait until CHECK succeeds while NAME's process is alive
wait_for() {
    local name=$1 what=$2
    shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if [[ -z $(our_pid "$name") ]]; then
            tail -n 15 "$STATE/log/$name.out" >&2 || true
            log_tail "$name"
            die "$name exited while starting (logs in $STATE/log/)"
        fi
        if ((SECONDS - t0 > TIMEOUT)); then
            log_tail "$name"
            die "$name: not $what after ${TIMEOUT}s (logs in $STATE/log/)"
        fi
        sleep 1
    done
}

# ------------------------------------------------------------------------------------------------ configs

# the CPUs this machine lets us use: the scheduler affinity mask (cpusets of containers included). Not plain
# `nproc`: it honours OMP_NUM_THREADS / OMP_THREAD_LIMIT, so `OMP_NUM_THREADS=1` (common on clusters) would
# make a 1-CPU node on which multi-CPU jobs never start
machine_cpus() {
    local n
    n=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || true)
    [[ $n =~ ^[1-9][0-9]*$ ]] || n=$(getconf _NPROCESSORS_ONLN)
    echo "$n"
}

write_configs() {
    local host cpus mem_kb real_mem
    host=$(hostname -s)
    cpus=$(machine_cpus)
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    real_mem=$((mem_kb * 90 / 100 / 1024))   # MiB, a bit under the kernel's total: slurmd must not report less
    mkdir -p "$STATE"/{etc,log,pids,run,ctld,spool}
    chmod 755 "$STATE"
    cat >"$CONF" <<EOF
# written by workflows/slurm/local_slurm.sh: a single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd: processes are tracked by parentage
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
# CPUs and memory are consumable, so that small jobs and array tasks run side by side
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
# quick turnaround for tests
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
ReturnToService=2
SlurmctldTimeout=120
SlurmdTimeout=300
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0,sched_min_interval=100000
# accounting through slurmdbd (sacct and submitit need the final job states)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DBCONF" <<EOF
# written by workflows/slurm/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DBCONF"   # slurmdbd refuses a slurmdbd.conf that others can read
    chown root:root "$DBCONF"
    # sinfo, sbatch, sacct find the cluster without SLURM_CONF; never replace somebody else's slurm.conf
    # (a link to another state directory's config is left alone: that cluster may be running)
    mkdir -p /etc/slurm
    if [[ ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]] ||
        [[ -L /etc/slurm/slurm.conf && ! -e /etc/slurm/slurm.conf ]]; then
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    elif [[ $(readlink -f /etc/slurm/slurm.conf) != "$(readlink -f "$CONF")" ]]; then
        say "note: /etc/slurm/slurm.conf is not this cluster's: export SLURM_CONF=$CONF to use it"
    fi
}

# stop: remove the link to our config, so that clients fail at once instead of waiting for a controller
unlink_config() {
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$CONF" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

# ------------------------------------------------------------------------------------------------ daemons

mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCK" -u root; }

start_mariadbd() {
    local datadir=$STATE/mysql
    if [[ ! -d $datadir/mysql ]]; then
        say "initialising MariaDB in $datadir"
        rm -rf "$datadir"
        mkdir -p "$datadir"
        chown mysql:mysql "$datadir"
        mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" --skip-test-db \
            >"$STATE/log/mariadb-install-db.log" 2>&1 ||
            { tail -n 25 "$STATE/log/mariadb-install-db.log" >&2; die "mariadb-install-db failed"; }
    fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    chown mysql:mysql "$STATE/run"
    touch "$STATE/log/mariadbd.log" && chown mysql:mysql "$STATE/log/mariadbd.log"
    launch mariadbd mariadbd --no-defaults --user=mysql --datadir="$datadir" --socket="$MYSQL_SOCK" \
        --pid-file="$STATE/run/mariadbd.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --performance-schema=OFF
    wait_for mariadbd "answering" mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -u root ping
    mysql_root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

munge_ok() { munge -n | unmunge; }

start_munged() {
    local key=/etc/munge/munge.key
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 700 /etc/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    if [[ ! -s $key ]]; then
        say "creating the munge key $key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
        fi
    fi
    chown munge:munge "$key"
    chmod 400 "$key"
    rm -f /run/munge/munged.pid   # a stale one from a previous boot of the machine
    launch munged setpriv --reuid=munge --regid=munge --init-groups munged -F
    wait_for munged "answering" munge_ok
}

dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    launch slurmdbd slurmdbd -D
    wait_for slurmdbd "answering" dbd_ok
}

# the cluster, an account, and root (and the sudo user) in it: sacct then lists their jobs
register_accounting() {
    local sam=(timeout 30 sacctmgr) user
    if ! "${sam[@]}" -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        "${sam[@]}" -i add cluster "$CLUSTER" >/dev/null
        say "registered cluster $CLUSTER in the accounting database"
    fi
    if ! "${sam[@]}" -n -P list account format=account | grep -qx "$ACCOUNT"; then
        "${sam[@]}" -i add account "$ACCOUNT" cluster="$CLUSTER" description=tests organization=sciencegen >/dev/null
    fi
    for user in root ${SUDO_USER:-}; do
        if ! "${sam[@]}" -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$user" format=user |
            grep -qx "$user"; then
            "${sam[@]}" -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
        fi
    done
}

ctld_ok() { timeout 10 scontrol ping | grep -q 'UP'; }

node_state() { timeout 10 sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1; }

node_idle() { [[ $(node_state "$1") =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmctld() {
    launch slurmctld slurmctld -D -i
    wait_for slurmctld "answering" ctld_ok
}

start_slurmd() {
    local host=$1
    launch slurmd slurmd -D -N "$host"
    local t0=$SECONDS resumed=0 state
    until node_idle "$host"; do
        [[ -n $(our_pid slurmd) ]] || { log_tail slurmd; die "slurmd exited while starting"; }
        state=$(node_state "$host" || true)
        # a node left down/drained by an earlier run (e.g. killed slurmd) comes back once slurmd is registered
        if [[ $resumed == 0 && $state =~ (drain|down) ]] && ((SECONDS - t0 > 5)); then
            scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
            resumed=1
        fi
        if ((SECONDS - t0 > TIMEOUT)); then
            log_tail slurmd
            log_tail slurmctld
            timeout 10 scontrol show node "$host" >&2 || true
            die "node $host is not idle after ${TIMEOUT}s (state: ${state:-unknown})"
        fi
        sleep 1
    done
}

cmd_start() {
    need_root
    [[ -z $(missing_packages) ]] || die "missing packages: $(missing_packages) (run: $0 install)"
    local host name pid running=() t0=$SECONDS
    host=$(hostname -s)
    mkdir -p "$STATE"/{etc,log,pids,run,ctld,spool}
    for name in "${DAEMONS[@]}"; do
        pid=$(our_pid "$name")
        [[ -n $pid ]] && running+=("$name")
    done
    if [[ ${#running[@]} -eq ${#DAEMONS[@]} ]] && node_idle "$host"; then
        say "already up (state $STATE): $(timeout 10 sinfo -h -N -o '%N %T %c CPUs %m MB' | head -n 1)"
        local have
        have=$(timeout 10 sinfo -h -N -n "$host" -o '%c' | head -n 1)
        [[ $have == "$(machine_cpus)" ]] || say "note: the node has $have CPUs, the machine $(machine_cpus)" \
            "(configured by an older start): $0 stop && $0 start"
        return 0
    fi
    [[ ${#running[@]} -gt 0 ]] && say "running already: ${running[*]}; starting the others"
    write_configs
    STARTING=1
    for name in "${DAEMONS[@]}"; do
        if [[ -n $(our_pid "$name") ]]; then
            continue
        fi
        say "starting $name"
        case $name in
            mariadbd) start_mariadbd ;;
            munged) start_munged ;;
            slurmdbd) start_slurmdbd; register_accounting ;;
            slurmctld) start_slurmctld ;;
            slurmd) start_slurmd "$host" ;;
        esac
    done
    # a restart of slurmctld alone: accounting may be new (e.g. after a wiped MariaDB)
    register_accounting
    # the node may be up but not yet idle when only slurmd was already running
    local t1=$SECONDS
    until node_idle "$host"; do
        ((SECONDS - t1 < TIMEOUT)) || { log_tail slurmctld; die "node $host not idle"; }
        sleep 1
    done
    say "up in $((SECONDS - t0)) s (state $STATE): $(timeout 10 sinfo -h -N -o '%N %T, %c CPUs, %m MB' | head -n 1)"
}

# ------------------------------------------------------------------------------------------------ stop / status

# running (not gone, not a zombie waiting to be reaped) and still the process we started
alive_as() { [[ -d /proc/$1 && $(start_time "$1") == "$2" && $(proc_state "$1") != Z ]]; }

proc_state() { awk '{sub(/^.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null; }

stop_pid() {
    local name=$1 pid=$2 st=$3 i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do   # up to 15 s
        alive_as "$pid" "$st" || return 0
        sleep 0.1
    done
    say "$name ($pid) did not stop within 15 s of TERM: KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        alive_as "$pid" "$st" || return 0
        sleep 0.1
    done
    say "warning: $name ($pid) is still there after KILL"
}

cmd_stop() {
    need_root
    local name pid st i stopped=()
    # jobs still running would leave their slurmstepd behind once slurmd is gone: cancel them through SLURM
    if [[ -n $(our_pid slurmctld) ]] && timeout 10 squeue -h -o %A 2>/dev/null | grep -q .; then
        say "cancelling the jobs still in the queue"
        local jobs
        mapfile -t jobs < <(timeout 10 squeue -h -o %A | sort -u)
        timeout 10 scancel --full --quiet "${jobs[@]}" 2>/dev/null || true
        for i in $(seq 30); do
            timeout 10 squeue -h -o %A 2>/dev/null | grep -q . || break
            sleep 1
        done
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        pid=$(our_pid "$name")
        if [[ -n $pid ]]; then
            read -r _ st <"$STATE/pids/$name.pid"
            stop_pid "$name" "$pid" "$st"
            stopped+=("$name($pid)")
        fi
        rm -f "$STATE/pids/$name.pid"
    done
    unlink_config
    if [[ ${#stopped[@]} -gt 0 ]]; then
        say "stopped ${stopped[*]}"
    else
        say "nothing to stop (no daemon of $STATE is running)"
    fi
    local left
    left=$(pgrep -x slurmstepd || true)
    [[ -z $left ]] || say "warning: slurmstepd processes are still running: $left"
}

cmd_status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        pid=$(our_pid "$name")
        if [[ -n $pid ]]; then
            printf '  %-10s running (pid %s)\n' "$name" "$pid"
        else
            printf '  %-10s not running\n' "$name"
            rc=3
        fi
    done
    if [[ $rc == 0 ]]; then
        timeout 10 sinfo -N -o '%N %P %T %c %m' || rc=3
    fi
    echo "state: $STATE   config: $CONF"
    return $rc
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {install|start|stop|status}" >&2
        exit 2
        ;;
esac
