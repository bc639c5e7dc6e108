"""The resumable training loop: tiny runs (2-3 steps, 64 px crops, 2 bundled images).

Checks the run folder's files, --resume, determinism (same seed -> identical weights, and an
interrupted + resumed run equals an uninterrupted one) and that checkpoints are loaded with
``weights_only=True`` (a pickle that would run code is refused).
"""
import json
import re
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

from nucleaizer_backend import cli, segment_image
from nucleaizer_backend.models.io import read_network_meta
from nucleaizer_backend.train.data import find_pairs, load_dataset
from nucleaizer_backend.train.loop import TrainConfig, train
from nucleaizer_backend.train.runs import read_run_log

# matplotlib (curve.png) triggers pyparsing deprecation warnings that are not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TRAIN_IMAGES = ("fluo_0e5edb072788", "he_420f43d21dba")
TINY = dict(steps=2, batch_size=1, crop=64, checkpoint_every=1, seed=3)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory, example_images_dir):
    d = tmp_path_factory.mktemp("train_data")
    (d / "images").mkdir()
    (d / "labels").mkdir()
    for name in TRAIN_IMAGES:
        shutil.copy(example_images_dir / "images" / f"{name}.png", d / "images")
        shutil.copy(example_images_dir / "labels" / f"{name}.tif", d / "labels")
    return d


def model_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_data_found(train_data):
    pairs = find_pairs(train_data)
    assert [p[0].stem for p in pairs] == sorted(TRAIN_IMAGES)
    items = load_dataset(train_data)
    for it in items:
        assert it.image.shape[:2] == it.labels.shape and it.image.shape[2] == 3
        assert it.n_objects > 0 and it.diameter > 0


def test_train_and_resume_with_cli(train_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(train_data), "--out", str(run), "--steps", "2",
            "--batch-size", "1", "--crop", "64", "--checkpoint-every", "1", "--seed", "3",
            "--threads", "1"]
    assert cli.main(args) == 0
    for f in ("config.json", "checkpoint.pt", "log.jsonl", "curve.png", "last.safetensors"):
        assert (run / f).is_file(), f
    assert model_state(run)["step"] == 2
    capsys.readouterr()

    # the same command again must not overwrite the run
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and err.count("\n") == 1 and "Traceback" not in err

    args[args.index("--steps") + 1] = "3"
    assert cli.main(args + ["--resume"]) == 0
    # no terminal: timed progress lines, counting from the step resumed at
    assert re.search(r"^\d\d:\d\d:\d\d train 3/3 step \(100%\), .*loss \d",
                     capsys.readouterr().err, re.M)
    state = model_state(run)
    assert state["step"] == 3
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    starts = [r for r in log if r.get("event") == "start"]
    assert [r["step"] for r in starts] == [0, 2]
    assert max(r["step"] for r in log if "loss" in r) == 3
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    meta = read_network_meta(run / "last.safetensors")
    assert meta["steps"] == 3 and meta["kind"] == "main" and meta["diameter"] == 40.0

    # the network file written by training is a usable model
    img = np.zeros((40, 50), np.uint8)
    img[10:25, 12:27] = 200
    result = segment_image(img, model=run / "last.safetensors", diameter=15, device="cpu")
    assert result.labels.shape == (40, 50)


def test_preloaded_training_images_are_used_as_given(train_data, tmp_path, monkeypatch):
    """train(items=...) trains on the images passed (a process training in pieces loads
    them once) and gives the same weights as loading them itself."""
    from nucleaizer_backend.train import loop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TrainConfig(data=str(train_data), out=str(tmp_path / "a"), **{**TINY, "steps": 2})
    items = loop.training_items(cfg)
    assert len(items) > 1
    train(cfg)
    train(TrainConfig(**{**asdict(cfg), "out": str(tmp_path / "b")}), items=items)
    assert same_weights(model_state(tmp_path / "a")["model"], model_state(tmp_path / "b")["model"])

    def no_loading(_cfg):
        raise AssertionError("training images loaded again")

    monkeypatch.setattr(loop, "training_items", no_loading)
    train(TrainConfig(**{**asdict(cfg), "out": str(tmp_path / "c")}), items=items[:1])
    start = [r for r in read_run_log(tmp_path / "c" / "log.jsonl") if r.get("event") == "start"]
    assert start[0]["train_images"] == 1


