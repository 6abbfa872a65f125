#!/usr/bin/env bash
# Re-record the shipped page-table traces (see data/traces/README.md).
#
# Needs: root (or ptrace rights over the children), Linux >= 6.7 for
# PAGEMAP_SCAN (older kernels fall back to raw pagemap), strace, gcc,
# redis-server + redis-tools (Debian: brings libjemalloc2).  Run from anywhere:
#   data/traces/record.sh [OUTDIR]          (default: data/traces)
# New recordings differ in bytes from the shipped ones (timing, ASLR), not in kind.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=$(realpath -m "${1:-data/traces}")
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CAPTURE=("$PY" scripts/capture_trace.py record -q --force --interval-ms 100 --max-cpu-share 0.10)
JEMALLOC=$(ls /usr/lib/*/libjemalloc.so.2 | head -n 1)

gcc -O2 -Wall -o "$WORK/churn" data/traces/src/churn.c

# 1. redis-server (jemalloc 5.3 as Debian builds it): fill, random delete, flush, idle.
PORT=${PORT:-6399}
"${CAPTURE[@]}" -o "$OUT/redis_jemalloc.npz" -- \
    redis-server --port "$PORT" --save '' --appendonly no --dir "$WORK" --loglevel warning &
CAP=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
redis-benchmark -p "$PORT" -q -t set -n 1000000 -r 1000000 -d 1000 -P 16 | tail -n 1
redis-benchmark -p "$PORT" -q -n 600000 -r 1000000 -P 16 DEL 'key:__rand_int__' | tail -n 1
sleep 2
redis-cli -p "$PORT" flushall
sleep 20
redis-cli -p "$PORT" shutdown nosave || true
wait "$CAP"

# 2. churn under jemalloc with short decay (purges with MADV_DONTNEED within ~200 ms;
#    the background thread purges while the program idles).
"${CAPTURE[@]}" -o "$OUT/churn_jemalloc.npz" -- env LD_PRELOAD="$JEMALLOC" \
    MALLOC_CONF=dirty_decay_ms:200,muzzy_decay_ms:0,background_thread:true "$WORK/churn" 20

# 3. the same churn under glibc malloc, malloc_trim(0) every 500 steps.
"${CAPTURE[@]}" -o "$OUT/churn_glibc_trim.npz" -- "$WORK/churn" 20 500

for t in redis_jemalloc churn_jemalloc churn_glibc_trim; do
    "$PY" scripts/capture_trace.py info "$OUT/$t.npz" > "$OUT/$t.info.json"
done
echo "recorded into $OUT"
