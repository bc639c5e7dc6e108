"""Shared test set-up: one CPU thread, the bundled example images, the shipped model on CPU.

Tests use only bundled (example_images/) or generated data, never ../shared.
"""
import csv
import os
import sys
from pathlib import Path

import pytest

# Keep tests light on shared machines (CI runners, a laptop that is also training):
# one BLAS/OpenMP thread here and in every subprocess a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency of the backend
    pass

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gui: runs CellProfiler's GUI under Xvfb (tests/gui; skipped without "
                   "wxPython or Xvfb; -m 'not gui' leaves it out)")
EXAMPLES = REPO / "example_images"
PLUGINS = REPO / "plugins"


@pytest.fixture(scope="session")
def example_images_dir():
    """example_images/ of the repository: images/*.png, labels/*.tif, index.csv."""
    return EXAMPLES


@pytest.fixture(scope="session")
def example_index():
    """Rows of example_images/index.csv as dicts (id, style, height, width, nuclei,
    median_diameter_px ...), sorted by id."""
    with open(EXAMPLES / "index.csv", newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["id"])


@pytest.fixture(scope="session")
def cpu_model():
    """The shipped default model bundle (main + preseg) loaded on the CPU."""
    from nucleaizer_backend.models.io import load_model

    return load_model(None, torch.device("cpu"))


@pytest.fixture(scope="session")
def cellprofiler():
    """Real CellProfiler, headless, with this repository's plugins loaded (no JVM: the
    ``cp`` fixture of test_cp_modules starts it for image loading). A namespace of the
    CellProfiler classes the tests use."""
    import types
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_plugin_directory(str(PLUGINS))
    from cellprofiler_core.image import Image, ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.object import Objects, ObjectSet
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.setting import ValidationError
    from cellprofiler_core.utilities.core.modules import (
        fill_modules,
        get_module_names,
        instantiate_module,
    )
    from cellprofiler_core.workspace import Workspace

    ours = ("SegmentNucleiStyleAdapted", "EstimateNucleusSize", "TrainStyleAdaptation")
    if not all(name in get_module_names() for name in ours):
        fill_modules()
    for name in ours:
        assert name in get_module_names(), f"plugin {name} failed to load"
    return types.SimpleNamespace(
        Image=Image, ImageSetList=ImageSetList, Measurements=Measurements, Objects=Objects,
        ObjectSet=ObjectSet, Pipeline=Pipeline, Workspace=Workspace,
        ValidationError=ValidationError, instantiate_module=instantiate_module, prefs=prefs)


@pytest.fixture
def subprocess_env():
    """Environment for subprocesses started by tests (one thread, this interpreter's venv)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env
