"""The measured dispatch between torch's kernels and fastgan's (fastgan/ops/_dispatch.py): every
mix of engines over the parts of conv_transpose2d and conv2d against torch to second order, the
benchmark's choice and its cache file (absent, corrupt, another machine's, two threads at once),
the thread count, and the switches."""
import importlib
import itertools
import json
import logging
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastgan
from fastgan import _reference
from fastgan.ops import _dispatch
from conftest import assert_close, make_input

cpu = fastgan.backends.cpu
pytestmark = pytest.mark.skipif(fastgan._backend.extension is None,
                                reason="fastgan's kernels are not built")

MIXES = [_dispatch.Engines(*engines)
         for engines in itertools.product(("torch", "fastgan"), repeat=3)]


@pytest.fixture
def forced(monkeypatch):
    """force(engines): every convolution runs with that mix of engines."""
    def force(engines):
        monkeypatch.setattr(_dispatch, "select", lambda *args: engines)
    with cpu.flags(engine=None):
        yield force


@pytest.fixture
def timed_dispatch(tmp_path):
    """The benchmark on, with a cache directory of its own and no choices made yet; yields the
    number of timings done so far (a callable)."""
    timings = []
    original = _dispatch._measure

    def counting(*args):
        timings.append(args[0])
        return original(*args)

    _dispatch.forget()
    saved_dir = cpu.cache_dir
    cpu.cache_dir = tmp_path
    _dispatch._measure, measure = counting, original
    try:
        with cpu.flags(benchmark=True, engine=None):
            yield lambda: len(timings)
    finally:
        _dispatch._measure = measure
        cpu.cache_dir = saved_dir
        _dispatch.forget()


def _cache_files(directory):
    return sorted(directory.glob("cpu_dispatch_*.json"))


# --- every mix of engines, to second order ------------------------------------------------------

