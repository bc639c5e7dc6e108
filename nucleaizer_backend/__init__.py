"""nucleAIzer nucleus segmentation, usable on its own and from CellProfiler.

Public API::

    from nucleaizer_backend import (Model, segment, segment_image, estimate_size, evaluate,
                                    adapt, AdaptConfig)
    labels = segment(image)                 # (H, W) uint16/uint32, 0 = background
    est = estimate_size(image)              # SizeEstimate: median_diameter (px), spread, ...
    result = segment_image(image, diameter=18.0, device="cpu")   # SegmentationResult
    res = adapt(["new_experiment/"], "adapted_model", config=AdaptConfig(preset="quick"))
    model = Model.load("adapted_model")     # the style-adapted model, loaded once
    labels = model.segment(image).labels    # or segment(image, model="adapted_model")

Network outputs and post-processing separately (to post-process one image many ways)::

    from nucleaizer_backend.inference import infer, postprocess, postprocess_params
    outputs = infer(model, image, confidence=0.3)      # NetworkOutputs
    labels, scores = postprocess(outputs, postprocess_params(model, confidence=0.5))

No CellProfiler import lives in this package.
"""
import logging

from ._llvm_guard import preload_triton

preload_triton()  # before torch: a GUI process holds another LLVM (see _llvm_guard)
from . import evaluate
from .errors import InputImageError, ModelFileError, NucleaizerError
from .segment import Model, SegmentationResult, estimate_size, segment, segment_image
from .size import SizeEstimate
from .style.adapt import AdaptConfig, AdaptResult, adapt

# Warnings (a degenerate image) go to the application's logging (CellProfiler's log); none are
# printed by Python's last-resort handler where logging is not set up (the CLI prints its own).
logging.getLogger(__name__).addHandler(logging.NullHandler())
load_model = Model.load  # the name of earlier releases
__version__ = "0.1.0"
__all__ = ["Model", "segment", "segment_image", "estimate_size", "load_model", "evaluate",
           "adapt", "AdaptConfig", "AdaptResult", "SegmentationResult", "SizeEstimate",
           "NucleaizerError", "InputImageError", "ModelFileError"]
