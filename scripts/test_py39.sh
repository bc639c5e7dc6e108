#!/usr/bin/env bash
# The Python 3.9 + CellProfiler 4.2.8.1 stage: the environment a CellProfiler 4.2 user has
# (Python 3.9, CellProfiler's own pins: numpy 1.24, SciPy 1.9.0, scikit-image 0.18.3,
# tifffile < 2022.4.22, h5py 3.7, pyzmq 22), plus the newest torch/torchvision that still have
# Python 3.9 wheels, plus this package installed the way a user installs it into that
# environment (`pip install .`, as the README says). Then a set of backend tests and one
# real headless CellProfiler pipeline with the plugin modules, whose output is checked.
# Called by run_tests.sh.
#
# The environment goes to .venv39/ (git-ignored), once: a finished install leaves a stamp keyed
# on this script, setup.py and pyproject.toml. Everything comes from the package registry
# (the machine's pip configuration, which may point at local wheel folders built for another
# Python, is bypassed).
#
#   bash scripts/test_py39.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=.venv39
TORCH="torch==2.8.0"          # the last torch release with Python 3.9 wheels
TORCHVISION="torchvision==0.23.0"

# a Python 3.9 interpreter: PYTHON39, python3.9 on PATH, or pyenv's newest 3.9.x
find_python39() {
  local c
  for c in "${PYTHON39:-}" python3.9; do
    if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  local root
  root=$( (pyenv root 2>/dev/null) || echo "$HOME/.pyenv")
  for c in $(ls -d "$root"/versions/3.9.*/bin/python3.9 2>/dev/null | sort -V -r); do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT= PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.stamp-$(cat scripts/test_py39.sh setup.py pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  PY39=$(find_python39) || {
    echo "[py39] no Python 3.9 found (set PYTHON39, or put python3.9 on PATH, e.g. with pyenv)" >&2
    exit 1
  }
  echo "[py39] installing Python 3.9 + CellProfiler 4.2.8.1 (its pins) + $TORCH into $VENV" \
       "(one time)" >&2
  t0=$(date +%s)
  rm -rf "$VENV"
  "$PY39" -m venv "$VENV"
  # pip, quiet; its notes that CellProfiler's GUI and MySQL requirements (left out, see
  # below) are not installed are dropped, everything else is shown; a failure stops the script
  pip() {
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/python" -m pip -q "$@" > "$log" 2>&1 || rc=$?
    grep -v -i -e "requires wxpython" -e "requires mysqlclient" -e "which is not installed" \
      -e "dependency resolver does not currently" "$log" >&2 || true
    rm -f "$log"
    return "$rc"
  }
  pip install --upgrade "pip<25" wheel
  # CellProfiler itself, then its own requirements read from its metadata (cellprofiler and
  # cellprofiler-core 4.2.8.1), exactly as pinned, except
  #  - wxPython (the GUI): no Linux wheels in the registry and no GTK build here; headless only;
  #  - mysqlclient==1.4.6 (ExportToDatabase to MySQL): needs the MySQL client library, absent;
  #  - python-javabridge and centrosome: compiled against numpy, installed below.
  pip install --no-deps "cellprofiler-core==4.2.8.1" "cellprofiler==4.2.8.1"
  reqs=$("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires
skip = {"wxpython", "mysqlclient", "python-javabridge", "centrosome", "cellprofiler-core"}
seen = set()
for dist in ("cellprofiler", "cellprofiler-core"):
    for r in requires(dist) or []:
        if "extra ==" in r:
            continue
        name = re.split(r"[ ;<>=!~\[(]", r, 1)[0].lower()
        if name in skip:
            continue
        spec = r.split(";")[0].strip().replace(" ", "").replace("(", "").replace(")", "")
        if spec not in seen:
            seen.add(spec)
            print(spec)
PY
)
  # javabridge and centrosome are built against the numpy they will run with: numpy first
  # (1.24, the newest that SciPy 1.9.0's own requirement numpy<1.25 allows), then build them
  # without isolation, together with all the rest in one resolution.
  pip install "numpy>=1.20.1,<1.25" "cython<3"
  # shellcheck disable=SC2086
  pip install --no-build-isolation $reqs "python-javabridge>=4.0.3,<5" "centrosome>=1.2.3,<1.3"
  t1=$(date +%s)
  # This package, as a user installs it into the CellProfiler environment (README, "Install
  # into an existing CellProfiler (Python 3.9) environment"): `pip install .` brings torch and torchvision
  # (the registry's builds, CUDA ones on Linux; they run on CPU too), safetensors and tqdm, and
  # leaves the requirements that CellProfiler's versions satisfy as they are. The constraint
  # only fixes torch/torchvision at what that command resolves to on Python 3.9 today.
  cons=$(mktemp)
  printf '%s\n' "$TORCH" "$TORCHVISION" > "$cons"
  rm -rf build
  PIP_CONSTRAINT="$cons" pip install .
  rm -rf build "$cons"
  t2=$(date +%s)
  pip install pytest
  "$VENV/bin/python" -c "
import numpy, scipy, skimage, tifffile
assert numpy.__version__.startswith('1.24'), numpy.__version__
assert scipy.__version__ == '1.9.0', scipy.__version__
assert skimage.__version__ == '0.18.3', skimage.__version__
assert tuple(map(int, tifffile.__version__.split('.')[:3])) < (2022, 4, 22), tifffile.__version__
"
  t3=$(date +%s)
  echo "[py39] installed in $((t3 - t0)) s (CellProfiler and its pins $((t1 - t0)) s," \
       "this package with torch and torchvision $((t2 - t1)) s)" >&2
  touch "$stamp"
fi

"$VENV/bin/python" - >&2 <<'PY'
import sys, numpy, scipy, skimage, tifffile, torch, torchvision
from importlib.metadata import version
print(f"[py39] Python {sys.version.split()[0]}, CellProfiler {version('cellprofiler')}, "
      f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"numpy {numpy.__version__}, scipy {scipy.__version__}, "
      f"scikit-image {skimage.__version__}, tifffile {tifffile.__version__}")
PY

# 1. The backend tests that matter most for these old pins (preprocessing, segmentation,
# labels, inference, tiling, the shipped models, post-processing and U-Net refinement, error
# messages, the command line, metrics, image/label pairing, and the style module's scikit-image
# and scikit-learn parts). They import the checkout's nucleaizer_backend (same code).
t0=$(date +%s)
rc=0
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/backend/test_backend_preprocess.py tests/backend/test_backend_segment.py \
  tests/backend/test_backend_labels.py tests/backend/test_backend_inference.py \
  tests/backend/test_backend_tiling.py tests/backend/test_backend_model.py \
  tests/backend/test_backend_postprocess.py tests/backend/test_backend_refine.py \
  tests/backend/test_backend_errors.py tests/backend/test_cli.py \
  tests/backend/test_backend_metrics.py tests/backend/test_backend_pairing.py \
  tests/backend/test_style_masks.py tests/backend/test_style_cluster.py \
  tests/backend/test_backend_speed.py "$@" || rc=$?
t1=$(date +%s)
echo "[py39] backend tests: $((t1 - t0)) s" >&2
[ "$rc" -eq 0 ] || { echo "[py39] backend tests FAILED" >&2; exit "$rc"; }
if [ $# -gt 0 ]; then exit 0; fi  # pytest arguments given: the tests only

# 2. One real headless CellProfiler run of the main example pipeline on the bundled images,
# with the plugin modules and the installed package (CellProfiler's process does not see the
# checkout: its plugins import nucleaizer_backend from .venv39's site-packages).
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "[py39] CellProfiler $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("cellprofiler"))')," \
     "headless: example_pipelines/segment_and_measure.cppipe on example_images/images" >&2
if ! OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PATH="$REPO/$VENV/bin:$PATH" \
    "$VENV/bin/cellprofiler" -c -r -L WARNING -p example_pipelines/segment_and_measure.cppipe \
    -i example_images/images -o "$OUT" --plugins-directory plugins > "$OUT/cellprofiler.log" 2>&1 \
    || grep -q pipeline_exception "$OUT/cellprofiler.log"; then
  echo "[py39] CellProfiler FAILED; the end of its log:" >&2
  tail -n 40 "$OUT/cellprofiler.log" >&2
  exit 1
fi
(cd "$OUT" && "$REPO/$VENV/bin/python" - "$REPO" "$OUT") <<'PY'
# (run outside the checkout, so nucleaizer_backend is the installed one)
# the pipeline's output: every image has nuclei, the tables and the label images agree, and on
# the fluorescence examples the counts are within 15 % of the annotated ones (the main suite's
# criterion; H&E is not held to it there either)
import csv, sys
from collections import Counter
from pathlib import Path
import numpy as np, tifffile
import nucleaizer_backend
repo, out = Path(sys.argv[1]), Path(sys.argv[2])
assert "site-packages" in nucleaizer_backend.__file__, nucleaizer_backend.__file__
truth = {r["id"]: (r["style"], int(r["nuclei"]))
         for r in csv.DictReader(open(repo / "example_images/index.csv"))}
rows = list(csv.DictReader(open(out / "Image.csv")))
per_image = Counter(int(r["ImageNumber"]) for r in csv.DictReader(open(out / "Nuclei.csv")))
assert sorted(Path(r["FileName_Original"]).stem for r in rows) == sorted(truth), rows
failures = []
for r in rows:
    name = Path(r["FileName_Original"]).stem
    style, annotated = truth[name]
    n = int(float(r["Count_Nuclei"]))
    labels = tifffile.imread(str(next((out / "labels").glob(f"{name}*.tif*"))))
    found = len(np.unique(labels[labels > 0]))
    print(f"[py39]   {name:<22} nuclei {n:>4} (annotated {annotated:>3}), "
          f"Nuclei.csv rows {per_image[int(r['ImageNumber'])]:>4}, labels {found:>4}", file=sys.stderr)
    if n <= 0:
        failures.append(f"{name}: no nuclei")
    if per_image[int(r["ImageNumber"])] != n or found != n:
        failures.append(f"{name}: Count_Nuclei {n}, Nuclei.csv rows {per_image[int(r['ImageNumber'])]}, labels {found}")
    if style == "fluo" and abs(n - annotated) > 0.15 * annotated:
        failures.append(f"{name}: {n} nuclei, annotated {annotated}")
if failures:
    sys.exit("[py39] pipeline output wrong:\n  " + "\n  ".join(failures))
PY
t2=$(date +%s)
echo "[py39] headless pipeline: $((t2 - t1)) s" >&2
echo "[py39] Python 3.9 stage passed" >&2
