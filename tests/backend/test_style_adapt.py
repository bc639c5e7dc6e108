"""Style adaptation end to end (docs/METHOD.md section 4; nucleaizer_backend.adapt): the quick
chain on the bundled example images with tiny schedules (a few pix2pix and fine-tune steps,
small networks for the style models), resuming after an interruption, GTstyle annotations,
the user errors, and the shipped replay set."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from nucleaizer_backend import AdaptConfig, adapt, load_model, segment_image
from nucleaizer_backend.cli import main as cli_main
from nucleaizer_backend.errors import InputImageError, ModelFileError, NucleaizerError
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.models.io import (DEFAULT_MODEL_DIR, INFO_FILE, MAIN_FILE, PRESEG_FILE,
                                         UNET_FILE)
from nucleaizer_backend.overlay import outline_mask
from nucleaizer_backend.style import (AdaptationInfo, holds_other_files,
                                      read_adaptation_info)
from nucleaizer_backend.style.adapt import STAGES, default_replay_dir, read_replay_index
from nucleaizer_backend.train.data import load_dataset, read_labels

TINY_STYLE = dict(generator=dict(base_channels=8, depth=3), disc_channels=8, disc_layers=2)


def tiny(**kw):
    """Every stage runs, each in seconds on one CPU thread."""
    base = dict(min_cluster_size=2, style_steps=3, style_crop=64, style_architecture=TINY_STYLE,
                style_checkpoint_every=2, synthetic_per_cluster=2, max_synthetic_side=128,
                finetune_steps=2, finetune_crop=128, finetune_batch_size=1, checkpoint_every=1,
                threads=1, device="cpu", precision="fp32")  # fp32: the same numbers on any CPU
    return AdaptConfig(**{**base, **kw})


class Recorder:
    """A progress callback that records every call and can interrupt at one of them."""

    def __init__(self, interrupt=None):
        self.calls, self.interrupt = [], interrupt

    def __call__(self, stage, done, total, info):
        self.calls.append((stage, done, total, dict(info)))
        if self.interrupt and self.interrupt(stage, done, total, info):
            raise KeyboardInterrupt

    def stages(self):
        return list(dict.fromkeys(c[0] for c in self.calls))


@pytest.fixture(scope="module")
def images_dir(example_images_dir):
    return example_images_dir / "images"


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, images_dir):
    """One uninterrupted tiny adaptation of the 5 example images (3 fluo, 2 H&E)."""
    out = tmp_path_factory.mktemp("adapt") / "model"
    rec = Recorder()
    result = adapt([images_dir], out, config=tiny(), progress=rec)
    return result, out, rec


def read_info(out):
    return json.loads((out / INFO_FILE).read_text())


def tensors(path):
    return load_file(str(path))


# ----------------------------------------------------------------------------- the chain

def test_chain_writes_a_loadable_model(adapted, images_dir):
    result, out, _ = adapted
    for name in (MAIN_FILE, PRESEG_FILE, INFO_FILE, "style_sheet.png", "training_curve.png",
                 "adapt_log.jsonl"):
        assert (out / name).is_file(), name
    bundle = load_model(out, "cpu")
    assert bundle.main_meta["kind"] == "main"
    assert bundle.main_meta["adapted"]["n_images"] == 5
    assert bundle.main_meta["adapted"]["synthetic_pairs"] == result.synthetic_count
    # the fine-tuned network differs from the base one
    base, new = tensors(DEFAULT_MODEL_DIR / MAIN_FILE), tensors(out / MAIN_FILE)
    assert base.keys() == new.keys()
    assert any(not np.array_equal(base[k].numpy(), new[k].numpy()) for k in base)
    image = read_image(images_dir / "he_4d14a3629b6a.png")
    seg = segment_image(image, model=out, device="cpu")
    assert seg.labels.shape == image.shape[:2]


def test_result_and_clusters(adapted):
    result, out, _ = adapted
    assert result.model_dir == out
    assert result.n_images == 5
    assert result.n_clusters == 2 and result.n_styles_learned == 2  # fluo and H&E apart
    assert result.skipped == []
    assert result.synthetic_count == 4  # 2 per style
    assert set(result.seconds) == set(STAGES)
    assert result.resumed == []
    assert result.masks_source == {n: "AUTO" for n in result.masks_source}
    text = "\n".join(result.report())
    assert "5 target images" in text and "2 style models" in text and "style sheet" in text
    clusters = json.loads((out / "work" / "cluster.json").read_text())
    groups = sorted(sorted(st["images"]) for st in clusters["styles"])
    assert groups == [["fluo_0e5edb072788", "fluo_5bb8508ff8ec", "fluo_ce88df7356d9"],
                      ["he_420f43d21dba", "he_4d14a3629b6a"]]
    synth = sorted(p.name for p in (out / "work" / "synthetic" / "images").iterdir())
    assert synth == ["style00_000.png", "style00_001.png", "style01_000.png", "style01_001.png"]
    labels = read_labels(out / "work" / "synthetic" / "labels" / "style01_000.tif")
    assert labels.max() > 0 and labels.shape == read_image(
        out / "work" / "synthetic" / "images" / "style01_000.png").shape[:2]


def test_model_json_metadata(adapted):
    _, out, _ = adapted
    info = read_info(out)
    a = info["adaptation"]
    assert a["base_model"]["name"] == "nucleaizer-default"
    assert a["base_model"]["path"] == str(DEFAULT_MODEL_DIR)
    assert a["n_images"] == 5 and len(a["target_images"]) == 5
    assert set(a["masks_source"].values()) == {"AUTO"}
    assert a["clusters"]["sizes"] == [3, 2] and a["clusters"]["report"]
    assert [st["learned"] for st in a["clusters"]["styles"]] == [True, True]
    assert a["synthetic"]["count"] == 4 and a["synthetic"]["per_cluster"] == 2
    assert a["settings"]["preset"] == "quick" and a["settings"]["synthetic_share"] == 0.3
    assert a["finetune"]["steps"] == 2 and a["finetune"]["replay_images"] == 48
    assert a["finetune"]["synthetic_images"] == 4
    assert a["finetune"]["final_loss"] > 0
    base = json.loads((DEFAULT_MODEL_DIR / INFO_FILE).read_text())
    assert [m["steps"] for m in a["style_models"]] == [3, 3]
    for p in a["synthetic"]["per_style"]:  # synthetic nuclei against the style's
        c = p["target_vs_synthetic"]
        assert 0 <= c["ks_diameters"]["statistic"] <= 1 and c["diameter_q10_50_90"]["target"]
    assert all("removed_clumps" in m and "removed_irregular" in m for m in a["masks"].values())
    # the tiny style models have their own architecture: the shipped prior does not fit
    assert json.loads((out / "work" / "styles.json").read_text())["prior"] is None
    # the target images' styles now count as trained
    ref = info["style_reference"]
    assert ref["images"] == base["style_reference"]["images"] + 5
    assert len(ref["centres"]) == len(base["style_reference"]["centres"]) + 1
    assert set(a["seconds"]) == set(STAGES)
    assert info["main"]["file"] == MAIN_FILE and info["preseg"]["file"] == PRESEG_FILE
    assert info["trained_nucleus_diameter_px"] == 40.0
    assert info.get("postprocess") == base.get("postprocess")  # carried over from the base
    # the contour U-Net is fine-tuned too (3/4 of the 2 steps, rounded), not copied
    assert a["finetune_unet"]["steps"] == 2 and a["finetune_unet"]["final_loss"] > 0
    assert a["finetune_unet"]["init"] == str(DEFAULT_MODEL_DIR / UNET_FILE)
    assert info["unet"]["meta"]["adapted"]["finetune_steps"] == 2
    assert UNET_FILE not in a["networks_copied_from"]
    base_unet, unet = tensors(DEFAULT_MODEL_DIR / UNET_FILE), tensors(out / UNET_FILE)
    assert set(base_unet) == set(unet)
    assert any(not np.array_equal(base_unet[k].numpy(), unet[k].numpy()) for k in unet
               if unet[k].is_floating_point())


def test_style_sheet_shows_every_style(adapted):
    _, out, _ = adapted
    sheet = read_image(out / "style_sheet.png")
    assert sheet.ndim == 3 and sheet.shape[0] > 200 and sheet.shape[1] > 600
    assert sheet[..., :3].std() > 20  # images, not a blank page


def test_sheet_outlines_are_two_px_wide():
    """overlay.outline_mask: width 1 is each object's inner boundary; width 2 (the style
    sheet's outlines) adds the pixels just outside it."""
    labels = np.zeros((9, 9), np.int32)
    labels[2:7, 2:7] = 1
    inner = outline_mask(labels)
    assert inner.sum() == 16 and not inner[3:6, 3:6].any() and not inner[labels == 0].any()
    outer = np.zeros((9, 9), bool)
    outer[1, 2:7] = outer[7, 2:7] = outer[2:7, 1] = outer[2:7, 7] = True
    assert np.array_equal(outline_mask(labels, width=2), inner | outer)
    with pytest.raises(ValueError, match="width"):
        outline_mask(labels, width=3)


