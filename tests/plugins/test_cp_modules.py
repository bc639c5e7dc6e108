"""The CellProfiler modules (plugins/) run in-process in real CellProfiler 4.2 workspaces.

Everything here is real CellProfiler (cellprofiler_core Pipeline, Measurements, ObjectSet,
Workspace; images loaded by CellProfiler's own loader through the Java bridge) and the real
shipped model; only the GUI figure is a stand-in (wx is not installed), and it checks every
call against the signatures in CellProfiler's own figure source.

Manual nucleus diameters are used wherever a test is not about size estimation (faster).
"""
import ast
import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
IMAGES = REPO / "example_images" / "images"
PIPELINES = REPO / "example_pipelines"
FLUO = "fluo_0e5edb072788"  # 256x256, 28 nuclei, median diameter 17.9 px
HE = "he_420f43d21dba"  # 256x320 H&E-like, 49 nuclei, 20.4 px
DIAMETER = {FLUO: 17.9, HE: 20.4}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cp(cellprofiler):
    """CellProfiler (conftest's ``cellprofiler``) plus the JVM its image loader needs."""
    from cellprofiler_core.utilities.java import start_java, stop_java

    start_java()
    yield cellprofiler
    # as CellProfiler's own __main__ shuts down: readers first (they hold Java objects whose
    # release at interpreter exit, after the JVM is gone, printed "Error in sys.excepthook")
    from bioformats.formatreader import clear_image_reader_cache

    clear_image_reader_cache()
    stop_java()  # (without it the JVM keeps the process alive at exit)


def load_cp_image(cp, name):
    """A bundled image as CellProfiler's NamesAndTypes loads it (colour, float 0-1)."""
    m = cp.Measurements()
    m.add_image_measurement("URL_Original", pathlib.Path(IMAGES / f"{name}.png").as_uri())
    image = m.get_image("Original")
    m.close()
    return image.pixel_data


def segment_module(cp, **settings):
    m = cp.instantiate_module("SegmentNucleiStyleAdapted")
    m.x_name.value = "Original"
    m.use_gpu.value = False
    m.size_choice.value = "Manual"
    for key, value in settings.items():
        getattr(m, key).value = value
    return m


def estimate_module(cp, **settings):
    m = cp.instantiate_module("EstimateNucleusSize")
    m.image_name.value = "Original"
    m.use_gpu.value = False
    for key, value in settings.items():
        getattr(m, key).value = value
    return m


class Run:
    """What one run left behind: the workspace, measurements and pipeline."""

    def __init__(self, workspace, pipeline):
        self.workspace = workspace
        self.pipeline = pipeline
        self.m = workspace.measurements

    def objects(self, name="Nuclei"):
        return self.workspace.object_set.get_objects(name)

    def image(self, feature):
        return self.m.get_current_image_measurement(feature)

    def obj(self, name, feature):
        return np.asarray(self.m.get_current_measurement(name, feature))


def run_modules(cp, modules, images, show_window=False, measurements=None):
    """Run ``modules`` in order, in one real workspace, on ``images`` ({name: array or
    cellprofiler Image}); returns a Run."""
    pipeline = cp.Pipeline()
    for i, module in enumerate(modules, start=1):
        module.set_module_num(i)
        module.show_window = show_window
        pipeline.add_module(module)
    m = measurements if measurements is not None else cp.Measurements()
    for name, data in images.items():
        m.add(name, data if isinstance(data, cp.Image) else cp.Image(data))
    object_set = cp.ObjectSet()
    workspace = None
    for module in modules:
        workspace = cp.Workspace(pipeline, module, m, object_set, m, cp.ImageSetList())
        module.run(workspace)
    return Run(workspace, pipeline)


def check_objects(run, shape, name="Nuclei", confidence=True):
    """Structural checks every segmentation must pass; returns the label image."""
    objects = run.objects(name)
    labels = objects.segmented
    assert labels.shape == tuple(shape[:2])
    n = objects.count
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert list(ids) == list(range(1, n + 1)), "labels must be 1..N"
    assert run.image("Count_%s" % name) == n
    for feature in ("Location_Center_X", "Location_Center_Y", "Number_Object_Number"):
        assert len(run.obj(name, feature)) == n
    if confidence:
        scores = run.obj(name, "Nucleaizer_Confidence")
        assert len(scores) == n
        assert np.all((scores >= 0) & (scores <= 1))
    return labels


def recorded_columns_are_declared(run, module):
    """Every measurement this module recorded is declared in get_measurement_columns."""
    declared = {(c[0], c[1]) for c in module.get_measurement_columns(run.pipeline)}
    for object_name, feature, _ in module.get_measurement_columns(run.pipeline):
        assert run.m.has_feature(object_name, feature), (object_name, feature)
    return declared


# --------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("name", [FLUO, HE])
def test_segment_bundled_image_manual_size(cp, name):
    pixels = load_cp_image(cp, name)
    assert pixels.ndim == 3 and pixels.dtype.kind == "f"
    module = segment_module(cp, manual_diameter=DIAMETER[name])
    run = run_modules(cp, [module], {"Original": pixels})
    labels = check_objects(run, pixels.shape)
    assert run.objects().count > 0
    assert run.image("Nucleaizer_Diameter_Nuclei") == pytest.approx(DIAMETER[name])
    assert run.image("Nucleaizer_Scale_Nuclei") == pytest.approx(40.0 / DIAMETER[name], rel=1e-6)
    assert run.image("Nucleaizer_ScaleClamped_Nuclei") == 0
    assert run.image("Nucleaizer_SizeReliable_Nuclei") == 1
    # The objects' parent image is the input: downstream modules can relate them to it.
    assert run.objects().parent_image.pixel_data.shape == pixels.shape
    recorded_columns_are_declared(run, module)
    assert labels.max() == run.objects().count