@pytest.mark.parametrize("engines", MIXES, ids=str)
@pytest.mark.parametrize("activation", [None, "leaky_relu", "tanh"])
def test_conv_transpose2d_mixes_gradcheck(forced, engines, activation):
    forced(engines)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=generator, requires_grad=True)

    def fn(x, w, b):
        return fastgan.ops.conv_transpose2d(x, w, b, 2, 1, activation=activation)
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("engines", MIXES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_conv_transpose2d_mixes_match_torch_in_float32(forced, engines, layout, activation):
    """Each part by each engine, in float32, as close to the float64 result as torch's own,
    with the input and weight gradients an R1-like second order reaches."""
    forced(engines)
    x = make_input((3, 64, 9, 8), torch.float64, layout=layout).requires_grad_()
    w = (make_input((64, 24, 4, 4), torch.float64, seed=1) / 32).requires_grad_()
    b = make_input((24,), torch.float64, seed=2).requires_grad_()

    def run(conv, *leaves):
        out = conv(*leaves, 2, 1, activation=activation)
        first = torch.autograd.grad((out * out.detach().cos()).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(first[0].square().sum(), leaves[:2],
                                     materialize_grads=True)
        return out, *first, *second

    exact = run(_reference.conv_transpose2d, x, w, b)
    leaves32 = [t.detach().float().requires_grad_() for t in (x, w, b)]
    ours = run(fastgan.ops.conv_transpose2d, *leaves32)
    torchs = run(_reference.conv_transpose2d, *leaves32)
    for mine, theirs, truth in zip(ours, torchs, exact):
        error = (mine.double() - truth).abs().max()
        torch_error = (theirs.double() - truth).abs().max()
        assert error <= 8 * torch_error + 1e-6 * truth.abs().max(), (error, torch_error)


@pytest.mark.parametrize("engines", MIXES, ids=str)
def test_conv2d_mixes_gradcheck(forced, engines):
    forced(engines)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=generator).to(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True)

    def fn(x, w, b):
        return fastgan.ops.conv2d(x, w, b, 2, 1)
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


# --- the benchmark --------------------------------------------------------------------------------

def _dcgan_layer():
    x = torch.randn(4, 32, 8, 8)
    w = torch.randn(32, 16, 4, 4) / 16
    return x, w


def test_benchmark_times_a_shape_once_and_keeps_its_choice(timed_dispatch, caplog):
    x, w = _dcgan_layer()
    with caplog.at_level(logging.INFO, logger="fastgan.dispatch"):
        first = fastgan.ops.conv_transpose2d(x, w, None, 2, 1, activation="relu")
        again = fastgan.ops.conv_transpose2d(x, w, None, 2, 1, activation="relu")
    assert timed_dispatch() == 1
    assert_close(first, F.relu(F.conv_transpose2d(x, w, None, 2, 1)))
    assert torch.equal(first, again)
    (choice,) = cpu.choices().values()
    assert set(choice) == set(_dispatch.PARTS)
    assert set(choice.values()) <= {"torch", "fastgan"}
    assert "conv_transpose2d" in caplog.text and "ms" in caplog.text
    info = fastgan.backend_info()["cpu_dispatch"]
    assert info["shapes_chosen"] == 1 and info["seconds_timing"] > 0
    # Another batch size is another shape.
    fastgan.ops.conv_transpose2d(x[:2], w, None, 2, 1, activation="relu")
    assert timed_dispatch() == 2


def _fake_timings(fastest, others=1.0, best=0.001):
    """A stand-in for _time_engines: `fastest` (an engine or a pair) takes `best` seconds, the
    others `others`."""
    return lambda candidates: {name: best if name in fastest else others
                               for name in candidates}


def test_the_fastest_engine_is_chosen_per_part(timed_dispatch, monkeypatch):
    """The forward's fastest engine, and the backward's fastest pair, timed as pairs run."""
    monkeypatch.setattr(_dispatch, "_time_engines",
                        _fake_timings({"fastgan", ("fastgan", "torch")}))
    x, w = _dcgan_layer()
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    (choice,) = cpu.choices().values()
    assert choice == {"forward": "fastgan", "input_grad": "fastgan", "weight_grad": "torch"}


def test_ties_go_to_torch(timed_dispatch, monkeypatch):
    monkeypatch.setattr(_dispatch, "_time_engines",
                        _fake_timings({"torch", ("torch", "torch")}, others=0.99, best=1.0))
    x, w = _dcgan_layer()
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    (choice,) = cpu.choices().values()
    assert set(choice.values()) == {"torch"}


def test_the_candidates_are_every_engine_and_pair():
    """What the dispatch times: the forward by each engine, the backward by each pair, all
    computing torch's values."""
    conv_transpose2d_module = importlib.import_module("fastgan.ops.conv_transpose2d")
    x, w = _dcgan_layer()
    geometry = conv_transpose2d_module.Geometry([2, 2], [1, 1], [0, 0], 1, [1, 1])
    candidates = conv_transpose2d_module._candidates(x, w, None, geometry, "tanh", 0.2)
    assert set(candidates["forward"]) == {"torch", "fastgan"}
    assert set(candidates["backward"]) == set(itertools.product(("torch", "fastgan"), repeat=2))
    expected = candidates["forward"]["torch"]()
    assert_close(candidates["forward"]["fastgan"](), expected)
    by_torch = candidates["backward"][("torch", "torch")]()
    for pair, backward in candidates["backward"].items():
        for mine, theirs in zip(backward()[:2], by_torch[:2]):
            assert_close(mine, theirs)


def test_an_engine_that_fails_is_not_chosen():
    def fails():
        raise RuntimeError("not on this shape")
    seconds = _dispatch._time_engines({"torch": lambda: None, "fastgan": fails})
    assert list(seconds) == ["torch"]


def test_conv2d_is_dispatched_too(timed_dispatch):
    x = torch.randn(4, 16, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(32, 16, 4, 4).to(memory_format=torch.channels_last).requires_grad_()
    out = fastgan.ops.conv2d(x, w, None, 2, 1)
    (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    grad.square().sum().backward()
    assert timed_dispatch() == 1
    assert [key.split()[0] for key in cpu.choices()] == ["conv2d"]
    assert_close(out, F.conv2d(x, w, None, 2, 1))


def test_a_thread_count_change_is_another_choice(timed_dispatch):
    x, w = _dcgan_layer()
    threads = torch.get_num_threads()
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    torch.set_num_threads(1)
    try:
        out = fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    finally:
        torch.set_num_threads(threads)
    assert timed_dispatch() == 2
    assert_close(out, F.conv_transpose2d(x, w, None, 2, 1))
    assert {key.split("threads=")[1].split()[0] for key in cpu.choices()} == {str(threads), "1"}


def test_two_threads_meeting_a_new_shape_time_it_once(timed_dispatch):
    x, w = _dcgan_layer()
    results, errors = [], []

    def call():
        try:
            results.append(fastgan.ops.conv_transpose2d(x, w, None, 2, 1))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    assert timed_dispatch() == 1
    assert torch.equal(results[0], results[1])


# --- the cache file -------------------------------------------------------------------------------

def test_the_cache_file_spares_a_new_process_the_timing(timed_dispatch, tmp_path):
    x, w = _dcgan_layer()
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    (path,) = _cache_files(tmp_path)
    content = json.loads(path.read_text())
    assert content["machine"]["torch"] == torch.__version__
    assert list(content["choices"].values()) == list(cpu.choices().values())
    _dispatch.forget()  # as a new process
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    assert timed_dispatch() == 1
    assert len(cpu.choices()) == 1


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]),
                                     json.dumps({"format": _dispatch.FORMAT, "machine": {"cpu": "another"},
                                                 "choices": {}})],
                         ids=["corrupt", "not_a_cache", "another_machine"])
