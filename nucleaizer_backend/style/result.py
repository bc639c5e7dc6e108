"""What an adaptation returns: :class:`AdaptResult`, read from a finished round's records."""
from dataclasses import dataclass, field
from pathlib import Path

from .stages.package import CURVE_FILE, SHEET_FILE


@dataclass
class AdaptResult:
    """What an adaptation produced.

    model_dir: the adapted model folder; n_images: target images; n_clusters: styles found;
    n_styles_learned: styles with a style model; skipped: names of the images whose style got
    no style model (too few images, or no nuclei); synthetic_count: synthetic pairs made;
    seconds: {stage: seconds it took in the run that finished it}; resumed: stages found
    finished and skipped by this run; clusters_report: lines of the clustering report;
    masks_source: {image: "AUTO" (preseg) or "GT" (annotation)}; style_sheet, training_curve:
    paths of the PNGs.
    """

    model_dir: Path
    n_images: int
    n_clusters: int
    n_styles_learned: int
    skipped: list
    synthetic_count: int
    seconds: dict
    resumed: list = field(default_factory=list)
    clusters_report: list = field(default_factory=list)
    masks_source: dict = field(default_factory=dict)
    finetune_steps: int = 0
    style_sheet: Path = None
    training_curve: Path = None

    def report(self):
        """Human-readable lines: images, styles, synthetic pairs, fine-tune, time per stage."""
        n_gt = sum(1 for v in self.masks_source.values() if v == "GT")
        lines = [f"adapted model: {self.model_dir}",
                 f"{self.n_images} target images (masks: {self.n_images - n_gt} preseg, "
                 f"{n_gt} annotated)"]
        lines += self.clusters_report
        if self.skipped:
            lines.append(f"not used for style models ({len(self.skipped)}): "
                         + ", ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        lines.append(f"{self.n_styles_learned} style models, {self.synthetic_count} synthetic "
                     f"pairs; main network fine-tuned {self.finetune_steps} steps")
        total = sum(self.seconds.values())
        lines.append("time: " + ", ".join(f"{k} {duration(v)}" for k, v in self.seconds.items())
                     + f" (total {duration(total)})"
                     + (f"; finished before this run: {', '.join(self.resumed)}"
                        if self.resumed else ""))
        lines.append(f"style sheet: {self.style_sheet}")
        return lines


def duration(seconds):
    """``seconds`` as "12 s", "3.5 min" or "1.2 h"."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def round_result(work, targets, seconds, resumed):
    """The AdaptResult of the finished round in ``work`` (jobs.WorkFolder)."""
    clusters, synth = work.done("cluster"), work.done("synthesize")
    masks, fine = work.done("masks"), work.done("finetune")
    skipped = [n for st in clusters["styles"] if not st["learned"] for n in st["images"]]
    out = work.out
    return AdaptResult(
        model_dir=out, n_images=len(targets), n_clusters=len(clusters["styles"]),
        n_styles_learned=sum(st["learned"] for st in clusters["styles"]), skipped=skipped,
        synthetic_count=synth["count"], seconds=seconds, resumed=resumed,
        clusters_report=clusters["report"],
        masks_source={n: r["source"] for n, r in masks["images"].items()},
        finetune_steps=fine["steps"], style_sheet=out / SHEET_FILE,
        training_curve=out / CURVE_FILE if (out / CURVE_FILE).is_file() else None)
