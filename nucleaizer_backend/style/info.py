"""What an adapted model folder says about its adaptation (model.json's ``adaptation``
block, written by the package stage), for callers that show or record it (the CellProfiler
plugins) without parsing model.json themselves."""
import json
from dataclasses import dataclass
from pathlib import Path

from .stages.package import SHEET_FILE


@dataclass(frozen=True)
class AdaptationInfo:
    """Summary of an adapted model folder.

    model_dir: the folder; base_model: the base model's name (the first round's);
    images: target images adapted to; annotated_images: of those, images whose masks were
    annotations; styles: styles found; style_models: styles that got a style model;
    skipped_images: images of styles without one; synthetic_pairs: synthetic pairs made;
    finetune_steps: fine-tuning steps of the main network; seconds: time of all stages (all
    rounds); rounds: adaptation rounds; style_sheet: the style sheet PNG (None: missing)."""

    model_dir: Path
    base_model: str
    images: int
    annotated_images: int
    styles: int
    style_models: int
    skipped_images: int
    synthetic_pairs: int
    finetune_steps: int
    seconds: float
    rounds: int
    style_sheet: Path = None


def read_adaptation_info(model_folder):
    """The :class:`AdaptationInfo` of the adapted model in ``model_folder``; None when the
    folder holds no readable model.json with an adaptation block (not adapted, or not yet)."""
    from ..models.io import INFO_FILE

    folder = Path(model_folder)
    try:
        a = json.loads((folder / INFO_FILE).read_text()).get("adaptation")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(a, dict) or not a:
        return None
    styles = (a.get("clusters") or {}).get("styles") or []
    base = a.get("original_base_model") or a.get("base_model") or {}
    sheet = folder / SHEET_FILE
    return AdaptationInfo(
        model_dir=folder,
        base_model=str(base.get("name") or ""),
        images=int(a.get("n_images") or 0),
        annotated_images=sum(1 for v in (a.get("masks_source") or {}).values() if v == "GT"),
        styles=len(styles),
        style_models=sum(1 for st in styles if st.get("learned")),
        skipped_images=sum(len(st.get("images") or []) for st in styles if not st.get("learned")),
        synthetic_pairs=int((a.get("synthetic") or {}).get("count") or 0),
        finetune_steps=int((a.get("finetune") or {}).get("steps") or 0),
        seconds=float(sum((a.get("seconds") or {}).values())),
        rounds=len(a.get("iterations") or []) or 1,
        style_sheet=sheet if sheet.is_file() else None,
    )
