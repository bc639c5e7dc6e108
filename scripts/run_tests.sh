#!/usr/bin/env bash
# The test command: installs whatever is missing into .venv (first run about 5 minutes),
# then runs the whole test suite with real CellProfiler and the shipped models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "${@:-tests}"
