"""TrainStyleAdaptation (plugins/trainstyleadaptation.py) in real CellProfiler 4.2.

- Both workflows of the example pipelines run headless end to end on the bundled images, as a
  user runs them (``cellprofiler -c -r -p ... -i example_images/images -o OUT``), with tiny
  training schedules set through the module's advanced settings (the shipped pipelines use
  the quick preset's): (a) style_adaptation_train.cppipe writes OUT/adapted_model, then
  segment_with_adapted_model.cppipe (same -o) segments with it; (b) adapt_then_segment.cppipe
  adapts before the group's first cycle and segments every image with the adapted model.
  The model folders load with nucleaizer_backend.load_model, the nuclei counts are sane and
  the experiment measurements are exported.
- In-process (no JVM: images are given as arrays): collecting images and annotation objects,
  what the backend is asked to do (its ``adapt`` replaced by a recorder), experiment
  measurements, display, settings round trip, validation errors and warnings, and the
  SegmentNucleiStyleAdapted validation change for workflow (b).
"""
import csv
import io
import json
import logging
import re
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
IMAGES = REPO / "example_images" / "images"
PIPELINES = REPO / "example_pipelines"
STEMS = sorted(p.stem for p in IMAGES.glob("*.png"))
WHEN_END = "At the end of the group"
WHEN_FIRST = "Before segmenting: on the group's images first"

