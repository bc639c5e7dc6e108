"""Model files: safe saving/loading of networks and model folders, cached per device.

A *network file* is one ``.safetensors`` file (no pickle: loading cannot run code) whose
header carries the JSON metadata needed to rebuild it (``architecture``, ``kind``, the nucleus
``diameter`` in px it works at, training facts). Floating-point weights are stored as fp16.

A *model folder* holds ``main.safetensors`` (segmentation at the working size),
``preseg.safetensors`` (size estimation at any scale; optional, the default one is used when
absent) and ``model.json`` (human-readable description, training data, scores, and the
post-processing/inference parameters).
"""
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelFileError
from .maskrcnn import MaskRCNNConfig, build_maskrcnn

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
MAIN_FILE, PRESEG_FILE, INFO_FILE = "main.safetensors", "preseg.safetensors", "model.json"
_META_KEY = "nucleaizer"


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
        model = build_maskrcnn(MaskRCNNConfig.from_dict(meta["architecture"]))
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    except Exception as e:
        raise ModelFileError(f"{path}: weights do not fit their architecture ({e})") from None
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return model, meta


@dataclass
class ModelBundle:
    """The networks of one model folder, ready for inference."""

    path: Path
    main: torch.nn.Module
    preseg: torch.nn.Module
    main_meta: dict
    preseg_meta: dict
    info: dict = field(default_factory=dict)

    @property
    def working_diameter(self):
        """Nucleus diameter in px that the main network was trained at."""
        return float(self.main_meta.get("diameter", 40.0))


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


def load_model(path=None, device="cpu"):
    """Load (once per process, path and device) a model folder or a main network file."""
    p = resolve_model_path(path)
    main_file = p / MAIN_FILE if p.is_dir() else p
    preseg_file = p / PRESEG_FILE if p.is_dir() and (p / PRESEG_FILE).is_file() \
        else DEFAULT_MODEL_DIR / PRESEG_FILE
    key = (str(main_file), main_file.stat().st_mtime_ns, str(preseg_file), str(device))
    with _cache_lock:
        if key not in _cache:
            main, main_meta = load_network(main_file, device)
            preseg, preseg_meta = load_network(preseg_file, device)
            info = {}
            info_file = (p if p.is_dir() else p.parent) / INFO_FILE
            if info_file.is_file():
                try:
                    info = json.loads(info_file.read_text())
                except json.JSONDecodeError:
                    raise ModelFileError(f"{info_file}: corrupt model description") from None
            _cache[key] = ModelBundle(p, main, preseg, main_meta, preseg_meta, info)
        return _cache[key]
