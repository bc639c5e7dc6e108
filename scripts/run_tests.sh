#!/usr/bin/env bash
# The test command: installs whatever is missing into .venv (first run about 5 minutes),
# then runs the whole test suite with real CellProfiler and the shipped models, then the
# backend's tests once more on the numpy 2 stack (scripts/test_backend_numpy2.sh), then the
# Python 3.9 + CellProfiler 4.2.8.1-pins stage (scripts/test_py39.sh: backend tests and one
# headless pipeline in .venv39). Both stages run even if the first fails; either failing fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ $# -gt 0 ]; then  # the tests named
  exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider tests
# the backend alone on the numpy 2 stack (a user's or a GPU machine's environment), and
# Python 3.9 with CellProfiler's own pins (a CellProfiler 4.2 user's environment)
failed=""
bash scripts/test_backend_numpy2.sh || failed="$failed numpy-2"
bash scripts/test_py39.sh || failed="$failed python-3.9"
if [ -n "$failed" ]; then
  echo "[tests] stage(s) failed:$failed" >&2
  exit 1
fi