def test_same_seed_same_weights_and_resume_is_seamless(train_data, tmp_path, monkeypatch):
    # bit-exact on the CPU; CUDA kernels (e.g. roi_align backward) are not deterministic
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def run(name, **kw):
        cfg = TrainConfig(data=str(train_data), out=str(tmp_path / name), **{**TINY, **kw})
        return train(cfg)

    a = model_state(run("a", steps=3))
    b = model_state(run("b", steps=3))
    assert same_weights(a["model"], b["model"]), "two runs with the same seed differ"

    run("c", steps=2)  # interrupted after 2 steps ...
    cfg = TrainConfig(data=str(train_data), out=str(tmp_path / "c"), **{**TINY, "steps": 3})
    train(cfg, resume=True)  # ... and resumed to 3
    c = model_state(tmp_path / "c")
    assert c["step"] == 3
    assert same_weights(a["model"], c["model"]), "resumed run differs from uninterrupted run"

    d = model_state(run("d", steps=3, seed=4))
    assert not same_weights(a["model"], d["model"]), "the seed has no effect"


def test_log_of_a_resumed_run_shows_each_step_once(tmp_path):
    """A run stopped at step 60 after its last checkpoint at 40 and resumed from there: the
    lines of the lost steps 41-60 are not in the run's log as read (curve, model.json)."""
    lines = [{"event": "start", "step": 0}, {"step": 20, "loss": 1.0}, {"step": 40, "loss": 0.9},
             {"step": 40, "val_dsb": 0.3}, {"step": 60, "loss": 0.8},
             {"event": "start", "step": 40}, {"step": 60, "loss": 0.7}, {"step": 80, "loss": 0.6},
             {"note": "no step"}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = read_run_log(log)
    assert [r.get("loss") for r in got if "loss" in r] == [1.0, 0.9, 0.7, 0.6]
    assert [r for r in got if "val_dsb" in r] == [{"step": 40, "val_dsb": 0.3}]
    assert [r["step"] for r in got if r.get("event") == "start"] == [0, 40]
    assert got[-1] == {"note": "no step"}
    assert read_run_log(tmp_path / "missing.jsonl") == []


class CodeOnLoad:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_is_loaded_weights_only(train_data, tmp_path):
    """A checkpoint.pt whose unpickling would run code is refused on --resume, code not run;
    the one-line error names the file and does not suggest unsafe loading."""
    from nucleaizer_backend.errors import CheckpointError

    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "code_ran"
    cfg = TrainConfig(data=str(train_data), out=str(run), **TINY)
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    torch.save({"model": CodeOnLoad(marker), "step": 1}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="checkpoint.pt: cannot resume") as e:
        train(cfg, resume=True)
    assert not marker.exists()
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_preseg_kind_and_validation(train_data, tmp_path):
    """A preseg run (scale augmentation) with validation writes best.safetensors and a
    validation line in the log."""
    run = tmp_path / "preseg"
    cfg = TrainConfig(data=str(train_data), out=str(run), kind="preseg", val=str(train_data),
                      val_limit=1, val_every=1, **{**TINY, "steps": 1})
    train(cfg)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if "val_dsb" in r]
    assert len(val) == 1 and 0.0 <= val[0]["val_dsb"] <= 1.0
    meta = read_network_meta(run / "best.safetensors")
    assert meta["kind"] == "preseg" and meta["scale_range"] == [12.0, 100.0]


