"""Training progress on the console: tqdm's bar in a terminal, plain lines at intervals (no
carriage returns) when the output goes to a file or a pipe."""
import io
import re
import sys

import pytest

from fastgan.train.progress import ProgressLines, open_progress
from test_train import _fit, _mlp_models, _ring, _trainer


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run(total, initial=0, seconds_per_step=0.01, postfix=None):
    """The lines a ProgressLines writes over steps initial+1..total."""
    stream, clock = io.StringIO(), _Clock()
    with ProgressLines(total, initial, stream, clock=clock) as progress:
        for _ in range(initial, total):
            clock.now += seconds_per_step
            if postfix:
                progress.set_postfix(postfix)
            progress.update(1)
    assert "\r" not in stream.getvalue()
    return stream.getvalue().splitlines()


def _steps(lines):
    return [int(re.match(r"step (\d+)/", line).group(1)) for line in lines]


def test_a_line_at_every_tenth_of_the_run():
    lines = _run(1000, postfix={"d_loss": "1.250", "g_loss": "0.750"})
    assert _steps(lines) == list(range(100, 1001, 100))
    assert lines[0].startswith("step 100/1000 (10%) | d_loss 1.250 g_loss 0.750 | 100 steps/s")
    assert "elapsed 0:00:01" in lines[0] and "left ~0:00:09" in lines[0]
    assert lines[-1].startswith("step 1000/1000 (100%)") and "left" not in lines[-1]


def test_a_line_at_least_every_30_seconds():
    # 13 s a step: 30 s pass within 3 steps of a line; the tenths are 100, 200, ...
    lines = _run(1000, seconds_per_step=13.0)
    assert _steps(lines) == [tenth + steps for tenth in range(0, 1000, 100)
                             for steps in (*range(3, 100, 3), 100)]
    assert "0.0769 steps/s" in lines[0]  # 3 steps in 39 s


def test_a_resumed_run_counts_from_where_it_stopped():
    lines = _run(100, initial=35, seconds_per_step=1.0)
    assert _steps(lines) == [40, 50, 60, 70, 80, 90, 100]
    assert "| 1 steps/s |" in lines[0]
    assert "elapsed 0:00:05" in lines[0] and "left ~0:01:00" in lines[0]


def test_fewer_steps_than_lines():
    assert _steps(_run(3)) == [1, 2, 3]


@pytest.mark.parametrize("terminal", [False, True])
def test_fit_shows_a_bar_in_a_terminal_and_lines_elsewhere(monkeypatch, terminal):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    _fit(_trainer(_mlp_models()), _ring(), 20, progress=True, log_every=5)
    output = stream.getvalue()
    if terminal:
        assert "\r" in output and "20/20" in output
    else:
        assert "\r" not in output
        lines = output.splitlines()
        assert lines[-1].startswith("step 20/20 (100%) | d_loss ")
        assert set(_steps(lines)) >= {2, 4, 6, 8, 10, 12, 14, 16, 18, 20}


def test_fit_without_progress_writes_nothing(monkeypatch):
    for stream in (_Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        _fit(_trainer(_mlp_models()), _ring(), 3, progress=False)
        assert stream.getvalue() == ""


def test_open_progress_picks_by_the_stream():
    assert isinstance(open_progress(10, stream=io.StringIO()), ProgressLines)
    assert not isinstance(open_progress(10, stream=_Terminal()), ProgressLines)
