"""BENCHMARKS.md bookkeeping: each section records the fingerprint of the weights it measured,
and the report flags sections measured with weights that are no longer the shipped ones."""
import json
import shutil

from bench.report import render
from bench.run_benchmarks import model_fingerprint
from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR


def _copy_default(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    return folder


def test_fingerprint_follows_each_part_of_the_model(tmp_path):
    folder = _copy_default(tmp_path)
    before = model_fingerprint(folder)
    assert set(before) == {"main", "preseg", "unet", "postprocess"}
    assert before == model_fingerprint(None)  # a copy has the shipped model's fingerprint

    main = folder / "main.safetensors"
    main.write_bytes(main.read_bytes()[:-1] + b"\x00")
    info = json.loads((folder / "model.json").read_text())
    info["note"] = "a changed note is not a changed model"
    (folder / "model.json").write_text(json.dumps(info))
    after = model_fingerprint(folder)
    assert after["main"] != before["main"]
    assert {k: after[k] for k in ("preseg", "unet", "postprocess")} == \
        {k: before[k] for k in ("preseg", "unet", "postprocess")}

    info["postprocess"] = {**info["postprocess"], "p6": 0.1}
    (folder / "model.json").write_text(json.dumps(info))
    assert model_fingerprint(folder)["postprocess"] != before["postprocess"]
    assert model_fingerprint(folder, ("preseg",)) == {"preseg": before["preseg"]}


def _size_results(weights):
    meta = {"machine": {"cores": 2, "cpu": "x86_64", "torch": "2"}, "measured": "today",
            "command": "python bench/run_benchmarks.py --sections size",
            "model": "shipped default", "weights": weights}
    return {"size": {"within_20pct": 0.9, "per_image": [], "_meta": meta,
                     "ratio_percentiles": {q: 1.0 for q in ("0", "5", "25", "50", "75", "95",
                                                            "100")}}}


def test_report_flags_sections_measured_with_other_weights():
    current = {"main": "aaa", "preseg": "bbb", "unet": "ccc", "postprocess": "ddd"}
    fresh = render(_size_results({"preseg": "bbb"}), {}, current)
    assert "out of date" not in fresh
    # the size section depends on preseg only: a new main network leaves it valid
    assert "out of date" not in render(_size_results({"preseg": "bbb"}), {},
                                       {**current, "main": "new"})
    stale = render(_size_results({"preseg": "old"}), {}, current)
    assert "Measured with earlier weights (preseg) than the shipped ones" in stale


def _workers_results(load_1min, load_15min_end):
    meta = {"machine": {"cores": 2, "cpu": "x86_64", "torch": "2"}, "measured": "today",
            "command": "python bench/run_benchmarks.py --sections workers",
            "model": "shipped default", "load_avg_1min": load_1min,
            "load_avg_15min_end": load_15min_end}
    default = {"workers": 2, "threads": 2, "images": 22, "wall_s": 44.0, "images_per_s": 0.5,
               "worker_s": [44.0, 43.0]}
    shared = {"workers": 2, "threads": 1, "images": 22, "wall_s": 20.0, "images_per_s": 1.1,
              "worker_s": [20.0, 19.0]}
    return {"workers": {"cores": 2, "runs": [default, shared], "_meta": meta}}


def test_parallel_workers_section_is_not_flagged_for_its_own_load():
    """The workers section loads the CPU itself: only the load before it started tells
    whether another job shared the CPU; other sections are flagged by the load during them."""
    shared = "The CPU was shared with other jobs"
    own = render(_workers_results([0.2, 3.9], 1.5), {}, {})
    assert "| 2 | 1 | 1.10 | 20.0 |" in own and shared not in own
    assert "2.2x the images per second of 2 workers with torch's default" in own
    assert shared in render(_workers_results([3.1, 3.9], 1.5), {}, {})
    busy = _size_results({"preseg": "bbb"})
    busy["size"]["_meta"].update(load_avg_1min=[0.2, 3.9], load_avg_15min_end=1.5)
    assert shared in render(busy, {}, {"preseg": "bbb"})