# Tiny schedules for the pipeline runs (the whole adaptation of the 5 bundled images takes
# about 30 s on one CPU thread): 2 pix2pix steps per style, 1 synthetic pair per style,
# 2 fine-tuning steps; styles of 2 images (the 2 H&E examples) get a style model.
TINY = dict(
    advanced=True,
    synthetic_per_style=1,
    style_steps=2,
    finetune_steps=2,
    min_images_per_style=2,
    use_gpu=False,
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cpm(cellprofiler):
    """CellProfiler with the plugins (conftest's ``cellprofiler``; no JVM needed here)."""
    return cellprofiler


def train_module(cpm, **settings):
    m = cpm.instantiate_module("TrainStyleAdaptation")
    m.image_name.value = "Original"
    m.use_gpu.value = False
    for key, value in settings.items():
        getattr(m, key).value = value
    return m


def segment_module(cpm, **settings):
    m = cpm.instantiate_module("SegmentNucleiStyleAdapted")
    m.x_name.value = "Original"
    m.use_gpu.value = False
    for key, value in settings.items():
        getattr(m, key).value = value
    return m


def pipeline_of(cpm, *modules):
    pipeline = cpm.Pipeline()
    for i, m in enumerate(modules, start=1):
        m.set_module_num(i)
        pipeline.add_module(m)
    return pipeline


def tiny_copy(cpm, name, dst):
    """The example pipeline ``name`` with TINY schedules, written to ``dst``."""
    pipeline = cpm.Pipeline()
    pipeline.load(str(PIPELINES / f"{name}.cppipe"))
    found = False
    for m in pipeline.modules():
        if m.module_name == "TrainStyleAdaptation":
            for key, value in TINY.items():
                getattr(m, key).value = value
            found = True
        if m.module_name == "SegmentNucleiStyleAdapted":
            m.use_gpu.value = False
    with open(dst, "w") as f:
        pipeline.dump(f)
    return found


def run_cp(pipeline, out, images=IMAGES):
    from test_cp_pipelines import run_cellprofiler

    t0 = time.time()
    proc = run_cellprofiler(pipeline, out, images)
    return proc.stdout + proc.stderr, time.time() - t0


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def experiment_values(path):
    return {r["Key"]: r["Value"] for r in read_csv(path)}


def truth_counts():
    return {r["id"]: int(r["nuclei"]) for r in read_csv(REPO / "example_images" / "index.csv")}


@pytest.fixture(scope="module")
def workflow_a(cpm, tmp_path_factory):
    """(a): the training pipeline, then the segmentation pipeline with the same -o."""
    tmp = tmp_path_factory.mktemp("workflow_a")
    train, seg = tmp / "train.cppipe", tmp / "segment.cppipe"
    assert tiny_copy(cpm, "style_adaptation_train", train)
    assert not tiny_copy(cpm, "segment_with_adapted_model", seg)
    out = tmp / "out"
    train_log, train_s = run_cp(train, out)
    seg_log, seg_s = run_cp(seg, out)
    print("workflow (a): training pipeline %.0f s, segmentation pipeline %.0f s" % (train_s, seg_s))
    return dict(out=out, train=train, train_log=train_log, seg_log=seg_log)


@pytest.fixture(scope="module")
def workflow_b(cpm, tmp_path_factory):
    """(b): adapt before the group's first cycle, segment in the same run."""
    tmp = tmp_path_factory.mktemp("workflow_b")
    pipeline = tmp / "adapt_then_segment.cppipe"
    assert tiny_copy(cpm, "adapt_then_segment", pipeline)
    out = tmp / "out"
    log, seconds = run_cp(pipeline, out)
    print("workflow (b): %.0f s" % seconds)
    return dict(out=out, log=log)


# --------------------------------------------------------------------------- workflow (a)


def check_model_folder(folder):
    from nucleaizer_backend import load_model

    for name in ("main.safetensors", "preseg.safetensors", "model.json", "style_sheet.png"):
        assert (folder / name).is_file(), name
    bundle = load_model(folder, "cpu")
    assert bundle.main_meta["kind"] == "main"
    assert bundle.main_meta["adapted"]["n_images"] == 5
    info = json.loads((folder / "model.json").read_text())
    assert sorted(info["adaptation"]["target_images"]) == STEMS  # named after the files
    assert info["adaptation"]["finetune"]["steps"] == 2
    assert info["adaptation"]["settings"]["synthetic_per_cluster"] == 1
    return info


def check_experiment(path, folder):
    values = experiment_values(path)
    assert values["StyleAdaptation_ModelFolder"] == str(folder)
    assert int(values["StyleAdaptation_Images"]) == 5
    assert int(values["StyleAdaptation_AnnotatedImages"]) == 0
    styles = int(values["StyleAdaptation_Styles"])
    learned = int(values["StyleAdaptation_StyleModels"])
    assert 1 <= learned <= styles
    assert int(values["StyleAdaptation_SyntheticPairs"]) == learned  # 1 per style
    assert int(values["StyleAdaptation_FineTuneSteps"]) == 2
    assert 0 <= int(values["StyleAdaptation_SkippedImages"]) < 5
    assert float(values["StyleAdaptation_Seconds"]) > 0
    return values


def check_segmentation(out):
    """Every bundled image segmented, counts within a sane range of the annotations."""
    rows = read_csv(out / "Image.csv")
    assert sorted(Path(r["FileName_Original"]).stem for r in rows) == STEMS
    truth = truth_counts()
    nuclei = read_csv(out / "Nuclei.csv")
    for r in rows:
        stem = Path(r["FileName_Original"]).stem
        n = int(float(r["Count_Nuclei"]))
        assert 0.5 * truth[stem] <= n <= 1.5 * truth[stem], (stem, n, truth[stem])
        assert sum(1 for o in nuclei if o["ImageNumber"] == r["ImageNumber"]) == n
        assert (out / "labels" / f"{stem}.tiff").is_file()
    return {Path(r["FileName_Original"]).stem: int(float(r["Count_Nuclei"])) for r in rows}


def test_workflow_a_training_pipeline_writes_a_loadable_model(workflow_a):
    out = workflow_a["out"]
    info = check_model_folder(out / "adapted_model")
    check_experiment(out / "style_adaptation" / "Experiment.csv", out / "adapted_model")
    assert len(read_csv(out / "style_adaptation" / "Image.csv")) == 5
    log = workflow_a["train_log"]
    # progress goes to CellProfiler's log, stage by stage
    for stage in ("nucleus masks 5/5", "style models (pix2pix)", "fine-tuning the main network 2/2",
                  "writing the model folder 3/3"):
        assert "TrainStyleAdaptation (#5): %s" % stage in log, stage
    assert info["adaptation"]["base_model"]["name"] == "nucleaizer-default"


def test_workflow_a_segmentation_uses_the_adapted_model(workflow_a):
    import tifffile
    from nucleaizer_backend import segment_image
    from nucleaizer_backend.imageio_utils import read_image

    out = workflow_a["out"]
    check_segmentation(out)
    # the pipeline's labels are those of the adapted model (same automatic size)
    name = "fluo_0e5edb072788"
    image = read_image(IMAGES / f"{name}.png")
    expected = segment_image(image, model=out / "adapted_model", device="cpu").labels
    labels = tifffile.imread(out / "labels" / f"{name}.tiff")
    assert labels.shape == expected.shape
    agreement = np.mean((labels > 0) == (expected > 0))
    assert agreement > 0.99 and abs(int(labels.max()) - int(expected.max())) <= 1


def test_workflow_a_rerun_reuses_the_finished_adaptation(workflow_a):
    """Running the training pipeline again on the same images and folder does not train
    again: every stage is found finished (the images reach the backend identically)."""
    out = workflow_a["out"]
    main = out / "adapted_model" / "main.safetensors"
    before = main.stat().st_mtime_ns
    from nucleaizer_backend.style.adapt import STAGES

    log, _ = run_cp(workflow_a["train"], out)
    assert log.count("finished in an earlier run") == len(STAGES)
    assert main.stat().st_mtime_ns == before


def test_an_adaptation_error_fails_the_headless_run(workflow_a, tmp_path):
    """A folder that holds something else is refused by the backend; the run stops with
    exit status 1 and the message in the log (the adaptation runs in the group's last
    cycle, where CellProfiler treats errors as module errors)."""
    import subprocess

    from test_cp_pipelines import CELLPROFILER, _env

    out = tmp_path / "out"
    (out / "adapted_model").mkdir(parents=True)
    (out / "adapted_model" / "notes.txt").write_text("mine")
    cmd = [str(CELLPROFILER), "-c", "-r", "-p", str(workflow_a["train"]), "-i", str(IMAGES),
           "-o", str(out), "--plugins-directory", str(PLUGINS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=str(REPO))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "TrainStyleAdaptation: %s holds something else" % (out / "adapted_model") in log
    assert sorted(os.listdir(out / "adapted_model")) == ["notes.txt"]


# --------------------------------------------------------------------------- workflow (b)


def test_workflow_b_adapts_then_segments_every_image(workflow_b):
    out = workflow_b["out"]
    check_model_folder(out / "adapted_model")
    check_experiment(out / "Experiment.csv", out / "adapted_model")
    check_segmentation(out)
    log = workflow_b["log"]
    # the adaptation ran before the first cycle's segmentation
    assert log.index("TrainStyleAdaptation (#5): writing the model folder 3/3") < log.index(
        "module SegmentNucleiStyleAdapted # 6"
    )


def annotated_pipeline(cpm, path):
    """Workflow (b) with annotations: NamesAndTypes loads each image (*.png, colour) and its
    label image (*.tif) as the objects "Truth" (matched by order); TrainStyleAdaptation uses
    them as the masks (GTstyle) before segmenting."""
    sys.path.insert(0, str(PIPELINES))
    try:
        import build_pipelines as b
    finally:
        sys.path.remove(str(PIPELINES))
    mods = b.input_modules()
    names = mods[2]
    names.assignment_method.value = "Images matching rules"
    names.matching_choice.value = "Order"
    first = names.assignments[0]
    first.rule_filter.value = 'and (file does endwith ".png")'
    first.image_name.value = "Original"
    first.load_as_choice.value = "Color image"
    names.add_assignment()
    second = names.assignments[1]
    second.rule_filter.value = 'and (file does endwith ".tif")'
    second.object_name.value = "Truth"
    second.load_as_choice.value = "Objects"
    train = b.module("TrainStyleAdaptation", image_name="Original", use_annotations=True,
                     annotation_objects="Truth", when=WHEN_FIRST, output_name="adapted_model")
    for key, value in TINY.items():
        getattr(train, key).value = value
    seg = b.module("SegmentNucleiStyleAdapted", x_name="Original", y_name="Nuclei",
                   model_choice="Custom", model_directory="Default Output Folder|",
                   model_name="adapted_model", use_gpu=False)
    mods += [train, seg, b.export("Nuclei", "Experiment")]
    pipeline = pipeline_of(cpm, *mods)
    for m in (train, seg):
        m.test_valid(pipeline)
    train.validate_module_warnings(pipeline)  # the objects come from an input module: no rerun
    with open(path, "w") as f:
        pipeline.dump(f)


def test_workflow_b_with_annotation_objects(cpm, tmp_path):
    """Annotations given as objects upstream (here loaded by NamesAndTypes) are used as the
    masks when adapting before segmenting: the modules up to their provider run for every
    image of the group first."""
    names = ["fluo_0e5edb072788", "fluo_ce88df7356d9", "he_420f43d21dba"]
    data = tmp_path / "data"
    for sub, ext in (("images", "png"), ("labels", "tif")):
        (data / sub).mkdir(parents=True)
        for name in names:
            shutil.copy(REPO / "example_images" / sub / f"{name}.{ext}", data / sub / f"{name}.{ext}")
    pipeline = tmp_path / "annotated.cppipe"
    annotated_pipeline(cpm, pipeline)
    out = tmp_path / "out"
    run_cp(pipeline, out, images=data)
    info = json.loads((out / "adapted_model" / "model.json").read_text())
    assert info["adaptation"]["masks_source"] == {name: "GT" for name in names}
    values = experiment_values(out / "Experiment.csv")
    assert int(values["StyleAdaptation_AnnotatedImages"]) == 3
    counts = {Path(r["FileName_Original"]).stem: int(float(r["Count_Nuclei"]))
              for r in read_csv(out / "Image.csv")}
    truth = truth_counts()
    assert sorted(counts) == names
    for name in names:
        assert 0.5 * truth[name] <= counts[name] <= 1.5 * truth[name], (name, counts[name])


# --------------------------------------------------------------------------- in-process


class Recorder:
    """Stands for nucleaizer_backend.adapt: records the call, writes what a finished
    adaptation leaves that the module reads (model.json, style_sheet.png)."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, out, annotations=None, config=None, progress=None):
        import imageio.v3 as iio
        from nucleaizer_backend import AdaptResult

        self.calls.append(
            dict(images=list(images), out=Path(out), annotations=annotations, config=config))
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out / "style_sheet.png", np.full((40, 90, 3), 128, np.uint8))
        names = [n for n, _ in images]
        adaptation = {
            "n_images": len(names),
            "target_images": names,
            "masks_source": {n: "GT" if annotations and n in annotations else "AUTO" for n in names},
            "clusters": {"styles": [{"images": names[:-1], "learned": True},
                                    {"images": names[-1:], "learned": False}]},
            "synthetic": {"count": 7},
            "finetune": {"steps": 3},
            "seconds": {"masks": 1.5, "package": 2.0},
        }
        (out / "model.json").write_text(json.dumps({"adaptation": adaptation}))
        for stage in ("masks", "styles", "styles", "finetune"):
            progress(stage, 1, 1, {"loss": 0.5})
        return AdaptResult(
            model_dir=out, n_images=len(names), n_clusters=2, n_styles_learned=1,
            skipped=names[-1:], synthetic_count=7, seconds={"masks": 1.5, "package": 2.0},
            style_sheet=out / "style_sheet.png",
        )


@pytest.fixture
def recorder(monkeypatch):
    import nucleaizer_backend

    rec = Recorder()
    monkeypatch.setattr(nucleaizer_backend, "adapt", rec)
    return rec


def workspace_of(cpm, pipeline, module, m, object_set=None):
    return cpm.Workspace(pipeline, module, m, object_set or cpm.ObjectSet(), m, cpm.ImageSetList())


def run_cycles(cpm, module, cycles, show_window=False, test_mode=False, group=True,
               before_post_group=None):
    """prepare_group, run for each (file name, pixels, labels or None), post_group, on
    real CellProfiler measurements/images/objects (with CellProfiler's Group_Index and
    Group_Length unless ``group`` is False); returns (workspace, pipeline)."""
    pipeline = pipeline_of(cpm, module)
    pipeline.test_mode = test_mode
    module.show_window = show_window
    m = cpm.Measurements()
    numbers = list(range(1, len(cycles) + 1))
    module.prepare_group(workspace_of(cpm, pipeline, module, m), {}, numbers)
    workspace = None
    for number, (file_name, pixels, labels) in zip(numbers, cycles):
        if number > 1:
            m.next_image_set(number)
        m.clear_cache()
        del m.providers[:]
        m.add_image_measurement("FileName_Original", file_name)
        m.add_image_measurement("Metadata_Style", file_name[:2])
        if group:
            m.add_image_measurement("Group_Index", number)
            m.add_image_measurement("Group_Length", len(cycles))
        m.add("Original", pixels if isinstance(pixels, cpm.Image) else cpm.Image(pixels))
        object_set = cpm.ObjectSet()
        if labels is not None:
            objects = cpm.Objects()
            objects.segmented = labels
            object_set.add_objects(objects, "Annotations")
        workspace = workspace_of(cpm, pipeline, module, m, object_set)
        module.run(workspace)
    if before_post_group:
        before_post_group()
    module.post_group(workspace, {})
    return workspace, pipeline


def test_collects_images_and_annotations_then_adapts_at_the_end(cpm, tmp_path, recorder, monkeypatch):
    from test_cp_modules import StandInFigure

    rng = np.random.default_rng(0)
    colour = rng.random((32, 40, 3))
    gray = rng.random((32, 40))
    labels = np.zeros((32, 40), np.int32)
    labels[4:10, 4:10] = 1
    labels[20:28, 20:30] = 2
    module = train_module(
        cpm,
        use_annotations=True,
        annotation_objects="Annotations",
        output_directory="Elsewhere...|%s" % tmp_path,
        output_name="model_\\g<Style>",
        advanced=True,
        synthetic_per_style=5,
        synthetic_share=0.4,
        finetune_steps=7,
        style_steps=3,
        min_images_per_style=2,
        preset="Full",
    )
    cycles = [
        ("he_stack.tif", colour, labels),  # two planes of one file: same file name
        ("he_stack.tif", gray, np.zeros((32, 40), np.int32)),  # empty: not annotated
        ("he_other.png", colour, labels),
    ]
    calls_in_the_last_cycle = []
    workspace, pipeline = run_cycles(
        cpm, module, cycles, show_window=True,
        before_post_group=lambda: calls_in_the_last_cycle.append(len(recorder.calls)))

    # adapted in the group's last cycle (a module error there stops a headless run with
    # status 1), not again after the group
    assert calls_in_the_last_cycle == [1]
    assert len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call["out"] == tmp_path / "model_he"  # metadata tag filled in
    names = [n for n, _ in call["images"]]
    assert names == ["he_stack_1", "he_stack_2", "he_other"]
    for (_, a), (_, pixels, _) in zip(call["images"], cycles):
        assert a.dtype == np.float32 and a.shape == pixels.shape
        np.testing.assert_allclose(a, pixels, rtol=1e-6)
    assert sorted(call["annotations"]) == ["he_other", "he_stack_1"]
    np.testing.assert_array_equal(call["annotations"]["he_other"], labels)
    cfg = call["config"]
    assert (cfg.preset, cfg.synthetic_per_cluster, cfg.synthetic_share) == ("full", 5, 0.4)
    assert (cfg.finetune_steps, cfg.style_steps, cfg.min_cluster_size) == (7, 3, 2)
    assert cfg.base_model is None and cfg.device == "cpu"
    assert module.get_dictionary()["images"] == []  # the images are let go

    # display: each cycle, then the style sheet and the report after the group
    figure = StandInFigure()
    module.display(workspace, figure)
    rows = dict(zip(figure.named("subplot_table")[0]["row_labels"],
                    [r[0] for r in figure.named("subplot_table")[0]["statistics"]]))
    assert rows["Adapted model"] == str(tmp_path / "model_he") and rows["Images adapted to"] == "3"
    figure = StandInFigure()
    module.display_post_group(workspace, figure)
    assert figure.named("subplot_imshow_color")[0]["image"].shape == (40, 90, 3)
    report = [r[0] for r in figure.named("subplot_table")[0]["statistics"]]
    assert any("3 target images" in line for line in report)

    # experiment measurements at the end of the run, read from the model folder
    module.post_run(workspace)
    m = workspace.measurements
    value = lambda f: m.get_experiment_measurement("StyleAdaptation_" + f)  # noqa: E731
    assert value("ModelFolder") == str(tmp_path / "model_he")
    assert (value("Images"), value("AnnotatedImages"), value("Styles")) == (3, 2, 2)
    assert (value("StyleModels"), value("SkippedImages")) == (1, 1)
    assert (value("SyntheticPairs"), value("FineTuneSteps"), value("Seconds")) == (7, 3, 3.5)
    declared = {c[1] for c in module.get_measurement_columns(pipeline)}
    assert {f for f in m.get_feature_names("Experiment") if f.startswith("StyleAdaptation_")} == declared


def test_experiment_measurements_sum_over_group_folders(cpm, tmp_path):
    """With a metadata tag in the folder name each group has its own model; the experiment
    measurements list the folders and sum the numbers."""
    module = train_module(cpm, output_directory="Elsewhere...|%s" % tmp_path, output_name="m_\\g<Style>")
    for style, n in (("fl", 3), ("he", 2)):
        folder = tmp_path / ("m_" + style)
        folder.mkdir()
        adaptation = {"n_images": n, "clusters": {"styles": [{"images": ["x"] * n, "learned": True}]},
                      "synthetic": {"count": 20}, "finetune": {"steps": 400}, "seconds": {"masks": 1.0}}
        (folder / "model.json").write_text(json.dumps({"adaptation": adaptation}))
    pipeline = pipeline_of(cpm, module)
    m = cpm.Measurements()
    for number, style in enumerate(["fl", "fl", "he"], start=1):
        if number > 1:
            m.next_image_set(number)
        m.add_image_measurement("Metadata_Style", style)
    module.post_run(workspace_of(cpm, pipeline, module, m))
    assert m.get_experiment_measurement("StyleAdaptation_ModelFolder") == "%s; %s" % (
        tmp_path / "m_fl", tmp_path / "m_he")
    assert m.get_experiment_measurement("StyleAdaptation_Images") == 5
    assert m.get_experiment_measurement("StyleAdaptation_SyntheticPairs") == 40
    assert m.get_experiment_measurement("StyleAdaptation_FineTuneSteps") == 800


def test_adapts_after_the_group_when_its_last_cycle_did_not(cpm, tmp_path, recorder):
    """Without the group's last cycle (e.g. its image set was skipped, or a -l range ends
    inside the group), the images collected are adapted to in post_group."""
    module = train_module(cpm, output_directory="Elsewhere...|%s" % tmp_path)
    calls = []
    rng = np.random.default_rng(2)
    cycles = [("a.png", rng.random((16, 16)), None), ("b.png", rng.random((16, 16)), None)]
    run_cycles(cpm, module, cycles, group=False, show_window=True,
               before_post_group=lambda: calls.append(len(recorder.calls)))
    assert calls == [0] and len(recorder.calls) == 1
    assert [n for n, _ in recorder.calls[0]["images"]] == ["a", "b"]


def test_run_errors_are_clear(cpm, tmp_path, recorder):
    from nucleaizer_backend import InputImageError, NucleaizerError

    folder = "Elsewhere...|%s" % tmp_path
    volume = cpm.Image(np.random.default_rng(1).random((4, 16, 16)), dimensions=3)
    with pytest.raises(InputImageError, match="3D"):
        run_cycles(cpm, train_module(cpm, output_directory=folder), [("v.tif", volume, None)])
    module = train_module(cpm, output_directory=folder, use_annotations=True,
                          annotation_objects="Annotations")
    with pytest.raises(InputImageError, match="annotation objects"):
        run_cycles(cpm, module, [("a.png", np.zeros((16, 16)), np.ones((8, 8), np.int32))])
    # no image reached the module (e.g. all filtered out): nothing to adapt to
    module = train_module(cpm, output_directory=folder)
    pipeline = pipeline_of(cpm, module)
    m = cpm.Measurements()
    module.prepare_group(workspace_of(cpm, pipeline, module, m), {}, [1])
    with pytest.raises(NucleaizerError, match="no image"):
        module.post_group(workspace_of(cpm, pipeline, module, m), {})
    assert recorder.calls == []


def test_test_mode_does_not_adapt(cpm, tmp_path, recorder, caplog):
    module = train_module(cpm, output_directory="Elsewhere...|%s" % tmp_path)
    with caplog.at_level(logging.WARNING):
        run_cycles(cpm, module, [("a.png", np.zeros((16, 16)), None)], test_mode=True)
    assert recorder.calls == [] and "test mode" in caplog.text


def test_progress_is_logged_per_stage_and_throttled(caplog):
    sys.path.insert(0, str(PLUGINS))
    try:
        import trainstyleadaptation as tsa
    finally:
        sys.path.remove(str(PLUGINS))
    log = tsa._ProgressLog("TSA", every=3600)
    with caplog.at_level(logging.INFO, logger=tsa.LOGGER.name):
        log("masks", 1, 1, {"resumed": True})
        for step in range(1, 101):
            log("styles", step, 100, {"style": 0})
        log("styles", 100, 100, {})  # repeated end: not logged twice
        for step in range(1, 11):
            log("finetune", step, 10, {"loss": 0.25})
        for r in (1, 2):  # several rounds: each round's stages are logged anew
            log("masks", 4, 4, {"round": r, "rounds": 2})
    # (rates and ETAs depend on the clock: left out here)
    lines = [re.sub(r", [0-9.]+ (s/[a-z]+|[a-z]+/s)(, ETA [^,]+)?", "", r.getMessage())
             for r in caplog.records]
    assert lines == [
        "TSA: nucleus masks: finished in an earlier run",
        "TSA: style models (pix2pix) 1/100 step (1%), style 0",
        "TSA: style models (pix2pix) 100/100 step (100%), style 0",
        "TSA: fine-tuning the main network 1/10 step (10%), loss 0.250",
        "TSA: fine-tuning the main network 10/10 step (100%), loss 0.250",
        "TSA: round 1 of 2: nucleus masks 4/4 img (100%)",
        "TSA: round 2 of 2: nucleus masks 4/4 img (100%)",
    ]


# --------------------------------------------------------------------------- settings


def _values(module):
    return [s.unicode_value for s in module.settings()]


def test_cppipe_round_trip(cpm, tmp_path):
    module = train_module(
        cpm,
        use_annotations=True,
        annotation_objects="Truth",
        model_choice="Custom",
        model_directory="Default Input Folder sub-folder|models",
        model_name="base",
        output_directory="Default Output Folder sub-folder|models",
        output_name="adapted_\\g<Plate>",
        when=WHEN_FIRST,
        preset="Full",
        advanced=True,
        synthetic_per_style=12,
        synthetic_share=0.45,
        finetune_steps=123,
        style_steps=45,
        min_images_per_style=4,
        rounds=2,
    )
    module.use_gpu.value = True
    buf = io.StringIO()
    pipeline_of(cpm, module).dump(buf)
    text = buf.getvalue()
    assert "TrainStyleAdaptation:[module_num:1|svn_version" in text
    assert "variable_revision_number:2|" in text
    path = tmp_path / "roundtrip.cppipe"
    path.write_text(text)
    loaded = cpm.Pipeline()
    loaded.load(str(path))
    (again,) = loaded.modules()
    assert _values(again) == _values(module)
    assert [s.text for s in again.visible_settings()] == [s.text for s in module.visible_settings()]
    assert again.adapt_config() == module.adapt_config()
    rev = module.variable_revision_number
    assert module.upgrade_settings(_values(module), rev, module.module_name) == (_values(module), rev)
    with pytest.raises(ValueError, match="newer version"):
        module.upgrade_settings(_values(module), rev + 1, module.module_name)
    assert again.adapt_config().iterations == 2


def test_revision_1_settings_are_upgraded(cpm):
    """A revision-1 pipeline (before Adaptation rounds) loads with one round."""
    module = train_module(cpm, advanced=True, finetune_steps=7)
    values_rev1 = _values(module)[:-1]
    values, rev = module.upgrade_settings(values_rev1, 1, module.module_name)
    assert rev == 2 and values == values_rev1 + ["1"]
    module.set_settings_from_values(values, rev, module.module_name)
    assert module.adapt_config().iterations == 1 and module.adapt_config().finetune_steps == 7


def test_visible_settings_and_defaults(cpm):
    module = train_module(cpm)
    texts = lambda: [s.text for s in module.visible_settings()]  # noqa: E731
    assert module.annotation_objects.text not in texts()
    assert module.model_directory.text not in texts()
    assert module.finetune_steps.text not in texts()
    assert module.output_directory.value == "Default Output Folder|"
    assert module.output_name.value == "adapted_model"
    assert module.when.value == WHEN_END and module.preset.value == "Quick"
    # advanced values are used only with the advanced settings on
    module.finetune_steps.value = 5
    cfg = module.adapt_config()
    assert (cfg.finetune_steps, cfg.style_steps, cfg.synthetic_per_cluster) == (None, None, 20)
    assert (cfg.synthetic_share, cfg.min_cluster_size, cfg.preset) == (0.3, 3, "quick")
    module.use_annotations.value = True
    module.model_choice.value = "Custom"
    module.advanced.value = True
    for setting in (module.annotation_objects, module.model_directory, module.model_name,
                    module.finetune_steps, module.style_steps, module.synthetic_share,
                    module.min_images_per_style):
        assert setting.text in texts()
    assert module.adapt_config().finetune_steps == 5
    assert module.is_aggregation_module() and module.volumetric() is False


def test_measurement_columns_are_experiment_post_run(cpm):
    from cellprofiler_core.constants.measurement import MCA_AVAILABLE_POST_RUN

    module = train_module(cpm)
    pipeline = pipeline_of(cpm, module)
    columns = module.get_measurement_columns(pipeline)
    assert {c[1] for c in columns} == {
        "StyleAdaptation_" + f
        for f in ("ModelFolder", "Images", "AnnotatedImages", "Styles", "StyleModels", "SkippedImages",
                  "SyntheticPairs", "FineTuneSteps", "Seconds")
    }
    for c in columns:
        assert c[0] == "Experiment" and c[3] == {MCA_AVAILABLE_POST_RUN: True}
    assert dict((c[1], c[2]) for c in columns)["StyleAdaptation_ModelFolder"].startswith("varchar")
    in_pipeline = {(c[0], c[1]) for c in pipeline.get_measurement_columns()}
    assert {(c[0], c[1]) for c in columns} <= in_pipeline
    assert module.get_categories(pipeline, "Experiment") == ["StyleAdaptation"]
    assert module.get_categories(pipeline, "Image") == []
    assert "SyntheticPairs" in module.get_measurements(pipeline, "Experiment", "StyleAdaptation")


def test_prepare_to_create_batch_maps_both_folders(cpm):
    module = train_module(cpm, model_choice="Custom")
    module.model_directory.value = "Elsewhere...|/local/share/models"
    module.output_directory.value = "Elsewhere...|/local/share/out"

    def alter(path, **kwargs):
        return path.replace("/local/share", "/cluster/share")

    assert module.prepare_to_create_batch(None, alter) is True
    assert module.model_directory.value == "Elsewhere...|/cluster/share/models"
    assert module.output_directory.value == "Elsewhere...|/cluster/share/out"


# --------------------------------------------------------------------------- validation


def test_validation_errors(cpm, tmp_path, monkeypatch):
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    module = train_module(cpm, output_directory="Elsewhere...|%s" % tmp_path)
    pipeline = pipeline_of(cpm, module)
    module.validate_module(pipeline)  # shipped base model, new folder: fine

    monkeypatch.setitem(sys.modules, "nucleaizer_backend", None)
    with pytest.raises(cpm.ValidationError, match="nucleaizer_backend Python package is not installed"):
        module.validate_module(pipeline)
    monkeypatch.undo()

    module.model_choice.value = "Custom"
    module.model_directory.value = "Elsewhere...|%s" % (tmp_path / "nowhere")
    with pytest.raises(cpm.ValidationError, match="Cannot use the base model.*not found") as e:
        module.validate_module(pipeline)
    assert e.value.get_setting() is module.model_name
    module.model_directory.value = "Elsewhere...|%s" % DEFAULT_MODEL_DIR
    module.model_name.value = "preseg.safetensors"
    with pytest.raises(cpm.ValidationError, match="fine-tunes a main network"):
        module.validate_module(pipeline)
    base = tmp_path / "base"
    shutil.copytree(DEFAULT_MODEL_DIR, base)
    module.model_directory.value = "Elsewhere...|%s" % base
    module.model_name.value = ""
    module.validate_module(pipeline)
    module.output_directory.value = "Elsewhere...|%s" % tmp_path
    module.output_name.value = "base"
    with pytest.raises(cpm.ValidationError, match="new folder, not the base model's"):
        module.validate_module(pipeline)
    module.output_name.value = "  "
    with pytest.raises(cpm.ValidationError, match="Enter a name"):
        module.validate_module(pipeline)
    module.output_name.value = "adapted_\\g<Plate>"
    module.validate_module(pipeline)  # a folder per group
    module.when.value = WHEN_FIRST
    with pytest.raises(cpm.ValidationError, match="cannot depend on metadata"):
        module.validate_module(pipeline)
    module.output_name.value = "adapted"

    pipeline.set_volumetric(True)
    with pytest.raises(cpm.ValidationError, match="2D"):
        module.validate_module(pipeline)
    pipeline.set_volumetric(False)

    second = train_module(cpm, output_directory="Elsewhere...|%s" % tmp_path, output_name="other")
    second.set_module_num(2)
    pipeline.add_module(second)
    module.validate_module(pipeline)
    with pytest.raises(cpm.ValidationError, match="Only one TrainStyleAdaptation"):
        second.validate_module(pipeline)


def test_validation_warnings(cpm, tmp_path):
    folder = "Elsewhere...|%s" % tmp_path
    seg = segment_module(cpm, model_choice="Custom", model_directory=folder, model_name="adapted_model")
    # (b) without a segmentation module that uses the model
    first = train_module(cpm, output_directory=folder, when=WHEN_FIRST)
    pipeline = pipeline_of(cpm, first)
    with pytest.raises(cpm.ValidationError, match="No SegmentNucleiStyleAdapted"):
        first.validate_module_warnings(pipeline)
    pipeline = pipeline_of(cpm, first, seg)
    first.validate_module_warnings(pipeline)
    # (b) reruns the processing modules that make its input image, once per image
    gray = cpm.instantiate_module("ColorToGray")
    gray.image_name.value = "Original"
    gray.combine_or_split.value = "Combine"
    gray.grayscale_name.value = "Gray"
    first.image_name.value = "Gray"
    with pytest.raises(cpm.ValidationError, match="reruns #1 ColorToGray"):
        first.validate_module_warnings(pipeline_of(cpm, gray, first, seg))
    first.image_name.value = "Original"
    # (a) with a segmentation module downstream that reads the folder too early
    end = train_module(cpm, output_directory=folder, when=WHEN_END)
    pipeline = pipeline_of(cpm, end, seg)
    with pytest.raises(cpm.ValidationError, match="written after the group's last cycle"):
        end.validate_module_warnings(pipeline)
    # grouped images need a folder per group
    alone = train_module(cpm, output_directory=folder)
    groups = cpm.instantiate_module("Groups")
    groups.wants_groups.value = True
    pipeline = pipeline_of(cpm, groups, alone)
    with pytest.raises(cpm.ValidationError, match="each group adapts its own model"):
        alone.validate_module_warnings(pipeline)
    alone.output_name.value = "adapted_\\g<Plate>"
    alone.validate_module_warnings(pipeline)
    # a folder that holds something else
    alone = train_module(cpm, output_directory=folder, output_name="busy")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(cpm.ValidationError, match="holds other files"):
        alone.validate_module_warnings(pipeline_of(cpm, alone))
    # a folder that holds an adaptation in two rounds, continued with two rounds
    (tmp_path / "rounds" / "work").mkdir(parents=True)
    (tmp_path / "rounds" / "work" / "rounds.json").write_text('{"iterations": 2}')
    two = train_module(cpm, output_directory=folder, output_name="rounds", advanced=True, rounds=2)
    two.validate_module_warnings(pipeline_of(cpm, two))
    two.rounds.value = 1
    with pytest.raises(cpm.ValidationError, match="holds other files"):
        two.validate_module_warnings(pipeline_of(cpm, two))


def test_segmentation_accepts_the_folder_adapted_before_segmenting(cpm, tmp_path):
    """SegmentNucleiStyleAdapted's custom model folder may be missing at validation when an
    upstream TrainStyleAdaptation adapts into it before the group's first cycle."""
    folder = "Elsewhere...|%s" % tmp_path
    seg = segment_module(cpm, model_choice="Custom", model_directory=folder, model_name="adapted_model")
    with pytest.raises(cpm.ValidationError, match="model not found"):
        seg.validate_module(pipeline_of(cpm, seg))
    first = train_module(cpm, output_directory=folder, when=WHEN_FIRST)
    seg.validate_module(pipeline_of(cpm, first, seg))
    # not when the model is written at the end of the group, to another folder, or below
    end = train_module(cpm, output_directory=folder, when=WHEN_END)
    with pytest.raises(cpm.ValidationError, match="model not found"):
        seg.validate_module(pipeline_of(cpm, end, seg))
    other = train_module(cpm, output_directory=folder, output_name="elsewhere", when=WHEN_FIRST)
    with pytest.raises(cpm.ValidationError, match="model not found"):
        seg.validate_module(pipeline_of(cpm, other, seg))
    below = train_module(cpm, output_directory=folder, when=WHEN_FIRST)
    with pytest.raises(cpm.ValidationError, match="model not found"):
        seg.validate_module(pipeline_of(cpm, seg, below))
    # the example pipeline of workflow (b) validates before any model exists
    saved = cpm.prefs.get_default_output_directory()
    os.makedirs(tmp_path / "fresh")
    cpm.prefs.set_default_output_directory(str(tmp_path / "fresh"))
    try:
        loaded = cpm.Pipeline()
        loaded.load(str(PIPELINES / "adapt_then_segment.cppipe"))
        ours = [m for m in loaded.modules()
                if m.module_name in ("TrainStyleAdaptation", "SegmentNucleiStyleAdapted")]
        assert len(ours) == 2
        for m in ours:
            m.test_valid(loaded)
            m.test_module_warnings(loaded)
    finally:
        cpm.prefs.set_default_output_directory(saved)
