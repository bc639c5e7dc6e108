"""Model files: safe saving/loading of networks and model folders, cached per device.

A *network file* is one ``.safetensors`` file (no pickle: loading cannot run code) whose
header carries the JSON metadata needed to rebuild it (``architecture``, ``kind``, the nucleus
``diameter`` in px it works at, training facts). Floating-point weights are stored as fp16.

A *model folder* holds ``main.safetensors`` (Mask R-CNN segmentation at the working size),
``preseg.safetensors`` (size estimation at any scale), ``unet.safetensors`` (contour
refinement at the working size) and ``model.json`` (human-readable description, training
data, scores, and the post-processing parameters under ``"postprocess"``). preseg and unet
are optional: the shipped default ones are used when a folder lacks them.
"""
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelFileError
from .maskrcnn import MaskRCNNConfig, build_maskrcnn
from .unet import UNetConfig, build_unet

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
MAIN_FILE, PRESEG_FILE, UNET_FILE = "main.safetensors", "preseg.safetensors", "unet.safetensors"
#: the networks of a model folder, by role
NETWORK_FILES = {"main": MAIN_FILE, "preseg": PRESEG_FILE, "unet": UNET_FILE}
INFO_FILE = "model.json"
_META_KEY = "nucleaizer"


def build_network(kind, architecture=None):
    """A network with random weights: Mask R-CNN for ``kind`` main/preseg, the refinement
    U-Net for unet, a style generator (plain U-Net) for pix2pix."""
    architecture = architecture or {}
    if kind in ("main", "preseg"):
        return build_maskrcnn(MaskRCNNConfig.from_dict(architecture))
    if kind == "unet":
        return build_unet(UNetConfig.from_dict(architecture))
    if kind == "pix2pix":
        from .unet import UNet

        return UNet(UNetConfig.from_dict(architecture))
    raise ValueError(f"unknown network kind {kind!r} (main, preseg, unet or pix2pix)")


def save_network(model, path, meta):
    """Write ``model``'s weights (fp16) and ``meta`` (JSON-able dict) to ``path``."""
    from safetensors.torch import save_file

    meta = dict(meta, architecture=model.config.to_dict())
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        state[k] = (v.half() if v.is_floating_point() else v).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    tmp.replace(path)


def read_network_meta(path):
    """The metadata dict stored in a network file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not a nucleAIzer network file (no metadata)") from None
    except Exception as e:
        raise ModelFileError(f"{path}: corrupt or unreadable model file ({e})") from None


def load_network(path, device="cpu"):
    """Rebuild a network from its file; returns (model in eval mode on ``device``, meta)."""
    from safetensors.torch import load_file

    meta = read_network_meta(path)
    try:
        state = load_file(str(path))
        model = build_network(meta.get("kind", "main"), meta["architecture"])
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    except Exception as e:
        raise ModelFileError(f"{path}: weights do not fit their architecture ({e})") from None
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return model, meta


def load_network_of_kind(path, kind, device="cpu"):
    """``load_network``, refusing a file whose metadata says it is not a ``kind`` network."""
    meta = read_network_meta(path)
    if meta.get("kind") != kind:
        raise ModelFileError(f"{path}: not a {kind} network (kind {meta.get('kind')!r})")
    return load_network(path, device)


@dataclass
class ModelBundle:
    """The networks of one model folder, ready for inference (``unet`` is None when neither
    the folder nor the shipped default has one)."""

    path: Path
    main: torch.nn.Module
    preseg: torch.nn.Module
    main_meta: dict
    preseg_meta: dict
    info: dict = field(default_factory=dict)
    unet: torch.nn.Module = None
    unet_meta: dict = None

    @property
    def working_diameter(self):
        """Nucleus diameter in px that the main network was trained at."""
        return float(self.main_meta.get("diameter", 40.0))

    @property
    def postprocess(self):
        """Post-processing parameters stored with the model (model.json "postprocess")."""
        return dict(self.info.get("postprocess") or {})


_cache = {}
_cache_lock = threading.Lock()


def resolve_model_path(path=None):
    """Model folder or network file to use: the shipped default when ``path`` is empty."""
    p = Path(path).expanduser() if path else DEFAULT_MODEL_DIR
    if not p.exists():
        raise ModelFileError(f"model not found: {p}")
    if p.is_dir() and not (p / MAIN_FILE).is_file():
        raise ModelFileError(f"{p}: model folder without {MAIN_FILE}")
    return p.resolve()


def check_model_path(path=None):
    """Raise ModelFileError unless ``path`` (None = shipped default) is a usable model folder
    or network file; cheap (reads only the main network's metadata)."""
    p = resolve_model_path(path)
    read_network_meta(p / MAIN_FILE if p.is_dir() else p)
    return p


def _network_file(folder, name):
    """``folder/name`` when the model folder has it, else the shipped default's (or None)."""
    if folder.is_dir() and (folder / name).is_file():
        return folder / name
    return DEFAULT_MODEL_DIR / name if (DEFAULT_MODEL_DIR / name).is_file() else None


def read_model_info(info_file):
    """The model description (model.json) as a dict; {} when the file does not exist."""
    info_file = Path(info_file)
    if not info_file.is_file():
        return {}
    try:
        return json.loads(info_file.read_text())
    except json.JSONDecodeError:
        raise ModelFileError(f"{info_file}: corrupt model description") from None


def _mtime(path):
    return path.stat().st_mtime_ns if path is not None and path.is_file() else None


def load_model(path=None, device="cpu"):
    """Load (once per process, path, file versions and device) a model folder or a main
    network file; returns a ModelBundle."""
    p = resolve_model_path(path)
    main_file = p / MAIN_FILE if p.is_dir() else p
    preseg_file, unet_file = _network_file(p, PRESEG_FILE), _network_file(p, UNET_FILE)
    info_file = (p if p.is_dir() else p.parent) / INFO_FILE
    key = tuple((str(f), _mtime(f)) for f in (main_file, preseg_file, unet_file, info_file))
    key += (str(device),)
    with _cache_lock:
        if key not in _cache:
            main, main_meta = load_network(main_file, device)
            preseg, preseg_meta = load_network(preseg_file, device)
            unet, unet_meta = load_network(unet_file, device) if unet_file else (None, None)
            info = read_model_info(info_file)
            _cache[key] = ModelBundle(p, main, preseg, main_meta, preseg_meta, info,
                                      unet, unet_meta)
        return _cache[key]