def test_main_over_a_working_range(train_data, tmp_path):
    """--working-range: a main network trained on crops whose nuclei span MIN-MAX px
    (log-uniform), stated in its metadata; refused for other kinds and for a bad range."""
    cfg = TrainConfig(data=str(train_data), out=str(tmp_path / "ms"), working_range=[20, 52],
                      **{**TINY, "steps": 1})
    spec = cfg.crop_spec()
    assert spec.scale_range == (20, 52)
    rng = np.random.default_rng(0)
    from nucleaizer_backend.train.augment import sample_scale

    wanted = [sample_scale(10.0, spec, rng) * 10.0 for _ in range(400)]  # px at the crop scale
    assert 20 <= min(wanted) < 22 and 48 < max(wanted) <= 52
    train(cfg)
    assert read_network_meta(tmp_path / "ms" / "last.safetensors")["working_range"] == [20, 52]
    base = ["train", "--data", str(train_data), "--out", str(tmp_path / "x"), "--steps", "1"]
    for extra, message in ((["--kind", "unet", "--working-range", "20", "40"], "for --kind main"),
                           (["--working-range", "40", "20"], "0 < MIN < MAX")):
        assert cli.main(base + extra) == 2


def test_unknown_kind_is_refused(train_data, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        train(TrainConfig(data=str(train_data), out=str(tmp_path / "x"), kind="maskrnn", **TINY))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_is_honoured(train_data, tmp_path):
    """Training runs where ``device`` says: "cuda" without a GPU is a clear error."""
    from nucleaizer_backend.errors import NucleaizerError

    with pytest.raises(NucleaizerError, match="no CUDA GPU"):
        train(TrainConfig(data=str(train_data), out=str(tmp_path / "x"), device="cuda", **TINY))


def test_unet_kind_trains_lowers_loss_and_loads(train_data, tmp_path):
    """The refinement U-Net trains with the same command; its loss falls on two images and
    its file rebuilds as a U-Net that outputs probabilities of the input's size."""
    from nucleaizer_backend.models.io import load_network
    from nucleaizer_backend.models.unet import RefinementUNet

    run = tmp_path / "unet"
    cfg = TrainConfig(data=str(train_data), out=str(run), kind="unet", val=str(train_data),
                      val_every=80, val_limit=1, steps=80, batch_size=2, crop=64,
                      checkpoint_every=80, warmup=5, lr=3e-3, seed=1)
    train(cfg)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss_bce"] for r in log if "loss_bce" in r]  # means over 20 steps
    assert losses[-1] < 0.8 * losses[0], losses
    val = [r for r in log if "val_fg_iou" in r]
    assert len(val) == 1 and 0.0 <= val[0]["val_fg_iou"] <= 1.0
    net, meta = load_network(run / "best.safetensors")
    assert isinstance(net, RefinementUNet) and meta["kind"] == "unet" and meta["diameter"] == 40.0
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 45, 70)).shape == (1, 45, 70)


def test_styles_filter_and_synthetic_share(train_data, tmp_path):
    """--styles keeps only images of those styles (index.csv); --synthetic mixes in a folder
    of synthetic pairs at --synthetic-share."""
    from nucleaizer_backend.train.batches import pick_item, training_items

    (train_data / "index.csv").write_text(
        "id,style\nfluo_0e5edb072788,fluo\nhe_420f43d21dba,he\n")
    try:
        cfg = TrainConfig(data=str(train_data), out=str(tmp_path / "s"), styles=["fluo"])
        assert [it.name for it in training_items(cfg)] == ["fluo_0e5edb072788"]
        with pytest.raises(ValueError, match="style"):
            training_items(TrainConfig(data=str(train_data), out="x", styles=["brightfield"]))
    finally:
        (train_data / "index.csv").unlink()
    items, synthetic = ["real"] * 3, ["synthetic"] * 2
    rng = np.random.default_rng(0)
    picks = [pick_item(items, np.full(3, 1 / 3), synthetic, 0.3, rng) for _ in range(2000)]
    assert picks.count("synthetic") / 2000 == pytest.approx(0.3, abs=0.03)
    assert all(pick_item(items, np.full(3, 1 / 3), [], 0.3, rng) == "real" for _ in range(50))
    run = tmp_path / "mixed"
    train(TrainConfig(data=str(train_data), out=str(run), synthetic=str(train_data),
                      synthetic_share=0.5, **TINY))
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["synthetic_images"] == 2


