"""pix2pix style models (docs/METHOD.md section 4.3): mask representation, networks, training
with checkpoint/resume, generation. Tiny networks on a synthetic style so that it runs in
seconds on one CPU thread."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import ndimage

from nucleaizer_backend.errors import ModelFileError
from nucleaizer_backend.models.io import save_network
from nucleaizer_backend.models.pix2pix import (PatchDiscriminator, Pix2PixConfig,
                                               build_discriminator, build_generator,
                                               gan_to_image, image_to_gan, mask_to_input)
from nucleaizer_backend.models.unet import UNet, UNetConfig
from nucleaizer_backend.style.pix2pix_train import (GENERATOR_FILE, StyleTrainConfig,
                                                    generate, load_style_model,
                                                    raw_image_to_unit, sample_crop, steps_for,
                                                    train_style_model)

TINY = dict(generator=dict(base_channels=8, depth=3), disc_channels=8, disc_layers=2)
NUCLEUS, BACKGROUND = (0.3, 0.1, 0.5), (0.85, 0.75, 0.8)


def blobs(shape, n, rng, rmin=5, rmax=9):
    """Label image of ``n`` random ellipses (later ones overwrite, so some touch)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(rmin, rmax, 2)
        lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    return lab


def render(lab, rng=None):
    """The synthetic style: purple nuclei on a pink textured background (+ noise)."""
    h, w = lab.shape
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    img += (0.06 * np.sin(xx / 2.0) * np.cos(yy / 3.0))[..., None]
    img[lab > 0] = NUCLEUS
    if rng is not None:
        img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def style_pairs(n=4, shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        lab = blobs(shape, 12, rng)
        pairs.append((render(lab, rng), lab))
    return pairs


def tiny_config(**kw):
    base = dict(steps=120, crop=64, batch_size=2, lr=2e-3, checkpoint_every=1000, log_every=5,
                architecture=TINY)
    return StyleTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny style model trained for 120 steps; (run folder, per-step progress infos)."""
    out = tmp_path_factory.mktemp("style") / "run"
    infos = []
    run = train_style_model(style_pairs(), out, tiny_config(),
                            progress=lambda s, t, info: infos.append((s, t, info)))
    return run, infos


def test_mask_to_input_marks_touching_boundaries():
    lab = np.zeros((12, 16), np.int32)
    lab[2:10, 2:8] = 1
    lab[2:10, 8:14] = 2  # touches object 1 along the column 7|8
    x = mask_to_input(lab)
    assert x.shape == (2, 12, 16) and x.dtype == np.float32
    assert set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[0], lab > 0)
    b = x[1].astype(bool)
    assert b[3:9, 7].all() and b[3:9, 8].all()  # both sides of the touching line
    assert b[2, 2:14].all() and b[9, 2:14].all() and b[2:10, 2].all() and b[2:10, 13].all()
    assert not b[lab == 0].any()  # background is never a boundary
    assert not b[4:8, 4:6].any() and not b[4:8, 10:12].any()  # interiors are not
    # removing boundaries keeps the two touching nuclei apart
    _, n = ndimage.label(x[0].astype(bool) & ~b)
    assert n == 2
    _, n_fg = ndimage.label(x[0].astype(bool))
    assert n_fg == 1  # ... which the foreground channel alone could not


def test_image_gan_mapping_roundtrip():
    img = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    g = image_to_gan(img)
    assert g.shape == (3, 5, 7) and g.min() >= -1 and g.max() <= 1
    np.testing.assert_allclose(g[:, 0, 0], img[0, 0] * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(gan_to_image(torch.from_numpy(g)), img, atol=1e-6)


def test_config_roundtrip():
    cfg = Pix2PixConfig.from_dict(TINY)
    d = json.loads(json.dumps(cfg.to_dict()))
    again = Pix2PixConfig.from_dict(d)
    assert again == Pix2PixConfig.from_dict(d) and again.to_dict() == d
    g = again.generator_config()
    assert (g.in_channels, g.out_channels, g.out_activation) == (2, 3, "tanh")
    assert (g.base_channels, g.depth, g.norm, g.dropout) == (8, 3, "instance", 0.5)
    assert again.betas == (0.5, 0.999) and again.lambda_l1 == 100 and again.lr == 2e-4


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (1, 9)])
def test_generator_shape_and_range(shape):
    torch.manual_seed(0)
    gen = build_generator(Pix2PixConfig.from_dict(TINY)).eval()
    with torch.inference_mode():
        y = gen(torch.rand(2, 2, *shape))
    assert y.shape == (2, 3, *shape)
    assert y.min() >= -1 and y.max() <= 1
    lab = blobs(shape, 3, np.random.default_rng(1), 2, 4)
    before = torch.get_rng_state()
    img = generate(gen, lab, 3)
    assert img.shape == (*shape, 3) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    assert torch.equal(before, torch.get_rng_state())  # seeded generation leaves torch's RNG
    np.testing.assert_array_equal(img, generate(gen, lab, 3))
    assert not gen.training  # the caller's mode is restored


def test_generation_noise_from_dropout():
    torch.manual_seed(0)
    gen = build_generator(Pix2PixConfig.from_dict(TINY)).eval()
    lab = blobs((48, 48), 6, np.random.default_rng(2))
    a, b = generate(gen, lab, 1), generate(gen, lab, 2)
    assert np.abs(a - b).mean() > 1e-4  # dropout is the noise: different seeds, other images
    rng = np.random.default_rng(7)
    assert generate(gen, lab, rng).shape == (48, 48, 3)


def test_discriminator_is_a_70px_patchgan():
    disc = PatchDiscriminator(in_channels=5, channels=8, layers=3)
    out = disc(torch.rand(2, 5, 256, 256))
    assert out.shape == (2, 1, 30, 30)  # a map of patch logits, not one number
    # receptive field of one logit: 70 x 70 px (measured without instance norm, whose
    # statistics span the whole image)
    for i, m in enumerate(disc.net):
        if isinstance(m, torch.nn.InstanceNorm2d):
            disc.net[i] = torch.nn.Identity()
    x = torch.rand(1, 5, 128, 128, requires_grad=True)
    y = disc(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = np.flatnonzero(x.grad.abs().sum((0, 1, 3)).numpy() > 0)
    cols = np.flatnonzero(x.grad.abs().sum((0, 1, 2)).numpy() > 0)
    assert rows[-1] - rows[0] + 1 == 70 and cols[-1] - cols[0] + 1 == 70
    small = build_discriminator(Pix2PixConfig.from_dict(TINY))
    assert small(torch.rand(1, 5, 64, 64)).shape[1] == 1


def test_steps_for_scales_sublinearly():
    for preset in ("quick", "full"):
        counts = [1, 2, 5, 10, 20, 50, 100, 1000]
        steps = [steps_for(n, preset) for n in counts]
        assert steps == sorted(steps)  # more images: not fewer steps ...
        epochs = [s / n for s, n in zip(steps, counts)]
        assert all(a > b for a, b in zip(epochs, epochs[1:]))  # ... but fewer epochs
    assert 200 <= steps_for(1, "quick") <= steps_for(100, "quick") <= 400
    assert steps_for(25, "full") == 5000
    assert steps_for(10 ** 6, "full") == 20000
    with pytest.raises(ValueError):
        steps_for(3, "slow")


def test_raw_image_to_unit():
    u8 = np.array([[0, 255], [51, 102]], np.uint8)
    np.testing.assert_allclose(raw_image_to_unit(u8)[..., 0], u8 / 255.0, atol=1e-6)
    assert raw_image_to_unit(u8).shape == (2, 2, 3)
    u16 = np.array([[0, 1000], [2000, 4000]], np.uint16)
    np.testing.assert_allclose(raw_image_to_unit(u16)[..., 1], u16 / 4000.0, atol=1e-6)
    f = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32) * 0.5
    np.testing.assert_array_equal(raw_image_to_unit(f), f)  # [0, 1] floats unchanged


def test_sample_crop_pads_small_images_and_keeps_objects_apart():
    lab = np.zeros((30, 40), np.int32)
    lab[0:10, 0:10] = 1  # at the corner: its mirror images touch it
    img = render(lab)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ci, cl = sample_crop(img, lab, 64, rng)
        assert ci.shape == (64, 64, 3) and cl.shape == (64, 64)
        # every connected object piece has one label; mirrored copies got new labels
        n_labels = len(np.unique(cl[cl > 0]))
        assert n_labels >= 1
        assert (mask_to_input(cl)[1] > 0).any()
        # colours follow the labels (image and labels are transformed together)
        assert np.allclose(ci[cl > 0], NUCLEUS, atol=1e-6)


def test_training_learns_the_style(trained):
    run, infos = trained
    assert [s for s, _, _ in infos] == list(range(1, 121)) and infos[-1][1] == 120
    l1 = np.array([info["loss_g_l1"] for _, _, info in infos])
    assert l1[-24:].mean() < 0.5 * l1[:24].mean()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["pairs"] == 4
    rec = log[-1]
    assert rec["step"] == 120
    assert {"loss_g_gan", "loss_g_l1", "loss_d", "sec_per_step"} <= set(rec)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 120 and cfg["architecture"] == TINY


def test_trained_generator_renders_the_style(trained):
    run, _ = trained
    gen, meta = load_style_model(run)
    assert not gen.training
    assert meta["kind"] == "pix2pix" and meta["steps"] == 120 and meta["pairs"] == 4
    assert meta["architecture"]["depth"] == 3
    assert all(v.dtype == torch.float16 for v in load_file(str(run / GENERATOR_FILE)).values()
               if v.is_floating_point())
    lab = blobs((77, 101), 12, np.random.default_rng(5))  # a new mask, another size
    truth = render(lab)
    torch.manual_seed(0)
    untrained = build_generator(Pix2PixConfig.from_dict(TINY))
    err_trained = np.abs(generate(gen, lab, 1) - truth).mean()
    err_untrained = np.abs(generate(untrained, lab, 1) - truth).mean()
    assert err_trained < 0.5 * err_untrained
    assert err_trained < 0.08
    out = generate(gen, lab, 1)
    assert out[lab > 0].mean(0)[2] > out[lab > 0].mean(0)[0]  # nuclei purple: blue > red
    assert out[lab == 0].mean() > out[lab > 0].mean()  # on a brighter background


def test_checkpoint_resume_continues_exactly(tmp_path):
    pairs = style_pairs(2, (70, 80), seed=3)
    cfg = tiny_config(steps=24, checkpoint_every=8, lr=1e-3)
    straight = train_style_model(pairs, tmp_path / "straight", cfg)

    class Stop(Exception):
        pass

    def stop_at_13(step, total, info):
        if step == 13:
            raise Stop

    with pytest.raises(Stop):
        train_style_model(pairs, tmp_path / "broken", cfg, progress=stop_at_13)
    with pytest.raises(FileExistsError):
        train_style_model(pairs, tmp_path / "broken", cfg)
    assert load_style_model(tmp_path / "broken")[1]["steps"] == 8  # written at the checkpoint
    seen = []
    run = train_style_model(pairs, tmp_path / "broken", cfg, resume=True,
                            progress=lambda s, t, i: seen.append(s))
    assert seen == list(range(9, 25))  # continued after the checkpoint at step 8
    a, meta = load_style_model(run)
    b, _ = load_style_model(straight)
    assert meta["steps"] == 24
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)  # same as an uninterrupted run
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 24
    # more steps on a finished run
    run = train_style_model(pairs, run, tiny_config(steps=28, checkpoint_every=8), resume=True)
    assert load_style_model(run)[1]["steps"] == 28


def test_load_style_model_rejects_other_networks(tmp_path):
    net = UNet(UNetConfig(base_channels=4, depth=2))
    save_network(net, tmp_path / "unet.safetensors", {"kind": "unet"})
    with pytest.raises(ModelFileError):
        load_style_model(tmp_path / "unet.safetensors")
    with pytest.raises(ModelFileError):
        load_style_model(tmp_path / "missing")


def test_style_model_starts_from_a_prior(trained, tmp_path):
    """init= loads the prior's generator (a near-zero learning rate keeps its weights), its
    name is recorded; a prior of another architecture is refused in one line."""
    run, _ = trained
    prior = run / GENERATOR_FILE
    out = train_style_model(style_pairs(2), tmp_path / "from_prior",
                            tiny_config(steps=1, lr=1e-12, init=str(prior)))
    started = load_file(str(out / GENERATOR_FILE))
    for k, v in load_file(str(prior)).items():
        torch.testing.assert_close(started[k].float(), v.float(), atol=1e-3, rtol=0)
    assert json.loads((out / "config.json").read_text())["init"] == str(prior)
    other = dict(TINY, generator=dict(base_channels=4, depth=3))
    with pytest.raises(ModelFileError, match="architecture"):
        train_style_model(style_pairs(2), tmp_path / "other",
                          tiny_config(steps=1, init=str(prior), architecture=other))


def test_prior_is_trained_on_a_folder_and_resolved(tmp_path, example_images_dir):
    """train_style_prior learns from every pair of a training folder (or some styles of its
    index.csv); resolve_prior: None -> the shipped prior, 'none' -> scratch, files checked."""
    from nucleaizer_backend.style.prior import prior_pairs, resolve_prior, shipped_prior, \
        train_style_prior

    assert len(prior_pairs(example_images_dir)) == 5
    assert len(prior_pairs(example_images_dir, styles=["he"])) == 2
    run = train_style_prior(example_images_dir, tmp_path / "prior",
                            tiny_config(steps=2, crop=32), styles=["fluo"])
    assert json.loads((run / "log.jsonl").read_text().splitlines()[0])["pairs"] == 3
    assert resolve_prior(str(run)) == (run / GENERATOR_FILE).resolve()
    assert resolve_prior("none") is None and resolve_prior("NONE") is None
    assert resolve_prior(None) == shipped_prior()
    with pytest.raises(ModelFileError, match="style prior not found"):
        resolve_prior(str(tmp_path / "missing.safetensors"))
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    with pytest.raises(ModelFileError, match="not a pix2pix generator"):
        resolve_prior(str(DEFAULT_MODEL_DIR / "main.safetensors"))


def test_realism_kid_ranks_styles(cpu_model, example_images_dir):
    """KID on the detector's features: two crop samples of the same images score near 0,
    fluorescence against H&E far above; on random features, samples of one distribution score
    near 0 and a shifted one far above."""
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.style.realism import kid, kid_floor, realism

    images = {p.stem: read_image(p) for p in sorted((example_images_dir / "images").glob("*"))}
    fluo = [v for k, v in images.items() if k.startswith("fluo")]
    he = [v for k, v in images.items() if k.startswith("he")]
    floor, _ = kid_floor(cpu_model.main, fluo, n_crops=60)
    apart, _ = realism(cpu_model.main, fluo, he, n_crops=60)
    assert abs(floor) < 2.0 and apart > 5.0 + 3 * abs(floor)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, shifted = kid(x, y, rng)[0], kid(x, y + 1.0, rng)[0]
    assert abs(same) < 0.1 < 1.0 < shifted
