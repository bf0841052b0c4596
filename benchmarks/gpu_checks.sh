#!/usr/bin/env bash
# Every prepared GPU check in one call (at most ~8.5 minutes on one H200), for a lent GPU machine:
#   issue #4  gpu_train.py      paper presets at 512², bf16 vs fp32: images/s and peak memory
#   issue #7  gpu_slide.py      a 40960² synthetic slide through Pyramid pix2pix `paper` in bf16
#   issue #5  gpu_diffusion.py  diffusion paper presets at 256²: training and sampling speed
# Logs and JSON land in $OUT (default /tmp/her2-gpu; stderr of all three in stderr.log). Each script has its own time budget and a
# hard `timeout`, so one stuck check cannot eat the others' time.
#     bash benchmarks/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/her2-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

run() {  # run NAME SECONDS ARGS...: stdout to the log, stderr (progress bars) to .err, tail on failure
    local name=$1 secs=$2; shift 2
    echo "=== $name (limit ${secs} s)"
    local t0=$SECONDS
    timeout "$secs" $PY "$@" > >(tee "$OUT/$name.log") 2> >(tee -a "$OUT/stderr.log" > "/tmp/$name.err")
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ $rc -ne 0 ] && sleep 1; tail -n 15 "/tmp/$name.err"
    return 0
}
run gpu_train 150 benchmarks/gpu_train.py --budget-s 110
run gpu_slide 260 benchmarks/gpu_slide.py --max-seconds 120 --workdir /tmp
run gpu_diffusion 90 benchmarks/gpu_diffusion.py --budget-s 50
