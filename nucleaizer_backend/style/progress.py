"""An adaptation's progress (``adapt(progress=...)``) shown per stage: a bar on a terminal,
log lines elsewhere (progress.Progress): each stage's start and end, and at most one line
every ``every`` seconds in between, with the stage's rate and ETA."""
import time

from ..progress import LOGGER, Progress

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
STAGE_UNITS = {"masks": "img", "styles": "step", "synthesize": "img", "finetune": "step",
               "finetune_unet": "step"}


class ProgressLog:
    """An ``adapt(progress=...)`` callback that shows one progress.Progress per stage, with
    lines such as "style models (pix2pix) 12/300 step (4%), 1.20 s/step, ETA 5 min 45 s,
    style 0", "round 2 of 2: nucleus masks 4/4 img (100%), ..." or "nucleus masks: finished
    in an earlier run"; a repeated line is not emitted twice. ``emit(line)``: where lines go
    (default: progress.LOGGER); ``bar``: as Progress (None: a bar on a terminal
    when ``emit`` is not given)."""

    def __init__(self, emit=None, every=None, bar=False, clock=None):
        self.options = {"emit": emit, "every": every, "bar": bar}
        if clock is not None:
            self.options["clock"] = clock
        self.stage, self.current = None, None
        self.clock = clock or time.monotonic
        self.last_call = self.clock()  # a stage starts when the one before last reported

    def __call__(self, stage, done, total, info):
        started, self.last_call = self.last_call, self.clock()
        key = (info.get("round"), stage)
        name = STAGE_TITLES.get(stage, stage)
        if "round" in info:  # more than one adaptation round
            name = "round %d of %d: %s" % (info["round"], info["rounds"], name)
        if key != self.stage:
            self.close()
            self.stage = key
            if info.get("resumed"):
                self.current = None
                (self.options["emit"] or LOGGER.info)("%s: finished in an earlier run" % name)
                return
            self.current = Progress(total, name, STAGE_UNITS.get(stage, "it"), start=started,
                                    **self.options)
        if self.current is None:
            return
        self.current.total = total
        extra = ""
        if "loss" in info:
            extra = "loss %.3f" % float(info["loss"])
        elif "style" in info:
            extra = "style %s" % info["style"]
        self.current.update(done, extra)

    def close(self):
        if self.current is not None:
            self.current.close()
