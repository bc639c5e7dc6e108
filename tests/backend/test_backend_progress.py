"""Progress of long work: the lines a cluster log or CellProfiler's log shows."""
import logging

from nucleaizer_backend.progress import (Progress, ProgressCallback, format_duration,
                                         log_interval, progress_line)
from nucleaizer_backend.style.progress import ProgressLog


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_durations_rates_and_eta():
    assert [format_duration(s) for s in (0.4, 42, 456, 7680)] == [
        "0 s", "42 s", "7 min 36 s", "2 h 08 min"]
    assert progress_line("segment", 3, 10, "img", 6.0, 3) == \
        "segment 3/10 img (30%), 2.00 s/img, ETA 14 s"
    assert progress_line("train", 50, 100, "step", 10.0, 50, "loss 0.412") == \
        "train 50/100 step (50%), 5.0 step/s, ETA 10 s, loss 0.412"
    assert progress_line("segment", 0, 10, "img") == "segment 0/10 img (0%)"


def test_lines_at_intervals_first_and_last_always():
    clock, lines = Clock(), []
    bar = Progress(100, "segment", emit=lines.append, every=30, clock=clock)
    for done in range(1, 101):
        clock.t += 2.0
        bar.update(done)
    # first, then one every 30 s (15 images), then the last
    assert [line.split(",")[0] for line in lines] == [
        "segment %d/100 img (%d%%)" % (d, d) for d in (1, 16, 31, 46, 61, 76, 91, 100)]
    assert lines[1] == "segment 16/100 img (16%), 2.00 s/img, ETA 2 min 48 s"
    assert "ETA" not in lines[-1]


def test_rate_of_a_resumed_run_counts_its_own_steps():
    clock, lines = Clock(), []
    bar = Progress(1000, "train", "step", emit=lines.append, every=0, clock=clock)
    clock.t += 4.0  # set-up and the first step resumed at step 801
    bar.update(801)
    clock.t += 4.0
    bar.update(802)
    assert lines == ["train 801/1000 step (80%), 4.00 s/step, ETA 13 min 16 s",
                     "train 802/1000 step (80%), 4.00 s/step, ETA 13 min 12 s"]


def test_interval_from_environment(monkeypatch):
    monkeypatch.setenv("NUCLEAIZER_PROGRESS_SECONDS", "5")
    assert log_interval() == 5.0
    monkeypatch.setenv("NUCLEAIZER_PROGRESS_SECONDS", "soon")
    assert log_interval() == 30.0


def test_default_lines_go_to_the_progress_logger(caplog):
    callback = ProgressCallback("tune", unit="it", bar=False, every=3600)
    with caplog.at_level(logging.INFO, logger="nucleaizer_backend.progress"):
        callback(1, 2, {"stage": "networks"})
        callback(2, 2, {"stage": "networks"})
        callback(1, 40, {"stage": "search", "dsb": 0.5})
    messages = [r.getMessage().split(",")[0] for r in caplog.records]
    assert messages == ["tune (networks) 1/2 it (50%)", "tune (networks) 2/2 it (100%)",
                        "tune (search) 1/40 it (2%)"]
    assert caplog.records[-1].getMessage().endswith("DSB 0.5000")
    assert all(r.name == "nucleaizer_backend.progress" for r in caplog.records)


def test_adaptation_stages():
    clock, lines = Clock(), []
    log = ProgressLog(lines.append, every=3600, clock=clock)
    log("masks", 1, 1, {"resumed": True})
    for step in range(1, 4):
        clock.t += 1.5
        log("styles", step, 3, {"style": 1})
    log("finetune", 1, 2, {"loss": 0.5})
    log("masks", 2, 2, {"round": 2, "rounds": 2})
    assert lines == [
        "nucleus masks: finished in an earlier run",
        "style models (pix2pix) 1/3 step (33%), 1.50 s/step, ETA 3 s, style 1",
        "style models (pix2pix) 3/3 step (100%), 1.50 s/step, style 1",
        "fine-tuning the main network 1/2 step (50%), loss 0.500",
        "round 2 of 2: nucleus masks 2/2 img (100%)"]
