#!/usr/bin/env bash
# Optional, Debian/Ubuntu: what the GUI smoke test (tests/gui, scripts/gui_smoke.py) needs -
# wxPython built for the system's Python 3 and a virtual X server (Xvfb). The main set-up
# (scripts/setup_env.sh) does not need it; without it the GUI test is skipped.
# Nothing is added to .venv: the test puts the system's wx package (only it) on the import
# path itself, when it was built for .venv's Python version (Debian 12: Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends python3-wxgtk4.0 xvfb
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" - <<'PYEOF'
import sys
sys.path.insert(0, "scripts")
import gui_smoke
reason = gui_smoke.gui_unavailable_reason()
print("GUI smoke test: " + ("ready (tests/gui)" if reason is None else "not possible here: " + reason))
sys.exit(0 if reason is None else 1)
PYEOF