def test_stain_jitter_changes_stained_images_only(train_data, tmp_path):
    """--stain-jitter: strength 0 gives the image back, a stained (H&E) crop gets new stain
    amounts with its nuclei still bright, a fluorescence crop is left alone, and the strength
    is kept in the run's config.json."""
    from nucleaizer_backend.train.augment import CropSpec, jitter_stains, make_training_crop

    items = {it.name: it for it in load_dataset(train_data)}
    he = items["he_420f43d21dba"].image.astype(np.float32)
    rng = np.random.default_rng(0)
    assert np.abs(jitter_stains(he, 0.0, rng) - he).max() < 2e-3
    jittered = jitter_stains(he, 0.2, np.random.default_rng(1))
    assert jittered.shape == he.shape and 0.0 <= jittered.min() and jittered.max() <= 1.0
    assert np.abs(jittered - he).mean() > 0.01  # the stains changed ...
    nuclei = items["he_420f43d21dba"].labels > 0
    assert jittered.mean(axis=-1)[nuclei].mean() > jittered.mean(axis=-1)[~nuclei].mean() + 0.1

    def crop(name, strength):  # ... the same crop and photometric draws otherwise
        spec = CropSpec(size=64, stain_jitter=strength)
        return make_training_crop(items[name], spec, np.random.default_rng(5))[0]

    assert np.array_equal(crop("fluo_0e5edb072788", 0.2), crop("fluo_0e5edb072788", 0.0))
    assert not np.array_equal(crop("he_420f43d21dba", 0.2), crop("he_420f43d21dba", 0.0))
    run = tmp_path / "stain"
    assert cli.main(["train", "--data", str(train_data), "--out", str(run), "--steps", "1",
                     "--batch-size", "1", "--crop", "64", "--threads", "1",
                     "--stain-jitter", "0.1"]) == 0
    assert json.loads((run / "config.json").read_text())["stain_jitter"] == 0.1


def test_crop_workers_are_reproducible_and_train(train_data, tmp_path, monkeypatch):
    # crops made in 2 DataLoader worker processes (as on a GPU machine): same seed and worker
    # count -> the same weights; the crops differ from those made in the training process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def run(name, **kw):
        cfg = TrainConfig(data=str(train_data), out=str(tmp_path / name),
                          **{**TINY, "steps": 3, **kw})
        train(cfg)
        return model_state(tmp_path / name)

    a, b = run("a", workers=2), run("b", workers=2)
    assert same_weights(a["model"], b["model"]), "two worker runs with the same seed differ"
    here = run("here")
    assert not same_weights(a["model"], here["model"])
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_time_limit_stops_checkpointed_and_resumes(train_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(train_data), "--out", str(run), "--steps", "5",
            "--batch-size", "1", "--crop", "64", "--checkpoint-every", "100", "--seed", "3",
            "--threads", "1", "--max-minutes", "0"]
    assert cli.main(args) == 0  # stops after its first step, with a checkpoint
    assert model_state(run)["step"] == 1
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "time limit"] == [1]
    assert [r["step"] for r in log if "loss" in r] == [1]  # the partial window is logged
    assert read_network_meta(run / "last.safetensors")["steps"] == 1
    args.remove("--max-minutes")
    args.remove("0")
    assert cli.main(args + ["--resume"]) == 0
    assert model_state(run)["step"] == 5


