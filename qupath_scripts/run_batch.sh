#!/usr/bin/env bash
# Run one her2 QuPath script over every image of a project, then check each image's result.
#
# QuPath's multi-image run (`QuPath script -p ...`) exits 0 even when some images fail, so
# this wrapper reads the per-image status files the scripts write and exits 1 if any image
# failed or has no status.
#
# Usage:  QUPATH=/path/to/QuPath qupath_scripts/run_batch.sh PROJECT_DIR SCRIPT.groovy [ARG ...]
#   e.g.  qupath_scripts/run_batch.sh ~/proj qupath_scripts/run_translate.groovy runs/pix2pix
# (macOS: QUPATH=/Applications/QuPath-0.6.0.app/Contents/MacOS/QuPath;
#  Windows: use "QuPath-0.6.0 (console).exe")
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0"; exit 2
fi
project="$1"; script="$2"; shift 2
qupath="${QUPATH:-QuPath}"
her2="${HER2_BIN:-her2}"
case "$(basename "$script")" in
    export_annotations.groovy)  step=export ;;
    export_tiles.groovy)        step=tiles ;;
    run_translate.groovy)       step=translate ;;
    import_measurements.groovy) step=measurements ;;
    her2_import_annotations.groovy) step=import ;;
    *) echo "run_batch.sh: unknown script $script" >&2; exit 2 ;;
esac
qargs=()
for a in "$@"; do qargs+=(--args "$a"); done
# Old status files would hide a failure of this run
rm -rf "$project/her2/status/$step"
rc=0
"$qupath" script -p "$project/project.qpproj" --save "${qargs[@]}" "$script" || rc=$?
"$her2" qupath check --project "$project" --step "$step" || rc=1
exit $rc
