"""An adaptation's progress as log lines (for callers that log rather than draw a bar, such
as the CellProfiler plugin): each stage's start and end, and at most one line every
``every`` seconds in between."""
import time

# What each stage does, as a log line names it.
STAGE_TITLES = {
    "masks": "nucleus masks",
    "cluster": "style clustering",
    "styles": "style models (pix2pix)",
    "synthesize": "synthetic images",
    "finetune": "fine-tuning the main network",
    "finetune_unet": "fine-tuning the contour U-Net",
    "package": "writing the model folder",
}


class ProgressLog:
    """An ``adapt(progress=...)`` callback that calls ``emit(line)`` with lines such as
    "style models (pix2pix) 12/300, style 0", "round 2 of 2: nucleus masks 4/4" or
    "nucleus masks: finished in an earlier run"; a repeated line is not emitted twice."""

    def __init__(self, emit, every=15.0):
        self.emit, self.every = emit, every
        self.stage, self.last, self.shown = None, 0.0, None

    def __call__(self, stage, done, total, info):
        now = time.monotonic()
        stage = (info.get("round"), stage)
        new = stage != self.stage
        if (stage, done) == self.shown or not (
                new or done >= total or now - self.last >= self.every):
            return
        self.stage, self.last, self.shown = stage, now, (stage, done)
        name = STAGE_TITLES.get(stage[1], stage[1])
        if "round" in info:  # more than one adaptation round
            name = "round %d of %d: %s" % (info["round"], info["rounds"], name)
        if info.get("resumed"):
            self.emit("%s: finished in an earlier run" % name)
            return
        extra = ""
        if "loss" in info:
            extra = ", loss %.3f" % float(info["loss"])
        elif "style" in info:
            extra = ", style %s" % info["style"]
        self.emit("%s %d/%d%s" % (name, done, total, extra))
