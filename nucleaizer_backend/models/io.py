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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..device import resolve_device
from ..errors import ModelFileError, OptionError
from ..refine import PostprocessParams
from .maskrcnn import MaskRCNNConfig, build_maskrcnn
from .unet import UNetConfig, build_unet

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
MAIN_FILE, PRESEG_FILE, UNET_FILE = "main.safetensors", "preseg.safetensors", "unet.safetensors"
#: the networks of a model folder, by role
NETWORK_FILES = {"main": MAIN_FILE, "preseg": PRESEG_FILE, "unet": UNET_FILE}
INFO_FILE = "model.json"
#: inference speeds: "accurate" brings every image's nuclei to the working diameter; "fast"
#: enlarges small nuclei only up to the model's fast_diameter (ModelBundle)
SPEEDS = ("accurate", "fast")
_META_KEY = "nucleaizer"
MAX_CACHED_MODELS = 4  # loaded models kept in memory (per process), least recently used dropped


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
    """The networks of one model folder on one ``device``, ready for inference (``unet`` is
    None when neither the folder nor the shipped default has one)."""

    path: Path
    main: torch.nn.Module = field(repr=False)
    preseg: torch.nn.Module = field(repr=False)
    main_meta: dict = field(repr=False)
    preseg_meta: dict = field(repr=False)
    info: dict = field(default_factory=dict, repr=False)
    unet: torch.nn.Module = field(default=None, repr=False)
    unet_meta: dict = field(default=None, repr=False)
    device: torch.device = torch.device("cpu")

    @property
    def working_diameter(self):
        """Nucleus diameter in px that the main network was trained at."""
        return float(self.main_meta.get("diameter", 40.0))

    @property
    def fast_diameter(self):
        """Nucleus diameter (px at the working scale) up to which the *fast* speed enlarges
        small nuclei (instead of to ``working_diameter``): model.json "speed"
        {"fast_diameter": px}, chosen by measurement; ``working_diameter`` when the model has
        none (fast is then the same as accurate)."""
        value = speed_settings(self.info)["fast_diameter"]
        return float(value) if value else self.working_diameter

    @property
    def default_speed(self):
        """The speed used when none is asked for: model.json "speed" {"default": "fast" or
        "accurate"}; "accurate" when the model has none."""
        return speed_settings(self.info)["default"]

    @property
    def postprocess(self):
        """Post-processing parameters stored with the model (model.json "postprocess")."""
        info = self.info if isinstance(self.info, dict) else {}
        return dict(info.get("postprocess") or {})