def test_progress_and_log(adapted):
    _, out, rec = adapted
    assert rec.stages() == list(STAGES)
    for stage in STAGES:
        last = [c for c in rec.calls if c[0] == stage][-1]
        assert last[1] == last[2], stage  # each stage reported to its end
    masks = [c for c in rec.calls if c[0] == "masks"]
    assert len(masks) == 5 and {c[3]["source"] for c in masks} == {"AUTO"}
    assert any("loss" in c[3] for c in rec.calls if c[0] == "finetune")
    log = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == list(STAGES)
    assert all(r["status"] == "done" and r["seconds"] >= 0 for r in log)
    synthesize = next(r for r in log if r["stage"] == "synthesize")
    assert set(synthesize["target_vs_synthetic"]) == {"0", "1"}
    # the same progress, time-stamped, in a file for runs without a terminal
    lines = (out / "work" / "progress.log").read_text().splitlines()
    for title in ("nucleus masks", "style models (pix2pix)", "fine-tuning the main network"):
        assert any(title in line and "(100%)" in line for line in lines), title


def test_adaptation_info_of_a_model_folder(adapted, tmp_path):
    """read_adaptation_info: what the plugins show and record of an adapted model folder;
    None for a folder that holds no adaptation."""
    result, out, _ = adapted
    info = read_adaptation_info(out)
    assert info == AdaptationInfo(
        model_dir=out, base_model="nucleaizer-default", images=5, annotated_images=0, styles=2,
        style_models=2, skipped_images=0, synthetic_pairs=4, finetune_steps=2,
        seconds=pytest.approx(sum(result.seconds.values())), rounds=1,
        style_sheet=out / "style_sheet.png")
    assert read_adaptation_info(DEFAULT_MODEL_DIR) is None  # not adapted
    assert read_adaptation_info(tmp_path / "nowhere") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / INFO_FILE).write_text("{")
    assert read_adaptation_info(tmp_path / "bad") is None
    # whether an adaptation would refuse the folder
    assert not holds_other_files(out) and holds_other_files(out, iterations=2)
    assert not holds_other_files(tmp_path / "nowhere") and holds_other_files(tmp_path / "bad")


