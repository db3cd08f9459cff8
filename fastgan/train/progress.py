"""A training run's progress on the console: tqdm's bar in a terminal or a notebook, plain lines
at intervals where the output goes to a file or a pipe (CI, nohup, a cluster job's log), which
would otherwise collect one carriage-return update of the bar per refresh."""
import datetime
import math
import sys
import time

LINES_PER_RUN = 10  # a line at every tenth of the steps...
MAX_SILENCE = 30.0  # ...and at least every this many seconds, so that a slow run shows it lives


def _interactive(stream):
    """True where a bar redraws in place: a terminal, or a notebook (tqdm's widget)."""
    import tqdm.autonotebook
    import tqdm.std

    if tqdm.autonotebook.tqdm is not tqdm.std.tqdm:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def open_progress(total, initial=0, enabled=True, stream=None):
    """What reports the steps `initial`..`total` of a run on `stream` (default: sys.stderr):
    tqdm's bar where it is interactive, else a ProgressLines. Both are context managers with
    update(n), set_postfix(dict) and close(); enabled=False shows nothing."""
    stream = sys.stderr if stream is None else stream
    if enabled and not _interactive(stream):
        return ProgressLines(total, initial, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", file=stream)


def _duration(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLines:
    """Progress as plain lines, one at every tenth of the steps, at least one every MAX_SILENCE
    seconds and one at the last step: the step, the latest set_postfix values (the logged
    losses), the speed since the previous line, the elapsed time and an estimate of the time
    left. `clock` (seconds) is time.monotonic unless given."""

    def __init__(self, total, initial, stream, clock=time.monotonic):
        self.total, self.step, self.stream, self.clock = total, initial, stream, clock
        self._every = max(1, math.ceil(total / LINES_PER_RUN))
        self._postfix = {}
        self._start_step = self._line_step = initial
        self._start_time = self._line_time = clock()

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()

    def set_postfix(self, values):
        self._postfix = dict(values)

    def update(self, n=1):
        self.step += n
        now = self.clock()
        if (self.step % self._every == 0 or self.step >= self.total
                or now - self._line_time >= MAX_SILENCE):
            self._write(now)

    def close(self):
        """Nothing to finish: every line is complete when written."""

    def _write(self, now):
        parts = [f"step {self.step}/{self.total} ({100 * self.step // max(self.total, 1)}%)"]
        parts += [" ".join(f"{key} {value}" for key, value in self._postfix.items())]
        if now > self._line_time:
            parts.append(f"{(self.step - self._line_step) / (now - self._line_time):.3g} steps/s")
        elapsed = now - self._start_time
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.step < self.total and self.step > self._start_step:
            left = elapsed / (self.step - self._start_step) * (self.total - self.step)
            parts.append(f"left ~{_duration(left)}")
        self.stream.write(" | ".join(part for part in parts if part) + "\n")
        self.stream.flush()
        self._line_step, self._line_time = self.step, now