def test_group_norm_recipe_trains_and_loads(train_data, tmp_path):
    # GroupNorm backbone (batch-free statistics): trains, and its network file rebuilds it
    from nucleaizer_backend.models.io import load_network

    cfg = TrainConfig(data=str(train_data), out=str(tmp_path / "gn"),
                      architecture={"norm": "group"}, **TINY)
    train(cfg)
    net, meta = load_network(tmp_path / "gn" / "last.safetensors")
    assert meta["architecture"]["norm"] == "group"
    norms = [m for m in net.backbone.body.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d)
                             for m in net.backbone.body.modules())
    log = read_run_log(tmp_path / "gn" / "log.jsonl")
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_training_speed_settings():
    from nucleaizer_backend.models.io import build_network
    from nucleaizer_backend.train.loop import make_optimizer, use_bf16

    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with pytest.raises(ValueError, match="precision"):
        use_bf16("fp16", cpu)
    # RPN proposals and sampled RoIs while training come from the architecture (nuclei-sized
    # defaults); inference keeps rpn_proposals_test
    model = build_network("main")
    assert model.rpn._pre_nms_top_n == {"training": 600, "testing": 2000}
    assert model.rpn._post_nms_top_n == {"training": 300, "testing": 2000}
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    model = build_network("main", {"rpn_proposals_train": [2000, 1000], "box_rois_train": 64})
    assert model.rpn._pre_nms_top_n["training"] == 2000
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    opt = make_optimizer(list(model.parameters()), TrainConfig(data="", out=""), cpu)
    assert opt.defaults["fused"] is True


def test_channels_last_backbone_keeps_weights_and_outputs():
    # the backbone converts its input to channels-last itself: same state-dict keys as the
    # plain torchvision backbone, same features
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    from nucleaizer_backend.models.io import build_network

    model = build_network("main").eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone(x)
        model.backbone.__class__ = BackboneWithFPN
        plain = model.backbone(x)
    assert ours.keys() == plain.keys()
    for k in ours:
        assert ours[k].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours[k], plain[k].contiguous(), rtol=1e-4, atol=1e-5)


def test_resume_from_the_compact_file_alone(train_data, tmp_path):
    # resume.safetensors (fp16 weights + step) is all a run needs to go on where checkpoint.pt
    # did not travel: same step, same recipe, optimiser afresh with a short re-warm-up
    from nucleaizer_backend.models.io import load_network
    from nucleaizer_backend.train.loop import REWARM_STEPS, rewarm_factor

    run = tmp_path / "run"
    train(TrainConfig(data=str(train_data), out=str(run), **TINY))
    assert read_network_meta(run / "resume.safetensors")["steps"] == 2
    before, _ = load_network(run / "resume.safetensors")
    (run / "checkpoint.pt").unlink()
    with pytest.raises(FileExistsError):
        train(TrainConfig(data=str(train_data), out=str(run), **TINY))
    train(TrainConfig(data=str(train_data), out=str(run), **{**TINY, "steps": 4}), resume=True)
    assert model_state(run)["step"] == 4
    log = read_run_log(run / "log.jsonl")
    assert [r["step"] for r in log if "optimiser reset" in str(r.get("event"))] == [2]
    assert [r["step"] for r in log if "loss" in r][-1] == 4
    after, _ = load_network(run / "resume.safetensors")
    assert not same_weights(before.state_dict(), after.state_dict())
    assert rewarm_factor(10, None) == 1.0
    assert rewarm_factor(2, 2) == pytest.approx(1 / REWARM_STEPS)
    assert rewarm_factor(2 + REWARM_STEPS, 2) == 1.0


def test_run_config_pins_the_architecture(train_data, tmp_path):
    # a run started with the default architecture records it in full, so a later change of
    # the defaults cannot change the network (or its training proposals) of a resumed run
    from nucleaizer_backend.models.maskrcnn import MaskRCNNConfig

    train(TrainConfig(data=str(train_data), out=str(tmp_path / "run"), **TINY))
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["architecture"]
    assert stored == MaskRCNNConfig().to_dict()
