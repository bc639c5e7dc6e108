#!/usr/bin/env bash
# The backend without CellProfiler on the numpy 2 stack (numpy 2, SciPy, scikit-image and
# matplotlib built for it), as a user's own environment or a GPU machine has it: CellProfiler
# 4.2.8 keeps .venv on numpy 1.26, so the numpy-2 packages are installed into an overlay
# folder put in front of .venv's (torch, torchvision and safetensors are .venv's: they work
# with both) and the tests that need no CellProfiler run there. Called by run_tests.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
OVERLAY=.venv/overlay-numpy2
stamp="$OVERLAY/.stamp-$(sha1sum < scripts/test_backend_numpy2.sh | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[numpy2] installing the numpy-2 stack into $OVERLAY (one time, under a minute)" >&2
  rm -rf "$OVERLAY"
  # (pip warns that CellProfiler's pins in .venv are not met: the overlay is not for it)
  PIP_CONSTRAINT= .venv/bin/python -m pip --disable-pip-version-check -q install \
    --target "$OVERLAY" "numpy>=2,<3" "scipy>=1.13" "scikit-image>=0.24" \
    "matplotlib>=3.9" tifffile imageio 2>&1 | grep -v -e "^WARNING: Location" \
    -e "^[a-z0-9_.-]* [0-9][^ ]* requires " -e "dependency resolver does not currently" >&2 || true
  PYTHONPATH="$OVERLAY" .venv/bin/python -c "import numpy; assert int(numpy.__version__.split('.')[0]) >= 2"
  touch "$stamp"
fi
PYTHONPATH="$OVERLAY" .venv/bin/python -c "import numpy, scipy, skimage, torch; print(
    f'[numpy2] numpy {numpy.__version__}, scipy {scipy.__version__}, '
    f'scikit-image {skimage.__version__}, torch {torch.__version__}')" >&2
exec env PYTHONPATH="$OVERLAY" .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/backend/test_backend_preprocess.py tests/backend/test_backend_segment.py \
  tests/backend/test_backend_labels.py tests/backend/test_backend_inference.py tests/backend/test_backend_pairing.py \
  tests/backend/test_backend_metrics.py tests/backend/test_backend_tiling.py tests/backend/test_backend_model.py \
  tests/backend/test_backend_errors.py tests/backend/test_backend_refine.py tests/backend/test_backend_train.py \
  tests/backend/test_cli.py tests/tools/test_train_timeboxed.py tests/tools/test_gpu_speed.py tests/backend/test_backend_speed.py "$@"
