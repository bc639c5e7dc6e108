"""Progress of long work (segmenting a folder, training, tuning, adapting): a bar on a
terminal, and elsewhere (a cluster job's log, CellProfiler's log) a line through
:mod:`logging` at intervals, such as

    segment 120/3456 img (3%), 2.31 s/img, ETA 2 h 08 min

The interval is ``NUCLEAIZER_PROGRESS_SECONDS`` (default 30 s); the first and the last
update are always logged. Lines go to the ``nucleaizer_backend.progress`` logger at INFO: the
``nucleaizer`` command prints them on stderr, and CellProfiler shows them in its log.
"""
import logging
import os
import sys
import time

LOGGER = logging.getLogger(__name__)  # nucleaizer_backend.progress
DEFAULT_EVERY_S = 30.0


def log_interval():
    """Seconds between two progress lines (``NUCLEAIZER_PROGRESS_SECONDS``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("NUCLEAIZER_PROGRESS_SECONDS", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def format_duration(seconds):
    """'42 s', '7 min 36 s', '2 h 08 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_rate(done, seconds, unit):
    """'2.31 s/img' below one per second, '4.2 step/s' above; '' before any timing."""
    if done <= 0 or seconds <= 0:
        return ""
    per_s = done / seconds
    return f"{per_s:.1f} {unit}/s" if per_s >= 1 else f"{seconds / done:.2f} s/{unit}"


def progress_line(task, done, total, unit, seconds=0.0, done_timed=0, extra=""):
    """One progress line: task, done/total with percent, rate and ETA when ``done_timed``
    items took ``seconds``, then ``extra`` (e.g. 'loss 0.412')."""
    parts = [f"{task} {done}/{total} {unit}" + (f" ({100 * done // total}%)" if total else "")]
    rate = format_rate(done_timed, seconds, unit)
    if rate:
        parts.append(rate)
        if total and done < total:
            parts.append("ETA " + format_duration(seconds / done_timed * (total - done)))
    if extra:
        parts.append(extra)
    return ", ".join(parts)


class Progress:
    """Progress of ``total`` items of one task.

    ``update(done, extra="")`` after each item; ``close()`` at the end. On a terminal
    (``bar=None`` and stderr a TTY, or ``bar=True``) it draws a tqdm bar; otherwise it calls
    ``emit(line)`` (default: progress.LOGGER at INFO) for the first update, the
    last, and at most once every ``every`` seconds in between. The clock starts when the
    object is made; the rate counts the items from the first update on (that item included),
    so a resumed run reports its own speed."""

    def __init__(self, total, task, unit="img", bar=None, emit=None, every=None,
                 clock=time.monotonic, start=None):
        self.total, self.task, self.unit = total, task, unit
        self.emit = emit or LOGGER.info
        self.every = log_interval() if every is None else every
        self.clock = clock
        self.start, self.start_done = clock() if start is None else start, None
        self.last_emit, self.last_line_done = None, None
        self.bar = None
        if bar if bar is not None else (emit is None and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=task, unit=unit, mininterval=1.0)

    def update(self, done, extra=""):
        now = self.clock()
        if self.start_done is None:
            self.start_done = done - 1
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(extra, refresh=False)
            self.bar.refresh() if done >= self.total or now - (self.last_emit or 0) >= 1 \
                else None
            self.last_emit = now
            return
        due = (self.last_emit is None or done >= self.total
               or now - self.last_emit >= self.every)
        if due and done != self.last_line_done:
            self.last_emit, self.last_line_done = now, done
            self.emit(self.line(done, now, extra))

    def line(self, done, now=None, extra=""):
        """The progress line for ``done`` items at time ``now``."""
        now = self.clock() if now is None else now
        timed = done - (done - 1 if self.start_done is None else self.start_done)
        return progress_line(self.task, done, self.total, self.unit, now - self.start,
                             timed, extra)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def describe(info):
    """The figures of a progress ``info`` dict worth a look: 'loss 0.412', 'DSB 0.5690'."""
    parts = []
    if "loss" in info:
        parts.append("loss %.3f" % float(info["loss"]))
    if "dsb" in info:
        parts.append("DSB %.4f" % float(info["dsb"]))
    return ", ".join(parts)


class ProgressCallback:
    """A ``progress(done, total, info)`` callback (train, tune) that shows a Progress of
    ``task``; a new ``info["stage"]`` starts a new one, named "task (stage)". ``bar``,
    ``emit``, ``every``: as Progress."""

    def __init__(self, task, unit="step", **options):
        self.task, self.unit, self.options = task, unit, options
        self.stage, self.current = None, None
        self.last_call = options.get("clock", time.monotonic)()

    def __call__(self, done, total, info):
        stage = info.get("stage")
        if self.current is None or stage != self.stage:
            self.close()
            self.stage = stage
            name = self.task if stage is None else f"{self.task} ({stage})"
            self.current = Progress(total, name, self.unit, start=self.last_call,
                                    **self.options)
        self.last_call = self.current.clock()
        self.current.total = total
        self.current.update(done, describe(info))

    def close(self):
        if self.current is not None:
            self.current.close()
