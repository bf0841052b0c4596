#!/usr/bin/env bash
# Issue #21's GPU checks in one call (at most ~7.3 minutes on one H200), for a lent GPU machine:
# a 40960² synthetic slide (made once, 50 % tissue) translated end to end with its pyramid
# finished, against the pure forward rate on the same tile size and batch, with GPU peak memory:
#   slide_pix2pix      Pyramid pix2pix `paper`, bf16, batch 32   (goal: >= 0.8 of pure forward,
#                                                                  finished pyramid in <= 30 s)
#   slide_bcistainer   BCIStainer `paper`, bf16, batch 16
#   slide_consistency  the consistency model `paper` at 2 sampling steps, bf16, batch 8 (capped:
#                      its tiles/s on the part done)
# Logs and JSON land in $OUT (default /tmp/her2-gpu; stderr in stderr.log). Each step has its own
# --max-seconds and a hard `timeout`, so one stuck check cannot eat the others' time.
# (The training and diffusion-training checks of earlier issues: gpu_train.py, gpu_diffusion.py.)
#     bash benchmarks/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/her2-gpu}
SCRATCH=${SCRATCH:-/tmp}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SLIDE="$SCRATCH/her2-gpu-he40k.ome.tif"
trap 'rm -f "$SLIDE"' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores /' | tee -a "$OUT/gpu.txt"

run() {  # run NAME SECONDS ARGS...: stdout to the log, stderr (progress bars) to .err, tail on failure
    local name=$1 secs=$2; shift 2
    echo "=== $name (limit ${secs} s)"
    local t0=$SECONDS
    timeout "$secs" $PY "$@" > >(tee "$OUT/$name.log") 2> >(tee -a "$OUT/stderr.log" > "/tmp/$name.err")
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ $rc -ne 0 ] && sleep 1 && tail -n 15 "/tmp/$name.err"
    return 0
}
S=benchmarks/gpu_slide.py
run make_slide 100 $S --make-slide "$SLIDE" --size 40960 --tissue 0.5
run slide_pix2pix 130 $S --slide "$SLIDE" --workdir "$SCRATCH" --model pyramid_pix2pix \
    --batch-size 32 --max-seconds 90
run slide_bcistainer 90 $S --slide "$SLIDE" --workdir "$SCRATCH" --model bcistainer \
    --batch-size 16 --max-seconds 50
# the consistency framework holds ~1.6 G parameters (model, EMA, teacher): building and
# fingerprinting it takes a while before the 30 s of translation
run slide_consistency 110 $S --slide "$SLIDE" --workdir "$SCRATCH" --model consistency --steps 2 \
    --batch-size 8 --max-seconds 30
grep -h '^{' "$OUT"/slide_*.log > "$OUT/gpu_slide.jsonl" 2>/dev/null
cat "$OUT/gpu_slide.jsonl" 2>/dev/null
