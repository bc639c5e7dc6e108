#!/usr/bin/env bash
# Creates (or completes) the project-local environment .venv with everything the project needs:
# torch + torchvision built for each other, CellProfiler 4.2.8.1 (headless) and this package.
# Idempotent: a finished install leaves a stamp keyed on this script's content, setup.py and
# pyproject.toml, so a second call returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NUCLEAIZER_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.nucleaizer-setup-$(cat scripts/setup_env.sh setup.py pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi

echo "[setup] creating $VENV (one time, about 5 minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade "pip<25" wheel

# torch and torchvision must come from one build family. The machine's pip may point at a
# CPU-only torch wheel that no registry torchvision works with, so we bypass local wheel
# folders and take both from the registry (CUDA builds; they run on CPU too).
if ! "$VENV/bin/python" -c "import torch, torchvision; torchvision.ops.nms" >/dev/null 2>&1; then
  pip uninstall -y torch torchvision >/dev/null 2>&1 || true
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$VENV/bin/python" -m pip -q install \
    "torch==2.13.0" "torchvision==0.28.0"
fi

# torch needs setuptools >= 77.0.3 and pulls in the newest, which has no pkg_resources any
# more; CellProfiler (and the javabridge build) import it.
pip install "setuptools>=77.0.3,<81"

# CellProfiler 4.2.8.1 on Python 3.11: its pins do not build there, so we install it without
# its pinned dependencies and give it versions that work (see ../shared/docs/ENVIRONMENT.md).
if ! "$VENV/bin/python" -c "import cellprofiler, cellprofiler_core" >/dev/null 2>&1; then
  pip install "numpy<2" "cython<3"
  pip install --no-build-isolation "python-javabridge==4.0.5" "centrosome==1.2.3"
  pip install --no-deps "cellprofiler-core==4.2.8.1" "cellprofiler==4.2.8.1"
  pip install boto3 "docutils==0.15.2" "h5py<4" imageio "inflect<7" Jinja2 joblib mahotas \
    "matplotlib<4" "prokaryote==2.4.4" psutil python-bioformats pyzmq requests "scipy<1.13" \
    "scikit-image<0.23" scikit-learn six tifffile "sentry-sdk==0.18.0"
fi

pip install "numpy<2" safetensors pytest tqdm
pip install --no-deps -e .
touch "$stamp"
echo "[setup] environment ready: $VENV" >&2
