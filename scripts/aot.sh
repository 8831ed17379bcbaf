#!/usr/bin/env bash
# The full AOT table of the Triton kernels (every specialization the launchers can pick, sm_80 and
# sm_90, 1833 configurations per architecture: 10 minutes with --jobs 2 on 2 cores), run only when the
# kernel sources changed since it last passed. The test suite compiles the quick table
# (tests/test_triton_aot.py); this is the rest.
#
#   bash scripts/aot.sh [aot options]            full table if kernels/*.py changed, else skip
#   bash scripts/aot.sh --record [aot options]   full table; on success record the sources' hash
#   bash scripts/aot.sh --hash                   print the hash of the current sources
#
# The hash covers kernels/*.py (names and contents, in byte order) and the Triton version (a new
# ptxas allocates registers differently); kernels/aot_table.sha256 holds the one the full table
# last passed for (commit it with the change). Other options go to `python -m fastaevb.kernels.aot`
# (e.g. --jobs 2). Exits with the table's status (0 when skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RECORD=kernels/aot_table.sha256

record=0
hash_only=0
args=()
for arg in "$@"; do
    case "$arg" in
        --record) record=1 ;;
        --hash) hash_only=1 ;;
        *) args+=("$arg") ;;
    esac
done

sources_hash() {
    local triton
    triton=$(env -u TRITON_INTERPRET "$PY" -c 'import triton; print(triton.__version__)')
    {
        for f in $(LC_ALL=C ls kernels/*.py); do
            printf '%s\n' "$f"
            cat "$f"
        done
        printf 'triton %s\n' "$triton"
    } | sha256sum | cut -d' ' -f1
}

if [ "$record" = 1 ]; then
    for arg in ${args[@]+"${args[@]}"}; do
        case "$arg" in --quick | --filter* | --list | --arch*)
            echo "aot.sh: --record needs the full table on sm_80 and sm_90 (drop $arg)" >&2
            exit 2
            ;;
        esac
    done
fi

current=$(sources_hash)
if [ "$hash_only" = 1 ]; then
    echo "$current"
    exit 0
fi
recorded=$(cut -d' ' -f1 "$RECORD" 2>/dev/null || true)

if [ "$record" = 0 ] && [ "$current" = "$recorded" ]; then
    echo "aot.sh: full AOT table skipped: kernels/*.py and Triton unchanged since it last passed ($RECORD: ${current:0:12})"
    exit 0
fi
if [ "$record" = 1 ]; then
    echo "aot.sh: running the full AOT table to record its hash (--record)"
elif [ -z "$recorded" ]; then
    echo "aot.sh: running the full AOT table: no recorded hash ($RECORD missing)"
else
    echo "aot.sh: running the full AOT table: kernels/*.py or Triton changed (${recorded:0:12} recorded, ${current:0:12} now)"
fi
start=$(date +%s)
status=0
env -u TRITON_INTERPRET TRITON_DEFAULT_FP_FUSION=1 "$PY" -m fastaevb.kernels.aot --arch 80 90 ${args[@]+"${args[@]}"} \
    || status=$?
echo "aot.sh: full AOT table $([ "$status" = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - start))s"
if [ "$status" = 0 ] && [ "$record" = 1 ]; then
    if [ "$(sources_hash)" != "$current" ]; then
        echo "aot.sh: kernels/*.py changed while the table ran; not recorded" >&2
        exit 1
    fi
    printf '%s  kernels/*.py + triton\n' "$current" >"$RECORD"
    echo "aot.sh: recorded ${current:0:12} in $RECORD"
fi
exit "$status"