def test_measurement_categories_and_names(cp):
    module = segment_module(cp)
    pipeline = cp.Pipeline()
    module.set_module_num(1)
    pipeline.add_module(module)
    assert "Nucleaizer" in module.get_categories(pipeline, "Image")
    assert "Count" in module.get_categories(pipeline, "Image")
    assert set(module.get_measurements(pipeline, "Image", "Nucleaizer")) == {
        "Diameter",
        "Scale",
        "ScaleClamped",
        "SizeReliable",
        "DegenerateImage",
        "StyleDistance",
        "UnfamiliarStyle",
    }
    assert module.get_measurement_objects(pipeline, "Image", "Nucleaizer", "Diameter") == ["Nuclei"]
    assert module.get_measurement_objects(
        pipeline, "Image", "Nucleaizer", "DegenerateImage") == ["Nuclei"]
    assert module.get_measurements(pipeline, "Nuclei", "Nucleaizer") == ["Confidence"]
    assert set(module.get_categories(pipeline, "Nuclei")) >= {"Location", "Number", "Nucleaizer"}
    module.want_confidence.value = False
    assert module.get_measurements(pipeline, "Nuclei", "Nucleaizer") == []
    assert ("Nuclei", "Nucleaizer_Confidence") not in {
        (c[0], c[1]) for c in module.get_measurement_columns(pipeline)
    }
    assert module.volumetric() is False
    assert module.is_object_identification_module()


def test_size_from_measurement_and_fallback(cp):
    """Size read from EstimateNucleusSize's measurement; a NaN measurement falls back to the
    automatic estimate (the backend's own estimate of the same image)."""
    from nucleaizer_backend import estimate_size

    pixels = load_cp_image(cp, FLUO)
    est = estimate_module(cp)
    seg = segment_module(
        cp, size_choice="From an image measurement", size_measurement="NucleusSize_MedianDiameter"
    )
    run = run_modules(cp, [est, seg], {"Original": pixels})
    check_objects(run, pixels.shape)
    measured = run.image("NucleusSize_MedianDiameter")
    assert run.image("Nucleaizer_Diameter_Nuclei") == pytest.approx(measured)
    expected = estimate_size(pixels, device="cpu")
    assert measured == pytest.approx(expected.median_diameter)
    assert run.image("NucleusSize_Count") == expected.count
    assert run.image("NucleusSize_Reliable") == int(expected.reliable)
    recorded_columns_are_declared(run, est)
    # The Measurement setting sees EstimateNucleusSize's measurement upstream...
    seg.size_measurement.test_valid(run.pipeline)

    # ...and a missing/NaN value means: estimate automatically for that image.
    m = cp.Measurements()
    m.add_image_measurement("Custom_Diameter", float("nan"))
    seg2 = segment_module(cp, size_choice="From an image measurement", size_measurement="Custom_Diameter")
    run2 = run_modules(cp, [seg2], {"Original": pixels}, measurements=m)
    check_objects(run2, pixels.shape)
    assert run2.image("Nucleaizer_Diameter_Nuclei") == pytest.approx(expected.median_diameter)
    assert run2.image("Nucleaizer_SizeReliable_Nuclei") == int(expected.reliable)


def test_measurement_setting_needs_an_upstream_measurement(cp):
    seg = segment_module(cp, size_choice="From an image measurement")
    pipeline = cp.Pipeline()
    seg.set_module_num(1)
    pipeline.add_module(seg)
    with pytest.raises(cp.ValidationError):
        seg.size_measurement.test_valid(pipeline)


