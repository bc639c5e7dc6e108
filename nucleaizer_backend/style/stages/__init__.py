"""The stages of an adaptation round (style.adapt's module doc), one module each: masks,
cluster, styles, synthesize, finetune (main network and U-Net), package. Each has
``run(ctx)`` -> the stage's record (``work/<stage>.json``) and ``summary(record)`` -> its log
line's numbers; :func:`job_stages` lists them for :func:`style.jobs.run_stages`."""
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from ..config import STAGES, Settings
from ..inputs import BaseModel
from ..jobs import Stage, WorkFolder


@dataclass(frozen=True)
class Context:
    """What the stages of a round read: its work folder, target images ([inputs.Target]),
    annotations ({name: labels}), settings, base model and progress callback
    ``report(stage, done, total, info)``."""

    work: WorkFolder
    targets: list
    annotations: dict
    settings: Settings
    base: BaseModel
    report: Callable

    @cached_property
    def _by_name(self):
        return {t.name: t for t in self.targets}

    def target(self, name):
        """The target image called ``name``."""
        return self._by_name[name]


def job_stages(ctx, seconds):
    """The jobs.Stage list of a round, in STAGES order; ``seconds`` ({stage: seconds}, filled
    as the round goes) is what the package stage records."""
    from . import cluster, finetune, masks, package, styles, synthesize

    stages = [
        Stage("masks", lambda: masks.run(ctx), masks.summary),
        Stage("cluster", lambda: cluster.run(ctx), cluster.summary),
        Stage("styles", lambda: styles.run(ctx), styles.summary),
        Stage("synthesize", lambda: synthesize.run(ctx), synthesize.summary),
        Stage("finetune", lambda: finetune.run(ctx), finetune.summary),
        Stage("finetune_unet", lambda: finetune.run_unet(ctx), finetune.summary),
        Stage("package", lambda: package.run(ctx, seconds), package.summary,
              redo=lambda ran: ran or not package.complete(ctx.work.out),
              after=lambda secs: package.record_seconds(ctx, secs)),
    ]
    assert tuple(s.name for s in stages) == STAGES
    return stages