# ----------------------------------------------------------------------------- pinned outputs

PIN_FILE = Path(__file__).with_name("style_adapt_pin.json")


def fingerprint(out):
    """What a tiny adaptation made, without timings and paths: every label image (masks,
    synthetic masks) by its digest; the synthetic images and the networks by statistics
    (float rounding may differ on another CPU); the stage records and model.json's
    adaptation block as written."""
    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()
                    if k not in ("seconds", "sec_per_step", "nucleaizer_version")}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and value.startswith("/"):
            return "<path>"
        return value

    def digest(a):
        a = np.ascontiguousarray(a)
        return hashlib.sha1(f"{a.shape}{a.dtype.str}".encode() + a.tobytes()).hexdigest()

    work = out / "work"
    fp = {"model": scrub(read_info(out)["adaptation"]),
          "records": {p.stem: scrub(json.loads(p.read_text())) for p in sorted(work.glob("*.json"))
                      if p.stem != "job"},
          "masks": {p.stem: digest(read_labels(p)) for p in sorted((work / "masks").glob("*.tif"))},
          "synthetic_labels": {p.stem: digest(read_labels(p)) for p in
                               sorted((work / "synthetic" / "labels").glob("*.tif"))},
          "synthetic_images": {p.stem: [float(read_image(p).mean()), float(read_image(p).std())]
                               for p in sorted((work / "synthetic" / "images").glob("*.png"))}}
    for name in (MAIN_FILE, UNET_FILE):
        t = [v.double() for v in tensors(out / name).values() if v.is_floating_point()]
        fp[name] = [float(sum(v.sum() for v in t)), float(sum((v * v).sum() for v in t))]
    return json.loads(json.dumps(fp))