def test_mask_restricts_objects_and_probability_image(cp):
    pixels = load_cp_image(cp, FLUO)
    mask = np.zeros(pixels.shape[:2], bool)
    mask[:, : pixels.shape[1] // 2] = True
    seg = segment_module(
        cp,
        manual_diameter=DIAMETER[FLUO],
        use_mask=True,
        mask_name="Mask",
        want_probability=True,
        probability_name="Probability",
    )
    run = run_modules(cp, [seg], {"Original": pixels, "Mask": mask})
    labels = check_objects(run, pixels.shape)
    assert run.objects().count > 0
    assert not labels[~mask].any(), "objects must be clipped to the mask"
    prob = run.workspace.image_set.get_image("Probability").pixel_data
    assert prob.shape == pixels.shape[:2]
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
    assert prob[labels > 0].mean() > prob[labels == 0].mean()


def test_input_image_mask_is_respected(cp):
    """A mask attached to the input image (MaskImage, Crop) restricts the objects too."""
    pixels = load_cp_image(cp, FLUO)
    mask = np.zeros(pixels.shape[:2], bool)
    mask[pixels.shape[0] // 2 :, :] = True
    image = cp.Image(pixels, mask=mask)
    run = run_modules(cp, [segment_module(cp, manual_diameter=DIAMETER[FLUO])], {"Original": image})
    labels = check_objects(run, pixels.shape)
    assert run.objects().count > 0 and not labels[~mask].any()


def test_custom_model_file_gives_the_same_labels_as_the_default(cp, tmp_path):
    """A custom model given as a folder + network file name, set up like a user would (the
    shipped model copied elsewhere), gives exactly the shipped model's labels."""
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    models = tmp_path / "models" / "copy"
    shutil.copytree(DEFAULT_MODEL_DIR, models)
    pixels = load_cp_image(cp, HE)
    default = run_modules(cp, [segment_module(cp, manual_diameter=20.0)], {"Original": pixels})
    custom = segment_module(
        cp,
        manual_diameter=20.0,
        model_choice="Custom",
        model_directory="Elsewhere...|%s" % models,
        model_name="main.safetensors",
    )
    assert custom.model_path() == str(models / "main.safetensors")
    custom_run = run_modules(cp, [custom], {"Original": pixels})
    np.testing.assert_array_equal(custom_run.objects().segmented, default.objects().segmented)


# --------------------------------------------------------------------------- validation


def test_validate_module_model_messages(cp, tmp_path):
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    seg = segment_module(cp)
    pipeline = cp.Pipeline()
    seg.set_module_num(1)
    pipeline.add_module(seg)
    seg.validate_module(pipeline)  # shipped model: fine

    seg.model_choice.value = "Custom"
    seg.model_directory.value = "Elsewhere...|%s" % (tmp_path / "nowhere")
    with pytest.raises(cp.ValidationError, match="model not found") as e:
        seg.validate_module(pipeline)
    assert e.value.get_setting() is seg.model_name

    (tmp_path / "empty").mkdir()
    seg.model_directory.value = "Elsewhere...|%s" % (tmp_path / "empty")
    with pytest.raises(cp.ValidationError, match="without main.safetensors"):
        seg.validate_module(pipeline)

    (tmp_path / "empty" / "junk.safetensors").write_bytes(b"not a model at all")
    seg.model_name.value = "junk.safetensors"
    with pytest.raises(cp.ValidationError, match="Cannot use the model"):
        seg.validate_module(pipeline)

    good = tmp_path / "good"
    shutil.copytree(DEFAULT_MODEL_DIR, good)
    seg.model_directory.value = "Elsewhere...|%s" % tmp_path
    seg.model_name.value = "good"
    seg.validate_module(pipeline)

    seg.use_mask.value = True
    seg.mask_name.value = seg.x_name.value
    with pytest.raises(cp.ValidationError, match="mask"):
        seg.validate_module(pipeline)

    est = estimate_module(cp, model_choice="Custom")
    est.model_directory.value = "Elsewhere...|%s" % (tmp_path / "nowhere")
    est.set_module_num(2)
    pipeline.add_module(est)
    with pytest.raises(cp.ValidationError, match="model not found"):
        est.validate_module(pipeline)


BAD_MODEL_FOLDERS = {
    "model_json_list": ("main", [1, 2], "a JSON object is expected"),
    "p_value_not_a_number": ("main", {"postprocess": {"p2": "abc"}}, "p2 must be a number"),
    "p_value_negative": ("main", {"postprocess": {"p4": -1}}, "p4 must be a number >= 0"),
    "unet_in_main_slot": ("unet", None, "'unet' network, but the main network"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FOLDERS))
def test_bad_model_folder_is_a_one_line_message(cp, tmp_path, case):
    """A model.json that is a list or has a bad p-value, or a U-Net file as the main
    network: a validation message naming the file, and at run time a ModelFileError of one
    line (not an AttributeError or ValueError from deep inside)."""
    from nucleaizer_backend import ModelFileError
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    network, info, problem = BAD_MODEL_FOLDERS[case]
    folder = tmp_path / case
    folder.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / ("%s.safetensors" % network), folder / "main.safetensors")
    if info is not None:
        (folder / "model.json").write_text(json.dumps(info))
    bad_file = folder / ("model.json" if info is not None else "main.safetensors")
    seg = segment_module(cp, manual_diameter=10.0, model_choice="Custom")
    seg.model_directory.value = "Elsewhere...|%s" % tmp_path
    seg.model_name.value = case
    pipeline = cp.Pipeline()
    seg.set_module_num(1)
    pipeline.add_module(seg)
    with pytest.raises(cp.ValidationError) as e:
        seg.validate_module(pipeline)
    assert str(bad_file) in e.value.message and problem in e.value.message
    assert e.value.get_setting() is seg.model_name
    pixels = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    with pytest.raises(ModelFileError) as e:
        run_modules(cp, [seg], {"Original": pixels})
    assert str(bad_file) in str(e.value) and "\n" not in str(e.value)


def test_custom_parameters_are_checked_against_their_ranges(cp):
    seg = segment_module(cp, params_choice="Custom")
    pipeline = cp.Pipeline()
    seg.set_module_num(1)
    pipeline.add_module(seg)
    seg.validate_module(pipeline)
    for name, value, allowed in (("p2", "nan", ">= 0"), ("p4", "inf", ">= 0"),
                                 ("p6", "nan", "from 0 to 1")):
        setting = getattr(seg, name)
        setting.value_text = value
        with pytest.raises(cp.ValidationError, match="must be a number %s" % allowed) as e:
            seg.validate_module(pipeline)
        assert e.value.get_setting() is setting
        setting.value = {"p2": 44.0, "p4": 1.0, "p6": 0.8}[name]
    seg.validate_module(pipeline)


def test_missing_backend_is_a_validation_message_not_a_load_failure(cp, monkeypatch):
    """Without the backend the modules still load (lazy import) and say what to install."""
    for module in (segment_module(cp), estimate_module(cp)):
        pipeline = cp.Pipeline()
        module.set_module_num(1)
        pipeline.add_module(module)
        monkeypatch.setitem(sys.modules, "nucleaizer_backend", None)
        with pytest.raises(cp.ValidationError, match="nucleaizer_backend Python package is not installed"):
            module.validate_module(pipeline)
        monkeypatch.undo()


def test_only_one_estimate_module_per_pipeline(cp):
    pipeline = cp.Pipeline()
    first, second = estimate_module(cp), estimate_module(cp)
    for i, m in enumerate([first, second], start=1):
        m.set_module_num(i)
        pipeline.add_module(m)
    first.validate_module(pipeline)
    with pytest.raises(cp.ValidationError, match="Only one EstimateNucleusSize"):
        second.validate_module(pipeline)


def test_revision_1_settings_are_upgraded(cp):
    """A pipeline saved before post-processing existed keeps its behaviour where it can: a
    non-default confidence (the user's value) is kept, as custom parameters whose p1..p6
    are the shipped model's; the later filters are off."""
    from nucleaizer_backend.models.io import stored_postprocess

    shipped = stored_postprocess().to_dict()
    module = segment_module(cp)
    current = [s.unicode_value for s in module.settings()]
    rev1 = current[:16]
    for confidence, choice in (("0.5", "From the model"), ("0.35", "Custom")):
        rev1[8] = confidence
        values, rev = module.upgrade_settings(list(rev1), 1, module.module_name)
        assert rev == 4 and len(values) == len(current)
        module.set_settings_from_values(values, rev, module.module_name)
        assert module.params_choice.value == choice
        assert module.confidence.value == float(confidence)
        assert module.refinement.value == "Rules and U-Net contour refinement"
        assert not module.tta.value
        assert {k: getattr(module, k).value for k in ("p1", "p2", "p3", "p4", "p5", "p6")} == \
            {k: shipped[k] for k in ("p1", "p2", "p3", "p4", "p5", "p6")}
        assert not module.exclude_size.value and not module.exclude_border_objects.value
        assert module.speed.value == "Accurate"


def test_revision_2_settings_keep_the_users_values(cp):
    module = segment_module(cp, params_choice="Custom", confidence=0.42, p1=0.3, p2=20.0)
    rev2 = [s.unicode_value for s in module.settings()][:25]
    values, rev = segment_module(cp).upgrade_settings(list(rev2), 2, module.module_name)
    upgraded = segment_module(cp)
    upgraded.set_settings_from_values(values, rev, module.module_name)
    assert rev == 4 and [s.unicode_value for s in upgraded.settings()][:25] == rev2
    assert (upgraded.confidence.value, upgraded.p1.value, upgraded.p2.value) == (0.42, 0.3, 20.0)
    assert not upgraded.exclude_size.value and not upgraded.exclude_border_objects.value
    assert (upgraded.size_range.min, upgraded.size_range.max) == (8, 100)


def test_revision_3_settings_keep_their_results_at_the_accurate_speed(cp):
    """Pipelines saved before the speed setting ran at the only speed there was; new modules
    start at the shipped model's default speed."""
    from nucleaizer_backend.models.io import stored_speed

    module = segment_module(cp, exclude_size=True, size_range=(5, 50))
    rev3 = [s.unicode_value for s in module.settings()][:28]
    values, rev = module.upgrade_settings(list(rev3), 3, module.module_name)
    upgraded = segment_module(cp)
    upgraded.set_settings_from_values(values, rev, module.module_name)
    assert rev == 4 and [s.unicode_value for s in upgraded.settings()][:28] == rev3
    assert upgraded.speed.value == "Accurate"
    assert upgraded.segment_options(None)["speed"] == "accurate"
    fresh = segment_module(cp)
    assert fresh.speed.value == stored_speed()["default"].capitalize()
    fresh.speed.value = "Fast"
    assert fresh.segment_options(20.0)["speed"] == "fast"
    assert fresh.speed in fresh.visible_settings()


def test_custom_parameters_start_from_the_chosen_models_values(cp, tmp_path):
    """Custom values start at the shipped model's (not the paper's); choosing another model
    fills in its values, unless the user has typed their own."""
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR, stored_postprocess

    shipped = stored_postprocess().to_dict()
    module = segment_module(cp)
    assert module.p2.value == shipped["p2"] and module.confidence.value == shipped["confidence"]
    assert shipped["p2"] != 44.0  # (the paper's)
    tuned = tmp_path / "tuned"
    shutil.copytree(DEFAULT_MODEL_DIR, tuned)
    info = json.loads((tuned / "model.json").read_text())
    info["postprocess"] = dict(info["postprocess"], p2=77.0, confidence=0.6)
    (tuned / "model.json").write_text(json.dumps(info))

    module.params_choice.value = "Custom"
    module.on_setting_changed(module.params_choice, None)
    assert module.p2.value == shipped["p2"]  # the shipped model is chosen
    module.model_choice.value = "Custom"
    module.model_directory.value = "Elsewhere...|%s" % tmp_path
    module.model_name.value = "tuned"
    module.on_setting_changed(module.model_name, None)
    assert (module.p2.value, module.confidence.value) == (77.0, 0.6)
    module.p2.value = 90.0  # typed by the user: stays when the model changes again
    module.model_name.value = "other"
    module.on_setting_changed(module.model_name, None)
    assert (module.p2.value, module.confidence.value) == (90.0, 0.6)


def test_discard_filters_match_the_same_filters_on_the_annotations(cp, example_index):
    """*Discard objects touching the border* and *outside the diameter range* (as
    IdentifyPrimaryObjects): on the bundled images, the nuclei kept and those dropped by
    each filter compare with the same filters applied to the annotations."""
    from nucleaizer_backend.labels import discard_objects
    from nucleaizer_backend.train.data import read_labels

    for row in example_index:
        name = row["id"]
        pixels = load_cp_image(cp, name)
        truth = read_labels(IMAGES.parent / "labels" / f"{name}.tif")
        runs = {}
        for on in (False, True):
            module = segment_module(cp, size_choice="Automatic (per image)",
                                    exclude_border_objects=on, exclude_size=on)
            module.size_range.value = (12, 60)
            runs[on] = run_modules(cp, [module], {"Original": pixels}, show_window=True)
        everything = check_objects(runs[False], pixels.shape)
        kept = check_objects(runs[True], pixels.shape)
        # the module applies the backend's filters to what it found ...
        expected, _, dropped = discard_objects(everything, np.ones(everything.max()), True,
                                               (12, 60))
        assert np.array_equal(kept, expected)
        statistics = dict(runs[True].workspace.display_data.statistics)
        for what, key in (("touching the border", "border"),
                          ("outside the diameter range", "size")):
            assert statistics.get("Discarded: " + what, "0") == "%d" % dropped[key]
        # ... and what they keep compares with the annotations filtered alike
        truth_kept, _, truth_dropped = discard_objects(truth, np.ones(truth.max()), True,
                                                       (12, 60))
        ours_all, truth_all = everything.max(), truth.max()
        ours, truth_kept = kept.max(), truth_kept.max()
        if row["style"] == "fluo":  # where the model's counts are right, so are the filtered
            assert abs(ours - truth_kept) <= max(3, 0.2 * truth_kept), (name, ours, truth_kept)
            assert abs(dropped["border"] - truth_dropped["border"]) <= 4, (name, dropped,
                                                                          truth_dropped)
        else:  # H&E: the model finds too few (known), in the same proportion after filtering
            assert abs(ours / truth_kept - ours_all / truth_all) < 0.1, (name, ours, truth_kept)
        assert ours < ours_all  # every bundled image has nuclei on its border


def test_parameter_settings_show_only_what_applies(cp):
    module = segment_module(cp)
    texts = lambda: [s.text for s in module.visible_settings()]  # noqa: E731
    assert module.confidence.text not in texts() and module.p1.text not in texts()
    module.params_choice.value = "Custom"
    assert module.confidence.text in texts() and module.p6.text in texts()
    module.refinement.value = "Rules only"
    assert module.p1.text in texts() and module.p3.text not in texts()
    module.refinement.value = "None"
    assert module.confidence.text in texts() and module.p1.text not in texts()


def test_newer_settings_revision_is_a_clear_error(cp):
    for module in (segment_module(cp), estimate_module(cp)):
        values = [s.unicode_value for s in module.settings()]
        rev = module.variable_revision_number
        assert module.upgrade_settings(values, rev, module.module_name) == (values, rev)
        with pytest.raises(ValueError, match="newer version"):
            module.upgrade_settings(values, 99, module.module_name)


# --------------------------------------------------------------------------- bad inputs


def _bad_inputs():
    rng = np.random.default_rng(0)
    return {
        "constant": np.full((64, 64), 0.3, np.float32),
        "all_nan": np.full((64, 64), np.nan, np.float32),
        "one_pixel": np.ones((1, 1), np.float32),
        "one_row": rng.random((1, 50)).astype(np.float32),
        "strip_4x2000": rng.random((4, 2000)).astype(np.float32),
        "strip_2000x4": rng.random((2000, 4)).astype(np.float32),
        "noise": rng.random((96, 80)).astype(np.float32),
    }


DEGENERATE = {"constant", "all_nan", "one_pixel", "one_row"}


@pytest.mark.parametrize("kind", sorted(_bad_inputs()))
def test_odd_images_give_objects_not_crashes(cp, kind, caplog):
    """Odd images give objects (none for a degenerate one, with the DegenerateImage flag and
    a warning naming the image set), never an exception: even 1x1 and 1-pixel-high images,
    which CellProfiler's dense object store cannot hold."""
    pixels = _bad_inputs()[kind]
    module = segment_module(cp, manual_diameter=10.0, want_probability=True)
    with caplog.at_level("WARNING"):
        run = run_modules(cp, [module], {"Original": pixels})
    check_objects(run, pixels.shape)
    recorded_columns_are_declared(run, module)
    flag = run.image("Nucleaizer_DegenerateImage_Nuclei")
    warned = [r for r in caplog.records if "degenerate" in r.getMessage()
              and r.name.endswith("_segmentnucleistyleadapted_run")]
    assert flag == int(kind in DEGENERATE)
    assert len(warned) == int(kind in DEGENERATE)
    if kind in DEGENERATE:
        assert run.objects().count == 0
        assert "'Original'" in warned[0].getMessage()
        assert run.workspace.image_set.get_image("NucleusProbability").pixel_data.shape == \
            pixels.shape


@pytest.mark.parametrize("kind", ["constant", "all_nan", "one_pixel", "one_row"])
def test_estimate_size_on_empty_images_is_flagged_unreliable(cp, kind):
    pixels = _bad_inputs()[kind]
    for want_objects in (False, True):
        run = run_modules(cp, [estimate_module(cp, want_objects=want_objects)],
                          {"Original": pixels})
        assert run.image("NucleusSize_Count") == 0
        assert run.image("NucleusSize_Reliable") == 0
        assert run.image("NucleusSize_MedianDiameter") > 0  # the stated default, not NaN
        assert np.isnan(run.image("NucleusSize_Spread"))
        if want_objects:
            assert run.objects("PresegNuclei").count == 0
            assert run.objects("PresegNuclei").segmented.shape == pixels.shape[:2]


def test_bit_depths_and_gray_give_the_same_nuclei(cp):
    """16-bit, float (any range) and 8-bit-as-float versions of one image: the same labels
    (normalisation is by robust percentiles); the gray version finds nuclei too."""
    import skimage.io

    raw = skimage.io.imread(IMAGES / f"{FLUO}.png")[..., :3]
    versions = {
        "cellprofiler_float": load_cp_image(cp, FLUO),
        "uint16": raw.astype(np.uint16) * 257,
        "float_0_1000": raw.astype(np.float64) * (1000.0 / 255.0),
    }
    results = {}
    for key, pixels in versions.items():
        run = run_modules(cp, [segment_module(cp, manual_diameter=DIAMETER[FLUO])], {"Original": pixels})
        results[key] = check_objects(run, pixels.shape)
    reference = results["cellprofiler_float"]
    for key, labels in results.items():
        assert (labels > 0).sum() > 0
        agreement = np.mean((labels > 0) == (reference > 0))
        assert agreement > 0.99, (key, agreement)
        assert abs(int(labels.max()) - int(reference.max())) <= 1, key
    gray = versions["cellprofiler_float"].mean(axis=-1)
    run = run_modules(cp, [segment_module(cp, manual_diameter=DIAMETER[FLUO])], {"Original": gray})
    check_objects(run, gray.shape)
    assert run.objects().count > 0


def test_3d_image_is_a_clear_error(cp):
    from nucleaizer_backend import InputImageError

    volume = np.random.default_rng(1).random((5, 64, 64)).astype(np.float32)
    image = cp.Image(volume, dimensions=3)
    for module in (segment_module(cp, manual_diameter=10.0), estimate_module(cp)):
        assert module.volumetric() is False  # CellProfiler refuses 3D pipelines up front
        with pytest.raises(InputImageError, match="3D"):
            run_modules(cp, [module], {"Original": image})


def test_mask_of_wrong_shape_is_a_clear_error(cp):
    from nucleaizer_backend import InputImageError

    pixels = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    seg = segment_module(cp, manual_diameter=10.0, use_mask=True, mask_name="Mask")
    with pytest.raises(InputImageError, match="mask"):
        run_modules(cp, [seg], {"Original": pixels, "Mask": np.ones((32, 32), bool)})


# --------------------------------------------------------------------------- CLI


def test_cli_and_module_give_the_same_labels(cp, tmp_path, subprocess_env):
    import tifffile

    d = DIAMETER[HE]
    pixels = load_cp_image(cp, HE)
    run = run_modules(cp, [segment_module(cp, manual_diameter=d)], {"Original": pixels})
    cli = Path(sys.executable).parent / "nucleaizer"
    out = tmp_path / "cli"
    proc = subprocess.run(
        [str(cli), "segment", str(IMAGES / f"{HE}.png"), "-o", str(out), "--diameter", str(d), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    cli_labels = tifffile.imread(out / f"{HE}.tif")
    np.testing.assert_array_equal(cli_labels, run.objects().segmented)


# --------------------------------------------------------------------------- settings I/O


def _settings(module):
    return [s.unicode_value for s in module.settings()]


def test_cppipe_round_trip_of_both_modules(cp, tmp_path):
    seg = segment_module(
        cp,
        y_name="MyNuclei",
        model_choice="Custom",
        model_directory="Default Input Folder sub-folder|models",
        model_name="adapted",
        size_choice="From an image measurement",
        size_measurement="NucleusSize_MedianDiameter",
        manual_diameter=33.5,
        confidence=0.35,
        gpu_memory_share=0.125,
        use_mask=True,
        mask_name="Tissue",
        want_confidence=False,
        want_probability=True,
        probability_name="NucProb",
        refinement="Rules only",
        tta=True,
        params_choice="Custom",
        p1=0.3,
        p2=20.0,
        p6=0.5,
    )
    seg.use_gpu.value = True
    est = estimate_module(
        cp,
        scope="All images of the group (pooled)",
        model_choice="Custom",
        model_directory="Default Output Folder|",
        model_name="adapted",
        confidence=0.6,
        gpu_memory_share=0.5,
        want_objects=True,
        objects_name="QuickNuclei",
    )
    pipeline = cp.Pipeline()
    for i, m in enumerate([est, seg], start=1):
        m.set_module_num(i)
        pipeline.add_module(m)
    buf = io.StringIO()
    pipeline.dump(buf)
    text = buf.getvalue()
    assert "SegmentNucleiStyleAdapted:[module_num:2|svn_version" in text
    assert "variable_revision_number:4|" in text
    path = tmp_path / "roundtrip.cppipe"
    path.write_text(text)
    loaded = cp.Pipeline()
    loaded.load(str(path))
    modules = loaded.modules()
    assert [m.module_name for m in modules] == ["EstimateNucleusSize", "SegmentNucleiStyleAdapted"]
    assert _settings(modules[0]) == _settings(est)
    assert _settings(modules[1]) == _settings(seg)
    assert [s.text for s in modules[1].visible_settings()] == [s.text for s in seg.visible_settings()]
    assert modules[0].is_aggregation_module() and not estimate_module(cp).is_aggregation_module()


def test_example_pipelines_load_and_match_their_builder(cp, tmp_path):
    """The shipped .cppipe files load with the plugins and are what build_pipelines.py
    makes (so editing the script and re-running it is the way to change them)."""
    import cellprofiler_core.preferences as prefs
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    sys.path.insert(0, str(PIPELINES))
    try:
        import build_pipelines
    finally:
        sys.path.remove(str(PIPELINES))
    # segment_with_adapted_model reads the model that style_adaptation_train writes into
    # the Default Output Folder: stand one in for it while validating
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / build_pipelines.ADAPTED_MODEL)
    saved = prefs.get_default_output_directory()
    prefs.set_default_output_directory(str(tmp_path))
    try:
        for name in build_pipelines.PIPELINES:
            loaded = cp.Pipeline()
            loaded.load(str(PIPELINES / f"{name}.cppipe"))
            built = build_pipelines.build(name)
            assert [m.module_name for m in loaded.modules()] == [m.module_name for m in built.modules()]
            for a, b in zip(loaded.modules(), built.modules()):
                assert _settings(a) == _settings(b), (name, a.module_name)
            ours = [
                m
                for m in loaded.modules()
                if m.module_name in ("SegmentNucleiStyleAdapted", "EstimateNucleusSize", "TrainStyleAdaptation")
            ]
            assert ours, name
            for m in ours:
                m.test_valid(loaded)
    finally:
        prefs.set_default_output_directory(saved)


def test_prepare_to_create_batch_maps_the_model_path(cp):
    for module in (segment_module(cp), estimate_module(cp)):
        module.model_choice.value = "Custom"
        module.model_directory.value = "Elsewhere...|/local/share/models"

        def alter(path, **kwargs):
            return path.replace("/local/share", "/cluster/share")

        assert module.prepare_to_create_batch(None, alter) is True
        assert module.model_directory.value == "Elsewhere...|/cluster/share/models"


def test_gpu_memory_share_helper_is_a_no_op_on_cpu():
    from nucleaizer_backend import NucleaizerError
    from nucleaizer_backend.device import set_memory_fraction

    assert set_memory_fraction(0.25, "cpu") is False
    with pytest.raises(NucleaizerError):
        set_memory_fraction(0.0, "cpu")


WORKER_CHILD = """
import sys
import torch
sys.path.insert(0, sys.argv[1])
import _nucleaizer_common as common
sys.stdin.readline()  # every sibling worker has started
print(common.share_cpu_with_other_workers(), torch.get_num_threads(), flush=True)
sys.stdin.readline()  # live on until every sibling has counted the workers
"""


def _start_workers(n, env, worker=True):
    """``n`` processes that run like CellProfiler's analysis workers (argv has
    --work-announce); returns what share_cpu_with_other_workers set in each and torch's
    threads after it."""
    flag = ["--work-announce", "tcp://127.0.0.1:1"] if worker else []
    procs = [subprocess.Popen([sys.executable, "-c", WORKER_CHILD, str(PLUGINS), *flag],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(n)]
    for p in procs:  # all of them run at once, as workers do
        p.stdin.write("\n")
        p.stdin.flush()
    found = [p.stdout.readline().split() for p in procs]
    for p, out in zip(procs, found):
        _, err = p.communicate("\n", timeout=120)
        assert p.returncode == 0 and out, err
    return [tuple(None if v == "None" else int(v) for v in out) for out in found]


def test_analysis_workers_share_the_cpu_cores(cp, subprocess_env):
    """Each of CellProfiler's analysis worker processes gives torch cores / workers threads
    (counting its sibling workers; real processes); a user's OMP_NUM_THREADS wins, and a
    process that is not a worker (a headless run, the GUI) is left as it is."""
    import torch

    cores = os.cpu_count()
    env = {k: v for k, v in subprocess_env.items() if k not in ("OMP_NUM_THREADS",
                                                               "MKL_NUM_THREADS")}
    assert _start_workers(1, env) == [(cores, cores)]
    three = max(1, cores // 3)
    assert _start_workers(3, env) == [(three, three)] * 3
    assert _start_workers(1, dict(env, OMP_NUM_THREADS="1")) == [(None, 1)]
    assert _start_workers(1, env, worker=False)[0][0] is None

    before = torch.get_num_threads()  # in this (non-worker) process a module run keeps it
    pixels = load_cp_image(cp, FLUO)
    run_modules(cp, [segment_module(cp, manual_diameter=DIAMETER[FLUO])], {"Original": pixels})
    assert torch.get_num_threads() == before


def test_thread_counts_for_parallel_processes():
    from nucleaizer_backend import NucleaizerError
    from nucleaizer_backend.device import set_cpu_threads, threads_per_process

    assert threads_per_process(4, cores=16) == 4
    assert threads_per_process(3, cores=16) == 5
    assert threads_per_process(32, cores=16) == 1
    assert threads_per_process(0, cores=2) == 2
    for bad in (0, -1, "two"):
        with pytest.raises(NucleaizerError, match="CPU threads"):
            set_cpu_threads(bad)


# --------------------------------------------------------------------------- display()


def _figure_signatures():
    """Parameter names of CellProfiler's figure methods, read from its source (the module
    itself cannot be imported without wx)."""
    import cellprofiler

    source = Path(cellprofiler.__file__).parent / "gui" / "figure" / "_figure.py"
    tree = ast.parse(source.read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Figure":
            for f in node.body:
                if isinstance(f, ast.FunctionDef):
                    args = [a.arg for a in f.args.args][1:]  # drop self
                    decorated = any(getattr(d, "id", "") == "allow_sharexy" for d in f.decorator_list)
                    out[f.name] = (args, f.args.kwarg is not None, decorated)
    return out


class StandInFigure:
    """Records display() calls; rejects any call that CellProfiler's real figure would not
    accept (unknown method, too many positional arguments, unknown keyword)."""

    IMSHOW_WRAPPERS = ("subplot_imshow_grayscale", "subplot_imshow_color", "subplot_imshow_bw")

    def __init__(self):
        self.calls = []
        self.signatures = _figure_signatures()
        assert "subplot_table" in self.signatures

    def __getattr__(self, name):
        if name.startswith("__") or name not in self.signatures:
            raise AttributeError("CellProfiler's figure has no method %r" % name)
        args, has_kwargs, sharexy = self.signatures[name]

        def call(*a, **kw):
            assert len(a) <= len(args), (name, a)
            allowed = set(args[len(a):])
            if sharexy:
                allowed.add("sharexy")
            if name in self.IMSHOW_WRAPPERS:  # **kwargs go on to subplot_imshow
                allowed |= set(self.signatures["subplot_imshow"][0])
            elif has_kwargs:
                allowed = None
            if allowed is not None:
                unknown = set(kw) - allowed
                assert not unknown, (name, unknown)
            bound = dict(zip(args, a), **kw)
            self.calls.append((name, bound))
            return object()  # stands for a matplotlib Axes

        return call

    def named(self, name):
        return [kw for n, kw in self.calls if n == name]


def test_segment_display_with_stand_in_figure(cp):
    for pixels in (load_cp_image(cp, FLUO), load_cp_image(cp, FLUO).mean(axis=-1)):
        seg = segment_module(cp, manual_diameter=DIAMETER[FLUO])
        run = run_modules(cp, [seg], {"Original": pixels}, show_window=True)
        figure = StandInFigure()
        seg.display(run.workspace, figure)
        assert figure.named("set_subplots")[0]["subplots"] == (2, 2)
        shown = figure.named("subplot_imshow_color" if pixels.ndim == 3 else "subplot_imshow_grayscale")
        assert len(shown) == 2  # the input, and the input with outlines
        assert any("cplabels" in kw for kw in shown)
        outlines = [kw for kw in shown if "cplabels" in kw][0]["cplabels"][0]["labels"][0]
        np.testing.assert_array_equal(outlines, run.objects().segmented)
        labels = figure.named("subplot_imshow_labels")
        assert len(labels) == 1 and labels[0]["image"].shape == pixels.shape[:2]
        table = figure.named("subplot_table")
        assert len(table) == 1
        rows = dict(zip(table[0]["row_labels"], [r[0] for r in table[0]["statistics"]]))
        assert rows["Nuclei"] == str(run.objects().count)
        assert "Median nucleus diameter" in rows and "Scale (working / original)" in rows
        assert rows["Diameter used"].startswith("%.1f" % DIAMETER[FLUO])


def test_estimate_display_with_stand_in_figure(cp):
    pixels = load_cp_image(cp, FLUO)
    est = estimate_module(cp, want_objects=True)
    run = run_modules(cp, [est], {"Original": pixels}, show_window=True)
    figure = StandInFigure()
    est.display(run.workspace, figure)
    assert figure.named("set_subplots")[0]["subplots"] == (3, 1)
    hist = figure.named("subplot_histogram")
    assert len(hist) == 1 and len(hist[0]["values"]) == run.image("NucleusSize_ImageCount")
    table = figure.named("subplot_table")[0]
    rows = dict(zip(table["row_labels"], [r[0] for r in table["statistics"]]))
    assert rows["This image: nuclei measured"] == str(int(run.image("NucleusSize_ImageCount")))
    shown = figure.named("subplot_imshow_color")[0]
    assert shown["cplabels"][0]["labels"][0].shape == pixels.shape[:2]
    # the objects are every nucleus found, the measurements those that look single
    from nucleaizer_backend.size import single_nucleus_diameters

    objects = run.objects("PresegNuclei")
    assert objects.count >= run.image("NucleusSize_ImageCount") == \
        len(single_nucleus_diameters(objects.segmented))


def test_test_gpu_button_reports_what_it_finds(cp, caplog):
    """The *Test GPU* button (as RunCellpose's), pressed without a GUI: a real check, its
    answer logged; here without a GPU it says so, with a GPU it segments the test image."""
    import torch

    modules = [segment_module(cp), estimate_module(cp),
               cp.instantiate_module("TrainStyleAdaptation")]
    for module in modules:
        module.use_gpu.value = True
        buttons = [s for s in module.visible_settings() if s.text == "" and
                   getattr(s, "label", "") == "Test GPU"]
        assert len(buttons) == 1, module.module_name
        with caplog.at_level(logging.INFO):
            caplog.clear()
            buttons[0].on_event_fired()
        assert "GPU test:" in caplog.text
        report = module.check_gpu()
        assert report.ok == torch.cuda.is_available()
        assert ("GPU works" in report.message) == report.ok
        assert report.message.startswith("No GPU") or report.ok or "failed" in report.message
        module.use_gpu.value = False
        assert not any(getattr(s, "label", "") == "Test GPU" for s in module.visible_settings())
