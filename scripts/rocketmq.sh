#!/usr/bin/env bash
# A RocketMQ name server and broker (rocketmq-rust 1.0.0) on 127.0.0.1, for the RocketMQ driver's
# tests and for trying omstream against RocketMQ by hand.
#
#   scripts/rocketmq.sh install   build the two binaries unless present (about 20 min the first
#                                 time on 2 cores; the build directory is kept, so later installs
#                                 are quick)
#   scripts/rocketmq.sh start     install if missing, then start both with a data directory of
#                                 their own, its store emptied; waits until the broker has
#                                 registered
#   scripts/rocketmq.sh stop      stops exactly the processes `start` started (pid files)
#   scripts/rocketmq.sh status
#   scripts/rocketmq.sh kill-broker   SIGKILLs the broker only (fault tests: a crashed broker)
#   scripts/rocketmq.sh start-broker  starts the broker again, with the data and config `start`
#                                     left (the name server must be running)
#
# Settings (environment):
#   OMSTREAM_TOOLS  where binaries and their build directory go (default ~/.cache/omstream/tools)
#   ROCKETMQ_RUN    the data, config, log and pid directory (default $OMSTREAM_TOOLS/rocketmq-run)
#   ROCKETMQ_STORE_ROOT  the directory in which the broker's store goes, as
#                   omstream-rocketmq-<broker port> (default: the RAM disk /dev/shm when it is a
#                   tmpfs with 4 GiB free, else $ROCKETMQ_RUN; see choose_store)
#   ROCKETMQ_NAMESRV_PORT (9876), ROCKETMQ_BROKER_PORT (10911)
#
# The broker config shrinks the store (64 MiB commit-log files, small consume queues and index):
# with the defaults, a test run writes about 1.5 GB (see shared/brokers.md, section 1).
set -euo pipefail

VERSION=1.0.0
TOOLS="${OMSTREAM_TOOLS:-$HOME/.cache/omstream/tools}"
RUN="${ROCKETMQ_RUN:-$TOOLS/rocketmq-run}"
NAMESRV_PORT="${ROCKETMQ_NAMESRV_PORT:-9876}"
BROKER_PORT="${ROCKETMQ_BROKER_PORT:-10911}"
NAMESRV_BIN="$TOOLS/bin/rocketmq-namesrv-rust"
BROKER_BIN="$TOOLS/bin/rocketmq-broker-rust"

say() { echo "rocketmq.sh: $*" >&2; }

install() {
    if [[ -x "$NAMESRV_BIN" && -x "$BROKER_BIN" ]]; then
        say "binaries present in $TOOLS/bin"
        return
    fi
    say "building rocketmq-namesrv and rocketmq-broker $VERSION into $TOOLS (about 20 minutes the first time)"
    mkdir -p "$TOOLS"
    # One target directory for both crates (shared dependencies compile once), kept for later.
    CARGO_TARGET_DIR="$TOOLS/target" cargo install --locked --root "$TOOLS" \
        rocketmq-namesrv@"$VERSION" rocketmq-broker@"$VERSION"
}

# "<percent used> <KiB available>" of the file system holding $1, the percentage counted as the
# broker counts it: (size - available) / size, so blocks reserved for root count as used.
disk_usage() {
    df -P -k "$1" | awk 'NR == 2 { printf "%d %d\n", ($2 - $4) * 100 / $2, $4 }'
}

# Where the store goes. The broker refuses every write (SYSTEM_BUSY, broker code 2) once its file
# system is 90 % used, and from 85 % it may delete commit-log files early. A build machine's disk
# fills with build output (a CI run failed so), so by default the store lives on the RAM disk:
# tests and benchmarks write well under 1 GB, and the broker's own data survives a SIGKILL of the
# broker there, which is all the fault tests need.
choose_store() {
    local root
    if [[ -n "${ROCKETMQ_STORE_ROOT:-}" ]]; then
        root=$ROCKETMQ_STORE_ROOT
    elif [[ -d /dev/shm && -w /dev/shm ]] && [[ "$(stat -f -c %T /dev/shm)" == tmpfs ]] \
        && read -r _ available < <(disk_usage /dev/shm) && (( available >= 4 * 1024 * 1024 )); then
        root=/dev/shm
    else
        root=$RUN
    fi
    STORE=$root/omstream-rocketmq-$BROKER_PORT
    # A fresh store each start: tests and benchmarks need no data from an earlier start, and a
    # store grown over many runs makes the broker's start slow (it replays its commit log).
    # `start-broker` restarts on the data this start began.
    rm -rf "$STORE"
    mkdir -p "$STORE"
    check_store_disk
}

# Stops when the store's file system is too full for the broker to take writes; warns when it
# is close.
check_store_disk() {
    local used
    read -r used _ < <(disk_usage "$STORE")
    if (( used >= 90 )); then
        say "the file system of the store $STORE is ${used} % full, and the broker refuses every write \
from 90 %. Free disk space there, or set ROCKETMQ_STORE_ROOT to a directory on a file system with room"
        exit 1
    fi
    if (( used >= 80 )); then
        say "warning: the file system of the store $STORE is ${used} % full; the broker may delete \
messages early from 85 % and refuses writes from 90 % (set ROCKETMQ_STORE_ROOT to move the store)"
    fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 600); do
        if port_open "$port"; then return 0; fi
        sleep 0.1
    done
    say "$what did not open 127.0.0.1:$port within 60 s; see $RUN/$what.log"
    exit 1
}

running() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {
    install
    if running namesrv || running broker; then
        say "already running (pids in $RUN); stop it first"
        exit 1
    fi
    for port in "$NAMESRV_PORT" "$BROKER_PORT"; do
        if port_open "$port"; then
            say "port $port on 127.0.0.1 is taken by another process; set ROCKETMQ_NAMESRV_PORT / ROCKETMQ_BROKER_PORT"
            exit 1
        fi
    done
    # The store of an earlier layout (before stores had a port in their name).
    rm -rf "$RUN/store"
    choose_store
    mkdir -p "$RUN/home/conf"
    echo "$STORE" > "$RUN/store.path"
    # The broker log is appended to by restarts; a fresh start begins a fresh one.
    : > "$RUN/broker.log"
    export ROCKETMQ_HOME="$RUN/home"
    cat > "$ROCKETMQ_HOME/conf/broker.toml" <<TOML
[broker]
namesrvAddr = "127.0.0.1:$NAMESRV_PORT"
brokerIp1 = "127.0.0.1"
listenPort = $BROKER_PORT
storePathRootDir = "$STORE"
# A half message nobody ended is checked back after 2 s, then every second (defaults: 6 s and
# 30 s), so that the tests see open transactions resolved within seconds. The ends of
# transactions are recorded in batches (default every 3 s); that must stay well below the
# check timeout, or a transaction just committed is checked back (and committed) again.
transactionTimeout = 2000
transactionCheckInterval = 1000
transactionOpBatchInterval = 100

[broker.brokerServerConfig]
bindAddress = "127.0.0.1"

[broker.brokerIdentity]
brokerName = "broker-a"
brokerClusterName = "DefaultCluster"
brokerId = 0

[store]
storeType = "LocalFile"
brokerRole = "ASYNC_MASTER"
storePathRootDir = "$STORE"
haListenAddress = "127.0.0.1"
haListenPort = $((BROKER_PORT + 1))
mappedFileSizeCommitLog = 67108864
mappedFileSizeConsumeQueue = 60000
maxHashSlotNum = 10000
maxIndexNum = 40000
TOML
    "$NAMESRV_BIN" --bindAddress 127.0.0.1 --listenPort "$NAMESRV_PORT" \
        --rocketmqHome "$ROCKETMQ_HOME" --kvConfigPath "$ROCKETMQ_HOME/namesrv/kvConfig.json" \
        > "$RUN/namesrv.log" 2>&1 &
    echo $! > "$RUN/namesrv.pid"
    wait_port "$NAMESRV_PORT" namesrv
    run_broker
    say "name server 127.0.0.1:$NAMESRV_PORT, broker 127.0.0.1:$BROKER_PORT, logs in $RUN, store in $STORE"
}

# Starts the broker with the config `start` wrote; appends to its log.
run_broker() {
    ROCKETMQ_HOME="$RUN/home" ROCKETMQ_SECURITY_PROFILE=development-insecure-loopback \
        "$BROKER_BIN" -c "$RUN/home/conf/broker.toml" -n "127.0.0.1:$NAMESRV_PORT" \
        >> "$RUN/broker.log" 2>&1 &
    echo $! > "$RUN/broker.pid"
    wait_port "$BROKER_PORT" broker
    # Clients work about a second after the broker registered with the name server.
    sleep 1
}

kill_broker() {
    if ! running broker; then
        say "no broker of ours runs (pid file $RUN/broker.pid)"
        exit 1
    fi
    local pid
    pid=$(cat "$RUN/broker.pid")
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    rm -f "$RUN/broker.pid"
    say "broker (pid $pid) killed"
}

start_broker() {
    if running broker; then
        say "the broker already runs (pid $(cat "$RUN/broker.pid"))"
        exit 1
    fi
    if ! running namesrv || [[ ! -f "$RUN/home/conf/broker.toml" ]]; then
        say "start-broker restarts a broker that \`start\` set up; run \`start\` first"
        exit 1
    fi
    run_broker
    say "broker 127.0.0.1:$BROKER_PORT started again"
}

stop_one() {
    local name=$1
    if ! running "$name"; then
        rm -f "$RUN/$name.pid"
        return
    fi
    local pid
    pid=$(cat "$RUN/$name.pid")
    kill -TERM "$pid"
    # The broker needs about 4 s to exit cleanly; after 15 s it is killed.
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) did not stop within 15 s of SIGTERM; killing it"
        kill -KILL "$pid"
    fi
    rm -f "$RUN/$name.pid"
}

stop() {
    stop_one broker
    stop_one namesrv
    # A store on the RAM disk holds memory until removed; `start` empties the store anyway.
    if [[ -f "$RUN/store.path" ]]; then
        local store
        store=$(cat "$RUN/store.path")
        if [[ "$store" == /dev/shm/* ]]; then rm -rf "$store"; fi
        rm -f "$RUN/store.path"
    fi
    say "stopped"
}

status() {
    for name in namesrv broker; do
        if running "$name"; then echo "$name running (pid $(cat "$RUN/$name.pid"))"; else echo "$name stopped"; fi
    done
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    kill-broker) kill_broker ;;
    start-broker) start_broker ;;
    *) say "usage: scripts/rocketmq.sh install|start|stop|status|kill-broker|start-broker"; exit 2 ;;
esac
