"""What an adaptation starts from: the target images (:func:`read_targets`), the optional
annotations (:func:`read_annotations`), the base model (:func:`find_base_model`) and the
replay data mixed into the fine-tune (:func:`replay_folder`, the shipped set by default)."""
import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputImageError, ModelFileError, NucleaizerError

REPLAY_DIR = Path(__file__).resolve().parent.parent / "weights" / "replay"


@dataclass
class Target:
    """One target image: read from ``path`` (lazily) or given as ``array``."""

    name: str
    file: str  # safe file stem in the work folder
    path: Path = None
    array: np.ndarray = None
    digest: str = ""
    shape: tuple = ()

    def read(self):
        if self.array is not None:
            return self.array
        from ..imageio_utils import read_image

        return read_image(self.path)


def digest(a):
    """SHA-1 of an array's shape, dtype and bytes (how the job recognises its images)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.view(np.uint8).ravel() if a.size else b"")
    return h.hexdigest()


def _check_2d(a, name):
    """Plane shape (H, W) of a 2D gray/colour image; InputImageError naming ``name`` else."""
    from ..preprocess import to_hwc

    try:
        shape = to_hwc(a).shape[:2]
    except InputImageError as e:
        raise InputImageError(f"{name}: {e}") from None
    return tuple(int(v) for v in shape)


def safe_stem(name):
    """``name`` as a file stem (letters, digits, . _ - only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"


def read_targets(images):
    """``images`` (paths, folders, (name, array) pairs or a {name: array/path} dict) ->
    [Target] sorted by name, every image read once (digest, 2D check)."""
    from ..imageio_utils import list_images, read_image

    items = list(images.items()) if isinstance(images, dict) else list(images or [])
    targets = []
    for item in items:
        if isinstance(item, (str, Path)):
            for p in list_images([item]):
                targets.append(Target(p.stem, "", path=p))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            name, value = item
            if isinstance(value, (str, Path)):
                targets.append(Target(str(name), "", path=Path(value)))
            else:
                targets.append(Target(str(name), "", array=np.asarray(value)))
        else:
            raise NucleaizerError("images must be image files, folders or (name, array) pairs "
                                  f"(got {type(item).__name__})")
    if not targets:
        raise NucleaizerError("no images to adapt to (give image files or folders)")
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise NucleaizerError(f"several images are named {', '.join(dup[:5])}: image names must "
                              "be unique (rename the files or pass (name, array) pairs)")
    files = {}
    for t in sorted(targets, key=lambda t: t.name):
        stem = safe_stem(t.name)
        if stem in files:
            stem = f"{stem}_{hashlib.sha1(t.name.encode()).hexdigest()[:6]}"
        files[stem] = t
        t.file = stem
        a = read_image(t.path) if t.array is None else t.array
        t.shape = _check_2d(a, t.path or t.name)
        t.digest = digest(a)
    return sorted(targets, key=lambda t: t.name)


def _as_labels(a, name, shape):
    """An annotation (array or file) -> int32 label image of ``shape``; a binary mask is split
    into objects by connected components (as train.data.read_labels does)."""
    from scipy import ndimage

    from ..labels import relabel_sequential

    if isinstance(a, (str, Path)):
        from ..train.data import read_labels

        try:
            lab = read_labels(a)
        except NucleaizerError as e:
            raise InputImageError(f"annotation of {name}: {e}") from None
    else:
        lab = np.asarray(a)
        if lab.ndim == 3 and lab.shape[-1] in (3, 4):
            lab = lab[..., 0]
        if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool
                                 or np.issubdtype(lab.dtype, np.floating)):
            raise InputImageError(f"annotation of {name}: a label image must be 2D integers "
                                  f"(got shape {lab.shape}, {lab.dtype})")
        lab = np.nan_to_num(lab).astype(np.int64)
        if len(np.unique(lab)) <= 2:
            lab, _ = ndimage.label(lab > 0)
        lab = relabel_sequential(np.maximum(lab, 0)).astype(np.int32)
    if lab.shape != tuple(shape):
        raise InputImageError(f"annotation of {name}: labels of shape {lab.shape} do not match "
                              f"the image's {tuple(shape)}")
    return lab


def read_annotations(annotations, targets):
    """{image name: int32 labels} for the annotated images; refuses unknown names."""
    if not annotations:
        return {}
    by_name = {t.name: t for t in targets}
    unknown = sorted(str(n) for n in annotations if str(n) not in by_name)
    if unknown:
        raise NucleaizerError("annotations for images that are not among the target images: "
                              + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    return {str(n): _as_labels(a, n, by_name[str(n)].shape) for n, a in annotations.items()}


@dataclass(frozen=True)
class BaseModel:
    """The model an adaptation round starts from.

    folder: its model folder (None when a main network file was given); main: the main
    network file; meta: that network's metadata; info: the folder's model.json (or the
    file's folder's); name: its display name."""

    folder: Path
    main: Path
    meta: dict
    info: dict
    name: str

    @property
    def path(self):
        """The folder, else the main network file (as model.json's base_model records it)."""
        return self.folder or self.main

    def network(self, name):
        """The base folder's network file ``name``, else the shipped default's (None:
        neither has it)."""
        from ..models.io import DEFAULT_MODEL_DIR

        for folder in ([self.folder] if self.folder else []) + [DEFAULT_MODEL_DIR]:
            if (folder / name).is_file():
                return folder / name
        return None


def find_base_model(base):
    """The :class:`BaseModel` at ``base`` (a model folder or main network file; None: the
    shipped default); ModelFileError when it has no main network."""
    from ..models.io import (DEFAULT_MODEL_DIR, INFO_FILE, MAIN_FILE, read_model_info,
                             read_network_meta)

    p = Path(base).expanduser().resolve() if base else DEFAULT_MODEL_DIR
    if not p.exists():
        raise ModelFileError(f"base model not found: {p}")
    folder = p if p.is_dir() else None
    main = p / MAIN_FILE if folder else p
    if not main.is_file():
        raise ModelFileError(f"{p}: the base model has no main network ({MAIN_FILE}); style "
                             "adaptation fine-tunes a main network")
    meta = read_network_meta(main)
    if meta.get("kind") != "main":
        raise ModelFileError(f"{main}: not a main network (kind {meta.get('kind')!r}); style "
                             "adaptation fine-tunes a main network")
    info = read_model_info((folder or p.parent) / INFO_FILE)
    return BaseModel(folder, main, meta, info, info.get("name") or (folder or p).name)


def default_replay_dir():
    """The shipped replay set: 48 annotated DSB 2018 train images (34 fluorescence, 14 H&E),
    ``images/`` + ``labels/`` + ``index.csv`` (id, style, source_id, ...)."""
    return REPLAY_DIR


def read_replay_index(folder=None):
    """Rows of a replay folder's index.csv (default: the shipped set) as dicts."""
    folder = Path(folder) if folder else default_replay_dir()
    with open(folder / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def replay_folder(settings):
    """The replay data folder of ``settings`` (Settings), checked to hold image + label pairs
    (a clear error now rather than after the other stages' work)."""
    from ..train.data import find_pairs

    folder = Path(settings.replay_data) if settings.replay_data else default_replay_dir()
    if not folder.is_dir():
        raise NucleaizerError(f"replay data folder not found: {folder}")
    find_pairs(folder)
    return folder