def assert_close(got, want, where="fingerprint"):
    """Equal, floats to a relative 1e-4."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-9), where
    else:
        assert got == want, where


def test_outputs_are_pinned(adapted):
    """The tiny adaptation of the example images gives the outputs recorded in
    style_adapt_pin.json (NUCLEAIZER_WRITE_PIN=1 records them anew after an intended
    change)."""
    _, out, _ = adapted
    fp = fingerprint(out)
    if os.environ.get("NUCLEAIZER_WRITE_PIN"):
        PIN_FILE.write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
    assert_close(fp, json.loads(PIN_FILE.read_text()))


# ----------------------------------------------------------------------------- resume

def test_resume_after_interrupt_gives_the_same_model(tmp_path, adapted, images_dir):
    _, reference, _ = adapted
    out = tmp_path / "model"
    # interrupted in the first style model, after its checkpoint at step 2
    first = Recorder(interrupt=lambda stage, done, total, info: stage == "styles" and done == 3)
    with pytest.raises(KeyboardInterrupt):
        adapt([images_dir], out, config=tiny(), progress=first)
    work = out / "work"
    assert (work / "masks.json").is_file() and (work / "cluster.json").is_file()
    assert not (work / "styles.json").exists()
    assert (work / "styles" / "style_00" / "checkpoint.pt").is_file()
    log = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "styles" and log[-1]["status"] == "interrupted"
    mask_times = {p.name: p.stat().st_mtime_ns for p in (work / "masks").iterdir()}

    second = Recorder()
    result = adapt([images_dir], out, config=tiny(), progress=second)
    assert result.resumed == ["masks", "cluster"]
    assert [c for c in second.calls if c[0] in ("masks", "cluster")] == [
        ("masks", 1, 1, {"resumed": True}), ("cluster", 1, 1, {"resumed": True})]
    assert {p.name: p.stat().st_mtime_ns for p in (work / "masks").iterdir()} == mask_times
    style_calls = [c[1] for c in second.calls if c[0] == "styles" and "loss_g_l1" in c[3]]
    assert style_calls[0] == 3  # style 0 continued from its step-2 checkpoint
    # the same result as without the interruption
    assert result.n_clusters == 2 and result.synthetic_count == 4
    ref, new = tensors(reference / MAIN_FILE), tensors(out / MAIN_FILE)
    assert all(np.array_equal(ref[k].numpy(), new[k].numpy()) for k in ref)

    # a third run finds everything finished
    third = Recorder()
    again = adapt([images_dir], out, config=tiny(), progress=third)
    assert again.resumed == list(STAGES)
    assert all(c[3] == {"resumed": True} for c in third.calls)


def test_adaptation_finished_before_the_unet_stage_is_completed(tmp_path, adapted, images_dir):
    """A model folder adapted before the U-Net stage existed (its U-Net copied from the base)
    gets only that stage when the same call is made again, then is packaged again: the same
    model as an adaptation that had the stage from the start."""
    _, reference, _ = adapted
    out = tmp_path / "old"
    shutil.copytree(reference, out)
    (out / "work" / "finetune_unet.json").unlink()
    shutil.rmtree(out / "work" / "finetune_unet")
    shutil.copyfile(DEFAULT_MODEL_DIR / UNET_FILE, out / UNET_FILE)
    result = adapt([images_dir], out, config=tiny())
    assert result.resumed == list(STAGES[:STAGES.index("finetune_unet")])
    ref, new = tensors(reference / UNET_FILE), tensors(out / UNET_FILE)
    assert all(np.array_equal(ref[k].numpy(), new[k].numpy()) for k in ref)
    assert read_info(out)["adaptation"]["finetune_unet"]["steps"] == 2


def test_unet_steps_zero_keeps_the_base_unet(tmp_path, two_images):
    out = tmp_path / "m"
    adapt(two_images, out, config=tiny(min_cluster_size=1, unet_steps=0))
    a = read_info(out)["adaptation"]
    assert a["finetune_unet"]["steps"] == 0 and a["finetune_unet"]["run"] is None
    assert a["networks_copied_from"][UNET_FILE] == str(DEFAULT_MODEL_DIR / UNET_FILE)
    assert (out / UNET_FILE).read_bytes() == (DEFAULT_MODEL_DIR / UNET_FILE).read_bytes()


# ----------------------------------------------------------------------------- GTstyle

def test_gtstyle_annotations_are_the_masks(tmp_path, example_images_dir):
    """Annotated images use their labels (array or file) as style masks; the others preseg's.
    The base is a model folder of its own (with tuned post-processing to carry over)."""
    base = tmp_path / "base"
    shutil.copytree(DEFAULT_MODEL_DIR, base)
    info = json.loads((base / INFO_FILE).read_text())
    info["postprocess"] = {"p1": 0.2, "p2": 40.0}
    (base / INFO_FILE).write_text(json.dumps(info))
    images = example_images_dir / "images"
    names = ["fluo_0e5edb072788", "fluo_ce88df7356d9", "he_420f43d21dba", "he_4d14a3629b6a"]
    labels_dir = example_images_dir / "labels"
    annotations = {"he_420f43d21dba": read_labels(labels_dir / "he_420f43d21dba.tif"),
                   "fluo_0e5edb072788": labels_dir / "fluo_0e5edb072788.tif"}
    out = tmp_path / "model"
    result = adapt([images / f"{n}.png" for n in names], out, annotations=annotations,
                   config=tiny(base_model=str(base)))
    info = read_info(out)
    assert info["adaptation"]["masks_source"] == {
        "fluo_0e5edb072788": "GT", "fluo_ce88df7356d9": "AUTO",
        "he_420f43d21dba": "GT", "he_4d14a3629b6a": "AUTO"}
    assert result.masks_source == info["adaptation"]["masks_source"]
    for n in annotations:
        stored = read_labels(out / "work" / "masks" / f"{n}.tif")
        assert np.array_equal(stored, read_labels(labels_dir / f"{n}.tif"))
    assert info["adaptation"]["base_model"] == {"path": str(base.resolve()),
                                                "name": "nucleaizer-default"}
    assert info["postprocess"] == {"p1": 0.2, "p2": 40.0}
    assert load_model(out, "cpu").postprocess == {"p1": 0.2, "p2": 40.0}
    assert (out / PRESEG_FILE).read_bytes() == (base / PRESEG_FILE).read_bytes()
    assert "2 annotated" in "\n".join(result.report())


def test_far_small_style_is_skipped_and_reported(tmp_path, example_images_dir):
    """With max_merge_distance, a lone H&E image among fluorescence images is not merged into
    their style: it is reported and gets no style model."""
    images = example_images_dir / "images"
    names = ["fluo_0e5edb072788", "fluo_ce88df7356d9", "fluo_5bb8508ff8ec", "he_420f43d21dba"]
    result = adapt([images / f"{n}.png" for n in names], tmp_path / "m",
                   config=tiny(max_merge_distance=1.0, synthetic_per_cluster=1))
    assert result.skipped == ["he_420f43d21dba"]
    assert result.n_clusters == 2 and result.n_styles_learned == 1
    assert result.synthetic_count == 1
    assert any("skipped" in line for line in result.report())
    styles = read_info(tmp_path / "m")["adaptation"]["clusters"]["styles"]
    assert [st["learned"] for st in styles] == [True, False]


def test_style_with_unreliable_masks_is_skipped(tmp_path, example_images_dir):
    """Automatic masks with fewer than size.MIN_NUCLEI nuclei (small crops holding a nucleus
    or two) are unreliable: they are left out of their style's model, and a style with too
    few reliable images gets none (the error names the reason); min_reliable_share 0 turns
    the check off."""
    fluo = read_image(example_images_dir / "images" / "fluo_0e5edb072788.png")
    he = read_image(example_images_dir / "images" / "fluo_ce88df7356d9.png")
    crops = [("crop_a", fluo[:48, :48]), ("crop_b", fluo[100:148, 100:148])]
    full = [("full_a", fluo), ("full_b", he)]
    one_style = dict(min_cluster_size=2, max_clusters=1, synthetic_per_cluster=1)
    res = adapt(full + crops, tmp_path / "half", config=tiny(**one_style))
    style = read_info(tmp_path / "half")["adaptation"]["clusters"]["styles"][0]
    assert style["learned"] and sorted(style["mask_images"]) == ["full_a", "full_b"]
    assert res.n_styles_learned == 1
    with pytest.raises(NucleaizerError, match="reliable masks in only 0 of its 2 images"):
        adapt(crops, tmp_path / "crops", config=tiny(**one_style))
    adapt(crops, tmp_path / "unchecked", config=tiny(min_reliable_share=0, **one_style))
    style = read_info(tmp_path / "unchecked")["adaptation"]["clusters"]["styles"][0]
    assert style["learned"] and sorted(style["mask_images"]) == ["crop_a", "crop_b"]


def test_masks_from_the_model_and_two_iterations(tmp_path, example_images_dir):
    """masks_from="model" takes the masks from the base model's full segmentation (its
    labels, as segment_image gives them); iterations=2 adapts round 2 from round 1's model
    with such masks and copies the last round's model into the output folder."""
    images = example_images_dir / "images"
    names = ["fluo_0e5edb072788", "fluo_ce88df7356d9", "he_420f43d21dba", "he_4d14a3629b6a"]
    files = [images / f"{n}.png" for n in names]
    out = tmp_path / "m"
    rec = Recorder()
    result = adapt(files, out, config=tiny(iterations=2), progress=rec)
    assert result.model_dir == out
    rounds = [out / "work" / "round_1", out / "work" / "round_2"]
    info1, info2 = read_info(rounds[0]), read_info(rounds[1])
    assert {r["masks_from"] for r in info1["adaptation"]["masks"].values()} == {"preseg"}
    assert {r["masks_from"] for r in info2["adaptation"]["masks"].values()} == {"model"}
    assert info2["adaptation"]["base_model"]["path"] == str(rounds[0])
    # round 2's masks are round 1's model's segmentation of each image
    n = names[0]
    expected = segment_image(read_image(images / f"{n}.png"), model=rounds[0], device="cpu")
    stored = read_labels(rounds[1] / "work" / "masks" / f"{n}.tif")
    assert np.array_equal(stored > 0, expected.labels > 0)
    # the output folder is round 2's model, and says so
    assert (out / MAIN_FILE).read_bytes() == (rounds[1] / MAIN_FILE).read_bytes()
    info = read_info(out)
    assert [r["round"] for r in info["adaptation"]["iterations"]] == [1, 2]
    assert info["adaptation"]["original_base_model"]["name"] == "nucleaizer-default"
    assert {c[3].get("round") for c in rec.calls} == {1, 2}
    assert read_adaptation_info(out).rounds == 2 and not holds_other_files(out, iterations=2)
    load_model(out, "cpu")
    # a finished run resumes without work, and the round count is part of the job
    again = adapt(files, out, config=tiny(iterations=2))
    assert set(again.resumed) == set(STAGES)
    with pytest.raises(NucleaizerError, match="2-round adaptation"):
        adapt(files, out, config=tiny(iterations=3))


