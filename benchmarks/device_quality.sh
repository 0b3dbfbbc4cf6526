#!/usr/bin/env bash
# Issue 11's proof on a GPU, called by benchmarks/device_run.sh (step b) with PY, DATA, PX, OUT set.
# The presets as baseline trials, then a `cnn` search by 4 processes on one study, then the export
# of the best (refit on train+val) scored on the test split. Writes quality.md, quality.db and
# quality-run0.log under $OUT. Budget: QUALITY_BUDGET seconds of search (default 220), then export.
set -u
WORK=/tmp/quality
rm -rf "$WORK"
EPOCHS_Q=${QUALITY_EPOCHS:-30}
PROCS=${QUALITY_PROCESSES:-4}
BUDGET_Q=${QUALITY_BUDGET:-220}
[ "${DRY:-0}" = 1 ] && { EPOCHS_Q=2; PROCS=2; BUDGET_Q=20; }
timeout -k 5 "${QUALITY_INNER_S:-245}" "$PY" benchmarks/quality_utkface.py --data "$DATA" --space cnn --image-size "$PX" --epochs "$EPOCHS_Q" \
  --processes "$PROCS" --budget "$BUDGET_Q" --workdir "$WORK" --out "$OUT/quality.md"
code=$?
cp "$WORK"/studies/*.db "$OUT/quality.db" 2>/dev/null
cp "$WORK/run-0.log" "$OUT/quality-run0.log" 2>/dev/null
exit $code
