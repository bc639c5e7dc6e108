"""Search the post-processing parameters (p1..p6 and the detection confidence) that maximise
the DSB score on a user's annotated images (docs/METHOD.md section 2.6; the paper tuned them
with a genetic search on DSB), so that a lab can tune once on a few annotated images.

The networks run once per image (inference.infer: Mask R-CNN labels at the lowest confidence
searched, the U-Net probability, the scale); each parameter set then only re-runs the cheap
rules (inference.postprocess). The search is coordinate descent over a grid per parameter,
starting from the current values, for a few rounds.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NucleaizerError
from .evaluate import score_image
from .inference import NetworkOutputs, infer, postprocess, postprocess_params
from .models.io import load_model
from .progress import ProgressCallback
from .refine import PostprocessParams

GRID = {
    "confidence": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "p1": [0.1, 0.17, 0.25, 0.35, 0.5, 1.0],  # 1.0: never merge
    "p2": [0.0, 20.0, 44.0, 80.0, 150.0],
    "p3": [0.3, 0.5, 0.6, 0.7, 0.8, 0.9375],
    "p4": [0.0, 1.0, 2.0, 4.0, 8.0],  # px at the working scale (>= 1 original px when > 0)
    "p5": [0.0, 1.0, 2.0, 4.0, 8.0],
    "p6": [0.0, 0.3, 0.5, 0.65, 0.8],
}


@dataclass
class CachedImage:
    """What the networks produced for one image (at the lowest confidence searched) and its
    true labels (H, W)."""

    name: str
    outputs: NetworkOutputs
    truth: np.ndarray


@dataclass
class TuneResult:
    params: PostprocessParams
    dsb: float
    start_dsb: float
    history: list = field(default_factory=list)  # (parameter, value, dsb) in search order

    def report(self):
        return (f"DSB {self.start_dsb:.4f} -> {self.dsb:.4f} on the tuning images; "
                + ", ".join(f"{k}={v:g}" for k, v in self.params.to_dict().items()))


def cache_image(model, name, image, truth, min_confidence, diameter=None):
    """Run ``model``'s networks (a loaded model) once on ``image`` (any 2D image) for tuning;
    ``diameter`` px (None = estimated)."""
    outputs = infer(model, image, diameter, min_confidence)
    return CachedImage(name, outputs, np.asarray(truth))


def evaluate_params(cached, params):
    """Mean DSB score of the cached images post-processed with ``params``."""
    return float(np.mean([score_image(c.truth, postprocess(c.outputs, params)[0]).dsb
                          for c in cached]))


def search(cached, start, rounds=2, grid=None, progress=None):
    """Coordinate descent from ``start`` (PostprocessParams) over ``grid``; returns a
    TuneResult. Without U-Net probabilities, p3..p6 are left as they are."""
    grid = grid or GRID
    has_unet = all(c.outputs.unet_probability is not None for c in cached)
    names = [k for k in grid if has_unet or k not in ("p3", "p4", "p5", "p6")]
    best = start.to_dict()
    best_dsb = start_dsb = evaluate_params(cached, start)
    history = [("start", None, start_dsb)]
    total, done = rounds * sum(len(grid[k]) for k in names), 0
    for _ in range(rounds):
        improved = False
        for name in names:
            for value in grid[name]:
                done += 1
                if progress:
                    progress(done, total, {"dsb": best_dsb})
                if np.isclose(value, best[name]):
                    continue
                trial = dict(best, **{name: value})
                dsb = evaluate_params(cached, PostprocessParams.from_dict(trial))
                history.append((name, value, dsb))
                if dsb > best_dsb + 1e-4:
                    best, best_dsb, improved = trial, dsb, True
        if not improved:
            break
    return TuneResult(PostprocessParams.from_dict(best), best_dsb, start_dsb, history)


def tune(pairs, model=None, device="auto", diameters=None, rounds=2, progress=None,
         grid=None):
    """Tune the post-processing of ``model`` (a Model, or a model folder / network file
    loaded on ``device``) on ``pairs`` [(name, image, true labels)].

    diameters: optional {name: nucleus diameter px}; otherwise sizes are estimated, as when
    segmenting. grid: {parameter: values} to search (default GRID). progress:
    ``progress(done, total, info)`` with ``info["stage"]`` "networks" (images) then "search"
    (parameter sets tried); default: lines through progress.LOGGER at intervals.
    Returns a TuneResult (parameters start from the model's current ones)."""
    grid = grid or GRID
    progress = progress or ProgressCallback("tune", bar=False)
    if not pairs:
        raise NucleaizerError("no annotated images to tune on")
    model = load_model(model, device)
    start = postprocess_params(model)
    low = min(min(grid.get("confidence", [start.confidence])), start.confidence)
    cached = []
    for i, (name, image, truth) in enumerate(pairs):
        cached.append(cache_image(model, name, image, truth, low, (diameters or {}).get(name)))
        progress(i + 1, len(pairs), {"stage": "networks"})
    return search(cached, start, rounds, grid,
                  progress=lambda d, t, info: progress(d, t, dict(info, stage="search")))


def write_tuned_model(result, model, out=None, tuned_on=""):
    """Store tuned parameters in a model folder's model.json ("postprocess"). The shipped
    default model is never changed: with ``out`` the model folder is copied there first."""
    import json
    import shutil

    from .models.io import DEFAULT_MODEL_DIR, INFO_FILE, read_model_info, resolve_model_path

    src = resolve_model_path(model)
    if src.is_file():
        raise NucleaizerError(f"{src}: tuning needs a model folder, not a network file")
    dst = Path(out).expanduser().resolve() if out else src
    if dst == DEFAULT_MODEL_DIR.resolve():
        raise NucleaizerError("the shipped default model is not changed by tuning: give --out "
                              "(a new model folder) or --model (a folder of your own)")
    if dst != src:
        if dst.exists() and any(dst.iterdir()):
            raise NucleaizerError(f"{dst} exists and is not empty")
        shutil.copytree(src, dst, dirs_exist_ok=True)
    info_file = dst / INFO_FILE
    info = read_model_info(info_file)
    post = dict(info.get("postprocess") or {})
    post.update(result.params.to_dict())
    info["postprocess"] = post
    info["tuning"] = {"tuned_on": tuned_on, "dsb_before": result.start_dsb,
                      "dsb_after": result.dsb, "evaluations": len(result.history)}
    info_file.write_text(json.dumps(info, indent=1))
    return dst
