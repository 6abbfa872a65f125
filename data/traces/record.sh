#!/usr/bin/env bash
# Re-record the shipped page-table traces (see data/traces/README.md).
#
# Needs: root (or ptrace rights over the children), Linux >= 6.7 for
# PAGEMAP_SCAN (older kernels fall back to raw pagemap), strace, gcc,
# redis-server + redis-tools, libjemalloc2 (Debian: redis brings it), and the
# project's .venv (numpy).  Run from anywhere:
#   data/traces/record.sh [OUTDIR [NAME...]]     (default: data/traces, all traces)
#   data/traces/record.sh data/traces numpy_jemalloc_decay   (just that one)
# NAME is redis_jemalloc, churn_jemalloc, churn_glibc_trim or numpy_jemalloc_decay.
# New recordings differ in bytes from the shipped ones (timing, ASLR), not in kind.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=$(realpath -m "${1:-data/traces}")
shift || true
ALL=(redis_jemalloc churn_jemalloc churn_glibc_trim numpy_jemalloc_decay)
NAMES=("${@:-${ALL[@]}}")
for t in "${NAMES[@]}"; do
    case " ${ALL[*]} " in
        *" $t "*) ;;
        *) echo "record.sh: error: unknown trace $t; choose from ${ALL[*]}" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CAPTURE=("$PY" scripts/capture_trace.py record -q --force --interval-ms 100 --max-cpu-share 0.10)
JEMALLOC=$(ls /usr/lib/*/libjemalloc.so.2 | head -n 1)

# 1. redis-server (jemalloc 5.3 as Debian builds it): fill, random delete, flush, idle.
redis_jemalloc() {
    local port=${PORT:-6399} cap
    "${CAPTURE[@]}" -o "$OUT/redis_jemalloc.npz" -- \
        redis-server --port "$port" --save '' --appendonly no --dir "$WORK" --loglevel warning &
    cap=$!
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    sleep 1
    redis-benchmark -p "$port" -q -t set -n 1000000 -r 1000000 -d 1000 -P 16 | tail -n 1
    redis-benchmark -p "$port" -q -n 600000 -r 1000000 -P 16 DEL 'key:__rand_int__' | tail -n 1
    sleep 2
    redis-cli -p "$port" flushall
    sleep 20
    redis-cli -p "$port" shutdown nosave || true
    wait "$cap"
}

# 2. churn under jemalloc with short decay (purges with MADV_DONTNEED within ~200 ms;
#    the background thread purges while the program idles).
churn_jemalloc() {
    "${CAPTURE[@]}" -o "$OUT/churn_jemalloc.npz" -- env LD_PRELOAD="$JEMALLOC" \
        MALLOC_CONF=dirty_decay_ms:200,muzzy_decay_ms:0,background_thread:true "$WORK/churn" 20
}

# 3. the same churn under glibc malloc, malloc_trim(0) every 500 steps.
churn_glibc_trim() {
    "${CAPTURE[@]}" -o "$OUT/churn_glibc_trim.npz" -- "$WORK/churn" 20 500
}

# 4. numpy arrays of 8-48 MiB under jemalloc in decay mode (no background thread):
#    the arrays' extents are purged with MADV_DONTNEED when freed (jemalloc's
#    oversize arena decays at once), smaller ones go muzzy (MADV_FREE) after 1 s
#    and are purged 1 s later, when the program allocates.
numpy_jemalloc_decay() {
    "${CAPTURE[@]}" -o "$OUT/numpy_jemalloc_decay.npz" -- env LD_PRELOAD="$JEMALLOC" \
        MALLOC_CONF=dirty_decay_ms:1000,muzzy_decay_ms:1000 "$PY" data/traces/src/numpy_decay.py 40
}

gcc -O2 -Wall -o "$WORK/churn" data/traces/src/churn.c
for t in "${NAMES[@]}"; do
    "$t"
    "$PY" scripts/capture_trace.py info "$(realpath --relative-to="$ROOT" "$OUT/$t.npz")" \
        > "$OUT/$t.info.json"
    # The fidelity plot; a trace that misses the goal is kept, and check says where.
    "$PY" scripts/capture_trace.py check "$OUT/$t.npz" --rows 0 ||
        echo "record.sh: $t misses the fidelity goal at some samples (see above)" >&2
done
echo "recorded into $OUT"
