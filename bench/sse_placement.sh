#!/usr/bin/env bash
# The 1,000-subscriber load (bench/sse_load.py live) with the scheduler told something about its processes:
# which cores they may use and at what priority. Used to find out what the p99 waits for on a machine that
# runs the server, the training worker and the 1,000 clients on the same two cores (docs/benchmarks.md,
# "Where the rest of the p99 goes").
#
#   bench/sse_placement.sh MODE [extra sse_load.py arguments]
#
# MODE, any of these joined with "+":
#   base            nothing changed
#   worker-nice10   the job's worker (and a pre-started one) at nice 10
#   worker-idle     the worker as SCHED_IDLE: it runs only on a core nobody else wants
#   clients-nice5   the benchmark's client processes at nice 5
#   clients-batch   the clients as SCHED_BATCH: a packet that wakes them does not preempt the server
#   pinned          the server on CPU 0; the worker and the clients on CPU 1
# TMPDIR=/dev/shm puts the job store on tmpfs (its commits then skip the disk's fsync).
#
# The processes are found by name every 0.3 s while the benchmark runs (renice, chrt and taskset need
# no privileges for one's own processes, except a lower nice value, which this never asks for). Linux only.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?"usage: bench/sse_placement.sh MODE [sse_load.py arguments]"}
shift
has() { [[ "+$mode+" == *"+$1+"* ]]; }

client_pids() {  # the benchmark's client processes: spawned children of sse_load.py, not workers
    local bench
    for bench in $(pgrep -f "bench/sse_load.py" || true); do
        for pid in $(pgrep -P "$bench" -f spawn_main || true); do
            grep -q snnmon "/proc/$pid/comm" 2>/dev/null || echo "$pid"
        done
    done
}

apply() {
    local pid
    for pid in $(pgrep -x snnmon-job || true) $(pgrep -x snnmon-idle || true); do
        has worker-nice10 && renice -n 10 $(ls "/proc/$pid/task") >/dev/null 2>&1 || true
        has worker-idle && chrt -i -a -p 0 "$pid" >/dev/null 2>&1 || true
        has pinned && taskset -a -p 2 "$pid" >/dev/null 2>&1 || true
    done
    for pid in $(client_pids); do
        has clients-nice5 && renice -n 5 $(ls "/proc/$pid/task") >/dev/null 2>&1 || true
        has clients-batch && chrt -b -a -p 0 "$pid" >/dev/null 2>&1 || true
        has pinned && taskset -a -p 2 "$pid" >/dev/null 2>&1 || true
    done
    if has pinned; then
        for pid in $(pgrep -f "service.cli serve" || true); do taskset -a -p 1 "$pid" >/dev/null 2>&1 || true; done
    fi
}

( while true; do apply; sleep 0.3; done ) &
applier=$!
trap 'kill $applier 2>/dev/null || true' EXIT
.venv/bin/python bench/sse_load.py live --subscribers 1000 --live-s 8 "$@"
