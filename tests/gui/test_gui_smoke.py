"""The modules in CellProfiler's own GUI: scripts/gui_smoke.py under Xvfb (about 2.5 minutes).

Opens every example pipeline in CellProfiler's window, selects each of our modules, builds
every variant of its settings panel, opens its help and each setting's help, runs three
pipelines in test mode with our display windows on, and takes screenshots; then the same
with a fault planted in a copy of the plugins, which must be caught.

Skipped where the GUI cannot start: wxPython (Debian/Ubuntu: ``bash scripts/setup_gui.sh``)
or Xvfb missing.
"""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gui_smoke.py"
PIPELINES = sorted((REPO / "example_pipelines").glob("*.cppipe"))
OURS = ("SegmentNucleiStyleAdapted", "EstimateNucleusSize", "TrainStyleAdaptation")


def _load_script():
    spec = importlib.util.spec_from_file_location("gui_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gui_smoke = _load_script()
UNAVAILABLE = gui_smoke.gui_unavailable_reason()
pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(UNAVAILABLE is not None,
                       reason="GUI smoke test needs wxPython and Xvfb: %s" % UNAVAILABLE),
]


def run_smoke(out, *args, timeout=600):
    cmd = [sys.executable, str(SCRIPT), "--out", str(out)] + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return proc, report


def explain(proc, report):
    text = "exit %s\n--- stdout\n%s\n--- stderr (end)\n%s" % (
        proc.returncode, proc.stdout[-3000:], proc.stderr[-6000:])
    if report:
        text += "\n--- failures\n%s\n--- exceptions from our code\n%s" % (
            "\n".join(report["failures"]),
            "\n".join(e["step"] + "\n" + e["text"] for e in report["exceptions_ours"]))
    return text


def our_modules(pipeline):
    """(module_num, module name) of our modules in a .cppipe file."""
    found = re.findall(r"^(\w+):\[module_num:(\d+)\|", pipeline.read_text(), re.M)
    return [(int(num), name) for name, num in found if name in OURS]


def image_stats(path):
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    return pixels.shape, float(pixels.std()), len(np.unique(pixels.reshape(-1, 3), axis=0))


def test_gui_smoke_all_example_pipelines(tmp_path):
    out = tmp_path / "gui"
    proc, report = run_smoke(out)
    assert proc.returncode == 0 and report is not None, explain(proc, report)
    assert report["exceptions_ours"] == [] and report["failures"] == [], explain(proc, report)
    assert report["harness_error"] is None

    # one screenshot per (pipeline, module), each a drawn window, each panel complete
    shown = {(m["pipeline"], m["module_num"]): m for m in report["modules"]}
    expected = {(p.stem, num): name for p in PIPELINES for num, name in our_modules(p)}
    assert len(expected) >= 8 and {n for n in expected.values()} == set(OURS)
    assert set(shown) == set(expected)
    for key, name in expected.items():
        m = shown[key]
        assert m["module"] == name
        panel = m["panel"]
        assert panel["missing"] == [] and panel["visible_settings"] >= 5, (key, panel)
        assert panel["controls_shown"] == panel["visible_settings"], (key, panel)
        assert m["variants"] >= 10, key  # every choice and yes/no switched through
        assert m["panel_after_variants"]["missing"] == []
        shape, std, colours = image_stats(out / m["screenshot"])
        assert shape[0] >= 600 and shape[1] >= 1000, (key, shape)
        assert std > 10 and colours > 100, (key, std, colours)  # not a blank capture
        # the module help as CellProfiler renders it, and every setting's "?" help
        assert m["help_chars"] > 2000, key
        shape, std, colours = image_stats(out / m["help_screenshot"]["file"])
        assert std > 10 and colours > 50, (key, std, colours)
        assert m["setting_help"]["buttons"] == m["setting_help"]["windows"] == \
            panel["visible_settings"], (key, m["setting_help"])

    # test mode: the modules ran and drew their display windows
    runs = {t["pipeline"]: t for t in report["test_mode"]}
    assert set(runs) == set(gui_smoke.TEST_MODE_PIPELINES)
    for stem, t in runs.items():
        ours = [r for r in t["ran"] if r["module"] in OURS]
        assert ours and all(r["ok"] for r in t["ran"]), (stem, t["ran"])
        assert len(t["figures"]) == len(ours), (stem, t["figures"])
        for fig in t["figures"]:
            assert any(name in fig["title"] for name in OURS)
            shape, std, colours = image_stats(out / fig["file"])
            assert std > 10 and colours > 100, (stem, fig)


def test_gui_smoke_catches_an_exception_in_our_code(tmp_path):
    """A fault planted in a copy of the plugins (visible_settings raises when the nucleus
    size is set to Manual) must make the run fail and be reported as ours."""
    plugins = tmp_path / "plugins"
    shutil.copytree(REPO / "plugins", plugins, ignore=shutil.ignore_patterns("__pycache__"))
    source = plugins / "segmentnucleistyleadapted.py"
    text = source.read_text()
    anchor = "    def visible_settings(self):\n"
    assert text.count(anchor) == 1
    source.write_text(text.replace(anchor, anchor + (
        "        if self.size_choice == SIZE_MANUAL:\n"
        "            raise RuntimeError('fault planted by the GUI smoke test')\n")))
    out = tmp_path / "gui"
    proc, report = run_smoke(out, "--plugins", str(plugins), "--test-mode", "none",
                             "--pipeline", str(REPO / "example_pipelines" / "segment_and_measure.cppipe"))
    assert proc.returncode == 1 and report is not None, explain(proc, report)
    planted = [e for e in report["exceptions_ours"] if "fault planted" in e["text"]]
    assert planted, explain(proc, report)
    assert all("segmentnucleistyleadapted.py" in e["text"] for e in planted)
    assert report["failures"]
