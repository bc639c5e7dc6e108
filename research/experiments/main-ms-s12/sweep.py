"""The working-size sweep of bench/working_size.py for a main network trained over a range of
nucleus sizes (run main-ms-s12), on the val images with nuclei under 20 px. From the
repository root:

    python research/experiments/main-ms-s12/sweep.py runs/main-ms-s12/last.safetensors

Writes result.json here; the shipped network's figures on the same images are in
bench/results/working_size.json ("summary" -> "val").
"""
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from bench.working_size import section_working_size, small_nuclei_rows  # noqa: E402

if __name__ == "__main__":
    rows = [r for r in small_nuclei_rows() if r["split"] == "val"]
    res = section_working_size(sys.argv[1], rows=rows)
    res["network"] = sys.argv[1]
    (Path(__file__).parent / "result.json").write_text(json.dumps(res, indent=1))
