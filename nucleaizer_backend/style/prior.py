"""The general style prior: one pix2pix generator trained on the annotated images of every
style (docs/METHOD.md section 4.3), from which each style model of an adaptation starts, so
that a few hundred steps on a target style fine-tune texture the generator already knows how
to paint (noise, stain, nucleus interiors, cell bodies) instead of learning it from scratch.

:func:`train_style_prior` trains it with :func:`~.pix2pix_train.train_style_model` (same run
folder, resumable) on every (image, labels) pair of a training data folder (``pairing``);
``styles`` limits it to some styles of the folder's index.csv (a prior for a held-out-style
benchmark must not see the held-out style). :func:`shipped_prior` is the packaged one
(``weights/style_prior.safetensors``) when present; :func:`resolve_prior` turns the
adaptation setting ``style_init`` into a file or None.
"""
from pathlib import Path

from ..errors import ModelFileError, NucleaizerError

PRIOR_FILE = "style_prior.safetensors"
NO_PRIOR = "none"


def shipped_prior():
    """The packaged style prior, or None when this installation has none."""
    p = Path(__file__).resolve().parent.parent / "weights" / PRIOR_FILE
    return p if p.is_file() else None


def resolve_prior(style_init, architecture=None):
    """The generator file style models start from: ``style_init`` None -> the shipped prior
    when installed and of the style models' ``architecture`` (a Pix2PixConfig dict, None:
    the default), else None (from scratch); "none" -> None; a path -> that file (a run
    folder: its generator.safetensors). ModelFileError (one line) when it is missing or not a
    pix2pix generator."""
    if style_init is None:
        prior = shipped_prior()
        return prior if prior is not None and _same_generator(prior, architecture) else None
    if str(style_init).lower() == NO_PRIOR:
        return None
    from ..models.io import read_network_meta
    from .pix2pix_train import GENERATOR_FILE

    p = Path(style_init).expanduser()
    if p.is_dir():
        p = p / GENERATOR_FILE
    if not p.is_file():
        raise ModelFileError(f"{p}: style prior not found (a pix2pix generator file, or "
                             f"'{NO_PRIOR}' to train style models from scratch)")
    kind = read_network_meta(p).get("kind")
    if kind != "pix2pix":
        raise ModelFileError(f"{p}: not a pix2pix generator (kind {kind!r})")
    return p.resolve()


def _same_generator(path, architecture):
    """Whether the generator file ``path`` has the generator of ``architecture``."""
    from ..models.io import read_network_meta
    from ..models.pix2pix import Pix2PixConfig

    stored = Pix2PixConfig.from_dict(read_network_meta(path).get("pix2pix", {}))
    wanted = Pix2PixConfig.from_dict(architecture)
    return stored.generator_config().to_dict() == wanted.generator_config().to_dict()


def prior_pairs(data, styles=None):
    """[(image float (H, W, 3) in [0, 1], labels (H, W) int32)] of every pair in the
    training data folder ``data`` (``pairing.find_pairs``), optionally only the images of
    ``styles`` (names from ``data``'s or its parent's index.csv: column id, style)."""
    from ..imageio_utils import read_image
    from ..pairing import find_pairs
    from ..train.data import read_labels, read_styles
    from .pix2pix_train import raw_image_to_unit

    pairs = find_pairs(data)
    if styles:
        wanted = {s.strip() for s in styles}
        style = read_styles(data)
        pairs = [(i, lab) for i, lab in pairs if style.get(Path(i).stem) in wanted]
        if not pairs:
            raise NucleaizerError(f"{data}: no images of style(s) {', '.join(sorted(wanted))}")
    return [(raw_image_to_unit(read_image(i)), read_labels(lab)) for i, lab in pairs]


def train_style_prior(data, out, cfg=None, styles=None, resume=False, progress=None):
    """Train (or with ``resume``, continue) the style prior on the pairs of ``data``
    (:func:`prior_pairs`) into the run folder ``out`` with StyleTrainConfig ``cfg``; returns
    the run folder (its generator.safetensors is the prior)."""
    from .pix2pix_train import train_style_model

    return train_style_model(prior_pairs(data, styles), out, cfg, resume=resume,
                             progress=progress)