_cache = OrderedDict()  # (path, device) -> (file versions, ModelBundle), oldest use first
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
    or network file; cheap (reads the main network's metadata and model.json, no weights):
    the main network must be one (not a U-Net or preseg file in its place) and model.json,
    when there is one, a valid description."""
    p = resolve_model_path(path)
    main_file, _, _, info_file = model_files(p)
    check_kind(main_file, read_network_meta(main_file), "main")
    read_model_info(info_file)
    return p


def check_kind(path, meta, role):
    """ModelFileError unless the network file ``path`` with metadata ``meta`` can serve as
    the ``role`` network (main, preseg or unet) of a model; files without a kind count as
    main networks (as load_network builds them)."""
    kind = meta.get("kind", "main")
    fits = {"main": ("main",), "preseg": ("preseg", "main"), "unet": ("unet",)}[role]
    if kind not in fits:
        what = {"main": "Mask R-CNN main network", "preseg": "size-estimation (preseg) "
                "network", "unet": "contour U-Net"}[role]
        raise ModelFileError(f"{path}: a {kind!r} network, but the {role} network of a model "
                             f"({NETWORK_FILES[role]}) must be a {what}")


def _network_file(folder, name):
    """``folder/name`` when the model folder has it, else the shipped default's (or None)."""
    if folder.is_dir() and (folder / name).is_file():
        return folder / name
    return DEFAULT_MODEL_DIR / name if (DEFAULT_MODEL_DIR / name).is_file() else None


def model_info_file(path):
    """The model.json that belongs to a model folder or network file ``path``."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / INFO_FILE


def read_model_info(info_file):
    """The model description (model.json) as a dict; {} when the file does not exist.
    ModelFileError (one line naming the file) when it is not JSON, not a JSON object, or
    its "postprocess" values are not numbers in their ranges (refine.PARAM_RANGES)."""
    info_file = Path(info_file)
    if not info_file.is_file():
        return {}
    try:
        info = json.loads(info_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"{info_file}: corrupt model description (not JSON)") from None
    if not isinstance(info, dict):
        raise ModelFileError(f"{info_file}: not a model description (a JSON object is "
                             f"expected, found a {type(info).__name__})")
    check_postprocess_entry(info_file, info.get("postprocess"))
    check_speed_entry(info_file, info.get("speed"))
    return info


def stored_postprocess(path=None):
    """The PostprocessParams a model uses unless told otherwise: the paper's values updated
    by its model.json's "postprocess" (path: model folder or network file; None = the
    shipped default). Cheap: reads model.json only. ModelFileError as read_model_info."""
    info = read_model_info(model_info_file(resolve_model_path(path)))
    values = PostprocessParams().to_dict()
    values.update(info.get("postprocess") or {})
    return PostprocessParams.from_dict(values)


def stored_speed(path=None):
    """{"default": speed, "fast_diameter": px} of a model (path: model folder or network
    file; None = the shipped default) from its model.json "speed", without loading the
    networks: "accurate" and no fast_diameter (None) where it has none. ModelFileError as
    read_model_info."""
    return speed_settings(read_model_info(model_info_file(resolve_model_path(path))))


def speed_settings(info):
    """{"default": speed, "fast_diameter": px or None} of a model description ``info``
    (model.json as a dict): its "speed" entry, "accurate" and None where it has none."""
    speed = (info.get("speed") if isinstance(info, dict) else None) or {}
    return {"default": speed.get("default") or "accurate",
            "fast_diameter": speed.get("fast_diameter")}


def check_speed_entry(info_file, speed):
    """ModelFileError naming ``info_file`` unless model.json's "speed" entry is absent or an
    object whose "fast_diameter" (if any) is a positive number of px and whose "default"
    (if any) is one of SPEEDS."""
    if speed is None:
        return
    if not isinstance(speed, dict):
        raise ModelFileError(f"{info_file}: \"speed\" must be an object (found a "
                             f"{type(speed).__name__})")
    fast = speed.get("fast_diameter")
    if fast is not None and (isinstance(fast, bool) or not isinstance(fast, (int, float))
                             or not fast > 0):
        raise ModelFileError(f"{info_file}: \"speed\": \"fast_diameter\" must be a positive "
                             f"number of px (got {fast!r})")
    if speed.get("default") not in (None,) + SPEEDS:
        raise ModelFileError(f"{info_file}: \"speed\": \"default\" must be one of "
                             f"{', '.join(SPEEDS)} (got {speed.get('default')!r})")


def check_postprocess_entry(info_file, post):
    """ModelFileError naming ``info_file`` unless model.json's "postprocess" entry ``post``
    is absent or an object of valid parameter values (unknown keys are ignored)."""
    if post is None:
        return
    if not isinstance(post, dict):
        raise ModelFileError(f"{info_file}: \"postprocess\" must be an object of p1..p6 and "
                             f"confidence (found a {type(post).__name__})")
    try:
        PostprocessParams.from_dict(post)
    except OptionError as e:
        raise ModelFileError(f"{info_file}: \"postprocess\": {e}") from None


def _mtime(path):
    return path.stat().st_mtime_ns if path is not None and path.is_file() else None


def model_files(path):
    """The files a model folder or main network file ``path`` (resolved) loads from:
    (main, preseg, unet or None, model.json), missing networks taken from the default."""
    main_file = path / MAIN_FILE if path.is_dir() else path
    return (main_file, _network_file(path, PRESEG_FILE), _network_file(path, UNET_FILE),
            model_info_file(path))


def load_model(model=None, device="auto"):
    """The ModelBundle of a model folder or main network file (None = shipped default) on
    ``device`` ("auto": CUDA when available); an already loaded ModelBundle is returned as
    it is.

    Loaded once per process while its files are unchanged: files changed since (a model
    re-adapted or re-tuned into the same folder) are loaded anew and the old networks are
    let go; at most MAX_CACHED_MODELS models are kept, the least recently used go first."""
    if isinstance(model, ModelBundle):
        return model
    path, device = resolve_model_path(model), resolve_device(device)
    files = model_files(path)
    versions = tuple((str(f), _mtime(f)) for f in files)
    key = (str(path), str(device))
    with _cache_lock:
        if key in _cache and _cache[key][0] == versions:
            _cache.move_to_end(key)
            return _cache[key][1]
        _cache.pop(key, None)  # the old networks go before the new ones load
        _cache[key] = (versions, _load_bundle(path, files, device))
        while len(_cache) > MAX_CACHED_MODELS:
            _cache.popitem(last=False)
        return _cache[key][1]


def _load_bundle(path, files, device):
    main_file, preseg_file, unet_file, info_file = files
    info = read_model_info(info_file)  # first: a bad description fails before any weights
    main, main_meta = _load_role(main_file, "main", device)
    preseg, preseg_meta = _load_role(preseg_file, "preseg", device)
    unet, unet_meta = _load_role(unet_file, "unet", device) if unet_file else (None, None)
    return ModelBundle(path, main, preseg, main_meta, preseg_meta, info, unet, unet_meta,
                       device)


def _load_role(path, role, device):
    """load_network of ``path`` after checking (check_kind) that it fits ``role``."""
    check_kind(path, read_network_meta(path), role)
    return load_network(path, device)
