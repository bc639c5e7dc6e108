#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the example CellProfiler pipeline headless on
# the bundled example images with the shipped model.
#
#   bash scripts/run_example.sh [OUTPUT_DIR]        (default: output/)
#
# Writes OUTPUT_DIR/Image.csv, Nuclei.csv, Cells.csv (measurements), labels/*.tiff (16-bit
# nucleus label images) and overlays/*_overlay.png (nucleus outlines on the images).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
OUT=${1:-output}
mkdir -p "$OUT"
echo "[run_example] CellProfiler, headless: example_pipelines/segment_and_measure.cppipe -> $OUT/" >&2
.venv/bin/cellprofiler -c -r -L WARNING \
    -p example_pipelines/segment_and_measure.cppipe \
    -i example_images/images -o "$OUT" \
    --plugins-directory plugins 2> "$OUT/cellprofiler.log" || {
    echo "[run_example] CellProfiler failed; the end of $OUT/cellprofiler.log:" >&2
    tail -n 30 "$OUT/cellprofiler.log" >&2
    exit 1
}
.venv/bin/python - "$OUT" <<'PY'
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
truth = {r["id"]: int(r["nuclei"]) for r in csv.DictReader(open("example_images/index.csv"))}
rows = list(csv.DictReader(open(out / "Image.csv")))
print(f"{'image':<24}{'nuclei':>8}{'annotated':>11}{'diameter px':>13}{'CPU s':>9}")
for r in rows:
    name = Path(r["FileName_Original"]).stem
    secs = next((v for k, v in r.items() if k.startswith("ExecutionTime_") and k.endswith("SegmentNucleiStyleAdapted")), "")
    print(f"{name:<24}{int(float(r['Count_Nuclei'])):>8}{truth.get(name, ''):>11}"
          f"{float(r['Nucleaizer_Diameter_Nuclei']):>13.1f}{float(secs or 'nan'):>9.1f}")
print(f"\nResults in {out}/: Image.csv, Nuclei.csv, Cells.csv, labels/, overlays/")
PY
