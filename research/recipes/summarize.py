"""The equal-compute recipe table from the runs of run_recipe.py.

    python research/recipes/summarize.py [research/recipes/runs] > research/recipes/TABLE.md

One row per finished run (OUT/NAME/result.json): recipe, CPU seconds per step (1 thread),
steps and crops seen within the budget, val DSB with the full pipeline and automatic size
(overall, fluorescence, H&E), DSB on the fixed train subset (under/over-fitting), and the
pipeline's CPU seconds per 520x696 val image.
"""
import json
import sys
from pathlib import Path


def rows(runs_dir):
    out = []
    for result in sorted(Path(runs_dir).glob("*/result.json")):
        r = json.loads(result.read_text())
        probe = json.loads((result.parent / "probe.json").read_text())
        out.append((r, probe))
    return out


def table(runs_dir):
    lines = ["| recipe | changes | CPU min | CPU s/step | steps | crops seen | val DSB | fluo | "
             "H&E | train-subset DSB (fluo, H&E) | CPU s per 520x696 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, probe in sorted(rows(runs_dir), key=lambda x: -x[0]["val"]["dsb"]):
        v, t = r["val"], r["train_subset"]
        changes = json.dumps(r["recipe"]) if r["recipe"] else "defaults (BatchNorm)"
        lines.append(
            f"| {r['name']} | `{changes}` | {r['cpu_minutes_budget']:g} | "
            f"{r['cpu_s_per_step']:.3f} | {r['steps']} | {r['crops_seen']} | "
            f"**{v['dsb']:.3f}** | {v.get('dsb_fluo', float('nan')):.3f} | "
            f"{v.get('dsb_he', float('nan')):.3f} | {t['dsb']:.3f} "
            f"({t.get('dsb_fluo', float('nan')):.3f}, {t.get('dsb_he', float('nan')):.3f}) | "
            f"{r['cpu_s_per_520x696'] or float('nan'):.2f} |")
        if probe.get("note"):
            lines.append(f"| | _{probe['note']}_ | | | | | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "runs"))
