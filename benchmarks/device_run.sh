#!/usr/bin/env bash
# The one GPU run for issues 11 and 12: quality hook, trial phases, packing. About 8.5 minutes.
#
# The lead's call (device tool), after rebuilding the wheel here:
#   (cd /work/main && rm -f .whl/agesearch-*.whl && pip wheel -q --no-deps . -w .whl)
#   (with build isolation: the venv's setuptools 65 cannot read pyproject's `license`, so
#   --no-build-isolation fails; pip takes setuptools>=77 from the index)
#   run(command="bash benchmarks/device_run.sh", carry=[".whl", ".gpudata"], timeout_s=560, kind="nvidia-h200")
#
# .whl/ holds agesearch's wheel and the runtime packages the device image lacks (keras, optuna,
# sqlalchemy, alembic, mako, colorlog, namex, optree, plotly); .gpudata/utkface-5k is a copy of
# /work/shared/data/utkface-5k. Both are git-ignored (.git/info/exclude) and travel by `carry`.
# Results land in $OUT, one level, at most 8 files: log.txt, device.txt, phases.md, gpu.md, and
# up to 4 of the quality hook's. Every step has its own `timeout`, cut to what the budget has left,
# so that a slow step cannot eat the rest; stdout is progress.
#
# Dry run here, on CPU, at tiny sizes (no pip, no nvidia-smi, synthetic data, measures nothing):
#   DRY=1 OUT=/tmp/devout bash benchmarks/device_run.sh
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-525}  # seconds for all steps: the call's 560 less the start and the transfer back
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2

elapsed() { echo $(( $(date +%s) - START )); }
step() { echo; echo "=== [$(elapsed) s] $*"; }
# cap NOMINAL RESERVE: a step's timeout, at most NOMINAL, leaving RESERVE seconds for the steps after it
cap() { local t=$(( BUDGET - $(elapsed) - $2 )); [ "$t" -gt "$1" ] && t=$1; echo "$t"; }

setup() {
  if [ "${DRY:-0}" = 1 ]; then
    export AGESEARCH_CACHE_DIR=${AGESEARCH_CACHE_DIR:-/tmp/agecache-dry}
    PY=${PY:-python}
    DATA=synthetic; PX=16; PX_BIG=24; EPOCHS=3; PACK="1 2"; PACK_BIG="1"; SECONDS_PER_N=12; PHASES_S=${PHASES_S:-200}
    EXTRA=(--synthetic-count 200); PHASES=()
    return
  fi
  step "a. install wheels, GPU"
  export AGESEARCH_CACHE_DIR=/tmp/agecache
  PY=python3
  timeout 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo "pip install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  nvidia-smi -L | tee "$OUT/device.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/device.txt" 2>&1
  timeout 60 "$PY" -c "import jax, keras, optuna, agesearch.search.cli, agesearch.search.loop.run; print('jax', jax.__version__, jax.devices(), '| keras', keras.__version__, keras.backend.backend(), '| optuna', optuna.__version__)" 2>&1 | tee -a "$OUT/device.txt"
  timeout 20 "$PY" -c "import pynvml as n; n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0); print('NVML', n.nvmlDeviceGetName(h), n.nvmlDeviceGetMemoryInfo(h).total // 2**20, 'MiB')" 2>&1 | tee -a "$OUT/device.txt"
  DATA=.gpudata/utkface-5k; PX=64; PX_BIG=128; EPOCHS=5; PACK="${PACK_N:-1 2 4 8}"; PACK_BIG="${PACK_BIG_N:-1 4}"; SECONDS_PER_N=${WINDOW_S:-18}
  EXTRA=()
  # The write-up model B preset (issue 11) if it exists by then; bench_trial_phases falls back to ModelConfig().
  PHASES=(--preset "${PHASES_PRESET:-deep-age-branch}")
}

main() {
  setup
  export PY DATA PX EPOCHS OUT
  echo "python: $($PY --version 2>&1), KERAS_BACKEND=$KERAS_BACKEND, data $DATA, $(elapsed) s so far"

  # b. The lead's quality run (presets and search on the 5k at 64 px, ~4 min). It reads PY, DATA,
  # PX, EPOCHS and OUT from the environment and writes at most 4 files under $OUT.
  step "b. quality hook"
  if [ -f benchmarks/device_quality.sh ]; then
    t=$(cap "${QUALITY_S:-270}" "${QUALITY_RESERVE:-260}")
    if [ "$t" -ge 30 ]; then timeout -k 15 "$t" bash benchmarks/device_quality.sh || echo "device_quality.sh ended with $? (timeout $t s)"
    else echo "skipped: only $t s for it"; fi
  else
    echo "benchmarks/device_quality.sh absent: skipped"
  fi

  step "c. trial phases, $PX px"
  t=$(cap "${PHASES_S:-65}" 190)
  if [ "$t" -ge 20 ]; then
    timeout -k 15 "$t" "$PY" benchmarks/bench_trial_phases.py --data "$DATA" --image-size "$PX" --epochs "$EPOCHS" "${EXTRA[@]}" "${PHASES[@]}" --out "$OUT/phases.md" \
      || echo "bench_trial_phases ended with $? (timeout $t s)"
  else echo "skipped: only $t s for it"; fi

  # d. Packing at 64 px: N = 1, 2, 4, 8, each measured for SECONDS_PER_N once all N run. On SIGTERM
  # (its timeout) bench_gpu stops its processes and still records the Ns it measured.
  step "d. packing, $PX px"
  t=$(cap 185 0)
  timeout -k 20 "$t" "$PY" benchmarks/bench_gpu.py --packing $PACK --image-size "$PX" --seconds "$SECONDS_PER_N" --epochs "$EPOCHS" \
    --data "$DATA" "${EXTRA[@]}" --out "$OUT/gpu.md" || echo "bench_gpu ($PX px) ended with $? (timeout $t s)"

  # e. 128 px only with time to spare.
  t=$(cap 170 0)
  if [ "$t" -ge 70 ] && [ -n "$PACK_BIG" ]; then
    step "e. packing, $PX_BIG px ($t s left)"
    timeout -k 20 "$t" "$PY" benchmarks/bench_gpu.py --packing $PACK_BIG --image-size "$PX_BIG" --seconds "$SECONDS_PER_N" --epochs "$EPOCHS" \
      --data "$DATA" "${EXTRA[@]}" --out "$OUT/gpu.md" || echo "bench_gpu ($PX_BIG px) ended with $? (timeout $t s)"
  else
    step "e. packing at $PX_BIG px skipped: $t s left"
  fi
  step "done"
  ls -la "$OUT"
}

set -o pipefail
main 2>&1 | tee "$OUT/log.txt"
