#!/usr/bin/env bash
# The test command: installs whatever is missing into .venv (first run about 5 minutes),
# then runs the whole test suite with real CellProfiler and the shipped models, then the
# backend's tests once more on the numpy 2 stack (scripts/test_backend_numpy2.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ $# -gt 0 ]; then  # the tests named
  exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi
.venv/bin/python -m pytest -q -p no:cacheprovider tests
# and the backend alone on the numpy 2 stack (a user's or a GPU machine's environment)
exec bash scripts/test_backend_numpy2.sh