# ----------------------------------------------------------------------------- user errors

@pytest.fixture
def two_images(example_images_dir):
    img = example_images_dir / "images"
    return [img / "fluo_0e5edb072788.png", img / "he_420f43d21dba.png"]


def test_error_no_images(tmp_path):
    with pytest.raises(NucleaizerError, match="no images"):
        adapt([], tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NucleaizerError, match="no images"):
        adapt([tmp_path / "empty"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_error_unreadable_image_is_named(tmp_path, two_images):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputImageError, match="broken.png"):
        adapt(two_images + [bad], tmp_path / "m")


def test_error_3d_input(tmp_path):
    stack = np.random.default_rng(0).random((12, 64, 64)).astype(np.float32)
    with pytest.raises(InputImageError, match="stack.*3D"):
        adapt([("stack", stack)], tmp_path / "m")


def test_error_annotations_for_unknown_images(tmp_path, two_images):
    with pytest.raises(NucleaizerError, match="not among the target images: nope"):
        adapt(two_images, tmp_path / "m", annotations={"nope": np.zeros((8, 8), np.int32)})
    with pytest.raises(InputImageError, match="do not match"):
        adapt(two_images, tmp_path / "m",
              annotations={"fluo_0e5edb072788": np.zeros((8, 8), np.int32)})


def test_error_out_folder_with_something_else(tmp_path, two_images):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(NucleaizerError, match="holds something else"):
        adapt(two_images, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(NucleaizerError, match="base model's folder"):
        adapt(two_images, DEFAULT_MODEL_DIR)


def test_error_out_folder_with_another_adaptation(adapted, two_images):
    _, out, _ = adapted
    before = sorted(p.name for p in (out / "work").iterdir())
    with pytest.raises(NucleaizerError, match="adaptation of other images"):
        adapt(two_images, out, config=tiny())
    with pytest.raises(NucleaizerError, match="other settings.*synthetic_per_cluster"):
        adapt([p for p in sorted(two_images[0].parent.iterdir())], out,
              config=tiny(synthetic_per_cluster=3))
    assert sorted(p.name for p in (out / "work").iterdir()) == before


def test_changed_setting_accepted_before_its_stage(tmp_path, two_images):
    """Two images cannot make a style of min_cluster_size 3 (refused at the cluster stage);
    the same folder then continues with a smaller min_cluster_size, keeping the masks."""
    out = tmp_path / "m"
    with pytest.raises(NucleaizerError, match="no style can be learned"):
        adapt(two_images, out, config=tiny(min_cluster_size=3))
    assert (out / "work" / "masks.json").is_file()
    assert not (out / "work" / "cluster.json").exists()
    rec = Recorder(interrupt=lambda stage, *_: stage == "styles")
    with pytest.raises(KeyboardInterrupt):
        adapt(two_images, out, config=tiny(min_cluster_size=1), progress=rec)
    assert rec.calls[0] == ("masks", 1, 1, {"resumed": True})
    assert (out / "work" / "cluster.json").is_file()


def test_error_base_model_without_main_network(tmp_path, two_images):
    folder = tmp_path / "base"
    folder.mkdir()
    shutil.copyfile(DEFAULT_MODEL_DIR / PRESEG_FILE, folder / PRESEG_FILE)
    with pytest.raises(ModelFileError, match="no main network"):
        adapt(two_images, tmp_path / "m", config=AdaptConfig(base_model=str(folder)))
    with pytest.raises(ModelFileError, match="not a main network"):
        adapt(two_images, tmp_path / "m",
              config=AdaptConfig(base_model=str(folder / PRESEG_FILE)))
    with pytest.raises(ModelFileError, match="not found"):
        adapt(two_images, tmp_path / "m", config=AdaptConfig(base_model=str(tmp_path / "no")))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("kw, match", [
    (dict(synthetic_share=0.6), "synthetic share 0.6 is outside 0.1-0.5"),
    (dict(synthetic_share=0.05), "outside 0.1-0.5"),
    (dict(preset="slow"), "unknown preset"),
    (dict(synthetic_per_cluster=0), "synthetic_per_cluster must be at least 1"),
    (dict(replay_data="/nonexistent/replay"), "replay data folder not found"),
    (dict(masks_from="cellpose"), "masks_from must be one of preseg, model"),
    (dict(min_reliable_share=1.5), "min_reliable_share must be within 0-1"),
    (dict(iterations=0), "iterations must be at least 1"),
])
def test_error_settings(tmp_path, two_images, kw, match):
    with pytest.raises(NucleaizerError, match=match):
        adapt(two_images, tmp_path / "m", config=AdaptConfig(**kw))


def test_cli_adapt_errors_are_one_line(tmp_path, capsys, two_images, example_images_dir):
    (tmp_path / "empty").mkdir()
    assert cli_main(["adapt", str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.strip() == \
        "nucleaizer: error: no images to adapt to (give image files or folders)"
    assert cli_main(["adapt", *map(str, two_images), "--out", str(tmp_path / "m"),
                     "--synthetic-share", "0.9"]) == 2
    assert "outside 0.1-0.5" in capsys.readouterr().err
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copyfile(example_images_dir / "labels" / "he_4d14a3629b6a.tif",
                    labels / "he_4d14a3629b6a.tif")
    assert cli_main(["adapt", *map(str, two_images), "--out", str(tmp_path / "m"),
                     "--annotations", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nucleaizer: error: ") and "\n" not in err
    assert "none of its 1 label images is named like one of the target images" in err


def test_cli_annotations_folder_may_hold_more_images(capsys, two_images, example_images_dir):
    """A labels folder of a whole data set serves an adaptation to some of its images: the
    matching label files are used, the others named on stderr."""
    from nucleaizer_backend.cli import annotations_for

    used = annotations_for(two_images, example_images_dir / "labels")
    assert sorted(used) == ["fluo_0e5edb072788", "he_420f43d21dba"]
    assert used["he_420f43d21dba"] == example_images_dir / "labels" / "he_420f43d21dba.tif"
    err = capsys.readouterr().err
    assert "2 of the 5 label images" in err and "3 have no target image" in err
    assert "fluo_5bb8508ff8ec" in err
    annotations_for([example_images_dir / "images"], example_images_dir)  # DIR/labels too
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- replay set

def test_replay_set_loads_with_both_styles():
    folder = default_replay_dir()
    items = load_dataset(folder)
    rows = read_replay_index()
    assert len(items) == len(rows) == 48
    assert sorted(it.name for it in items) == sorted(r["id"] for r in rows)
    styles = {r["id"]: r["style"] for r in rows}
    counts = {s: sum(v == s for v in styles.values()) for s in ("fluo", "he")}
    assert counts == {"fluo": 34, "he": 14}
    assert all(np.isfinite(it.diameter) and it.n_objects > 0 for it in items)
    assert all(max(it.labels.shape) <= 512 for it in items)
    diameters = sorted(it.diameter for it in items)
    assert diameters[0] < 12 and diameters[-1] > 40  # spread over nucleus sizes
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 4.2e6
    assert "CC0" in (folder / "README.md").read_text()
