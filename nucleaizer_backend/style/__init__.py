"""Style adaptation: cluster target images into styles, synthesise masks, learn styles with
pix2pix, fine-tune (:func:`style.adapt.adapt`). For callers that prepare or show an
adaptation (the CellProfiler plugin): :func:`find_base_model` (ModelFileError unless a base
model can be adapted), :func:`holds_other_files` (whether an adaptation would refuse a
folder), :class:`ProgressLog` (its progress as log lines) and :func:`read_adaptation_info`
(what an adapted model folder says about its adaptation)."""
from .info import AdaptationInfo, read_adaptation_info
from .inputs import find_base_model
from .jobs import holds_other_files
from .progress import ProgressLog

__all__ = ["AdaptationInfo", "read_adaptation_info", "find_base_model", "holds_other_files",
           "ProgressLog"]