def test_an_unusable_cache_file_is_ignored_with_a_warning_and_replaced(timed_dispatch, tmp_path,
                                                                      content):
    path = _dispatch._cache_file()
    with open(path, "w") as file:
        file.write(content)
    x, w = _dcgan_layer()
    with pytest.warns(RuntimeWarning, match="ignoring the dispatch cache"):
        out = fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    assert_close(out, F.conv_transpose2d(x, w, None, 2, 1))
    assert timed_dispatch() == 1
    replaced = json.loads(open(path).read())
    assert replaced["machine"] == _dispatch._machine() and len(replaced["choices"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.rsplit("/", 1)[1]]  # no temporary left


def test_the_file_keeps_choices_another_process_added(timed_dispatch):
    x, w = _dcgan_layer()
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    path = _dispatch._cache_file()
    content = json.loads(open(path).read())
    content["choices"]["conv_transpose2d from another process"] = dict.fromkeys(
        _dispatch.PARTS, "torch")
    with open(path, "w") as file:
        json.dump(content, file)
    _dispatch.forget()
    fastgan.ops.conv_transpose2d(x[:1], w, None, 2, 1)  # a new shape: timed and written
    keys = json.loads(open(path).read())["choices"]
    assert "conv_transpose2d from another process" in keys and len(keys) == 3


def test_without_a_cache_dir_nothing_is_written(timed_dispatch, tmp_path):
    cpu.cache_dir = None
    x, w = _dcgan_layer()
    fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    assert timed_dispatch() == 1 and not _cache_files(tmp_path)
    assert fastgan.backend_info()["cpu_dispatch"]["cache_file"] is None


# --- the switches ---------------------------------------------------------------------------------

def test_without_the_benchmark_the_rule_decides_and_nothing_is_timed(timed_dispatch):
    x, w = _dcgan_layer()
    with cpu.flags(benchmark=False):
        out = fastgan.ops.conv_transpose2d(x, w, None, 2, 1)
    assert timed_dispatch() == 0 and not cpu.choices()
    assert_close(out, F.conv_transpose2d(x, w, None, 2, 1))


def test_the_rule_takes_fastgan_on_one_pixel_and_few_channels():
    def rule(shape, weight_shape, stride, padding, layout=torch.contiguous_format):
        from fastgan.ops.conv_transpose2d import Geometry, _rule
        x = torch.empty(shape).to(memory_format=layout)
        return _rule(x, torch.empty(weight_shape),
                     Geometry([stride] * 2, [padding] * 2, [0, 0], 1, [1, 1]))
    assert rule((64, 100, 1, 1), (100, 512, 4, 4), 1, 0) == _dispatch.Engines.all("fastgan")
    assert rule((64, 64, 32, 32), (64, 3, 4, 4), 2, 1) == _dispatch.Engines.all("fastgan")
    assert rule((64, 512, 4, 4), (512, 256, 4, 4), 2, 1) == _dispatch.Engines.all("torch")
    assert rule((64, 64, 32, 32), (64, 3, 4, 4), 2, 1, torch.channels_last) == \
        _dispatch.Engines.all("torch")


def test_engine_switch_checks_its_value_and_flags_restore_it():
    with pytest.raises(ValueError, match="engine must be None or one of"):
        cpu.engine = "onednn"
    with pytest.raises(TypeError, match="benchmark must be a bool"):
        cpu.benchmark = 1
    with pytest.raises(TypeError, match="cache_dir must be a path or None"):
        cpu.cache_dir = 3
    before = (cpu.engine, cpu.benchmark)
    with cpu.flags(engine="torch", benchmark=False):
        assert (cpu.engine, cpu.benchmark) == ("torch", False)
    assert (cpu.engine, cpu.benchmark) == before


@pytest.mark.parametrize("engine", ["torch", "fastgan"])
def test_forced_engine_runs_every_part(engine):
    """Forced, only that engine's ops run (the profiler sees fastgan's ops, or torch's
    convolution and none of fastgan's)."""
    x, w = _dcgan_layer()
    x.requires_grad_()
    with cpu.flags(engine=engine), torch.profiler.profile() as profile:
        fastgan.ops.conv_transpose2d(x, w, None, 2, 1, activation="tanh").sum().backward()
    keys = {event.key for event in profile.key_averages()}
    fastgan_ops = {key for key in keys if key.startswith("fastgan::")}
    assert bool(fastgan_ops) == (engine == "fastgan"), keys
